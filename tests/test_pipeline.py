"""End-to-end tests of the search pipeline (experiments binaries, pipeline.SearchRun),
candidate scoring resume and ranking."""

import dataclasses
import glob
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from oneshot_tf import config as config_lib
from oneshot_tf import io_utils, pipeline, plots, registry
from oneshot_tf import retrain as retrain_lib
from oneshot_tf.methods.oneshot.cell_space import CellSearchSpace
from oneshot_tf.pipeline import NotScoredError, ProxyNotTrainedError, SearchRun
from oneshot_tf.scoring import CandidateScorer, CandidateStore, candidate_record, rank_candidates

REPO = Path(__file__).resolve().parents[1]
TINY = registry.get("oneshot").presets["tiny"]
INPUT_SHAPE = (TINY["image_size"], TINY["image_size"], 1)  # digits are grayscale
NUM_CLASSES = 10


def _tiny_space():
    return CellSearchSpace(num_cells=TINY["num_cells"], num_stages=TINY["num_stages"],
                           filters=TINY["filters"], num_blocks=TINY["num_blocks"])


def _cli(module, *args, timeout=420):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=timeout)


def _read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _events(directory):
    """{tag: (plugin name, [(step, value ndarray), ...])} of the event files in ``directory``."""
    files = sorted(glob.glob(os.path.join(directory, "events.out.tfevents*")))
    assert files, f"no event file in {directory}"
    tags = {}
    for path in files:
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                entry = tags.setdefault(v.tag, (v.metadata.plugin_data.plugin_name, []))
                entry[1].append((event.step, tf.make_ndarray(v.tensor)))
    return tags


