"""The ranking-fidelity study: how well each method's score predicts
stand-alone accuracy, against trivial and training-free baselines, with the
noise ceiling of the ground truth itself.

One study directory::

    study.json                  the resolved study settings, every method's resolved flags, data, versions
    candidates.jsonl            the N sampled candidates (id, index, architecture, parameters, FLOPs)
    proxies/<method>-<hash>/    each method's trained proxy (a search directory; <hash> of its identity flags)
    scores/<method>-<hash>.jsonl  its scores of the N candidates (resumable)
    truth/<hash>.json           cached stand-alone results: one per (candidate, seed, budget, training
                                settings, data), ground truth, SGD-for-k-steps baselines and zero-cost scores
    fidelity.csv, fidelity.md   the table (one row per method, baseline and the seed ceiling; rows
                                METHOD-<hash> for the scores earlier runs left under other settings)
    fidelity_candidates.csv     the M ground-truth candidates: every score and every seed's accuracy
    fidelity.png, kl.png        score against stand-alone accuracy per row; KL against proxy accuracy
    tb/                         TensorBoard: the plots, the table as text, correlations as scalars

The same N candidates (``space.sample_unique(N, seed)``, a prefix-stable
sequence: a grown N keeps the first ones) are scored by every method; M of
them, a stratified sample over the stratifying method's score ranking (M
equal strata of the ranking, one candidate drawn from each, so the top is
represented), are trained stand-alone for E epochs with S seeds: the ground
truth.  Every baseline is computed on those M.  Methods must search the same
space; a method added later joins by being registered.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import logging

from oneshot_tf import config as config_lib
from oneshot_tf import io_utils
from oneshot_tf import registry
from oneshot_tf.config import setting
from oneshot_tf.fidelity import stats
from oneshot_tf.fidelity.ground_truth import CandidateTrainer, ResultCache, TruthTraining, cache_key
from oneshot_tf.retrain import build_seeded
from oneshot_tf.search_space import StandaloneOptions, canonical_json

#: The baselines a study can compute (``--baselines``).
BASELINES = ("params", "flops", "synflow", "naswot", "sgd")
TRUTH_METRICS = ("test", "validation")
#: Generic settings every method of one study must share (the data).
DATA_FIELDS = ("dataset", "data_dir", "image_size", "validation_size", "max_train_examples", "seed")


@dataclasses.dataclass
class StudySettings:
    """The study's own settings (flags of ``experiments.correlate``)."""

    methods: str = setting("", "Comma-separated registered methods to compare (empty: the default method); "
                               "they must search the same space.")
    num_truth: int = setting(20, "M: candidates trained stand-alone for the ground truth, a stratified sample "
                                 "over the --stratify_by method's score ranking (M equal strata, one from each).",
                             low=4)
    truth_epochs: float = setting(8.0, "E: epochs of each ground-truth run (SGD, Nesterov momentum 0.9, cosine "
                                       "decay to zero).", low=0.0, low_open=True)
    truth_seeds: int = setting(2, "S: seeds per ground-truth candidate (the ground truth is their mean; two or "
                                  "more measure the ceiling).", low=1)
    truth_batch_size: int = setting(64, "Batch size of ground-truth and SGD-baseline runs.", low=1)
    truth_learning_rate: float = setting(0.1, "Initial learning rate of ground-truth and SGD-baseline runs.",
                                         low=0.0, low_open=True)
    truth_weight_decay: float = setting(1e-4, "L2 coefficient of ground-truth and SGD-baseline runs.", low=0.0)
    truth_bn_momentum: float = setting(0.9, "BN momentum while training those runs (their statistics are "
                                            "recomputed after training, see --truth_bn_examples).", low=0.0,
                                       high=1.0, high_open=True)
    truth_bn_examples: int = setting(1024, "Training images (a fixed draw) on which every BN layer's statistics "
                                           "are recomputed after a stand-alone run, with its final weights (0: "
                                           "keep the moving averages).", low=0)
    truth_metric: str = setting("test", "The ground truth: stand-alone accuracy on the test split, or on the "
                                        "validation split (the one proxies score on).", choices=TRUTH_METRICS)
    baselines: str = setting(",".join(BASELINES), "Comma-separated baselines: params, flops, synflow, naswot "
                                                  "(zero-cost, at initialization), sgd (--sgd_steps).")
    sgd_steps: str = setting("10,50", "Comma-separated k: the sgd baseline trains each candidate k steps "
                                      "(cosine to zero over k) and scores its validation accuracy.")
    stratify_by: str = setting("", "The method whose score ranking the ground-truth sample is stratified over "
                                   "(empty: the first method that scored), or params (the parameter count's: "
                                   "the same ground truth whatever methods or settings a study run scores).")
    zero_cost_batch: int = setting(64, "Training images (a seeded draw) for the NASWOT score.", low=2)
    top_k: int = setting(5, "k of precision at top-k.", low=1)
    bootstrap: int = setting(1000, "Bootstrap resamples of the 95% confidence intervals (0: none).", low=0)
    truth_workers: int = setting(1, "Stand-alone runs trained at once (threads; 2 is faster on 2 cores).",
                                 low=1)
    reuse: str = setting("", "METHOD=DIR[,...]: score with the trained proxy of a search directory "
                             "(experiments.train/run) instead of training one; its data and space must match.")
    earlier: bool = setting(True, "Also rank, on this run's ground truth, the scores that earlier runs of this "
                                  "study directory left under other method settings (rows METHOD-<hash>, with "
                                  "the settings that differ listed under the table), so ablations run one after "
                                  "another share one table; --noearlier shows this run's methods only.")


