"""A method defined in this file alone, registered, and run through the whole
pipeline: the proof that a method is a plug-in (no generic module names it).

The toy method: a chain of ``length`` layers, each one of three ops, in a
weight-sharing supernet trained the way SMASH and GHN train, on a fresh
random architecture every step (drawn on the host, fed to the one compiled
step as tensors through ``TrainTask.step_inputs``), with Adam and a step
schedule chosen by the method's defaults.
"""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from oneshot_tf import config as config_lib
from oneshot_tf import io_utils, pipeline, registry
from oneshot_tf.config import setting
from oneshot_tf.layers import Standardize
from oneshot_tf.proxy import Proxy
from oneshot_tf.search_space import ArchitectureError, SearchSpace, StandaloneOptions
from tests import contract

OPS = ("conv3x3", "conv1x1", "identity")
NAME = "toychain"


class ChainSpace(SearchSpace):
    """Architectures: a tuple of ``length`` op names; uniform sampling."""

    name = "chain"

    def __init__(self, length=3, width=4):
        self.length, self.width_ = int(length), int(width)

    def get_config(self):
        return {"name": self.name, "length": self.length, "width": self.width_}

    @classmethod
    def from_config(cls, config):
        return cls(config["length"], config["width"])

    def size(self):
        return len(OPS) ** self.length

    def sample(self, rng):
        return tuple(OPS[int(rng.integers(len(OPS)))] for _ in range(self.length))

    def validate(self, arch):
        if not isinstance(arch, tuple) or len(arch) != self.length:
            raise ArchitectureError(f"expected a tuple of {self.length} op names, got {arch!r}")
        for i, op in enumerate(arch):
            if op not in OPS:
                raise ArchitectureError(f"layer {i}: unknown op {op!r}")
        return arch

    def to_json(self, arch):
        return {"ops": list(arch)}

    def from_json(self, obj):
        if isinstance(obj, (str, bytes)):
            try:
                obj = json.loads(obj)
            except json.JSONDecodeError as e:
                raise ArchitectureError(f"malformed architecture JSON: {e}") from None
        if not isinstance(obj, dict) or set(obj) != {"ops"} or not isinstance(obj["ops"], list):
            raise ArchitectureError(f'expected {{"ops": [...]}}, got {obj!r}')
        return self.validate(tuple(obj["ops"]))

    def encode(self, arch):
        out = np.zeros((self.length, len(OPS)), np.float32)
        out[np.arange(self.length), [OPS.index(o) for o in arch]] = 1.0
        return {"ops": out}

    def declare_hyperparameters(self, hp):
        for i in range(self.length):
            hp.Choice(f"op{i}", list(OPS))

    def to_hyperparameters(self, arch):
        return {f"op{i}": op for i, op in enumerate(self.validate(arch))}

    def from_hyperparameters(self, values):
        return self.validate(tuple(values[f"op{i}"] for i in range(self.length)))

    def build_model(self, arch, *, input_shape, num_classes, options=None):
        options = options or StandaloneOptions()
        c = input_shape[-1]
        images = keras.Input(tuple(input_shape), dtype="uint8")
        x = Standardize(options.mean or [0.0] * c, options.std or [255.0] * c)(images)
        x = keras.layers.Conv2D(self.width_, 3, padding="same", activation="relu")(x)
        for op in self.validate(arch):
            if op != "identity":
                x = keras.layers.Conv2D(self.width_, 3 if op == "conv3x3" else 1, padding="same",
                                        activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(images, keras.layers.Dense(num_classes)(x))

    def _costs(self, arch, input_shape, num_classes):
        h, w, c = input_shape
        params = flops = 0
        for k, cin in [(3, c)] + [(3 if op == "conv3x3" else 1, self.width_) for op in arch if op != "identity"]:
            params += k * k * cin * self.width_ + self.width_
            flops += h * w * k * k * cin * self.width_
        return params + self.width_ * num_classes + num_classes, flops + self.width_ * num_classes

    def count_params(self, arch, *, input_shape, num_classes):
        return self._costs(self.validate(arch), input_shape, num_classes)[0]

    def count_flops(self, arch, *, input_shape, num_classes):
        return self._costs(self.validate(arch), input_shape, num_classes)[1]

    def widened(self, multiplier):
        return ChainSpace(self.length, int(round(self.width_ * multiplier)))

    def width(self):
        return self.width_

    def graph(self, arch):
        ids = ["in"] + [f"l{i}" for i in range(self.length)] + ["out"]
        labels = ["input"] + list(self.validate(arch)) + ["logits"]
        return {"nodes": [{"id": i, "label": l, "kind": "op"} for i, l in zip(ids, labels)],
                "edges": [[a, b] for a, b in zip(ids, ids[1:])]}


class Supernet(keras.Model):
    """Every op of every layer; an architecture's one-hot ``ops`` mask (one
    per example) selects which op's output each layer passes on."""

    def __init__(self, space, num_classes, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.standardize = Standardize(mean, std)
        self.stem = keras.layers.Conv2D(space.width_, 3, padding="same", activation="relu")
        self.convs = [[keras.layers.Conv2D(space.width_, k, padding="same", activation="relu") for k in (3, 1)]
                      for _ in range(space.length)]
        # the head in float32 (under a mixed precision policy the convolutions compute in 16 bits)
        self.pool = keras.layers.GlobalAveragePooling2D(dtype="float32")
        self.head = keras.layers.Dense(num_classes, dtype="float32")

    def call(self, images, ops):
        x = self.stem(self.standardize(images))
        for i, (c3, c1) in enumerate(self.convs):
            m = tf.cast(ops[:, i, :, None, None, None], x.dtype)
            x = m[:, 0] * c3(x) + m[:, 1] * c1(x) + m[:, 2] * x
        return self.head(self.pool(x))


class ChainProxy(Proxy):
    group_size = 8

    def __init__(self, space, *, input_shape, num_classes, mean, std, weight_decay):
        self.space, self.input_shape, self.num_classes = space, tuple(input_shape), num_classes
        self.mean, self.std, self.weight_decay = mean, std, weight_decay
        self.model = None
        self.drawn = {}       # step -> the architecture drawn for it (host side)
        self.loss_traces = 0

    def get_config(self):
        return {"weight_decay": self.weight_decay}

    def build(self):
        if self.model is None:
            self.model = Supernet(self.space, self.num_classes, self.mean, self.std)
            self.model(tf.zeros((1,) + self.input_shape, tf.uint8),
                       tf.ones((1, self.space.length, len(OPS))))

    def step_inputs(self, step, *, seed, progress, global_batch_size):
        arch = self.space.sample(np.random.default_rng([int(seed[0]), int(seed[1])]))
        self.drawn[step] = arch
        return self.encode(arch)

    def loss(self, images, labels, *, progress, seed, global_batch_size, num_replicas, replica_id=0,
             step_inputs=None):
        self.loss_traces += 1  # Python side effect: once per trace
        n = int(images.shape[0])
        ops = tf.tile(step_inputs["ops"][None], [n, 1, 1])
        logits = self.model(images, ops)
        labels = tf.cast(labels, tf.int32)
        ce = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        l2 = self.weight_decay * tf.add_n([tf.reduce_sum(tf.square(w)) for w in self.model.trainable_weights])
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                                        tf.float32))
        return ce / global_batch_size + l2 / num_replicas, {"accuracy": correct / global_batch_size}

    def candidate_logits(self, images, encodings):
        n, k = int(images.shape[0]), int(encodings["ops"].shape[0])
        return self.model(images, tf.repeat(encodings["ops"], n // k, axis=0))


@dataclasses.dataclass
class ChainSettings:
    length: int = setting(3, "Layers in the chain.", low=1)
    chain_width: int = setting(4, "Channels of every layer.", low=1)
    chain_weight_decay: float = setting(1e-4, "L2 coefficient of the supernet.", low=0.0)


def build(cfg, dataset):
    s = cfg.settings
    space = ChainSpace(s.length, s.chain_width)
    mean, std = dataset.channel_stats()
    return space, ChainProxy(space, input_shape=dataset.image_shape, num_classes=dataset.num_classes,
                             mean=mean, std=std, weight_decay=s.chain_weight_decay)


TINY = dict(dataset="digits", image_size=8, validation_size=64, train_steps=8, batch_size=16, num_candidates=6,
            candidates_per_pass=2, num_winners=1, retrain_steps=4, retrain_batch_size=16, checkpoint_every=4,
            log_every=2)
METHOD = registry.Method(name=NAME, description="a toy chain supernet (tests/test_plugin.py)",
                         settings=ChainSettings, build=build,
                         presets={"tiny": TINY, "quick": {**TINY, "train_steps": 100},
                                  "paper": {**TINY, "dataset": "cifar10"}},
                         defaults=dict(optimizer="adam", learning_rate=0.01, lr_schedule="step",
                                       lr_decay_at="0.5,0.75", lr_decay_factor=0.5))


@pytest.fixture(scope="module", autouse=True)
def toy_method():
    registry.register(METHOD)
    yield METHOD
    registry.unregister(NAME)


def test_adam_settings_reach_proxy_training_and_count_in_the_identity_when_set(tmp_path, monkeypatch):
    """--adam_beta_1/--adam_epsilon reach the proxy's TrainConfig; a
    directory's identity holds them only under Adam and away from Keras'
    defaults (an older directory keeps its identity); SMASH defaults to its
    reference code's 0.5 and 1e-4."""
    cfg = config_lib.resolve("tiny", {"adam_beta_1": 0.5, "adam_epsilon": 1e-4}, method=NAME)
    assert (cfg.identity()["adam_beta_1"], cfg.identity()["adam_epsilon"]) == (0.5, 1e-4)
    plain = config_lib.resolve("tiny", {}, method=NAME).identity()
    assert "adam_beta_1" not in plain and "adam_epsilon" not in plain
    sgd = config_lib.resolve("tiny", {"optimizer": "sgd", "adam_beta_1": 0.5}, method=NAME).identity()
    assert "adam_beta_1" not in sgd
    smash = config_lib.resolve("quick", {}, method="smash")
    assert (smash.optimizer, smash.adam_beta_1, smash.adam_epsilon) == ("adam", 0.5, 1e-4)
    with pytest.raises(ValueError, match=r"^--adam_beta_1=1.0 is out of range: it must be \[0.0, 1.0\)$"):
        config_lib.validate(config_lib.resolve("tiny", {"adam_beta_1": 1.0}, method=NAME))
    seen = []
    monkeypatch.setattr(pipeline, "train", lambda task, x, y, tcfg, *a, **k: seen.append(tcfg) or {})
    pipeline.SearchRun(cfg, str(tmp_path / "run"), verbose=False).train_proxy()
    assert (seen[0].optimizer, seen[0].adam_beta_1, seen[0].adam_epsilon) == ("adam", 0.5, 1e-4)


def test_registered_next_to_the_builtin_methods():
    assert NAME in registry.names() and "oneshot" in registry.names()
    assert registry.get("").name != NAME  # not the default
    cfg = config_lib.resolve("tiny", {"length": 2}, method=NAME)
    assert (cfg.optimizer, cfg.lr_schedule, cfg.settings.length) == ("adam", "step", 2)
    with pytest.raises(ValueError, match=r"unknown settings \['num_cells'\] for method 'toychain'"):
        config_lib.resolve("tiny", {"num_cells": 3}, method=NAME)
    with pytest.raises(ValueError, match=r"^--length=0 is out of range: it must be >= 1$"):
        config_lib.validate(config_lib.resolve("tiny", {"length": 0}, method=NAME))


def test_registering_a_bad_method_is_refused():
    with pytest.raises(ValueError, match=r"settings \['seed'\] shadow generic settings"):
        @dataclasses.dataclass
        class Shadowing:
            seed: int = setting(0, "a clash")
        registry.register(dataclasses.replace(METHOD, name="bad", settings=Shadowing))
    with pytest.raises(ValueError, match=r"presets \['paper'\] missing"):
        registry.register(dataclasses.replace(METHOD, name="bad", presets={"tiny": TINY, "quick": TINY}))
    with pytest.raises(ValueError, match=r"a method named 'oneshot' is already registered"):
        registry.register(dataclasses.replace(METHOD, name="oneshot"))
    assert "bad" not in registry.names()


@pytest.mark.parametrize("check", contract.CHECKS, ids=lambda c: c.__name__[len("check_"):])
def test_contract(check):
    check(NAME)


@pytest.mark.integration  # a whole pipeline with retraining and export: CI's integration step
def test_whole_pipeline_with_a_fresh_architecture_per_step(tmp_path):
    """Train (Adam, step decay, a host-drawn architecture per step, one
    trace), score with random search, retrain, export; a rerun does nothing."""
    run, records = contract.check_pipeline_artifacts(NAME, str(tmp_path / "run"), train_steps=8)
    proxy = run.proxy
    assert proxy.loss_traces == 1
    assert sorted(proxy.drawn) == list(range(8))
    assert len(set(proxy.drawn.values())) > 1  # new architectures, step after step
    seeds = [np.random.default_rng([0, s]) for s in range(8)]
    assert [proxy.drawn[s] for s in range(8)] == [run.space.sample(r) for r in seeds]
    assert "kl" not in records[0]  # the toy proxy has no reference architectures
    # the method's optimizer and schedule: Adam at 0.01, halved at 50% and 75% of 8 steps
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(str(tmp_path / "run"), "proxy")))
    slots = [k for k in reader.get_variable_to_shape_map() if k.startswith("optimizer/_variables/")]
    assert len(slots) == 2 * len(proxy.model.trainable_weights)  # Adam: m and v per weight (SGD: one)
    lrs = {}
    for path in tf.io.gfile.glob(os.path.join(str(tmp_path / "run"), "proxy", "train", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.tag == "learning_rate":
                    lrs[event.step] = float(tf.make_ndarray(v.tensor))
    # logged after every step s: the rate of the next update (after s updates)
    assert lrs == pytest.approx({1: 0.01, 2: 0.01, 3: 0.01, 4: 0.005, 5: 0.005, 6: 0.0025, 7: 0.0025,
                                 8: 0.0025})


def test_proxy_ensemble_trains_members_with_their_own_seeds_and_averages_their_scores(tmp_path):
    """--proxy_ensemble=2: two proxies (DIR/proxy, DIR/proxy_1) trained with
    seeds 0 and 1000; a candidate's score is the mean of the two members'
    scores, each equal to what that member's own scorer gives; a rerun
    trains and scores nothing."""
    from oneshot_tf.scoring import CandidateScorer, EnsembleScorer, ScoreConfig
    cfg = config_lib.resolve("tiny", {"proxy_ensemble": 2, "train_steps": 4, "num_candidates": 4}, method=NAME)
    assert cfg.identity()["proxy_ensemble"] == 2 and "proxy_ensemble" not in config_lib.resolve(
        "tiny", {}, method=NAME).identity()                     # one proxy: the identity of before
    run = pipeline.SearchRun(cfg, str(tmp_path / "run"), verbose=False)
    assert run.proxy_dirs == [str(tmp_path / "run" / "proxy"), str(tmp_path / "run" / "proxy_1")]
    run.train_proxy()
    a, b = run.proxies
    seeds = [np.random.default_rng([0, s]) for s in range(4)] + [np.random.default_rng([1000, s]) for s in range(4)]
    assert [a.drawn[s] for s in range(4)] + [b.drawn[s] for s in range(4)] == [run.space.sample(r) for r in seeds]
    assert any(np.abs(x.numpy() - y.numpy()).max() > 1e-3 for x, y in zip(a.model.weights, b.model.weights))
    records = run.score()
    fresh = pipeline.SearchRun(cfg, str(tmp_path / "run"), verbose=False)
    fresh.restore_proxy()
    scorer = fresh.make_scorer()
    assert isinstance(scorer, EnsembleScorer) and scorer.proxy is fresh.proxy
    encodings = [fresh.proxy.encode(run.space.from_json(r["architecture"])) for r in records[:2]]
    members = [CandidateScorer(p, ScoreConfig(candidates_per_pass=cfg.candidates_per_pass, group_size=8,
                                              kl_examples=0)).prepare(fresh.dataset.x_val, fresh.dataset.y_val)
               for p in fresh.proxies]
    own = [m.score_encodings(encodings) for m in members]
    for i, r in enumerate(records[:2]):
        assert r["member_0_score"] == own[0][i]["score"] and r["member_1_score"] == own[1][i]["score"]
        assert r["score"] == pytest.approx((own[0][i]["score"] + own[1][i]["score"]) / 2)
    assert any(r["member_0_score"] != r["member_1_score"] for r in records)   # two proxies, not one twice
    before = os.stat(os.path.join(str(tmp_path / "run"), "candidates.jsonl")).st_mtime_ns
    again = pipeline.SearchRun(cfg, str(tmp_path / "run"), verbose=False)
    assert again.proxy_trained()
    again.score()
    assert os.stat(os.path.join(str(tmp_path / "run"), "candidates.jsonl")).st_mtime_ns == before


@pytest.mark.integration  # a second whole pipeline and three trainings: CI's integration step
def test_evolution_search_and_resumed_training(tmp_path, monkeypatch):
    """An evolution search through the toy method; training killed after its
    first checkpoint resumes and draws exactly what an uninterrupted run draws."""
    contract.check_pipeline_artifacts(NAME, str(tmp_path / "evo"), search="evolution", num_candidates=8,
                                      train_steps=4)
    cfg = config_lib.resolve("tiny", {"checkpoint_every": 4}, method=NAME)
    whole = pipeline.SearchRun(cfg, str(tmp_path / "whole"), verbose=False)
    whole.train_proxy()

    class Killed(Exception):
        pass

    cut = pipeline.SearchRun(cfg, str(tmp_path / "cut"), verbose=False)
    original = ChainProxy.step_inputs

    def dies_at_step_5(self, step, **kw):
        if step == 5:
            raise Killed()
        return original(self, step, **kw)

    monkeypatch.setattr(ChainProxy, "step_inputs", dies_at_step_5)
    with pytest.raises(Killed):
        cut.train_proxy()
    monkeypatch.setattr(ChainProxy, "step_inputs", original)
    resumed = pipeline.SearchRun(cfg, str(tmp_path / "cut"), verbose=False)
    resumed.train_proxy()
    assert sorted(resumed.proxy.drawn) == [4, 5, 6, 7]  # resumed from the checkpoint of step 4
    assert {s: resumed.proxy.drawn[s] for s in range(4, 8)} == {s: whole.proxy.drawn[s] for s in range(4, 8)}
    for a, b in zip(whole.proxy.model.weights, resumed.proxy.model.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert io_utils.read_json(os.path.join(str(tmp_path / "cut"), "config.json"))["method"] == NAME


def test_methods_of_other_packages_register_through_entry_points(tmp_path, monkeypatch):
    """A package names its method module in the ``oneshot_tf.methods``
    entry-point group; the registry imports it on first lookup.  A module
    that fails to import is named in the error."""
    import importlib.metadata
    import sys

    (tmp_path / "ep_method.py").write_text(
        "import dataclasses\n"
        "from oneshot_tf import registry\n"
        "from tests.test_plugin import METHOD\n"
        "registry.register(dataclasses.replace(METHOD, name='from_entry_point'))\n")
    (tmp_path / "ep_broken.py").write_text("raise RuntimeError('no such hypernet')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    group = registry.ENTRY_POINT_GROUP
    points = [importlib.metadata.EntryPoint("from_entry_point", "ep_method", group)]
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [p for p in points if p.group == group])
    monkeypatch.setattr(registry, "_loaded", False)
    try:
        assert "from_entry_point" in registry.names()
        assert registry.get("from_entry_point").settings is ChainSettings
        points.append(importlib.metadata.EntryPoint("broken", "ep_broken", group))
        monkeypatch.setattr(registry, "_loaded", False)
        with pytest.raises(ImportError, match=r"method plug-in 'broken' \(ep_broken\) failed to import: "
                                              r"no such hypernet"):
            registry.names()
    finally:
        registry.unregister("from_entry_point")
        sys.modules.pop("ep_method", None)
        sys.modules.pop("ep_broken", None)


def test_the_fidelity_study_serves_the_method_by_its_registration(tmp_path):
    """The study names no method: the toy joins by being registered (its own
    space, no KL score, one seed: the ceiling is unknown and says so)."""
    import csv
    from oneshot_tf.fidelity import study as study_lib
    study, cfgs = study_lib.resolve("tiny", {"methods": NAME, "truth_seeds": 1, "baselines": "params,naswot",
                                             "truth_epochs": 0.1, "num_candidates": 6})
    out = study_lib.FidelityStudy(study, cfgs, str(tmp_path), verbose=False).run()
    with open(tmp_path / "fidelity.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert list(rows) == [NAME, "params", "naswot", "ceiling (seed vs seed)"]
    assert rows[NAME]["error"] == "" and rows[NAME]["n"] == "4"
    assert rows["ceiling (seed vs seed)"]["pearson"] == "nan" and out["truth"].shape == (4, 1)
    assert "unknown: one seed per candidate" in (tmp_path / "fidelity.md").read_text()


def test_the_fidelity_study_ranks_earlier_settings_on_its_ground_truth(tmp_path):
    """Two study runs in one directory under other method settings (the same
    params-stratified ground truth): the second run's table also ranks the
    first run's scores (row METHOD-<hash>, numbers recomputed by hand), and
    says which flag differs; a score file missing a candidate, or
    --noearlier, leaves the row out."""
    import csv
    from oneshot_tf.fidelity import stats
    from oneshot_tf.fidelity import study as study_lib
    base = {"methods": NAME, "baselines": "params", "truth_epochs": 0.3, "num_candidates": 6,
            "stratify_by": "params", "truth_seeds": 1}

    def run(**overrides):
        study, cfgs = study_lib.resolve("tiny", {**base, **overrides})
        out = study_lib.FidelityStudy(study, cfgs, str(tmp_path), verbose=False).run()
        with open(tmp_path / "fidelity.csv") as f:
            return out, {r["name"]: r for r in csv.DictReader(f)}

    first, _ = run(train_steps=30)
    (store,) = (tmp_path / "scores").iterdir()
    tag = store.name[: -len(".jsonl")]
    out, rows = run(train_steps=40)
    assert list(rows) == [NAME, tag, "params", "ceiling (seed vs seed)"]
    assert rows[tag]["kind"] == "earlier" and rows[tag]["error"] == ""
    ids = [c["id"] for c in out["truth_candidates"]]
    assert ids == [c["id"] for c in first["truth_candidates"]]        # one ground truth
    by_id = {r["id"]: r for r in map(json.loads, store.read_text().splitlines())}
    earlier = np.array([by_id[i]["score"] for i in ids])
    assert float(rows[tag]["spearman"]) == pytest.approx(stats.spearman(earlier, out["truth"].mean(axis=1)))
    assert rows[tag]["vs_params"] != ""
    assert out["summary"]["settings"] == {NAME: {"train_steps": 40}, tag: {"train_steps": 30}}
    md = (tmp_path / "fidelity.md").read_text()
    assert f"- {NAME}: --train_steps=40" in md and f"- {tag}: --train_steps=30" in md

    _, rows = run(train_steps=40, earlier=False)
    assert tag not in rows
    store.write_text("".join(store.read_text().splitlines(keepends=True)[1:]))   # a candidate unscored
    out, rows = run(train_steps=40)
    assert tag not in rows and out["summary"]["settings"] == {}


@pytest.mark.integration  # a study with two proxies (~12 s): CI's integration step
def test_the_fidelity_study_shows_each_ensemble_member(tmp_path):
    """--proxy_ensemble=2 in a study: the method's row ranks by the members'
    mean, and a row per member ranks by that member's own scores (the
    proxy's seed-to-seed spread), each measured like a method's."""
    import csv
    from oneshot_tf.fidelity import stats
    from oneshot_tf.fidelity import study as study_lib
    study, cfgs = study_lib.resolve("tiny", {"methods": NAME, "baselines": "params", "truth_epochs": 0.1,
                                             "num_candidates": 6, "proxy_ensemble": 2, "train_steps": 4})
    out = study_lib.FidelityStudy(study, cfgs, str(tmp_path), verbose=False).run()
    with open(tmp_path / "fidelity.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert list(rows) == [NAME, f"{NAME}_member_0", f"{NAME}_member_1", "params", "ceiling (seed vs seed)"]
    assert rows[f"{NAME}_member_0"]["kind"] == "member" and rows[f"{NAME}_member_0"]["train_seconds"] == ""
    (store,) = (tmp_path / "scores").iterdir()
    by_id = {r["id"]: r for r in map(json.loads, store.read_text().splitlines())}
    ids = [c["id"] for c in out["truth_candidates"]]
    y = out["truth"].mean(axis=1)
    member = [np.array([by_id[i][f"member_{j}_score"] for i in ids]) for j in range(2)]
    np.testing.assert_allclose([by_id[i]["score"] for i in ids], (member[0] + member[1]) / 2)
    spearman = []
    for j in range(2):
        row = rows[f"{NAME}_member_{j}"]
        assert float(row["spearman"]) == pytest.approx(stats.spearman(member[j], y))
        assert row["vs_params"] != ""
        spearman.append(float(row["spearman"]))
    assert out["summary"]["members"] == {NAME: pytest.approx(spearman)}
    md = (tmp_path / "fidelity.md").read_text()
    assert f"Proxy seeds: {NAME} is the mean of 2 proxies" in md
    (line,) = [l for l in md.splitlines() if l.startswith(f"| {NAME}_member_1 | 4 |")]
    assert line.endswith("| - | - |")  # its costs are the method's row's