def _snapshot(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = (f.read(), os.stat(p).st_mtime_ns)
    return out


# ---------------------------------------------------------------------------
# The real binary, end to end (one subprocess for the whole module)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def e2e_proc(tmp_path_factory):
    """The run's directory and its finished ``experiments.run`` process."""
    model_dir = tmp_path_factory.mktemp("e2e") / "run"
    proc = _cli("experiments.run", f"--model_dir={model_dir}", "--preset=tiny", "--quiet")
    if proc.returncode != 0:
        pytest.fail(f"experiments.run failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
    return model_dir, proc


@pytest.fixture(scope="module")
def e2e(e2e_proc):
    return e2e_proc[0]


@pytest.fixture(scope="module")
def tiny_data():
    return pipeline.load_data(config_lib.resolve("tiny", {}))


def test_cli_run_writes_the_resolved_config(e2e):
    cfg = io_utils.read_json(str(e2e / "config.json"))
    flags = cfg["flags"]
    resolved = config_lib.resolve("tiny", {})
    assert set(flags) == ({f.name for f in config_lib.fields(config_lib.RunConfig)}
                          | {f.name for f in dataclasses.fields(resolved.settings)})
    assert flags == {**resolved.to_dict(), "jit_compile": False}  # resolved for CPU
    assert cfg["method"] == flags["method"] == "oneshot"
    assert config_lib.RunConfig.from_dict(flags) == dataclasses.replace(resolved, jit_compile=False)
    assert flags["preset"] == "tiny" and flags["filters"] == 4 and flags["train_steps"] == 6
    space = _tiny_space()
    assert cfg["search_space"] == space.get_config()
    assert CellSearchSpace.from_config(cfg["search_space"]).get_config() == space.get_config()
    assert cfg["search_space_size"] == space.size()
    assert cfg["proxy"] == {"ghost_batch_size": 32, "drop_rate": 0.1, "weight_decay": 1e-4, "bn_epsilon": 1e-3,
                            "kl_reference": "dropout", "reference_drop_rate": 1e-8}
    assert cfg["identity"] == {"flags": resolved.identity(), "search_space": cfg["search_space"],
                               "proxy": cfg["proxy"]}
    assert cfg["data"]["image_shape"] == list(INPUT_SHAPE)


def test_cli_run_ends_with_a_summary_of_the_winners(e2e_proc):
    """The binary's last lines: each winner's test accuracy, proxy score,
    parameters and SavedModel (as in results.json), then where the results
    and the scored candidates are."""
    model_dir, proc = e2e_proc
    winners = io_utils.read_json(str(model_dir / "results.json"))["winners"]
    assert len(winners) == TINY["num_winners"] == 2
    expected = [f"2 winner(s) retrained and exported (top ranking of {TINY['num_candidates']} scored candidates):"]
    for w in winners:
        saved = model_dir / "winners" / str(w["rank"]) / "saved_model"
        assert saved.is_dir() and w["saved_model"] == f"winners/{w['rank']}/saved_model"
        expected.append(f"  {w['rank']}. {w['id']}: test accuracy {w['test_accuracy']:.4f}, proxy score "
                        f"{w['proxy_score']:.4f}, {w['params']:,} parameters, SavedModel {saved}")
    expected += [f"results: {model_dir / 'results.json'}", f"candidates: {model_dir / 'candidates.jsonl'}"]
    assert proc.stdout.splitlines()[-len(expected):] == expected


def test_cli_run_scores_every_candidate_once(e2e):
    records = _read_jsonl(e2e / "candidates.jsonl")
    n = TINY["num_candidates"]
    assert len(records) == n
    space = _tiny_space()
    expected = space.sample_unique(n, seed=config_lib.resolve("tiny", {}).seed + 1)
    assert [r["id"] for r in records] == [space.arch_id(a) for a in expected]
    for i, r in enumerate(records):
        assert {"id", "architecture", "score", "params", "flops", "index", "method"} <= set(r)
        arch = space.from_json(r["architecture"])
        assert arch == expected[i]
        assert r["index"] == i and r["method"] == "oneshot"
        assert r["params"] == space.count_params(arch, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES)
        assert r["flops"] == space.count_flops(arch, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES)
        # Accuracy over the 64 validation examples (two groups of 32).
        assert 0.0 <= r["score"] <= 1.0
        assert r["score"] * 64 == pytest.approx(round(r["score"] * 64), abs=1e-6)
        assert r["score"] == r["accuracy"]
        assert r["kl"] >= 0.0


def test_cli_run_retrains_and_exports_the_winners(e2e, tiny_data):
    records = _read_jsonl(e2e / "candidates.jsonl")
    best = rank_candidates(records, "top")[:2]
    space = _tiny_space()
    results = io_utils.read_json(str(e2e / "results.json"))["winners"]
    assert [w["id"] for w in results] == [r["id"] for r in best]
    metrics = {}
    for rank, rec in enumerate(best, start=1):
        out = e2e / "winners" / str(rank)
        arch_json = io_utils.read_json(str(out / "architecture.json"))
        assert space.from_json(arch_json) == space.from_json(rec["architecture"])
        m = io_utils.read_json(str(out / "metrics.json"))
        metrics[rank] = m
        assert any("acc" in k for k in m)
        assert 0.0 <= m["test_accuracy"] <= 1.0
        assert m["rank"] == rank and m["id"] == rec["id"]
        assert m["proxy_score"] == rec["score"]
        # Keras' count of the stand-alone model equals the analytic count.
        assert m["params"] == rec["params"]
        assert m["flops"] == rec["flops"]
        assert results[rank - 1]["test_accuracy"] == m["test_accuracy"]

        loaded = tf.saved_model.load(str(out / "saved_model"))
        probs = loaded.serve(tf.constant(tiny_data.x_test)).numpy()
        assert probs.shape == (len(tiny_data.x_test), NUM_CLASSES)
        assert (probs >= 0).all()
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        assert m["test_accuracy"] == pytest.approx(float(np.mean(probs.argmax(-1) == tiny_data.y_test)))
        assert not glob.glob(str(out / "*.tmp-*"))
        drawing = tf.image.decode_png((out / "architecture.png").read_bytes()).numpy()   # the cell, drawn
        want = tf.image.decode_png(plots.architecture_png(space.graph(space.from_json(arch_json)), title=(
            f"{rec['id']}: test accuracy {m['test_accuracy']:.4f}"))).numpy()
        assert drawing.shape == want.shape and drawing.shape[0] > 100
    assert metrics[1]["proxy_score"] >= metrics[2]["proxy_score"]


def test_cli_run_writes_tensorboard_events(e2e):
    proxy = _events(str(e2e / "proxy" / "train"))
    for tag in ("loss", "accuracy", "path_dropout/op", "learning_rate"):
        assert proxy[tag][0] == "scalars", tag
        assert [s for s, _ in proxy[tag][1]] == [2, 4, 6], tag
    # The path-dropout schedule by hand: p = (step / 6) * r ** (1 / k), r = 0.1,
    # k = 7 ops, k = 2 + i inputs of block i.
    for step, value in proxy["path_dropout/op"][1]:
        assert float(value) == pytest.approx(step / 6 * 0.1 ** (1 / 7), rel=1e-5)
    for i in range(TINY["num_blocks"]):
        for step, value in proxy[f"path_dropout/input_block{i}"][1]:
            assert float(value) == pytest.approx(step / 6 * 0.1 ** (1 / (2 + i)), rel=1e-5)
    lrs = [float(v) for _, v in proxy["learning_rate"][1]]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] <= 0.1

    score = _events(str(e2e / "score"))
    plugin, values = score["candidates/score"]
    assert plugin == "histograms"
    ((step, hist),) = values
    assert step == TINY["num_candidates"]
    assert hist[:, 2].sum() == TINY["num_candidates"]
    assert float(score["candidates/count"][1][0][1]) == TINY["num_candidates"]
    best = max(r["score"] for r in _read_jsonl(e2e / "candidates.jsonl"))
    assert float(score["candidates/best_score"][1][0][1]) == pytest.approx(best)

    for rank in (1, 2):
        winner = _events(str(e2e / "winners" / str(rank) / "train"))
        for tag in ("loss", "accuracy", "learning_rate"):
            assert winner[tag][0] == "scalars"
            assert [s for s, _ in winner[tag][1]] == [2, 4, 6]


def test_rerun_on_finished_dir_does_no_new_work(e2e, tmp_path, monkeypatch):
    model_dir = tmp_path / "run"
    shutil.copytree(e2e, model_dir)
    before = _snapshot(model_dir)
    cfg = config_lib.RunConfig.from_dict(io_utils.read_json(str(model_dir / "config.json"))["flags"])

    def no_scoring(*a, **k):
        raise AssertionError("scored a candidate again")

    monkeypatch.setattr(CandidateScorer, "score_encodings", no_scoring)
    results = SearchRun(cfg, str(model_dir), verbose=False).run()
    after = _snapshot(model_dir)

    assert results == io_utils.read_json(str(e2e / "results.json"))["winners"]
    assert after["candidates.jsonl"] == before["candidates.jsonl"]  # same bytes, same mtime
    for name, (content, mtime) in before.items():
        if name.startswith(("proxy", "winners")):
            assert after[name] == (content, mtime), name
    new = sorted(set(after) - set(before))
    assert not [n for n in new if n.startswith(("proxy", "winners", "score")) or n == "candidates.jsonl"], new
    assert after["config.json"][0] == before["config.json"][0]
    assert json.loads(after["results.json"][0]) == json.loads(before["results.json"][0])


# ---------------------------------------------------------------------------
# Scoring in-process with the proxy the binary trained
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scoring(e2e, tmp_path_factory):
    """A directory holding the e2e run's config and trained proxy only, its
    SearchRun, and an uninterrupted scoring of its candidates into another file."""
    model_dir = tmp_path_factory.mktemp("scoring") / "run"
    model_dir.mkdir()
    shutil.copy(e2e / "config.json", model_dir / "config.json")
    shutil.copytree(e2e / "proxy", model_dir / "proxy")
    run = SearchRun(config_lib.resolve("tiny", {}), str(model_dir), verbose=False)
    run.restore_proxy()
    ref_path = str(model_dir.parent / "reference.jsonl")
    scorer, store = run.make_scorer(), CandidateStore(ref_path)
    archs = run.space.sample_unique(run.cfg.num_candidates, seed=run.cfg.seed + 1)  # --search=random's order
    k = run.cfg.candidates_per_pass
    for s in range(0, len(archs), k):
        chunk = archs[s:s + k]
        scores = scorer.score_encodings([run.proxy.encode(a) for a in chunk])
        store.append([candidate_record(run.space, a, sc, index=s + i, method="oneshot",
                                       input_shape=run.dataset.image_shape, num_classes=run.dataset.num_classes)
                      for i, (a, sc) in enumerate(zip(chunk, scores))])
    return run, model_dir, {r["id"]: r for r in store.records}


class Killed(Exception):
    pass


def test_scoring_resumes_after_interruption_and_torn_line(scoring, monkeypatch):
    run, model_dir, ref = scoring
    path = model_dir / "candidates.jsonl"
    n, k = TINY["num_candidates"], TINY["candidates_per_pass"]

    original = CandidateStore.append
    calls = []

    def dies_on_second_group(self, records):
        calls.append(len(records))
        if len(calls) == 2:
            raise Killed("killed while scoring group 2")
        return original(self, records)

    monkeypatch.setattr(CandidateStore, "append", dies_on_second_group)
    with pytest.raises(Killed):
        run.score()
    monkeypatch.undo()
    first = _read_jsonl(path)
    assert len(first) == k
    order = [r["id"] for r in first]

    # A kill in the middle of writing group 2 left a torn line.
    fifth = json.dumps(ref[[i for i in ref if i not in order][0]], sort_keys=True)
    with open(path, "a") as f:
        f.write(fifth[: len(fifth) // 2])

    records = run.score()
    lines = _read_jsonl(path)  # every line is complete JSON again
    ids = [r["id"] for r in lines]
    assert len(lines) == n and len(set(ids)) == n
    assert ids[:k] == order
    assert set(ids) == set(ref)
    assert [r["id"] for r in records] == ids
    for r in lines:
        want = ref[r["id"]]
        assert r["index"] == want["index"]
        assert r["architecture"] == want["architecture"]
        assert r["params"] == want["params"] and r["flops"] == want["flops"]
        assert r["score"] == want["score"]
        assert r["kl"] == pytest.approx(want["kl"], rel=1e-5, abs=1e-7)


def test_score_step_uses_the_trained_proxy(scoring, e2e):
    """experiments.score in a new process (here: a new SearchRun) must score
    with the proxy's trained weights, i.e. reproduce the scores that the run
    that trained the proxy wrote."""
    _, _, ref = scoring
    trained = {r["id"]: r for r in _read_jsonl(e2e / "candidates.jsonl")}
    assert set(trained) == set(ref)
    for i, r in trained.items():
        assert ref[i]["score"] == pytest.approx(r["score"]), i
        assert ref[i]["kl"] == pytest.approx(r["kl"], rel=1e-4, abs=1e-6), i


def test_candidate_store_drops_torn_last_line_and_duplicates(tmp_path):
    path = str(tmp_path / "c.jsonl")
    a, b = {"id": "a", "score": 0.5}, {"id": "b", "score": 0.25}
    with open(path, "w") as f:
        f.write(json.dumps(a) + "\n" + json.dumps(b) + "\n" + json.dumps(a) + "\n" + '{"id": "c", "sc')
    store = CandidateStore(path)
    assert store.records == [a, b] and store.ids == {"a", "b"}
    with open(path) as f:
        text = f.read()
    assert text == json.dumps(a) + "\n" + json.dumps(b) + "\n" + json.dumps(a) + "\n"
    store.append([b, {"id": "c", "score": 1.0}])
    assert [r["id"] for r in CandidateStore(path).records] == ["a", "b", "c"]
    assert not glob.glob(str(tmp_path / "*.tmp-*"))


def test_score_without_trained_proxy_says_to_train_first(tmp_path, e2e):
    cfg = config_lib.resolve("tiny", {})
    # a step that continues a run (the score and retrain binaries) on a
    # directory holding none: refused, and nothing is written
    with pytest.raises(ValueError, match=r"--model_dir=.*nowhere holds no run \(no config.json there\); run "
                                         r"experiments.train \(or experiments.run\) on it first"):
        SearchRun(cfg, str(tmp_path / "nowhere"), verbose=False, existing=True)
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(ProxyNotTrainedError, match=r"trained 0 of 6 steps; run experiments.train"):
        SearchRun(cfg, str(tmp_path / "fresh"), verbose=False).score()
    assert not (tmp_path / "fresh" / "candidates.jsonl").exists()
    with pytest.raises(NotScoredError, match=r"no scored candidates in .*fresh/candidates.jsonl; run experiments.score"):
        SearchRun(cfg, str(tmp_path / "fresh"), verbose=False).retrain()
    assert not (tmp_path / "fresh" / "winners").exists()

    # Half trained: only the step-3 checkpoint.
    partial = tmp_path / "partial"
    (partial / "proxy").mkdir(parents=True)
    for f in glob.glob(str(e2e / "proxy" / "ckpt-3.*")):
        shutil.copy(f, partial / "proxy")
    (partial / "proxy" / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-3"\nall_model_checkpoint_paths: "ckpt-3"\n')
    assert tf.train.latest_checkpoint(str(partial / "proxy")).endswith("ckpt-3")
    with pytest.raises(ProxyNotTrainedError, match=r"trained 3 of 6 steps"):
        SearchRun(cfg, str(partial), verbose=False).score()


# ---------------------------------------------------------------------------
# Config identity
# ---------------------------------------------------------------------------


def _dir_with_config(e2e, tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    shutil.copy(e2e / "config.json", d / "config.json")
    return d


def test_dir_of_another_format_is_refused(e2e, tmp_path):
    d = _dir_with_config(e2e, tmp_path)
    stored = io_utils.read_json(str(d / "config.json"))
    assert stored["format"] == pipeline.DIRECTORY_FORMAT
    del stored["format"]  # written before the directory format was recorded (3x3 reductions)
    io_utils.write_json(str(d / "config.json"), stored)
    with pytest.raises(ValueError, match=r"written by another version of oneshot-tf \(directory format 1, this "
                                         r"one writes 3: its checkpoints do not fit today's models\); use a new "
                                         r"--model_dir"):
        SearchRun(config_lib.resolve("tiny", {}), str(d), verbose=False)


def test_reusing_dir_with_other_identity_flag_raises(e2e, tmp_path):
    d = _dir_with_config(e2e, tmp_path)
    before = (d / "config.json").read_bytes()
    with pytest.raises(ValueError, match=r"--filters: 4 in the directory, 8 now") as info:
        SearchRun(config_lib.resolve("tiny", {"filters": 8}), str(d), verbose=False)
    assert "--model_dir" in str(info.value)
    assert (d / "config.json").read_bytes() == before
    # Settings that do not define the directory's contents may change.
    SearchRun(config_lib.resolve("tiny", {"num_winners": 1, "log_every": 3}), str(d), verbose=False)
    assert io_utils.read_json(str(d / "config.json"))["flags"]["num_winners"] == 1
    # the same settings again: the file is left as it is (not rewritten)
    os.utime(d / "config.json", (1e9, 1e9))
    SearchRun(config_lib.resolve("tiny", {"num_winners": 1, "log_every": 3}), str(d), verbose=False)
    assert os.path.getmtime(d / "config.json") == 1e9


def test_reusing_dir_with_another_method_names_the_method_only(e2e, tmp_path):
    d = _dir_with_config(e2e, tmp_path)
    before = (d / "config.json").read_bytes()
    with pytest.raises(ValueError) as info:
        SearchRun(config_lib.resolve("tiny", {}, method="smash"), str(d), verbose=False)
    assert str(info.value) == (f"{d} holds a run of --method=oneshot, not --method=smash; pass --method=oneshot "
                               "(with that run's flags) or use a new --model_dir")
    assert (d / "config.json").read_bytes() == before


def test_directory_keeps_what_the_method_made_of_its_settings(e2e, tmp_path):
    """The space's and the proxy's definitions are part of the identity, so a
    setting of a method that no flag list names is kept too."""
    d = _dir_with_config(e2e, tmp_path)
    stored = io_utils.read_json(str(d / "config.json"))
    stored["identity"]["proxy"]["reference_drop_rate"] = 1e-4
    io_utils.write_json(str(d / "config.json"), stored)
    with pytest.raises(ValueError, match=r"holds a run with another proxy \(.*'reference_drop_rate': 0.0001.* in "
                                         r"the directory, .*'reference_drop_rate': 1e-08.* now\); use a new "
                                         r"--model_dir"):
        SearchRun(config_lib.resolve("tiny", {}), str(d), verbose=False)


@pytest.mark.parametrize("flag,value", [("augment", False), ("score_examples", 32), ("kl_examples", 0),
                                        ("search", "evolution"), ("ranking", "small"), ("retrain_steps", 7),
                                        ("bn_momentum", 0.5), ("retrain_width", 2.0),
                                        ("kl_reference", "all_on"), ("lr_schedule", "constant"),
                                        ("optimizer", "adam"), ("drop_rate", 0.2)])
def test_flags_that_change_stored_results_are_identity_flags(e2e, tmp_path, flag, value):
    """augment changes the trained proxy (like learning_rate, an identity flag);
    score_examples and kl_examples change the scores in candidates.jsonl, so a
    resumed scoring would mix candidates scored two ways; search changes which
    candidates DIR/tuner proposes; ranking and the retraining settings change
    what a finished winners/<rank>/ (which a rerun keeps) would hold."""
    d = _dir_with_config(e2e, tmp_path)
    with pytest.raises(ValueError, match=f"--{flag}:"):
        SearchRun(config_lib.resolve("tiny", {flag: value}), str(d), verbose=False)


#: Runs several command lines through the binaries' own code (flag parsing,
#: ``common.run_step``) in one process: one TensorFlow import for all.
_CLI_DRIVER = """
import contextlib, io, json, sys
from absl import flags
from experiments import common
common.define_flags(["run"])
out = []
for step, argv in json.loads(sys.argv[1]):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["run"] + argv)
    err, code = io.StringIO(), 0
    with contextlib.redirect_stderr(err):
        try:  # as the binaries do; "open" only opens the directory (writes its config.json)
            common.run_step(lambda r: None if step == "open" else getattr(r, step)(),
                            existing=step in ("score", "retrain"))
        except SystemExit as e:
            code = e.code
    out.append({"code": code, "stderr": err.getvalue()})
print("RESULTS " + json.dumps(out))
"""


@pytest.mark.integration  # subprocesses of the binaries: CI's integration step
def test_cli_reports_bad_input_in_one_line_without_traceback(tmp_path):
    """An unavailable tfds dataset, a --model_dir that is a file, retraining
    a directory nothing was scored in, scoring or retraining a directory that
    holds no run (not created), an empty --model_dir, one under a file, a
    fidelity study's directory, --strategy=tpu without a TPU: one ``error:``
    line each."""
    empty = tmp_path / "tfds"
    empty.mkdir()
    model_dir = tmp_path / "run"
    path = tmp_path / "a_file"
    path.write_text("not a directory")
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.json").write_text("{}")
    base = ["--preset=tiny", "--quiet"]
    cases = [["run", [f"--model_dir={model_dir}", "--dataset=cifar10", f"--data_dir={empty}"] + base],
             ["run", [f"--model_dir={path}"] + base],
             ["open", [f"--model_dir={tmp_path / 'unscored'}"] + base],
             ["retrain", [f"--model_dir={tmp_path / 'unscored'}"] + base],
             ["score", [f"--model_dir={tmp_path / 'nowhere'}"] + base],
             ["retrain", [f"--model_dir={tmp_path / 'nowhere'}"] + base],
             ["run", ["--model_dir="] + base],
             ["run", [f"--model_dir={path}/sub"] + base],
             ["run", [f"--model_dir={study}"] + base],
             ["run", [f"--model_dir={tmp_path / 'tpu'}", "--strategy=tpu"] + base]]  # last: it touches the runtime
    no_tpu = not tf.config.list_physical_devices("TPU")
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _CLI_DRIVER, json.dumps(cases)], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")]
    results = json.loads(line[len("RESULTS "):])
    assert results[2] == {"code": 0, "stderr": ""}  # "open"
    del results[2]
    for r in results:
        assert r["code"] == 1 and "Traceback" not in r["stderr"], r
    errors = [[l for l in r["stderr"].splitlines() if l.startswith("error: ")] for r in results]
    (dataset_error,) = errors[0]
    assert "dataset 'cifar10' is not available offline" in dataset_error
    assert str(empty) in dataset_error and "tfds build cifar10" in dataset_error
    assert not model_dir.exists()
    assert errors[1] == [f"error: --model_dir={path} is an existing file, not a directory"]
    assert path.read_text() == "not a directory"
    assert errors[2] == [f"error: no scored candidates in {tmp_path / 'unscored' / 'candidates.jsonl'}; run "
                         f"experiments.score (or experiments.run) on this --model_dir first"]
    nowhere = tmp_path / "nowhere"
    assert errors[3] == errors[4] == [f"error: --model_dir={nowhere} holds no run (no config.json there); run "
                                      f"experiments.train (or experiments.run) on it first"]
    assert not nowhere.exists()
    assert errors[5] == ["error: --model_dir is empty; name the directory of the run"]
    assert errors[6] == [f"error: {path} is not a directory"]   # TensorFlow's file system's words
    assert errors[7] == [f"error: --model_dir={study} holds a fidelity study (study.json), not a search; give the "
                         f"search its own directory"]
    assert sorted(p.name for p in study.iterdir()) == ["study.json"]
    if no_tpu:
        (tpu_error,) = errors[8]
        assert tpu_error.startswith("error: --strategy=tpu: no TPU could be initialized at --tpu='local' (")
        assert tpu_error.endswith("); on a TPU VM leave --tpu empty, elsewhere name the TPU")


def test_cli_reads_the_method_before_defining_its_flags(capsys):
    """--method is read from the command line first (its flags depend on it);
    an unknown one ends the binary with one line, before any flag is defined."""
    from experiments import common
    assert common.method_from_argv(["run", "--model_dir=d", "--method=oneshot"]) == "oneshot"
    assert common.method_from_argv(["run", "--method", "toy", "--x=1"]) == "toy"
    assert common.method_from_argv(["run", "--model_dir=d"]) == ""
    assert common.method_from_argv(["run", "--", "--method=toy"]) == ""
    with pytest.raises(SystemExit) as info:
        common.define_flags(["run", "--method=darts"])
    assert info.value.code == 1
    assert capsys.readouterr().err == "error: unknown --method='darts'; available: ghn, oneshot, smash\n"


# ---------------------------------------------------------------------------
# Ranking
# ---------------------------------------------------------------------------


def _recs():
    # id, score, params
    rows = [("a", 0.30, 500), ("b", 0.90, 900), ("c", 0.70, 300), ("d", 0.90, 400),
            ("e", 0.50, 100), ("f", 0.70, 300), ("g", 0.10, 50)]
    return [{"id": i, "score": s, "params": p} for i, s, p in rows]


def test_rank_top_orders_by_score_then_params_then_id():
    ranked = rank_candidates(_recs(), "top")
    assert [r["id"] for r in ranked] == ["d", "b", "c", "f", "e", "a", "g"]
    assert rank_candidates([], "top") == []


def test_rank_small_picks_fewest_params_above_percentile():
    # Sorted scores: .1 .3 .5 .7 .7 .9 .9; the 50th percentile is .7 (position 3),
    # the 70th is at position 4.2 -> .7 + .2 * (.9 - .7) = .74.
    assert [r["id"] for r in rank_candidates(_recs(), "small", 50.0)] == ["c", "f", "d", "b"]
    assert [r["id"] for r in rank_candidates(_recs(), "small", 70.0)] == ["d", "b"]
    # The 10th percentile: position 0.6 -> .1 + .6 * .2 = .22: all but g, fewest params first
    # (ties: higher score, then id).
    assert [r["id"] for r in rank_candidates(_recs(), "small", 10.0)] == ["e", "c", "f", "d", "a", "b"]
    # The 0th percentile keeps everything.
    assert rank_candidates(_recs(), "small", 0.0)[0]["id"] == "g"


def test_rank_unknown_mode_raises():
    with pytest.raises(ValueError, match=r"unknown --ranking='best'; choose from top, small"):
        rank_candidates(_recs(), "best")


@pytest.mark.parametrize("override,message", [
    ({"search": "bayes"}, r"unknown --search='bayes'; choose from random, refine, evolution"),
    ({"ranking": "best"}, r"^unknown --ranking='best'; choose from top, small$"),
    ({"method": "darts"}, r"^unknown --method='darts'; available: ghn, oneshot, smash$"),
    ({"precision": "float64"}, r"^unknown --precision='float64'; choose from float32, mixed_bfloat16, mixed_float16$"),
    ({"batch_size": 48}, r"--batch_size=48 must be a multiple of replicas \(1\) x --ghost_batch_size \(32\)"),
    ({"lr_schedule": "linear"}, r"^unknown --lr_schedule='linear'; choose from cosine, constant, cosine_floor, step$"),
    ({"lr_schedule": "cosine_floor", "lr_floor": 1.0}, r"^--lr_floor=1.0 is out of range: it must be \(0.0, 1.0\)$"),
    ({"optimizer": "rmsprop"}, r"^unknown --optimizer='rmsprop'; choose from sgd, adam$"),
    ({"lr_schedule": "step", "lr_decay_at": "0.75,0.5"},
     r"^--lr_decay_at='0.75,0.5' must be increasing fractions in \(0, 1\), e.g. 0.5,0.75$"),
    ({"lr_schedule": "step", "lr_decay_at": "half"}, r"^--lr_decay_at='half' is not a comma-separated list"),
    ({"retrain_width": 1.3}, r"^width multiplier 1.3 does not give a whole number of filters from F=4 "
                             r"\(F x 1.3 = 5.2\)$"),
    ({"retrain_width": 0.0}, r"^--retrain_width=0.0 is out of range: it must be > 0.0$"),
    ({"num_cells": "two"}, r"^--num_cells='two' is not a number$"),
    ({"hypernet_width": 3}, r"^unknown settings \['hypernet_width'\] for method 'oneshot' \(its own settings: "),
    ({"kl_reference": "mean"}, r"unknown --kl_reference='mean'; choose from dropout, all_on"),
    ({"ghost_batch_size": 0}, r"^--ghost_batch_size=0 is out of range: it must be >= 1$"),
    ({"num_candidates": -5}, r"^--num_candidates=-5 is out of range: it must be >= 1$"),
    ({"train_steps": 0}, r"^--train_steps=0 is out of range: it must be >= 1$"),
    ({"drop_rate": 1.0}, r"^--drop_rate=1.0 is out of range: it must be \(0.0, 1.0\)$"),
    ({"bn_momentum": 1.0}, r"^--bn_momentum=1.0 is out of range: it must be \[0.0, 1.0\)$"),
    ({"small_percentile": 101.0}, r"^--small_percentile=101.0 is out of range: it must be \[0.0, 100.0\]$"),
    ({"learning_rate": 0.0}, r"^--learning_rate=0.0 is out of range: it must be > 0.0$"),
    ({"candidates_per_pass": 0}, r"^--candidates_per_pass=0 is out of range: it must be >= 1$"),
    ({"retrain_batch_size": 0}, r"^--retrain_batch_size=0 is out of range: it must be >= 1$"),
    ({"checkpoint_every": 0}, r"^--checkpoint_every=0 is out of range: it must be >= 1$"),
    ({"num_stages": 3}, r"^--num_stages=3 exceeds --num_cells=1: every stage needs a cell$"),
    ({"best_of": 1, "num_winners": 2}, r"^--best_of=1 must be 0 \(off\) or at least --num_winners=2$"),
    ({"best_of_steps": 0}, r"^--best_of_steps=0 is out of range: it must be >= 1$"),
])
def test_bad_settings_fail_before_any_work(tmp_path, override, message):
    model_dir = str(tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        SearchRun(config_lib.resolve("tiny", override), model_dir, verbose=False)
    assert not os.path.exists(model_dir)


def test_lr_schedule_reaches_proxy_training_only(tmp_path, monkeypatch):
    """--lr_schedule/--lr_floor set the proxy's optimizer (the learning rate
    at given steps by the formula); retraining keeps cosine decay to 0."""
    import math
    from oneshot_tf.training import current_lr, make_optimizer
    run = SearchRun(config_lib.resolve("tiny", {"lr_schedule": "cosine_floor", "lr_floor": 0.2,
                                                "train_steps": 10}), str(tmp_path / "run"), verbose=False)
    seen = []
    monkeypatch.setattr(pipeline, "train", lambda task, x, y, cfg, *a, **k: seen.append(cfg) or {})
    run.train_proxy()
    (cfg,) = seen
    assert (cfg.lr_schedule, cfg.lr_floor, cfg.steps) == ("cosine_floor", 0.2, 10)
    opt = make_optimizer(cfg)
    for t in (0, 5, 10):
        opt.iterations.assign(t)
        assert current_lr(opt) == pytest.approx(0.1 * (0.2 + 0.8 * (1 + math.cos(math.pi * t / 10)) / 2))
    arch = run.space.sample_unique(1, seed=0)[0]
    monkeypatch.setattr(run, "winners", lambda: [{"id": "w", "score": 0.5,
                                                  "architecture": run.space.to_json(arch)}])
    monkeypatch.setattr(pipeline, "retrain_and_export",
                        lambda space, arch, data, out, cfg, **k: seen.append(cfg) or {"test_accuracy": 0.0,
                                                                                      "params": 0})
    run.retrain()
    assert seen[1].lr_schedule == "cosine" and seen[1].steps == run.cfg.retrain_steps


@pytest.mark.parametrize("search", ["refine", "evolution"])
def test_tuner_searches_write_candidates_and_resume(e2e, tmp_path, monkeypatch, search):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    shutil.copytree(e2e / "proxy", model_dir / "proxy")  # the trained proxy (a new directory of its own search)
    cfg = config_lib.resolve("tiny", {"search": search, "num_candidates": 8})
    run = SearchRun(cfg, str(model_dir), verbose=False)
    records = run.score()
    lines = _read_jsonl(model_dir / "candidates.jsonl")
    assert len(lines) == 8 == len({r["id"] for r in lines})
    assert [r["id"] for r in records] == [r["id"] for r in lines]
    for r in lines:
        arch = run.space.from_json(r["architecture"])
        assert r["params"] == run.space.count_params(arch, input_shape=run.dataset.image_shape,
                                                     num_classes=run.dataset.num_classes)
    assert (model_dir / "tuner" / "oracle.json").exists()
    assert glob.glob(str(model_dir / "score" / "tuner" / "search" / "events.*"))

    def no_scoring(self, encodings):
        raise AssertionError("scored a candidate again")

    monkeypatch.setattr(CandidateScorer, "score_encodings", no_scoring)
    before = (model_dir / "candidates.jsonl").read_bytes()
    SearchRun(cfg, str(model_dir), verbose=False).score()
    assert (model_dir / "candidates.jsonl").read_bytes() == before
    assert run.winners()[0]["score"] == max(r["score"] for r in lines)


@pytest.mark.integration  # a search subprocess killed mid-run: CI's integration step
def test_killed_search_process_resumes_without_losing_or_repeating(e2e, tmp_path):
    """SIGKILL the real experiments.score process in the middle of a
    keras-tuner search, run it again: every candidate is scored exactly once,
    in the random oracle's order, and the tuner's trials all complete."""
    import signal
    import time

    model_dir = tmp_path / "run"
    model_dir.mkdir()
    shutil.copy(e2e / "config.json", model_dir / "config.json")
    shutil.copytree(e2e / "proxy", model_dir / "proxy")
    n = 60  # 30 passes of 2: killed after 3 of them, well before the end
    args = ("experiments.score", f"--model_dir={model_dir}", "--preset=tiny", "--quiet",
            f"--num_candidates={n}", "--candidates_per_pass=2")
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=str(REPO), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    path = model_dir / "candidates.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= 6:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the search ended before it could be killed:\n{proc.stderr.read()[-3000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    killed_at = path.read_text().count("\n")
    assert 6 <= killed_at < n

    done = _cli(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = _read_jsonl(path)
    space = _tiny_space()
    expected = [space.arch_id(a) for a in space.sample_unique(n, seed=config_lib.resolve("tiny", {}).seed + 1)]
    ids = [r["id"] for r in lines]
    assert len(ids) == n and sorted(ids) == sorted(expected)  # none lost, none twice
    assert sorted(r["index"] for r in lines) == list(range(n))
    assert all(expected[r["index"]] == r["id"] for r in lines)
    trials = glob.glob(str(model_dir / "tuner" / "trial_*" / "trial.json"))
    assert len(trials) == n
    assert {io_utils.read_json(t)["status"] for t in trials} == {"COMPLETED"}
    # Scores come from the same trained proxy as the run that trained it.
    first = {r["id"]: r["score"] for r in _read_jsonl(e2e / "candidates.jsonl")}
    for r in lines:
        if r["id"] in first:
            assert r["score"] == pytest.approx(first[r["id"]])


@pytest.mark.integration  # a whole pipeline on a fake filesystem: CI's integration step
def test_every_artifact_goes_through_gfile(tmp_path, monkeypatch):
    """A run on TensorFlow's in-memory file system (ram://, a stand-in for
    gs://): every step works and every artifact lands there, nothing on the
    local disk."""
    monkeypatch.chdir(tmp_path)
    root = "ram://bucket/run"
    cfg = config_lib.resolve("tiny", {"num_winners": 1})
    results = SearchRun(cfg, root, verbose=False).run()
    assert os.listdir(tmp_path) == []
    for name in ("config.json", "candidates.jsonl", "candidates.png", "results.json", "tuner/oracle.json",
                 "winners/1/metrics.json", "winners/1/architecture.json", "winners/1/saved_model/saved_model.pb"):
        assert tf.io.gfile.exists(f"{root}/{name}"), name
    assert tf.train.latest_checkpoint(f"{root}/proxy").endswith(f"ckpt-{cfg.train_steps}")
    assert len(io_utils.read_text(f"{root}/candidates.jsonl").splitlines()) == cfg.num_candidates
    assert io_utils.read_json(f"{root}/results.json")["winners"] == results
    # A second run on the same directory resumes there and does no new work.
    again = SearchRun(cfg, root, verbose=False)
    monkeypatch.setattr(CandidateScorer, "score_encodings",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("scored again")))
    assert again.run() == results


def test_growing_num_candidates_continues_the_search(e2e, tmp_path, monkeypatch, caplog):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    shutil.copytree(e2e / "proxy", model_dir / "proxy")
    SearchRun(config_lib.resolve("tiny", {"num_candidates": 4}), str(model_dir), verbose=False).score()
    first = [r["id"] for r in _read_jsonl(model_dir / "candidates.jsonl")]
    scored = []
    original = CandidateScorer.score_encodings
    monkeypatch.setattr(CandidateScorer, "score_encodings",
                        lambda self, encs: scored.append(len(encs)) or original(self, encs))
    run = SearchRun(config_lib.resolve("tiny", {"num_candidates": 6}), str(model_dir), verbose=False)
    run.score()
    ids = [r["id"] for r in _read_jsonl(model_dir / "candidates.jsonl")]
    assert ids[:4] == first and sum(scored) == 2  # only the two new candidates were scored
    assert ids == [run.space.arch_id(a) for a in run.space.sample_unique(6, seed=run.cfg.seed + 1)]
    # shrinking it back scores nothing, keeps every record, and says so
    caplog.set_level("WARNING")
    SearchRun(config_lib.resolve("tiny", {"num_candidates": 4}), str(model_dir), verbose=False).score()
    assert sum(scored) == 2 and [r["id"] for r in _read_jsonl(model_dir / "candidates.jsonl")] == ids
    assert "holds 6 scored candidates, more than --num_candidates=4" in caplog.text


def _scored_copy(e2e, tmp_path):
    """A fresh directory with the binary's trained proxy and scored candidates."""
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    shutil.copytree(e2e / "proxy", model_dir / "proxy")
    shutil.copy(e2e / "candidates.jsonl", model_dir / "candidates.jsonl")
    return model_dir


def test_best_of_reorders_the_shortlist_by_brief_validation_accuracy(e2e, tmp_path, monkeypatch):
    model_dir = _scored_copy(e2e, tmp_path)
    run = SearchRun(config_lib.resolve("tiny", {"best_of": 3, "num_winners": 2}), str(model_dir), verbose=False)
    ranked = rank_candidates(_read_jsonl(model_dir / "candidates.jsonl"), "top")
    ids = [r["id"] for r in ranked[:3]]
    accuracy = {ids[0]: 0.5, ids[1]: 0.7, ids[2]: 0.7}   # a tie: the better-scored one first
    calls = []

    def fake_brief(space, arch, dataset, out_dir, cfg, **kw):
        calls.append((space.arch_id(arch), out_dir, cfg.steps))
        return {"validation_accuracy": accuracy[space.arch_id(arch)]}

    monkeypatch.setattr(pipeline, "brief_train", fake_brief)
    winners = run.winners()
    assert [w["id"] for w in winners] == [ids[1], ids[2]]
    assert [w["brief_validation_accuracy"] for w in winners] == [0.7, 0.7]
    assert [c[0] for c in calls] == ids                     # the top 3 by score, each once
    assert calls[0][1] == os.path.join(str(model_dir), "best_of", ids[0]) and calls[0][2] == 100


def _record_initial_weights(monkeypatch):
    """Stand-alone training replaced by a record of each run's initial
    weights and settings (by checkpoint directory), export by an empty
    directory: what two code paths would train, without training it."""
    calls = {}

    def record(task, x, y, cfg, model_dir, **kw):
        task.build()
        calls[model_dir] = ([v.numpy() for v in task.model.weights], cfg)
        return {}

    monkeypatch.setattr(retrain_lib, "train", record)
    monkeypatch.setattr(retrain_lib, "export_saved_model", lambda model, path, **kw: tf.io.gfile.makedirs(path))
    return calls


def test_winners_initialize_from_their_seed_alone(e2e, tmp_path, monkeypatch):
    """A winner's initial weights come from ``--seed`` and its rank alone:
    retraining resumed after winner 1 finished, or run in a process whose
    random state other work moved (``experiments.run`` trains the proxy
    first), starts each winner where an uninterrupted retraining does."""
    calls = _record_initial_weights(monkeypatch)
    flags = {"num_winners": 2}
    runs = {}
    for name in ("uninterrupted", "resumed", "moved"):
        (tmp_path / name).mkdir()
        model_dir = _scored_copy(e2e, tmp_path / name)
        run = SearchRun(config_lib.resolve("tiny", flags), str(model_dir), verbose=False)
        if name == "resumed":  # winner 1 finished before the kill: it is not built again
            run.retrain()
            shutil.rmtree(model_dir / "winners" / "2")
            run = SearchRun(config_lib.resolve("tiny", flags), str(model_dir), verbose=False)
        if name == "moved":
            keras.utils.set_random_seed(12345)
            random.random()
        runs[name] = (model_dir, run.retrain())
    initial = {d: weights for d, (weights, _) in calls.items()}
    for rank in (1, 2):
        want = initial[str(runs["uninterrupted"][0] / "winners" / str(rank) / "ckpt")]
        for name in ("resumed", "moved"):
            got = initial[str(runs[name][0] / "winners" / str(rank) / "ckpt")]
            assert [g.shape for g in got] == [w.shape for w in want]
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)
    first, second = (initial[str(runs["uninterrupted"][0] / "winners" / str(r) / "ckpt")] for r in (1, 2))
    kernels = [(a, b) for a, b in zip(first, second) if a.shape == b.shape and a.ndim == 4]
    assert kernels and not any(np.array_equal(a, b) for a, b in kernels)   # each rank its own seed
    assert [r["id"] for r in runs["resumed"][1]] == [r["id"] for r in runs["uninterrupted"][1]]


def test_proxies_initialize_from_their_seed_alone(tmp_path, monkeypatch):
    """Each ensemble member's initial weights come from ``--seed + 1000 i``
    alone, not from what the process did between opening the run and
    training it (the Python API allows anything there)."""
    initial = {}

    def record(task, x, y, cfg, model_dir, **kw):
        task.build()
        initial[model_dir] = [v.numpy() for v in task.model.weights]
        return {}

    monkeypatch.setattr(pipeline, "train", record)
    for name in ("plain", "moved"):
        run = SearchRun(config_lib.resolve("tiny", {"proxy_ensemble": 2}), str(tmp_path / name), verbose=False)
        if name == "moved":
            keras.utils.set_random_seed(12345)
            random.random()
        run.train_proxy()
    for member in ("proxy", "proxy_1"):
        plain, moved = initial[str(tmp_path / "plain" / member)], initial[str(tmp_path / "moved" / member)]
        assert len(plain) == len(moved) > 10
        for a, b in zip(plain, moved):
            np.testing.assert_array_equal(a, b)
    first, second = initial[str(tmp_path / "plain" / "proxy")], initial[str(tmp_path / "plain" / "proxy_1")]
    assert any(a.ndim == 4 and not np.array_equal(a, b) for a, b in zip(first, second))   # members differ


def test_retrain_architecture_trains_it_as_winner_one(e2e, tmp_path, monkeypatch):
    """``--architecture=<winner 1's id>`` trains the model winner 1's
    retraining trains (the same initial weights and settings: the two code
    paths agree), in DIR/architectures/<id>/; every way of naming it (its
    id, the winner's directory or architecture.json, JSON text, a
    candidates.jsonl line) resolves to it, and a finished one is returned
    without training again."""
    calls = _record_initial_weights(monkeypatch)
    model_dir = _scored_copy(e2e, tmp_path)
    run = SearchRun(config_lib.resolve("tiny", {"num_winners": 1}), str(model_dir), verbose=False)
    (winner,) = run.retrain()
    arch_id = winner["id"]
    result = run.retrain_architecture(arch_id)
    candidates = str(model_dir / "candidates.jsonl")
    assert result == {"id": arch_id, "source": f"candidate {arch_id} of {candidates}",
                      "proxy_score": winner["proxy_score"], "test_accuracy": winner["test_accuracy"],
                      "params": winner["params"], "saved_model": os.path.join("architectures", arch_id, "saved_model")}
    want_weights, want_cfg = calls[str(model_dir / "winners" / "1" / "ckpt")]
    got_weights, got_cfg = calls[str(model_dir / "architectures" / arch_id / "ckpt")]
    assert got_cfg == want_cfg and got_cfg.seed == run.cfg.seed + 1
    assert len(got_weights) == len(want_weights)
    for g, w in zip(got_weights, want_weights):
        np.testing.assert_array_equal(g, w)
    metrics = io_utils.read_json(str(model_dir / "architectures" / arch_id / "metrics.json"))
    assert metrics["seed"] == got_cfg.seed and metrics["proxy_score"] == result["proxy_score"]
    assert run.space.from_json(io_utils.read_json(str(model_dir / "architectures" / arch_id / "architecture.json"))) \
        == run.space.from_json((model_dir / "winners" / "1" / "architecture.json").read_text())

    line = next(l for l in (model_dir / "candidates.jsonl").read_text().splitlines() if arch_id in l)
    winner_dir = model_dir / "winners" / "1"
    specs = {str(winner_dir): str(winner_dir / "architecture.json"),
             str(winner_dir / "architecture.json"): str(winner_dir / "architecture.json"),
             (winner_dir / "architecture.json").read_text(): "JSON text", " " + line + "\n": "JSON text"}
    for spec, source in specs.items():
        again = run.retrain_architecture(spec)
        assert (again["id"], again["source"], again["test_accuracy"]) == (arch_id, source, result["test_accuracy"])
    assert len(calls) == 2                                   # finished: not trained again
    assert "architecture %s (candidate %s of %s) retrained as winner 1 is (6 steps, width x1, seed %d)" % (
        arch_id, arch_id, candidates, got_cfg.seed) in run.architecture_summary(result)


def test_score_architecture_repeats_the_search_and_ranks_it(e2e, tmp_path):
    """``score_architecture`` scores with the search's scorer (a scored
    candidate gets its record's scores again), ranks the architecture among
    the scored candidates, writes architectures/<id>/score.json (which
    retraining then reads) and leaves candidates.jsonl as it is."""
    model_dir = _scored_copy(e2e, tmp_path)
    candidates = model_dir / "candidates.jsonl"
    before = candidates.read_bytes()
    run = SearchRun(config_lib.resolve("tiny", {}), str(model_dir), verbose=False)
    ranked = rank_candidates(_read_jsonl(candidates), "top")
    second = ranked[1]
    rec = run.score_architecture(second["id"])
    assert rec["score"] == second["score"] and rec["kl"] == pytest.approx(second["kl"], rel=1e-3, abs=1e-6)
    assert {k: rec[k] for k in ("id", "architecture", "params", "flops", "method")} == \
        {k: second[k] for k in ("id", "architecture", "params", "flops", "method")}
    assert (rec["rank"], rec["ranked_among"]) == (2, len(ranked))
    assert rec["source"] == f"candidate {second['id']} of {candidates}"
    assert io_utils.read_json(str(model_dir / "architectures" / second["id"] / "score.json")) == rec
    assert run.score_summary(rec) == (
        f"architecture {rec['id']} (candidate {rec['id']} of {candidates}): proxy score {rec['score']:.4f}, KL "
        f"{rec['kl']:.4f}; top ranking: 2 of {len(ranked)} with the scored candidates; {rec['params']:,} parameters, "
        f"{rec['flops']:,} multiply-adds; {model_dir / 'architectures' / rec['id'] / 'score.json'}")

    ids = {r["id"] for r in ranked}
    new = next(a for a in (run.space.sample(np.random.default_rng(i)) for i in range(100))
               if run.space.arch_id(a) not in ids)
    rec = run.score_architecture(new)
    assert rec["source"] == "an architecture value" and 0.0 <= rec["score"] <= 1.0
    want = [r["id"] for r in rank_candidates(ranked + [rec], "top")].index(rec["id"]) + 1
    assert (rec["rank"], rec["ranked_among"]) == (want, len(ranked) + 1)
    assert run._scored_record(rec["id"]) == rec                # what retraining it would report
    assert candidates.read_bytes() == before


def test_retrain_architecture_in_a_new_directory(tmp_path, monkeypatch):
    """A directory that holds no search retrains a given architecture (no
    proxy needed); it is not scored there."""
    calls = _record_initial_weights(monkeypatch)
    space = _tiny_space()
    arch = space.sample(np.random.default_rng(3))
    run = SearchRun(config_lib.resolve("tiny", {}), str(tmp_path / "run"), verbose=False)
    result = run.retrain_architecture(json.dumps(space.to_json(arch)))
    assert result["id"] == space.arch_id(arch) and result["proxy_score"] is None and result["source"] == "JSON text"
    assert result["params"] == space.count_params(arch, input_shape=INPUT_SHAPE, num_classes=NUM_CLASSES)
    assert list(calls) == [str(tmp_path / "run" / "architectures" / result["id"] / "ckpt")]
    assert "not scored in this directory" in run.architecture_summary(result)
    assert (tmp_path / "run" / "config.json").exists() and not (tmp_path / "run" / "proxy").exists()


def test_retrain_architecture_refuses_bad_input_naming_it(tmp_path):
    from oneshot_tf.search_space import ArchitectureError
    run = SearchRun(config_lib.resolve("tiny", {}), str(tmp_path / "run"), verbose=False)
    candidates = tmp_path / "run" / "candidates.jsonl"
    bare = tmp_path / "bare"
    bare.mkdir()
    cases = {
        "nosuchid": f"--architecture='nosuchid' is not JSON, an existing file or directory, or the id of a candidate "
                    f"scored in {candidates}",
        "  ": "--architecture is empty: pass JSON text, a JSON file or a scored candidate's id",
        str(bare): f"--architecture={bare} is a directory without an architecture.json",
        '{"blocks": [': "the --architecture JSON is not valid JSON: Expecting value: line 1 column 13 (char 12)",
        '{"nodes": []}': "the --architecture JSON is not an architecture of this run's oneshot search space: "
                         "malformed architecture: expected an object {\"blocks\": [...]} got {'nodes': []}",
    }
    for spec, message in cases.items():
        with pytest.raises(ArchitectureError) as e:
            run.retrain_architecture(spec)
        assert str(e.value) == message
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"blocks": [{"inputs": [0], "ops": ["conv3x3"]}]}')
    with pytest.raises(ArchitectureError, match=f"^{wrong} is not an architecture of this run's oneshot search "
                                                f"space: architecture has 1 blocks"):
        run.retrain_architecture(str(wrong))
    other = CellSearchSpace(num_cells=TINY["num_cells"], num_stages=TINY["num_stages"], filters=TINY["filters"],
                            num_blocks=TINY["num_blocks"] + 1).sample(np.random.default_rng(0))
    with pytest.raises(ArchitectureError, match="^the given architecture is not in this run's oneshot search space: "
                                                f"architecture has {TINY['num_blocks'] + 1} blocks"):
        run.retrain_architecture(other)
    assert not (tmp_path / "run" / "architectures").exists()
    mine = run.space.sample(np.random.default_rng(0))
    assert run.resolve_architecture(mine) == (mine, "an architecture value")


@pytest.mark.integration  # two subprocesses of the binary: CI's integration step
def test_cli_retrains_and_scores_a_given_architecture(e2e, tmp_path, tiny_data):
    """``experiments.retrain --architecture=ID`` trains and exports that
    candidate and prints where; ``experiments.score --architecture=FILE``
    prints its score and rank; a bad one ends the binary with one line."""
    model_dir = _scored_copy(e2e, tmp_path)
    shutil.copy(e2e / "config.json", model_dir / "config.json")
    rec = rank_candidates(_read_jsonl(model_dir / "candidates.jsonl"), "top")[-1]   # the lowest-ranked one
    proc = _cli("experiments.retrain", f"--model_dir={model_dir}", "--preset=tiny", "--quiet",
                f"--architecture={rec['id']}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = model_dir / "architectures" / rec["id"]
    metrics = io_utils.read_json(str(out / "metrics.json"))
    assert proc.stdout.splitlines()[-1] == (
        f"architecture {rec['id']} (candidate {rec['id']} of {model_dir / 'candidates.jsonl'}) retrained as winner 1 "
        f"is ({TINY['retrain_steps']} steps, width x1, seed {metrics['seed']}) and exported: test accuracy "
        f"{metrics['test_accuracy']:.4f}, proxy score {rec['score']:.4f}, {rec['params']:,} parameters, "
        f"SavedModel {out / 'saved_model'}")
    loaded = tf.saved_model.load(str(out / "saved_model"))
    probs = loaded.serve(tf.constant(tiny_data.x_test)).numpy()
    assert metrics["test_accuracy"] == pytest.approx(float(np.mean(probs.argmax(-1) == tiny_data.y_test)))
    assert not (model_dir / "winners").exists()
    scored = _cli("experiments.score", f"--model_dir={model_dir}", "--preset=tiny", "--quiet",
                  f"--architecture={out / 'architecture.json'}")
    assert scored.returncode == 0, scored.stderr[-3000:]
    n = len(_read_jsonl(model_dir / "candidates.jsonl"))
    assert scored.stdout.splitlines()[-1].startswith(
        f"architecture {rec['id']} ({out / 'architecture.json'}): proxy score {rec['score']:.4f}, KL ")
    assert f"; top ranking: {n} of {n} with the scored candidates; {rec['params']:,} parameters" in scored.stdout
    bad = _cli("experiments.retrain", f"--model_dir={model_dir}", "--preset=tiny", "--quiet", "--architecture={")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert [l for l in bad.stderr.splitlines() if l.startswith("error: ")] == [
        "error: the --architecture JSON is not valid JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)"]


@pytest.mark.integration  # brief and full stand-alone trainings, resumed: CI's integration step
def test_best_of_trains_briefly_retrains_the_best_and_resumes(e2e, tmp_path, monkeypatch):
    model_dir = _scored_copy(e2e, tmp_path)
    flags = {"best_of": 2, "num_winners": 1, "best_of_steps": 2, "retrain_steps": 2}
    results = SearchRun(config_lib.resolve("tiny", flags), str(model_dir), verbose=False).retrain()
    ranked = rank_candidates(_read_jsonl(model_dir / "candidates.jsonl"), "top")
    briefs = [io_utils.read_json(str(model_dir / "best_of" / r["id"] / "brief.json")) for r in ranked[:2]]
    assert [b["id"] for b in briefs] == [r["id"] for r in ranked[:2]]
    assert all(b["train_steps"] == 2 and 0.0 <= b["validation_accuracy"] <= 1.0 for b in briefs)
    best = max(range(2), key=lambda i: (briefs[i]["validation_accuracy"], -i))
    metrics = io_utils.read_json(str(model_dir / "winners" / "1" / "metrics.json"))
    assert results[0]["id"] == metrics["id"] == briefs[best]["id"]
    assert metrics["brief_validation_accuracy"] == briefs[best]["validation_accuracy"]

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(retrain_lib, "train", no_training)
    run = SearchRun(config_lib.resolve("tiny", flags), str(model_dir), verbose=False)
    again = run.retrain()
    assert again == results
    assert run.summary(again).splitlines()[0] == (
        f"1 winner(s) retrained and exported (top ranking of {TINY['num_candidates']} scored candidates, "
        "the best of its first 2 after brief training):")