STUDY_PRESETS = {
    # The embedded digits at 8x8 (their native size), on 2 CPU cores within 15 minutes.
    "quick": dict(image_size=8, validation_size=320, num_candidates=200, num_truth=20, truth_epochs=8.0,
                  truth_seeds=2, sgd_steps="10,50", truth_workers=2),
    # For tests: seconds.
    "tiny": dict(num_candidates=8, num_truth=4, truth_epochs=0.25, truth_seeds=2, truth_batch_size=32,
                 sgd_steps="2", zero_cost_batch=16, top_k=2, bootstrap=50),
    # The papers' CIFAR-10 studies: 1,000 candidates, 100 trained (GHN's Random-100) for 28 epochs (the
    # one-shot paper's abbreviated stand-alone training) with 2 seeds; GHN's SGD baselines.
    "paper": dict(num_candidates=1000, num_truth=100, truth_epochs=28.0, truth_seeds=2, truth_batch_size=64,
                  sgd_steps="10,100,200,1000", top_k=10),
}


def method_names(text: str) -> List[str]:
    """The methods of ``--methods`` (registered, distinct; empty: the default)."""
    names = [n.strip() for n in str(text).split(",") if n.strip()] or [registry.get("").name]
    for n in names:
        if n not in registry.names():
            raise ValueError(f"--methods={text!r}: unknown method {n!r}; available: {', '.join(registry.names())}")
    if len(set(names)) != len(names):
        raise ValueError(f"--methods={text!r} names a method twice")
    return names


def parse_steps(text: str) -> Tuple[int, ...]:
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--sgd_steps={text!r} is not a comma-separated list of step counts") from None
    if any(v < 1 for v in values) or list(values) != sorted(set(values)):
        raise ValueError(f"--sgd_steps={text!r} must be increasing positive step counts, e.g. 10,50")
    return values


def parse_baselines(text: str) -> Tuple[str, ...]:
    values = tuple(v.strip() for v in str(text).split(",") if v.strip())
    unknown = [v for v in values if v not in BASELINES]
    if unknown:
        raise ValueError(f"--baselines: unknown {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    return values


def parse_reuse(text: str, methods: Sequence[str]) -> Dict[str, str]:
    out = {}
    for item in (v.strip() for v in str(text).split(",") if v.strip()):
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--reuse={text!r}: each item is METHOD=DIR")
        if name not in methods:
            raise ValueError(f"--reuse names method {name!r}, which is not in --methods ({', '.join(methods)})")
        out[name] = path
    return out


def resolve(preset: str, overrides: Dict[str, Any]) -> Tuple[StudySettings, List[config_lib.RunConfig]]:
    """The study's settings and each method's resolved run config: the
    method's defaults and preset, the study's preset, then ``overrides``
    (flat: study, generic and method settings by name; a method's setting
    applies to every method that declares it)."""
    if preset not in STUDY_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(STUDY_PRESETS)}")
    values = {**STUDY_PRESETS[preset], **overrides}
    own = {f.name for f in config_lib.fields(StudySettings)}
    study = StudySettings(**{k: v for k, v in values.items() if k in own})
    config_lib.check_fields(study)
    names = method_names(study.methods)
    rest = {k: v for k, v in values.items() if k not in own}
    generic = {f.name for f in config_lib.fields(config_lib.RunConfig)} - {"method", "preset"}
    known, cfgs = set(generic), []
    for name in names:
        settings = {f.name for f in config_lib.fields(registry.get(name).settings)}
        known |= settings
        cfgs.append(config_lib.validate(config_lib.resolve(
            preset, {k: v for k, v in rest.items() if k in generic | settings}, method=name)))
    unknown = sorted(set(rest) - known)
    if unknown:
        raise ValueError(f"unknown settings {unknown} for a study of {', '.join(names)}")
    for f in DATA_FIELDS:
        seen = {c.method: getattr(c, f) for c in cfgs}
        if len(set(map(repr, seen.values()))) > 1:
            raise ValueError(f"the methods' presets disagree on --{f} ({seen}); pass --{f} explicitly")
    return study, cfgs


def _short_hash(obj) -> str:
    return cache_key(obj)[:8]


