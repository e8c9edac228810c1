"""The search pipeline, method-agnostic: train the proxy, score candidates,
retrain and export the winners.  Each step resumes in the same directory.

Layout of a model directory::

    config.json          resolved flags, search-space and proxy definitions, data summary
    proxy/               proxy checkpoints (+ TensorBoard events in proxy/train)
    candidates.jsonl     one JSON object per scored candidate
    score/               TensorBoard: histograms of candidate scores, the plot below
    candidates.png       score histogram, score vs parameters, KL vs score
    winners/<rank>/      architecture.json, metrics.json, saved_model/, ckpt/, train/
    results.json         the winners' ranks, ids, scores and test accuracies
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
import keras
from absl import logging

from oneshot_tf import config as config_lib
from oneshot_tf import data as data_lib
from oneshot_tf import distribute
from oneshot_tf import io_utils
from oneshot_tf import plots
from oneshot_tf import precision
from oneshot_tf.methods.oneshot.cell_space import CellSearchSpace
from oneshot_tf.methods.oneshot.proxy import OneShotProxy
from oneshot_tf.proxy import Proxy
from oneshot_tf.retrain import retrain_and_export
from oneshot_tf.scoring import CandidateScorer, CandidateStore, ScoreConfig, rank_candidates
from oneshot_tf.search_space import SearchSpace, StandaloneOptions
from oneshot_tf.training import TrainConfig, checkpoint_step, restore_latest, train


def _oneshot(cfg: config_lib.RunConfig, dataset: data_lib.ImageDataset) -> Tuple[SearchSpace, Proxy]:
    space = CellSearchSpace(num_cells=cfg.num_cells, num_stages=cfg.num_stages, filters=cfg.filters,
                            num_blocks=cfg.num_blocks)
    mean, std = dataset.channel_stats()
    proxy = OneShotProxy(space, input_shape=dataset.image_shape, num_classes=dataset.num_classes,
                         mean=mean, std=std, ghost_batch_size=cfg.ghost_batch_size,
                         drop_rate=cfg.drop_rate, weight_decay=cfg.weight_decay,
                         static_shapes=cfg.jit_compile, kl_reference=cfg.kl_reference)
    return space, proxy


#: method name -> factory(config, dataset) -> (search space, proxy).
METHODS: Dict[str, Callable[[config_lib.RunConfig, data_lib.ImageDataset], Tuple[SearchSpace, Proxy]]] = {
    "oneshot": _oneshot,
}


#: Each is a keras-tuner search (project directory DIR/tuner): random (the
#: papers' method), refine (SMASH's perturbation chain), evolution
#: (regularized evolution).
SEARCHES = ("random", "refine", "evolution")


#: The version of what a model directory holds; a directory written under
#: another version is refused (2: lighter reductions between stages, so older
#: checkpoints do not fit the model).
DIRECTORY_FORMAT = 2


class ProxyNotTrainedError(RuntimeError):
    pass


def load_data(cfg: config_lib.RunConfig) -> data_lib.ImageDataset:
    return data_lib.load_dataset(
        cfg.dataset, data_dir=cfg.data_dir or None, image_size=cfg.image_size or None,
        validation_size=(int(cfg.validation_size) if cfg.validation_size >= 1 else cfg.validation_size) or None,
        seed=cfg.seed, max_train_examples=cfg.max_train_examples or None)


class SearchRun:
    """One model directory: its config, data, search space and proxy."""

    def __init__(self, cfg: config_lib.RunConfig, model_dir: str, *,
                 strategy: Optional[tf.distribute.Strategy] = None, verbose: bool = True):
        config_lib.validate(cfg)
        if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
            raise ValueError(f"--model_dir={model_dir} is an existing file, not a directory")
        if cfg.method not in METHODS:
            raise ValueError(f"unknown method {cfg.method!r}; available: {sorted(METHODS)}")
        if cfg.search not in SEARCHES:
            raise ValueError(f"unknown --search={cfg.search!r}; choose from {', '.join(SEARCHES)}")
        if cfg.ranking not in ("top", "small"):
            raise ValueError(f"unknown ranking {cfg.ranking!r}: use 'top' or 'small'")
        self.strategy = strategy or tf.distribute.get_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if cfg.batch_size % (replicas * cfg.ghost_batch_size):
            raise ValueError(f"--batch_size={cfg.batch_size} must be a multiple of replicas ({replicas}) x "
                             f"--ghost_batch_size ({cfg.ghost_batch_size}): every replica trains on whole "
                             f"ghost batches")
        if cfg.candidates_per_pass % replicas:
            raise ValueError(f"--candidates_per_pass={cfg.candidates_per_pass} must be a multiple of the "
                             f"{replicas} replicas (each scores a share of every pass)")
        if cfg.retrain_batch_size % replicas:
            raise ValueError(f"--retrain_batch_size={cfg.retrain_batch_size} does not split over {replicas} "
                             f"replicas")
        if cfg.jit_compile is None:
            cfg = dataclasses.replace(cfg, jit_compile=distribute.default_jit_compile(self.strategy))
        self.cfg = cfg
        self.model_dir = model_dir
        self.chief = distribute.is_chief(self.strategy)
        self.verbose = verbose and self.chief
        keras.utils.set_random_seed(cfg.seed)
        precision.set_precision(cfg.precision)  # models built from here on use it
        self.dataset = load_data(cfg)
        self.space, self.proxy = METHODS[cfg.method](cfg, self.dataset)
        self._write_config()

    # -- config ------------------------------------------------------------
    def _write_config(self):
        path = io_utils.join(self.model_dir, "config.json")
        if tf.io.gfile.exists(path):
            stored = io_utils.read_json(path)
            if stored.get("format", 1) != DIRECTORY_FORMAT:
                raise ValueError(f"{self.model_dir} was written by another version of oneshot-tf (directory format "
                                 f"{stored.get('format', 1)}, this one writes {DIRECTORY_FORMAT}: its checkpoints "
                                 f"do not fit today's models); use a new --model_dir")
            old = stored.get("flags", {})
            diff = config_lib.identity_diff(old, self.cfg.to_dict())
            if diff:
                desc = ", ".join(f"--{k}: {a!r} in the directory, {b!r} now" for k, (a, b) in diff.items())
                raise ValueError(f"{self.model_dir} holds a run with other settings ({desc}); "
                                 f"pass the same flags or use a new --model_dir")
        if not self.chief:
            return  # only the chief writes artifacts
        io_utils.write_json(path, {
            "format": DIRECTORY_FORMAT,
            "flags": self.cfg.to_dict(),
            "search_space": self.space.get_config(),
            "search_space_size": self.space.size(),
            "proxy": self.proxy.get_config(),
            "data": self.dataset.summary(),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        })

    def _train_config(self, steps, batch, lr, seed_offset=0, lr_schedule="cosine", lr_floor=0.1) -> TrainConfig:
        c = self.cfg
        return TrainConfig(steps=steps, batch_size=batch, learning_rate=lr, lr_schedule=lr_schedule,
                           lr_floor=lr_floor, augment=c.augment,
                           flip=self.dataset.natural_images, seed=c.seed + seed_offset,
                           checkpoint_every=c.checkpoint_every, log_every=c.log_every,
                           jit_compile=c.jit_compile, verbose=self.verbose)

    @property
    def proxy_dir(self) -> str:
        return io_utils.join(self.model_dir, "proxy")

    # -- step 1 ------------------------------------------------------------
    def train_proxy(self) -> Dict[str, float]:
        c = self.cfg
        return train(self.proxy, self.dataset.x_train, self.dataset.y_train,
                     self._train_config(c.train_steps, c.batch_size, c.learning_rate,
                                        lr_schedule=c.lr_schedule, lr_floor=c.lr_floor),
                     self.proxy_dir, strategy=self.strategy,
                     summary_dir=io_utils.join(self.proxy_dir, "train"), description="proxy training")

    def restore_proxy(self):
        distribute.barrier(self.strategy)  # the chief's last checkpoint is written
        step = checkpoint_step(self.proxy_dir)
        if step < self.cfg.train_steps:
            raise ProxyNotTrainedError(
                f"the proxy in {self.proxy_dir} has trained {step} of {self.cfg.train_steps} steps; "
                f"run experiments.train (or experiments.run) on this --model_dir first")
        with self.strategy.scope():
            self.proxy.build()
        restore_latest(self.proxy_dir, **self.proxy.checkpoint_objects())
        return self.proxy

    # -- step 2 ------------------------------------------------------------
    def candidates(self) -> List[Any]:
        """The random-search candidates: ``num_candidates`` distinct samples,
        in the order ``--search=random`` scores them."""
        return self.space.sample_unique(self.cfg.num_candidates, seed=self.cfg.seed + 1)

    def make_scorer(self) -> CandidateScorer:
        c = self.cfg
        scorer = CandidateScorer(self.proxy, ScoreConfig(
            candidates_per_pass=c.candidates_per_pass, group_size=c.ghost_batch_size,
            max_examples=c.score_examples or None, kl_examples=c.kl_examples, seed=c.seed,
            jit_compile=c.jit_compile, verbose=self.verbose), strategy=self.strategy)
        return scorer.prepare(self.dataset.x_val, self.dataset.y_val, self.dataset.x_train)

    @property
    def candidates_path(self) -> str:
        return io_utils.join(self.model_dir, "candidates.jsonl")

    def score(self) -> List[Dict[str, Any]]:
        """Score candidates with the trained proxy (a keras-tuner search).

        Under a multi-worker strategy every worker runs the same search (the
        scorer splits each pass's candidates over all replicas and gathers
        the results, so every worker sees every score); only the chief
        writes DIR/tuner and candidates.jsonl, the others a temporary copy
        that starts from the chief's state, so all resume in step."""
        self.restore_proxy()
        root = distribute.write_dir(self.model_dir, self.strategy)
        if not self.chief:
            self._copy_search_state(root)
        distribute.barrier(self.strategy)  # copies made before the chief proposes new trials
        store = CandidateStore(io_utils.join(root, "candidates.jsonl"))
        scorer = self.make_scorer()
        t0 = time.time()
        before = len(store.records)
        try:
            self.make_tuner(scorer, store, root).search(verbose=1 if self.verbose else 0)
        finally:
            distribute.remove_write_dir(self.model_dir, self.strategy)
        records = store.records
        logging.info("scored %d candidates in %.1fs (%d traces)", len(records) - before,
                     time.time() - t0, scorer.trace_count)
        png = io_utils.join(self.model_dir, "candidates.png")
        if self.chief and (len(records) > before or not tf.io.gfile.exists(png)):
            self._score_summaries(records)  # (a finished scoring step rerun adds no events)
        return records

    def _copy_search_state(self, root: str):
        for name in ("candidates.jsonl", "tuner"):
            src, dst = io_utils.join(self.model_dir, name), io_utils.join(root, name)
            if tf.io.gfile.exists(dst):
                io_utils.remove(dst)
            if tf.io.gfile.exists(src):
                io_utils.copy(src, dst)

    def make_tuner(self, scorer: CandidateScorer, store: CandidateStore, root: Optional[str] = None):
        """The keras-tuner search of ``--search`` (project in DIR/tuner).

        Random search proposes ``candidates()``, in that order.  Refinement
        keeps SMASH's proportions (500 random, 100 perturbations of their
        best, 100 chain steps): 5/7, 1/7 and 1/7 of ``num_candidates``.
        Evolution uses a population of ``num_candidates / 5`` (at most 50)
        and tournaments of a quarter of it."""
        from oneshot_tf import tuner as tuner_lib
        c = self.cfg
        n = c.num_candidates
        if c.search == "random":
            oracle = tuner_lib.RandomArchitectureOracle(self.space, max_trials=n, seed=c.seed + 1)
        elif c.search == "refine":
            oracle = tuner_lib.RefinementOracle(self.space, max_trials=n, seed=c.seed + 1,
                                                random_trials=max(1, 5 * n // 7),
                                                base_perturbations=max(1, n // 7))
        else:
            population = max(2, min(50, n // 5))
            oracle = tuner_lib.EvolutionOracle(self.space, max_trials=n, seed=c.seed + 1,
                                               population_size=population, sample_size=max(1, population // 4))
        mean, std = self.dataset.channel_stats()
        hypermodel = tuner_lib.ArchitectureHyperModel(
            self.space, input_shape=self.dataset.image_shape, num_classes=self.dataset.num_classes,
            options=StandaloneOptions(mean=mean, std=std, bn_momentum=c.bn_momentum))
        root = root or self.model_dir
        return tuner_lib.ProxyTuner(oracle, hypermodel, scorer=scorer, store=store, method=c.method,
                                    summary_dir=io_utils.join(root, "score", "tuner") if self.chief else None,
                                    directory=root, project_name="tuner", overwrite=False)

    def _score_summaries(self, records):
        writer = tf.summary.create_file_writer(io_utils.join(self.model_dir, "score"))
        with writer.as_default(step=len(records)):
            scores = np.array([r["score"] for r in records], np.float32)
            tf.summary.histogram("candidates/score", scores)
            if records and "kl" in records[0]:
                tf.summary.histogram("candidates/kl", np.array([r["kl"] for r in records], np.float32))
            tf.summary.histogram("candidates/params", np.array([r["params"] for r in records], np.float32))
            tf.summary.scalar("candidates/best_score", float(scores.max()))
            tf.summary.scalar("candidates/count", len(records))
            png = plots.candidates_png(records, title=f"{self.cfg.method} on {self.cfg.dataset}")
            tf.summary.image("candidates/plot", tf.image.decode_png(png)[None])
        writer.close()
        io_utils.atomic_write_bytes(io_utils.join(self.model_dir, "candidates.png"), png)

    # -- step 3 ------------------------------------------------------------
    def winners(self) -> List[Dict[str, Any]]:
        store = CandidateStore(self.candidates_path)
        if not store.records:
            raise RuntimeError(f"no scored candidates in {self.candidates_path}; run experiments.score first")
        ranked = rank_candidates(store.records, self.cfg.ranking, self.cfg.small_percentile)
        return ranked[: self.cfg.num_winners]

    def retrain(self) -> List[Dict[str, Any]]:
        c = self.cfg
        results = []
        for rank, rec in enumerate(self.winners(), start=1):
            arch = self.space.from_json(rec["architecture"])
            out = io_utils.join(self.model_dir, "winners", str(rank))
            logging.info("retraining winner %d (%s, score %.4f)", rank, rec["id"], rec["score"])
            metrics = retrain_and_export(
                self.space, arch, self.dataset, out,
                self._train_config(c.retrain_steps, c.retrain_batch_size, c.retrain_learning_rate,
                                   seed_offset=rank),
                width_multiplier=(c.retrain_filters or c.filters) / c.filters,
                options=StandaloneOptions(*self.dataset.channel_stats(), bn_momentum=c.bn_momentum),
                weight_decay=c.retrain_weight_decay, strategy=self.strategy, write=self.chief,
                extra_metrics={"rank": rank, "id": rec["id"], "proxy_score": rec["score"],
                               "proxy_kl": rec.get("kl"), "ranking": c.ranking})
            results.append({"rank": rank, "id": rec["id"], "proxy_score": rec["score"],
                            "test_accuracy": metrics["test_accuracy"], "params": metrics["params"]})
        if self.chief:
            io_utils.write_json(io_utils.join(self.model_dir, "results.json"), {"winners": results})
        return results

    def run(self) -> List[Dict[str, Any]]:
        self.train_proxy()
        self.score()
        return self.retrain()