def stratified_sample(scores: Sequence[float], m: int, seed: int,
                      ids: Optional[Sequence[str]] = None) -> List[int]:
    """Indices of ``m`` of the ``n`` items: the ranking by score (best
    first; ties by ``ids``, else by index) cut into ``m`` strata of
    ``n // m`` or ``n // m + 1`` consecutive ranks, one item drawn uniformly
    from each (``numpy.random.default_rng([seed, 12])``), best stratum first."""
    n = len(scores)
    if not 1 <= m <= n:
        raise ValueError(f"cannot draw a stratified sample of {m} from {n} candidates")
    keys = list(ids) if ids is not None else list(range(n))
    order = sorted(range(n), key=lambda i: (-float(scores[i]), keys[i]))
    rng = np.random.default_rng([int(seed), 12])
    return [order[int(rng.integers(j * n // m, (j + 1) * n // m))] for j in range(m)]


@dataclasses.dataclass
class Row:
    """One row of the table: a score (a method's, a baseline's) on the M
    ground-truth candidates, or the ceiling."""

    name: str
    kind: str                       # method | member | earlier | baseline | ceiling
    scores: Optional[np.ndarray] = None  # [M], higher is better
    train_seconds: Optional[float] = None
    seconds_per_candidate: Optional[float] = None
    error: str = ""
    stats: Dict[str, Any] = dataclasses.field(default_factory=dict)
    all_scores: Optional[np.ndarray] = None  # a method's: [N], every candidate
    all_kl: Optional[np.ndarray] = None      # a method's symmetrized KL, [N], if it has one
    all_members: Optional[List[np.ndarray]] = None  # --proxy_ensemble=K > 1: each member proxy's scores, K x [N]
    settings: Optional[Dict[str, Any]] = None  # a method's identity flags (the settings legend)
    method: str = ""                 # a method's or an earlier row's: the method


class FidelityStudy:
    """A study directory (see the module docstring); ``run()`` does it all,
    resuming whatever a previous run left."""

    def __init__(self, study: StudySettings, cfgs: Sequence[config_lib.RunConfig], model_dir: str, *,
                 strategy=None, verbose: bool = True):
        import tensorflow as tf
        from oneshot_tf import pipeline
        if not cfgs:
            raise ValueError("a study needs at least one method")
        pipeline.check_model_dir(model_dir)
        if tf.io.gfile.exists(pipeline.config_path(model_dir)) and not tf.io.gfile.exists(
                pipeline.study_path(model_dir)):
            raise ValueError(f"--model_dir={model_dir} holds a search (config.json), not a fidelity study; give "
                             f"the study its own directory")
        self.study, self.cfgs, self.model_dir = study, list(cfgs), model_dir
        self.strategy, self.verbose = strategy, verbose
        self.methods = [c.method for c in cfgs]
        self.sgd_steps = parse_steps(study.sgd_steps)
        self.baselines = parse_baselines(study.baselines)
        if "sgd" in self.baselines and not self.sgd_steps:
            raise ValueError("--baselines includes sgd but --sgd_steps is empty")
        self.reuse = parse_reuse(study.reuse, self.methods)
        self._reused_flags = {}  # method -> the reused directory's resolved flags, read before anything trains
        for name, directory in self.reuse.items():
            path = pipeline.config_path(directory)
            if not tf.io.gfile.exists(path):
                raise ValueError(f"--reuse={name}={directory}: no config.json there; name a model directory that "
                                 f"experiments.run or experiments.train wrote")
            flags = io_utils.read_json(path).get("flags", {})
            if flags.get("method") != name:
                raise ValueError(f"--reuse={name}={directory}: that directory holds a {flags.get('method')} search, "
                                 f"not {name}")
            self._reused_flags[name] = flags
        if study.stratify_by and study.stratify_by not in self.methods + ["params"]:
            raise ValueError(f"--stratify_by={study.stratify_by!r} is neither params nor in --methods "
                             f"({', '.join(self.methods)})")
        first = self.cfgs[0]
        if study.num_truth > first.num_candidates:
            raise ValueError(f"--num_truth={study.num_truth} exceeds --num_candidates={first.num_candidates}")
        if study.top_k > study.num_truth:
            raise ValueError(f"--top_k={study.top_k} exceeds --num_truth={study.num_truth}")
        self.dataset = pipeline.load_data(first)
        self.spaces = {}
        for cfg in self.cfgs:
            method = registry.get(cfg.method)
            space, proxy = method.build(cfg, self.dataset)
            replicas = strategy.num_replicas_in_sync if strategy is not None else 1
            proxy.validate_batch(cfg.batch_size, replicas)
            self.spaces[cfg.method] = space
        self.space = self.spaces[self.methods[0]]
        for name, space in self.spaces.items():
            if type(space) is not type(self.space) or space.get_config() != self.space.get_config():
                a, b = self.space.get_config(), space.get_config()
                if type(space) is type(self.space):  # the settings that differ, not two whole configs
                    a, b = ({k: c.get(k) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)} for c in (a, b))
                else:
                    a, b = type(self.space).__name__, type(space).__name__
                raise ValueError(f"methods {self.methods[0]} and {name} search different spaces ({a} and {b}); "
                                 f"a study compares methods on one space (a method with a --space setting can "
                                 f"be set to search another's)")
        self.training = TruthTraining(batch_size=study.truth_batch_size, learning_rate=study.truth_learning_rate,
                                      weight_decay=study.truth_weight_decay, bn_momentum=study.truth_bn_momentum,
                                      bn_examples=study.truth_bn_examples, augment=first.augment)
        self.truth_steps = max(1, int(math.ceil(study.truth_epochs * len(self.dataset.x_train)
                                                / study.truth_batch_size)))
        if study.truth_batch_size > len(self.dataset.x_train):
            raise ValueError(f"--truth_batch_size={study.truth_batch_size} exceeds the "
                             f"{len(self.dataset.x_train)} training examples")
        self.cache = ResultCache(io_utils.join(model_dir, "truth"))
        self._write_config()

    # -- layout ---------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return io_utils.join(self.model_dir, *parts)

    def method_tag(self, cfg) -> str:
        return f"{cfg.method}-{_short_hash(cfg.identity())}"

    def _data_key(self) -> Dict[str, Any]:
        return {**self.dataset.summary(), **{f: getattr(self.cfgs[0], f) for f in DATA_FIELDS if f != "data_dir"}}

    def _write_config(self):
        import keras
        import tensorflow as tf
        from oneshot_tf import pipeline
        io_utils.write_json(pipeline.study_path(self.model_dir), {
            "study": dataclasses.asdict(self.study),
            "methods": {c.method: {"flags": c.to_dict(), "directory": self._proxy_dir(c)} for c in self.cfgs},
            "search_space": self.space.get_config(), "search_space_size": self.space.size(),
            "data": self.dataset.summary(), "truth_steps": self.truth_steps,
            "truth_training": self.training.key(self.truth_steps),
            "seeds": {"candidates": self.cfgs[0].seed, "truth": self.truth_seeds(), "sgd": self.sgd_seed(),
                      "zero_cost": self.zero_cost_seed()},
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        })

    def _proxy_dir(self, cfg) -> str:
        return self.reuse.get(cfg.method) or self.path("proxies", self.method_tag(cfg))

    # -- seeds ----------------------------------------------------------------
    def truth_seeds(self) -> List[int]:
        return [1000 * self.cfgs[0].seed + 1 + j for j in range(self.study.truth_seeds)]

    def sgd_seed(self) -> int:
        """The SGD baselines' seed, none of the ground truth's (a baseline
        sharing the ground truth's initialization would share its noise)."""
        return 1000 * self.cfgs[0].seed + 999

    def zero_cost_seed(self) -> int:
        return 1000 * self.cfgs[0].seed + 998

    # -- candidates -----------------------------------------------------------
    def candidates(self) -> List[Dict[str, Any]]:
        """The N candidates, written to candidates.jsonl."""
        c = self.cfgs[0]
        shape, classes = self.dataset.image_shape, self.dataset.num_classes
        out = []
        for index, arch in enumerate(self.space.sample_unique(c.num_candidates, seed=c.seed)):
            t0 = time.perf_counter()
            params = self.space.count_params(arch, input_shape=shape, num_classes=classes)
            t1 = time.perf_counter()
            flops = self.space.count_flops(arch, input_shape=shape, num_classes=classes)
            t2 = time.perf_counter()
            out.append({"id": self.space.arch_id(arch), "index": index, "architecture": self.space.to_json(arch),
                        "params": int(params), "flops": int(flops), "_arch": arch,
                        "_seconds": {"params": t1 - t0, "flops": t2 - t1}})
        text = "".join(canonical_json({k: v for k, v in r.items() if not k.startswith("_")}) + "\n" for r in out)
        io_utils.atomic_write_text(self.path("candidates.jsonl"), text)
        return out

    # -- methods --------------------------------------------------------------
    def score_method(self, cfg, candidates) -> Row:
        """Train (or reuse) ``cfg``'s proxy and score every candidate; a
        failure is the row's ``error``, not the study's end."""
        from oneshot_tf.training import TrainingPreempted
        try:
            return self._score_method(cfg, candidates)
        except TrainingPreempted:
            raise  # resumable: the study stops and is run again
        except Exception as e:  # reported in the table (KeyboardInterrupt and SystemExit pass)
            logging.exception("method %s failed", cfg.method)
            return Row(cfg.method, "method", error=f"{type(e).__name__}: {e}")

    def _score_method(self, cfg, candidates) -> Row:
        import tensorflow as tf
        from oneshot_tf import pipeline
        from oneshot_tf.scoring import CandidateStore, member_score_key
        directory = self._proxy_dir(cfg)
        if cfg.method in self.reuse:
            cfg = config_lib.RunConfig.from_dict(self._reused_flags[cfg.method])
        run = pipeline.SearchRun(cfg, directory, strategy=self.strategy, verbose=self.verbose)
        if run.dataset.summary() != self.dataset.summary() or run.space.get_config() != self.space.get_config():
            raise ValueError(f"{directory} holds a search on other data or another space than this study's")
        cost_path = io_utils.join(directory, "study_cost.json")
        cost = io_utils.read_json(cost_path) if tf.io.gfile.exists(cost_path) else {"train_seconds": None}
        if not run.proxy_trained():
            if cfg.method in self.reuse:  # the study never trains in a search's directory
                raise pipeline.ProxyNotTrainedError(f"--reuse={cfg.method}={directory}: its proxy is not fully "
                                                    f"trained; finish it with experiments.train on that --model_dir")
            logging.info("training the %s proxy in %s", cfg.method, directory)
            t0 = time.time()
            run.train_proxy()
            cost["train_seconds"] = (cost["train_seconds"] or 0.0) + time.time() - t0
            io_utils.write_json(cost_path, cost)
        proxy = run.restore_proxy()
        scorer = run.make_scorer()
        tag = self.method_tag(cfg) if cfg.method not in self.reuse else f"{cfg.method}-reused-{_short_hash(directory)}"
        tf.io.gfile.makedirs(self.path("scores"))
        store = CandidateStore(self.path("scores", tag + ".jsonl"))
        todo = [r for r in candidates if r["id"] not in store.ids]
        k = cfg.candidates_per_pass
        import keras
        bar = keras.utils.Progbar(len(todo), verbose=1 if self.verbose and todo else 0, unit_name="candidate")
        for s in range(0, len(todo), k):
            chunk = todo[s:s + k]
            t0 = time.time()
            scores = scorer.score_encodings([proxy.encode(r["_arch"]) for r in chunk])
            dt = (time.time() - t0) / len(chunk)
            store.append([{"id": r["id"], "index": r["index"], **sc, "seconds": dt} for r, sc in zip(chunk, scores)])
            bar.add(len(chunk))
        by_id = {r["id"]: r for r in store.records}
        row = Row(cfg.method, "method", train_seconds=cost["train_seconds"],
                  seconds_per_candidate=float(np.mean([by_id[r["id"]]["seconds"] for r in candidates])),
                  settings=cfg.identity(), method=cfg.method)
        row.all_scores = np.array([by_id[r["id"]]["score"] for r in candidates], np.float64)
        if all("kl" in by_id[r["id"]] for r in candidates):
            row.all_kl = np.array([by_id[r["id"]]["kl"] for r in candidates], np.float64)
        members = [member_score_key(j) for j in range(cfg.proxy_ensemble)] if cfg.proxy_ensemble > 1 else []
        if members and all(m in by_id[r["id"]] for r in candidates for m in members):
            row.all_members = [np.array([by_id[r["id"]][m] for r in candidates], np.float64) for m in members]
        return row

    def earlier_rows(self, candidates, current: Sequence[str]) -> List[Row]:
        """A row per score file an earlier run of this directory left under
        other method settings (``scores/<tag>.jsonl``, ``tag`` not in
        ``current``), with its proxy's identity flags, when it scored every
        one of this run's candidates on this run's data and space; files that
        do not qualify are logged and left out."""
        import tensorflow as tf
        from oneshot_tf import pipeline
        from oneshot_tf.scoring import CandidateStore
        rows = []
        for path in sorted(tf.io.gfile.glob(self.path("scores", "*.jsonl"))):
            tag = path.rsplit("/", 1)[-1][: -len(".jsonl")]
            if tag in current:
                continue
            config_path = pipeline.config_path(self.path("proxies", tag))
            if not tf.io.gfile.exists(config_path):
                logging.info("earlier scores %s: no proxies/%s/config.json (a reused proxy): left out", tag, tag)
                continue
            stored = io_utils.read_json(config_path)
            if stored.get("data") != self.dataset.summary() or stored.get("search_space") != self.space.get_config():
                logging.info("earlier scores %s: other data or another space: left out", tag)
                continue
            by_id = {r["id"]: r for r in CandidateStore(path).records}
            missing = sum(c["id"] not in by_id for c in candidates)
            if missing:
                logging.info("earlier scores %s: %d of this run's %d candidates unscored: left out", tag, missing,
                             len(candidates))
                continue
            cost_path = self.path("proxies", tag, "study_cost.json")
            cost = io_utils.read_json(cost_path) if tf.io.gfile.exists(cost_path) else {}
            row = Row(tag, "earlier", train_seconds=cost.get("train_seconds"),
                      seconds_per_candidate=float(np.mean([by_id[c["id"]].get("seconds", np.nan)
                                                           for c in candidates])),
                      settings=stored.get("identity", {}).get("flags", {}),
                      method=stored.get("method", tag.split("-", 1)[0]))
            row.all_scores = np.array([by_id[c["id"]]["score"] for c in candidates], np.float64)
            rows.append(row)
        return rows

    # -- stand-alone jobs -----------------------------------------------------
    def _job(self, cand, steps: int, seed: int) -> Dict[str, Any]:
        return {"kind": "train", "arch": cand["id"], "space": self.space.get_config(), "data": self._data_key(),
                "seed": int(seed), "training": self.training.key(steps)}

    def run_jobs(self, jobs: Sequence[Tuple[Dict[str, Any], Dict[str, Any], int, int]]):
        """Train every ``(job, candidate, steps, seed)`` not cached yet;
        returns ``{cache key: result or exception}`` for every job.  The runs
        of one candidate go to one ``CandidateTrainer`` in one thread (one
        set of traces); ``--truth_workers`` candidates train at once."""
        import keras
        results, groups = {}, {}
        for job, cand, steps, seed in jobs:
            hit = self.cache.get(job)
            if hit is None:
                groups.setdefault(cand["id"], []).append((job, cand, steps, seed))
            else:
                results[cache_key(job)] = hit
        todo = sum(len(g) for g in groups.values())
        if not todo:
            return results
        logging.info("%d stand-alone runs of %d candidates to train (%d cached)", todo, len(groups),
                     len(jobs) - todo)

        def work(group):
            trainer = CandidateTrainer(self.space, group[0][1]["_arch"], self.dataset, self.training)
            out = {}
            for job, cand, steps, seed in group:
                key = cache_key(job)
                work_dir = self.path("truth", "work", key)
                try:
                    result = trainer.run(steps=steps, seed=seed, work_dir=work_dir,
                                         checkpoint_every=self.cfgs[0].checkpoint_every)
                except Exception as e:  # reported by the row (or the ground truth) it belongs to
                    logging.exception("stand-alone run of candidate %s (seed %d, %d steps) failed",
                                      cand["id"], seed, steps)
                    out[key] = e
                    continue
                self.cache.put(job, result)
                io_utils.remove(work_dir)
                out[key] = result
            return out

        bar = keras.utils.Progbar(todo, verbose=1 if self.verbose else 0, unit_name="run")
        with concurrent.futures.ThreadPoolExecutor(self.study.truth_workers) as pool:
            futures = {pool.submit(work, group): len(group) for group in groups.values()}
            for future in concurrent.futures.as_completed(futures):
                results.update(future.result())
                bar.add(futures[future])
        return results

    def truth_jobs(self, truth_cands):
        return [(self._job(c, self.truth_steps, s), c, self.truth_steps, s)
                for c in truth_cands for s in self.truth_seeds()]

    def sgd_jobs(self, truth_cands):
        if "sgd" not in self.baselines:
            return []
        seed = self.sgd_seed()
        return [(self._job(c, k, seed), c, k, seed) for k in self.sgd_steps for c in truth_cands]

    def ground_truth(self, truth_cands, results) -> np.ndarray:
        """``[M, S]`` accuracies (``--truth_metric``) of the M candidates."""
        jobs = self.truth_jobs(truth_cands)
        failed = [(job["arch"], job["seed"], results[cache_key(job)]) for job, *_ in jobs
                  if isinstance(results[cache_key(job)], Exception)]
        if failed:
            arch, seed, err = failed[0]
            raise RuntimeError(f"{len(failed)} ground-truth run(s) failed, the first (candidate {arch}, seed "
                               f"{seed}): {type(err).__name__}: {err}; the others are cached, lower "
                               f"--truth_learning_rate and run again")
        metric = f"{self.study.truth_metric}_accuracy"
        s = self.study.truth_seeds
        self._truth_seconds = float(np.mean([results[cache_key(j)]["seconds"] for j, *_ in jobs])) * s
        return np.array([results[cache_key(j)][metric] for j, *_ in jobs], np.float64).reshape(-1, s)

    def sgd_rows(self, truth_cands, results) -> List[Row]:
        jobs = self.sgd_jobs(truth_cands)
        rows = []
        m = len(truth_cands)
        for i, k in enumerate(self.sgd_steps if jobs else ()):
            mine = [results[cache_key(j)] for j, *_ in jobs[i * m:(i + 1) * m]]
            errors = [r for r in mine if isinstance(r, Exception)]
            if errors:
                rows.append(Row(f"sgd_{k}", "baseline", error=f"{type(errors[0]).__name__}: {errors[0]}"))
                continue
            rows.append(Row(f"sgd_{k}", "baseline", scores=np.array([r["validation_accuracy"] for r in mine]),
                            seconds_per_candidate=float(np.mean([r["seconds"] for r in mine]))))
        return rows

    def zero_cost_rows(self, truth_cands) -> List[Row]:
        """synflow and NASWOT on each candidate's stand-alone model at its
        initialization (seeded); cached like the runs."""
        from oneshot_tf.fidelity import zero_cost
        wanted = [b for b in ("synflow", "naswot") if b in self.baselines]
        if not wanted:
            return []
        n = min(self.study.zero_cost_batch, len(self.dataset.x_train))
        pick = np.random.default_rng([self.zero_cost_seed(), 13]).choice(len(self.dataset.x_train), n, replace=False)
        images = self.dataset.x_train[np.sort(pick)]
        mean, std = self.dataset.channel_stats()
        options = StandaloneOptions(mean=mean, std=std)
        values = {b: [] for b in wanted}
        seconds = {b: [] for b in wanted}
        errors = {}
        for cand in truth_cands:
            job = {"kind": "zero_cost", "arch": cand["id"], "space": self.space.get_config(),
                   "data": self._data_key(), "seed": self.zero_cost_seed(), "naswot_batch": int(n)}
            hit = self.cache.get(job) or {}
            missing = [b for b in wanted if b not in hit]
            if missing:
                model = build_seeded(self.space, cand["_arch"], self.zero_cost_seed(),
                                     input_shape=self.dataset.image_shape, num_classes=self.dataset.num_classes,
                                     options=options)
                for b in missing:
                    t0 = time.time()
                    try:
                        value = zero_cost.synflow(model) if b == "synflow" else zero_cost.naswot(model, images)
                    except Exception as e:
                        errors.setdefault(b, f"{type(e).__name__}: {e}")
                        continue
                    hit[b] = float(value)
                    hit[b + "_seconds"] = time.time() - t0
                self.cache.put(job, hit)
            for b in wanted:
                if b in hit:
                    values[b].append(hit[b])
                    seconds[b].append(hit[b + "_seconds"])
        rows = []
        for b in wanted:
            if b in errors:
                rows.append(Row(b, "baseline", error=errors[b]))
                continue
            v = np.array(values[b], np.float64)
            if b == "synflow":  # a sum over weights that spans orders of magnitude: ranked by its log
                v = np.log10(np.maximum(v, np.finfo(np.float64).tiny))
            rows.append(Row(b, "baseline", scores=v, seconds_per_candidate=float(np.mean(seconds[b]))))
        return rows

    # -- the study ------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        t_start = time.time()
        candidates = self.candidates()
        method_rows = [self.score_method(cfg, candidates) for cfg in self.cfgs]
        scored = {r.name: r for r in method_rows if not r.error}
        order = ([self.study.stratify_by] if self.study.stratify_by else []) + self.methods
        by = next((m for m in order if m in scored or m == "params"), None)
        m = self.study.num_truth
        if by is None:
            logging.warning("no method scored; the ground truth is the first %d candidates (a random sample)", m)
            picks = list(range(m))
        else:
            ranked = (np.array([c["params"] for c in candidates], np.float64) if by == "params"
                      else scored[by].all_scores)
            picks = stratified_sample(ranked, m, self.cfgs[0].seed, [c["id"] for c in candidates])
        truth_cands = [candidates[i] for i in picks]
        results = self.run_jobs(self.truth_jobs(truth_cands) + self.sgd_jobs(truth_cands))
        truth = self.ground_truth(truth_cands, results)
        rows, member_rows = [], {}
        for r in method_rows:
            if not r.error:
                r.scores = r.all_scores[picks]
            rows.append(r)
            if r.all_kl is not None:
                rows.append(Row(f"{r.name}_kl", "method", scores=-r.all_kl[picks], train_seconds=r.train_seconds,
                                seconds_per_candidate=r.seconds_per_candidate))
            # an ensemble's members one by one: how much a proxy's ranking moves with its training seed
            if r.all_members:
                member_rows[r.name] = [Row(f"{r.name}_member_{j}", "member", scores=member[picks])
                                       for j, member in enumerate(r.all_members)]
                rows += member_rows[r.name]
        earlier = self.earlier_rows(candidates, [self.method_tag(c) for c in self.cfgs]) \
            if self.study.earlier else []
        for r in earlier:
            r.scores = r.all_scores[picks]
        rows += earlier
        for b in ("params", "flops"):
            if b in self.baselines:
                rows.append(Row(b, "baseline", scores=np.array([c[b] for c in truth_cands], np.float64),
                                seconds_per_candidate=float(np.mean([c["_seconds"][b] for c in truth_cands]))))
        rows += self.zero_cost_rows(truth_cands)
        rows += self.sgd_rows(truth_cands, results)
        y = truth.mean(axis=1)
        for r in rows:
            if not r.error:
                r.stats = row_stats(r.scores, y, top_k=self.study.top_k, bootstrap=self.study.bootstrap,
                                    seed=self.cfgs[0].seed)
        params = next((r for r in rows if r.name == "params" and not r.error), None)
        for r in rows:
            if params is not None and r is not params and not r.error and r.stats.get("n", 0) >= 4:
                d, lo, hi = paired_difference(r.scores, params.scores, y, bootstrap=self.study.bootstrap,
                                              seed=self.cfgs[0].seed)
                r.stats.update(vs_params=d, vs_params_lo=lo, vs_params_hi=hi)
                g, lo, hi = given_params(r.scores, params.scores, y, bootstrap=self.study.bootstrap,
                                         seed=self.cfgs[0].seed)
                r.stats.update(given_params=g, given_params_lo=lo, given_params_hi=hi)
        pairs = method_pairs(rows, y, bootstrap=self.study.bootstrap, seed=self.cfgs[0].seed)
        ceiling = Row("ceiling (seed vs seed)", "ceiling", seconds_per_candidate=self._truth_seconds)
        ceiling.stats = ceiling_stats(truth, bootstrap=self.study.bootstrap, seed=self.cfgs[0].seed)
        rows.append(ceiling)
        kl = {r.name: kl_analysis(r.all_scores, r.all_kl) for r in method_rows if r.all_kl is not None}
        members = {name: [m.stats["spearman"] for m in rs] for name, rs in member_rows.items()}
        settings = settings_legend([r for r in method_rows if not r.error], earlier)
        summary = {
            "candidates": len(candidates), "truth_candidates": m, "seeds": self.study.truth_seeds,
            "truth_steps": self.truth_steps, "truth_metric": self.study.truth_metric, "stratified_by": by,
            "best": float(y.max()), "median": float(np.median(y)), "kl": kl, "members": members,
            "settings": settings, "pairs": pairs,
            "seconds": round(time.time() - t_start, 1),
        }
        from oneshot_tf.fidelity import report
        report.write(self, rows, truth, truth_cands, picks, method_rows, summary)
        return {"rows": rows, "truth": truth, "summary": summary, "truth_candidates": truth_cands}


def settings_legend(current: Sequence[Row], earlier: Sequence[Row]) -> Dict[str, Dict[str, Any]]:
    """For every row of a method that has earlier rows, ``{row name:
    {flag: value}}`` of the identity flags whose values differ among that
    method's rows (this run's and the earlier ones); ``{}`` without earlier
    rows."""
    out: Dict[str, Dict[str, Any]] = {}
    for method in sorted({r.method for r in earlier}):
        group = [r for r in current if r.method == method] + [r for r in earlier if r.method == method]
        keys = sorted({k for r in group for k in r.settings})
        differ = [k for k in keys if len({canonical_json(r.settings.get(k)) for r in group}) > 1]
        for r in group:
            out[r.name] = {k: r.settings.get(k) for k in differ}
    return out


def row_stats(scores, truth, *, top_k: int, bootstrap: int, seed: int) -> Dict[str, Any]:
    """A row's numbers: correlations on all ground-truth candidates (with
    bootstrap 95% intervals) and on the top half by ground truth, precision
    at top-k and the ground truth of its top-1 pick.  Candidates whose score
    is not finite are left out (``n`` says how many count)."""
    s, y = np.asarray(scores, np.float64), np.asarray(truth, np.float64)
    keep = np.isfinite(s)
    s, y = s[keep], y[keep]
    out: Dict[str, Any] = {"n": int(len(s))}
    if len(s) < 4:
        out["note"] = f"only {len(s)} finite scores"
        return out
    out.update(stats.correlations(s, y))
    for name, fn in (("pearson", stats.pearson), ("spearman", stats.spearman), ("kendall", stats.kendall)):
        lo, hi = stats.bootstrap_ci(fn, s, y, num_samples=bootstrap, seed=seed) if bootstrap else (math.nan,) * 2
        out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi
    top = stats.top_half(y)
    for name, value in stats.correlations(s[top], y[top]).items():
        out[f"top_half_{name}"] = value
    out["precision_at_k"] = stats.precision_at_k(s, y, min(top_k, len(s)))
    out["top_k"] = min(top_k, len(s))
    out["top1_accuracy"] = stats.top1_truth(s, y)
    return out


def paired_difference(a, b, truth, *, bootstrap: int, seed: int) -> Tuple[float, float, float]:
    """Spearman(a, truth) - Spearman(b, truth) on the candidates where both
    scores are finite, with its paired bootstrap 95% interval (the same
    resampled candidates for both; NaN without resamples): does score ``a``
    rank better than ``b``, beyond the noise of the sample?"""
    return _paired_statistic(lambda a, b, y: stats.spearman(a, y) - stats.spearman(b, y), a, b, truth,
                             bootstrap=bootstrap, seed=seed)


def method_pairs(rows: Sequence[Row], truth, *, bootstrap: int, seed: int) -> List[Dict[str, Any]]:
    """Every pair of proxy rows (this run's methods and their KL rows, and
    earlier settings' rows; not ensemble members or baselines), in table
    order: ``{"a", "b", "difference", "lo", "hi"}``, the Spearman of ``a``
    minus that of ``b`` with its paired bootstrap 95% interval, so "method A
    ranks better than method B" is measured on the same candidates, not read
    off two overlapping intervals."""
    proxies = [r for r in rows if r.kind in ("method", "earlier") and not r.error and r.stats.get("n", 0) >= 4]
    out = []
    for i, a in enumerate(proxies):
        for b in proxies[i + 1:]:
            d, lo, hi = paired_difference(a.scores, b.scores, truth, bootstrap=bootstrap, seed=seed)
            out.append({"a": a.name, "b": b.name, "difference": d, "lo": lo, "hi": hi})
    return out


def given_params(scores, params, truth, *, bootstrap: int, seed: int) -> Tuple[float, float, float]:
    """The Spearman of ``scores`` with ``truth`` at a fixed parameter count
    (``stats.partial_spearman``), on the candidates whose score is finite,
    with its bootstrap 95% interval (NaN without resamples): does the score
    rank architectures of one size, whatever it makes of size itself?"""
    return _paired_statistic(lambda s, p, y: stats.partial_spearman(s, y, p), scores, params, truth,
                             bootstrap=bootstrap, seed=seed)


def _paired_statistic(fn, a, b, truth, *, bootstrap: int, seed: int) -> Tuple[float, float, float]:
    """``fn(a, b, truth)`` on the candidates where both ``a`` and ``b`` are
    finite, with its bootstrap 95% interval over candidates (each resample
    takes the same candidates for all three; NaN without resamples)."""
    a, b, y = (np.asarray(v, np.float64) for v in (a, b, truth))
    keep = np.isfinite(a) & np.isfinite(b)
    a, b, y = a[keep], b[keep], y[keep]
    value = fn(a, b, y)
    if not bootstrap:
        return value, math.nan, math.nan

    def resampled(i, yi):  # i: resampled candidate positions
        i = i.astype(int)
        return fn(a[i], b[i], yi)

    lo, hi = stats.bootstrap_ci(resampled, np.arange(len(y), dtype=np.float64), y, num_samples=bootstrap, seed=seed)
    return value, lo, hi


def ceiling_stats(truth: np.ndarray, *, bootstrap: int, seed: int) -> Dict[str, Any]:
    """The ground truth against itself: correlations between seeds (mean over
    seed pairs), Spearman-Brown's reliability of the S-seed mean, the seed
    noise; with one seed, unknown (NaN)."""
    out: Dict[str, Any] = dict(stats.seed_ceiling(truth))
    out["n"] = int(truth.shape[0])
    # the most any score can correlate with the seed mean (classical test theory: sqrt of its reliability)
    sb = out.get("spearman_brown", math.nan)
    out["mean_ceiling"] = math.sqrt(sb) if np.isfinite(sb) and sb > 0 else math.nan
    if truth.shape[1] >= 2 and bootstrap:
        for name, fn in (("pearson", stats.pearson), ("spearman", stats.spearman), ("kendall", stats.kendall)):
            out[f"{name}_lo"], out[f"{name}_hi"] = stats.bootstrap_ci(fn, truth[:, 0], truth[:, 1],
                                                                      num_samples=bootstrap, seed=seed)
    return out


def kl_analysis(accuracy, kl) -> Dict[str, float]:
    """The one-shot paper's Figure 6 in numbers: how the symmetrized KL
    (training examples, no labels) tracks the proxy's validation accuracy
    over all N candidates (negative: lower KL, higher accuracy)."""
    return {"n": int(len(kl)), **stats.correlations(np.asarray(kl), np.asarray(accuracy))}
