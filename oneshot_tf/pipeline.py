"""The search pipeline, method-agnostic: train the proxy, score candidates,
retrain and export the winners.  Each step resumes in the same directory.

It names no method: ``registry.get(cfg.method).build`` makes the search
space and proxy, and everything method-specific is asked of them through
their interfaces (``Proxy.validate_batch``, ``Proxy.group_size``,
``Proxy.encode``, ``SearchSpace.widened``, ``StandaloneOptions``).

Layout of a model directory::

    config.json          resolved flags (generic and the method's), search-space and proxy definitions, data summary
    proxy/               proxy checkpoints (+ TensorBoard events in proxy/train)
    candidates.jsonl     one JSON object per scored candidate
    score/               TensorBoard: histograms of candidate scores, the plot below
    candidates.png       score histogram, score vs parameters, KL vs score
    best_of/<id>/        with --best_of: each short-listed candidate's brief run (brief.json, ckpt/, train/)
    winners/<rank>/      architecture.json, architecture.png, metrics.json, saved_model/, ckpt/, train/
    results.json         the winners' ranks, ids, scores and test accuracies
    architectures/<id>/  a given architecture: score.json (``score_architecture``: the trained proxy's scores);
                         retrained as winner 1 is (``retrain_architecture``): a winner's files
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

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
from oneshot_tf import registry
from oneshot_tf.retrain import brief_train, retrain_and_export, saved_model_dir
from oneshot_tf.scoring import (CandidateScorer, CandidateStore, EnsembleScorer, ScoreConfig, candidate_record,
                                rank_candidates)
from oneshot_tf.search_space import ArchitectureError, StandaloneOptions
from oneshot_tf.training import TrainConfig, checkpoint_step, restore_latest, train


#: The version of what a model directory holds; a directory written under
#: another version is refused (2: lighter reductions between stages, so older
#: checkpoints do not fit the model; 3: methods as plug-ins, config.json
#: records the method's settings and the one-shot model is built of layers).
DIRECTORY_FORMAT = 3


class ProxyNotTrainedError(RuntimeError):
    """A step that needs the trained proxy ran before proxy training finished."""


class NotScoredError(RuntimeError):
    """Retraining ran on a model directory with no scored candidates."""


def config_path(model_dir: str) -> str:
    """A model directory's ``config.json``: its settings, and the sign that it holds a run."""
    return io_utils.join(model_dir, "config.json")


def study_path(model_dir: str) -> str:
    """A fidelity study's ``study.json`` (``oneshot_tf.fidelity``): the sign
    that a directory holds a study, whose files a search must not mix with."""
    return io_utils.join(model_dir, "study.json")


def check_model_dir(model_dir: str) -> None:
    """Refuse a ``--model_dir`` no run can use: empty, or an existing file."""
    if not model_dir:
        raise ValueError("--model_dir is empty; name the directory of the run")
    if tf.io.gfile.exists(model_dir) and not tf.io.gfile.isdir(model_dir):
        raise ValueError(f"--model_dir={model_dir} is an existing file, not a directory")


def load_data(cfg: config_lib.RunConfig) -> data_lib.ImageDataset:
    return data_lib.load_dataset(
        cfg.dataset, data_dir=cfg.data_dir or None, image_size=cfg.image_size or None,
        validation_size=(int(cfg.validation_size) if cfg.validation_size >= 1 else cfg.validation_size) or None,
        seed=cfg.seed, max_train_examples=cfg.max_train_examples or None)


class SearchRun:
    """One model directory: its config, data, search space and proxy."""

    def __init__(self, cfg: config_lib.RunConfig, model_dir: str, *,
                 strategy: Optional[tf.distribute.Strategy] = None, verbose: bool = True, existing: bool = False):
        """``existing``: the directory must already hold a run (a step that
        continues one, e.g. scoring or retraining): refused before anything
        is written, so a mistyped ``--model_dir`` is not left behind."""
        from oneshot_tf import tuner as tuner_lib
        method = registry.get(cfg.method)
        if cfg.settings is None or type(cfg.settings) is not method.settings:
            raise ValueError(f"the config's settings are not method {method.name!r}'s (use config.resolve)")
        config_lib.validate(cfg)
        tuner_lib.check_search(cfg.search)
        check_model_dir(model_dir)
        if tf.io.gfile.exists(study_path(model_dir)):
            raise ValueError(f"--model_dir={model_dir} holds a fidelity study (study.json), not a search; give "
                             f"the search its own directory")
        if existing and not tf.io.gfile.exists(config_path(model_dir)):
            raise ValueError(f"--model_dir={model_dir} holds no run (no config.json there); run experiments.train "
                             f"(or experiments.run) on it first")
        distribute.configure_runtime(cfg.intra_op_threads, cfg.deterministic)  # (threads: no-op once TF runs)
        self.strategy = strategy or tf.distribute.get_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if cfg.candidates_per_pass % replicas:
            raise ValueError(f"--candidates_per_pass={cfg.candidates_per_pass} must be a multiple of the "
                             f"{replicas} replicas (each scores a share of every pass)")
        if cfg.retrain_batch_size % replicas:
            raise ValueError(f"--retrain_batch_size={cfg.retrain_batch_size} does not split over {replicas} "
                             f"replicas")
        if cfg.jit_compile is None:
            cfg = dataclasses.replace(cfg, jit_compile=distribute.default_jit_compile(self.strategy))
        self.cfg = cfg
        self.method = method
        self.model_dir = model_dir
        self.chief = distribute.is_chief(self.strategy)
        self.verbose = verbose and self.chief
        keras.utils.set_random_seed(cfg.seed)
        precision.set_precision(cfg.precision)  # models built from here on use it
        self.dataset = load_data(cfg)
        self.space, self.proxy = method.build(cfg, self.dataset)
        # the ensemble's other members: the same method's proxies, trained with other seeds
        self.proxies = [self.proxy] + [method.build(cfg, self.dataset)[1] for _ in range(cfg.proxy_ensemble - 1)]
        self.proxy.validate_batch(cfg.batch_size, replicas)
        self.space.widened(cfg.retrain_width)  # refused now, not after the search
        self._write_config()

    # -- config ------------------------------------------------------------
    def _identity(self) -> Dict[str, Any]:
        """What the directory keeps: the identity settings, and what the
        method made of them (the space's and the proxy's definitions), so a
        new method's setting is kept without being listed anywhere."""
        return {"flags": self.cfg.identity(), "search_space": self.space.get_config(),
                "proxy": self.proxy.get_config()}

    def _write_config(self):
        path = config_path(self.model_dir)
        identity = self._identity()
        stored = None
        if tf.io.gfile.exists(path):
            stored = io_utils.read_json(path)
            if stored.get("format", 1) != DIRECTORY_FORMAT:
                raise ValueError(f"{self.model_dir} was written by another version of oneshot-tf (directory format "
                                 f"{stored.get('format', 1)}, this one writes {DIRECTORY_FORMAT}: its checkpoints "
                                 f"do not fit today's models); use a new --model_dir")
            old = stored.get("identity", {})
            diff = config_lib.identity_diff(old.get("flags", {}), identity["flags"])
            if "method" in diff:  # every method flag differs too: name the one that matters
                was, now = diff["method"]
                raise ValueError(f"{self.model_dir} holds a run of --method={was}, not --method={now}; pass "
                                 f"--method={was} (with that run's flags) or use a new --model_dir")
            if diff:
                desc = ", ".join(f"--{k}: {a!r} in the directory, {b!r} now" for k, (a, b) in diff.items())
                raise ValueError(f"{self.model_dir} holds a run with other settings ({desc}); "
                                 f"pass the same flags or use a new --model_dir")
            for part in ("search_space", "proxy"):
                if old.get(part) != identity[part]:
                    raise ValueError(f"{self.model_dir} holds a run with another {part.replace('_', ' ')} "
                                     f"({old.get(part)} in the directory, {identity[part]} now); use a new "
                                     f"--model_dir")
        if not self.chief:
            return  # only the chief writes artifacts
        config = {
            "format": DIRECTORY_FORMAT,
            "method": self.method.name,
            "flags": self.cfg.to_dict(),
            "identity": identity,
            "search_space": self.space.get_config(),
            "search_space_size": self.space.size(),
            "proxy": self.proxy.get_config(),
            "data": self.dataset.summary(),
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        }
        if stored != json.loads(json.dumps(config)):  # an unchanged directory is left as it is (read-only ones too)
            io_utils.write_json(path, config)

    def _train_config(self, steps, batch, lr, seed_offset=0, **schedule) -> TrainConfig:
        """Stand-alone retraining: SGD, Nesterov, cosine (``schedule`` empty);
        the proxy passes its own optimizer and schedule."""
        c = self.cfg
        return TrainConfig(steps=steps, batch_size=batch, learning_rate=lr, augment=c.augment,
                           flip=self.dataset.natural_images, seed=c.seed + seed_offset,
                           checkpoint_every=c.checkpoint_every, log_every=c.log_every,
                           jit_compile=c.jit_compile, verbose=self.verbose, **schedule)

    @property
    def proxy_dir(self) -> str:
        return io_utils.join(self.model_dir, "proxy")

    @property
    def proxy_dirs(self) -> List[str]:
        """Each ensemble member's directory: DIR/proxy, DIR/proxy_1, ..."""
        return [self.proxy_dir] + [io_utils.join(self.model_dir, f"proxy_{i}") for i in range(1, len(self.proxies))]

    @staticmethod
    def member_seed_offset(member: int) -> int:
        """Member ``i`` initializes and trains with seed ``--seed + 1000 i``."""
        return 1000 * member

    def proxy_trained(self) -> bool:
        return all(checkpoint_step(d) >= self.cfg.train_steps for d in self.proxy_dirs)

    # -- step 1 ------------------------------------------------------------
    def train_proxy(self) -> Dict[str, float]:
        """Train the proxy (every ensemble member, one after the other; each
        resumes from its own checkpoints).  The metrics are the first
        member's, with every member's under ``members`` for an ensemble."""
        c = self.cfg
        decay_at = c.lr_decay_fractions() if c.lr_schedule == "step" else ()
        metrics = []
        for i, (proxy, directory) in enumerate(zip(self.proxies, self.proxy_dirs)):
            offset = self.member_seed_offset(i)
            keras.utils.set_random_seed(c.seed + offset)  # this member's initialization (proxies build lazily)
            metrics.append(train(proxy, self.dataset.x_train, self.dataset.y_train,
                                 self._train_config(c.train_steps, c.batch_size, c.learning_rate, seed_offset=offset,
                                                    optimizer=c.optimizer, adam_beta_1=c.adam_beta_1,
                                                    adam_epsilon=c.adam_epsilon, lr_schedule=c.lr_schedule,
                                                    lr_floor=c.lr_floor, lr_decay_at=decay_at,
                                                    lr_decay_factor=c.lr_decay_factor),
                                 directory, strategy=self.strategy, summary_dir=io_utils.join(directory, "train"),
                                 description="proxy training" if len(self.proxies) == 1
                                 else f"proxy training (member {i + 1} of {len(self.proxies)})"))
        return metrics[0] if len(metrics) == 1 else {**metrics[0], "members": metrics}

    def restore_proxy(self):
        """Build and restore the trained proxy (every ensemble member); returns the first."""
        distribute.barrier(self.strategy)  # the chief's last checkpoint is written
        for proxy, directory in zip(self.proxies, self.proxy_dirs):
            step = checkpoint_step(directory)
            if step < self.cfg.train_steps:
                raise ProxyNotTrainedError(
                    f"the proxy in {directory} has trained {step} of {self.cfg.train_steps} steps; "
                    f"run experiments.train (or experiments.run) on this --model_dir first")
            with self.strategy.scope():
                proxy.build()
            restore_latest(directory, **proxy.checkpoint_objects())
        return self.proxy

    # -- step 2 ------------------------------------------------------------
    def make_scorer(self):
        """The ``CandidateScorer`` of the proxy (an ``EnsembleScorer`` of
        every member's for an ensemble)."""
        c = self.cfg
        scorers = [CandidateScorer(proxy, ScoreConfig(
            candidates_per_pass=c.candidates_per_pass, group_size=proxy.group_size,
            max_examples=c.score_examples or None, kl_examples=c.kl_examples, seed=c.seed,
            jit_compile=c.jit_compile, verbose=self.verbose), strategy=self.strategy).prepare(
                self.dataset.x_val, self.dataset.y_val, self.dataset.x_train) for proxy in self.proxies]
        return scorers[0] if len(scorers) == 1 else EnsembleScorer(scorers)

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
        if before > self.cfg.num_candidates:
            logging.warning("%s holds %d scored candidates, more than --num_candidates=%d: the search proposes "
                            "none and the winners come from all %d (a smaller --num_candidates does not drop "
                            "scored candidates)", self.model_dir, before, self.cfg.num_candidates, before)
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

    def make_tuner(self, scorer, store: CandidateStore, root: Optional[str] = None):
        """The keras-tuner search of ``--search`` (``tuner.make_oracle``;
        project in DIR/tuner), scoring with ``scorer``."""
        from oneshot_tf import tuner as tuner_lib
        c = self.cfg
        oracle = tuner_lib.make_oracle(c.search, self.space, max_trials=c.num_candidates, seed=c.seed + 1)
        hypermodel = tuner_lib.ArchitectureHyperModel(
            self.space, input_shape=self.dataset.image_shape, num_classes=self.dataset.num_classes,
            options=self.standalone_options())
        root = root or self.model_dir
        return tuner_lib.ProxyTuner(oracle, hypermodel, scorer=scorer, store=store, method=self.method.name,
                                    summary_dir=io_utils.join(root, "score", "tuner") if self.chief else None,
                                    directory=root, project_name="tuner", overwrite=False)

    def standalone_options(self) -> StandaloneOptions:
        """How stand-alone models of this run are built (data statistics, BN)."""
        mean, std = self.dataset.channel_stats()
        return StandaloneOptions(mean=mean, std=std, bn_momentum=self.cfg.bn_momentum)

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
            png = plots.candidates_png(records, title=f"{self.method.name} on {self.cfg.dataset}")
            tf.summary.image("candidates/plot", tf.image.decode_png(png)[None])
        writer.close()
        io_utils.atomic_write_bytes(io_utils.join(self.model_dir, "candidates.png"), png)

    # -- step 3 ------------------------------------------------------------
    def winners(self) -> List[Dict[str, Any]]:
        store = CandidateStore(self.candidates_path)
        if not store.records:
            raise NotScoredError(f"no scored candidates in {self.candidates_path}; run experiments.score "
                                 f"(or experiments.run) on this --model_dir first")
        c = self.cfg
        ranked = rank_candidates(store.records, c.ranking, c.small_percentile)
        if not c.best_of:
            return ranked[: c.num_winners]
        return self.best_of(ranked[: c.best_of])[: c.num_winners]

    def best_of(self, shortlist: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """GHN Top-Best: each of ``shortlist`` trained briefly stand-alone
        (``DIR/best_of/<id>/``, resumable; finished runs are not repeated),
        reordered by validation accuracy (ties: the earlier-ranked first).
        Each record gains ``brief_validation_accuracy``."""
        c = self.cfg
        out = []
        for position, rec in enumerate(shortlist):
            arch = self.space.from_json(rec["architecture"])
            logging.info("best of %d: brief training of %s (%d steps)", len(shortlist), rec["id"], c.best_of_steps)
            brief = brief_train(self.space, arch, self.dataset, io_utils.join(self.model_dir, "best_of", rec["id"]),
                                self._train_config(c.best_of_steps, c.retrain_batch_size, c.retrain_learning_rate,
                                                   seed_offset=1000 + position),
                                options=self.standalone_options(), weight_decay=c.retrain_weight_decay,
                                strategy=self.strategy, write=self.chief)
            out.append((-brief["validation_accuracy"], position,
                        {**rec, "brief_validation_accuracy": brief["validation_accuracy"]}))
        return [rec for _, _, rec in sorted(out, key=lambda t: t[:2])]

    def retrain(self) -> List[Dict[str, Any]]:
        c = self.cfg
        results = []
        for rank, rec in enumerate(self.winners(), start=1):
            arch = self.space.from_json(rec["architecture"])
            rel = io_utils.join("winners", str(rank))  # results.json's paths: relative to the run directory
            out = io_utils.join(self.model_dir, rel)
            logging.info("retraining winner %d (%s, score %.4f)", rank, rec["id"], rec["score"])
            metrics = retrain_and_export(
                self.space, arch, self.dataset, out,
                self._train_config(c.retrain_steps, c.retrain_batch_size, c.retrain_learning_rate,
                                   seed_offset=rank),
                width_multiplier=c.retrain_width, options=self.standalone_options(),
                weight_decay=c.retrain_weight_decay, strategy=self.strategy, write=self.chief,
                extra_metrics={"rank": rank, "id": rec["id"], "seed": c.seed + rank, "proxy_score": rec["score"],
                               "proxy_kl": rec.get("kl"), "ranking": c.ranking,
                               "brief_validation_accuracy": rec.get("brief_validation_accuracy")})
            results.append({"rank": rank, "id": rec["id"], "proxy_score": rec["score"],
                            "test_accuracy": metrics["test_accuracy"], "params": metrics["params"],
                            "saved_model": saved_model_dir(rel)})
        if self.chief:
            io_utils.write_json(io_utils.join(self.model_dir, "results.json"), {"winners": results})
        return results

    # -- a given architecture --------------------------------------------
    def resolve_architecture(self, spec: Any) -> Tuple[Any, str]:
        """The architecture ``spec`` names, validated by this run's space, and
        a description of where it came from.  ``spec`` is the architecture's
        JSON text (a ``candidates.jsonl`` line too: its ``architecture``), a
        JSON file of one (local or gs://; e.g. another run's
        ``winners/1/architecture.json``, or that winner's directory), the id
        of a candidate scored in this directory, or an architecture value of
        the space.  A bad one raises an ``ArchitectureError`` that names
        ``spec`` and the problem."""
        if not isinstance(spec, str):
            try:
                return self.space.validate(spec), "an architecture value"
            except ArchitectureError as e:
                raise ArchitectureError(f"the given architecture is not in this run's {self.method.name} search "
                                        f"space: {e}") from None
        text = spec.strip()
        if not text:
            raise ArchitectureError("--architecture is empty: pass JSON text, a JSON file or a scored candidate's id")
        if text.startswith(("{", "[")):
            return self._parse_architecture(text, "the --architecture JSON"), "JSON text"
        path = text
        if tf.io.gfile.isdir(path):
            path = io_utils.join(path, "architecture.json")
            if not tf.io.gfile.exists(path):
                raise ArchitectureError(f"--architecture={text} is a directory without an architecture.json")
        if tf.io.gfile.exists(path):
            return self._parse_architecture(io_utils.read_text(path), path), path
        for rec in self._scored_candidates():
            if rec["id"] == text:
                source = f"candidate {text} of {self.candidates_path}"
                return self._parse_architecture(rec["architecture"], source), source
        raise ArchitectureError(f"--architecture={text!r} is not JSON, an existing file or directory, or the id of "
                                f"a candidate scored in {self.candidates_path}")

    def _parse_architecture(self, obj: Any, source: str):
        """``space.from_json`` of ``obj`` (JSON text, or what it parses to;
        a candidate record gives its ``architecture``), errors naming ``source``."""
        if isinstance(obj, str):
            try:
                obj = json.loads(obj)
            except json.JSONDecodeError as e:
                raise ArchitectureError(f"{source} is not valid JSON: {e}") from None
        if isinstance(obj, Mapping) and "architecture" in obj:  # a candidate record
            obj = obj["architecture"]
        try:
            return self.space.from_json(obj)
        except ArchitectureError as e:
            raise ArchitectureError(f"{source} is not an architecture of this run's {self.method.name} search "
                                    f"space: {e}") from None

    def _scored_candidates(self) -> List[Dict[str, Any]]:
        """The records of candidates.jsonl (none where nothing was scored;
        the file is not created)."""
        if not tf.io.gfile.exists(self.candidates_path):
            return []
        return CandidateStore(self.candidates_path).records

    def _scored_record(self, arch_id: str) -> Optional[Dict[str, Any]]:
        """The architecture's record in candidates.jsonl, else its
        ``architectures/<id>/score.json``, else ``None``."""
        for rec in self._scored_candidates():
            if rec["id"] == arch_id:
                return rec
        path = io_utils.join(self.model_dir, "architectures", arch_id, "score.json")
        return io_utils.read_json(path) if tf.io.gfile.exists(path) else None

    def score_architecture(self, spec: Any) -> Dict[str, Any]:
        """The trained proxy's scores of the architecture ``spec`` names
        (``resolve_architecture``), computed by the scorer the search uses (a
        candidate's scores repeat its ``candidates.jsonl`` record), with its
        parameters and FLOPs and ``rank``: where the ``--ranking`` of the
        candidates scored here would put it (1: first; ``None`` when none
        are scored).  Written to ``DIR/architectures/<id>/score.json``; the
        search's candidates are left as they are."""
        arch, source = self.resolve_architecture(spec)
        self.restore_proxy()
        scores = self.make_scorer().score_encodings([self.proxy.encode(arch)])[0]
        rec = candidate_record(self.space, arch, scores, index=-1, method=self.method.name,
                               input_shape=self.dataset.image_shape, num_classes=self.dataset.num_classes,
                               source=source)
        del rec["index"]  # (not a trial of the search)
        others = [r for r in self._scored_candidates() if r["id"] != rec["id"]]
        ranked = rank_candidates(others + [rec], self.cfg.ranking, self.cfg.small_percentile)
        ids = [r["id"] for r in ranked]
        rec["rank"] = ids.index(rec["id"]) + 1 if others and rec["id"] in ids else None
        rec["ranked_among"] = len(others) + 1 if others else None
        if self.chief:
            io_utils.write_json(io_utils.join(self.model_dir, "architectures", rec["id"], "score.json"), rec)
        return rec

    def score_summary(self, rec: Dict[str, Any]) -> str:
        """What ``experiments.score --architecture`` ends with, for a person."""
        kl = f", KL {rec['kl']:.4f}" if "kl" in rec else ""
        if rec["rank"] is not None:
            where = f"{self.cfg.ranking} ranking: {rec['rank']} of {rec['ranked_among']} with the scored candidates"
        elif rec["ranked_among"]:
            where = (f"not eligible in the {self.cfg.ranking} ranking of the {rec['ranked_among'] - 1} scored "
                     f"candidates")
        else:
            where = "no candidates scored in this directory to rank it among"
        return (f"architecture {rec['id']} ({rec['source']}): proxy score {rec['score']:.4f}{kl}; {where}; "
                f"{rec['params']:,} parameters, {rec['flops']:,} multiply-adds; "
                f"{io_utils.join(self.model_dir, 'architectures', rec['id'], 'score.json')}")

    def retrain_architecture(self, spec: Any) -> Dict[str, Any]:
        """Train the architecture ``spec`` names (``resolve_architecture``)
        stand-alone exactly as winner 1 is trained (the retraining flags,
        ``--retrain_width``, seed ``--seed + 1``: the top candidate's id
        repeats winner 1's run), evaluate it on the test split and export it,
        in ``DIR/architectures/<id>/`` (resumable; a finished one is returned
        as it is).  Needs no trained proxy; the result carries the proxy's
        score when this directory scored the architecture (in its search or
        by ``score_architecture``)."""
        c = self.cfg
        arch, source = self.resolve_architecture(spec)
        arch_id = self.space.arch_id(arch)
        scored = self._scored_record(arch_id)
        rel = io_utils.join("architectures", arch_id)
        logging.info("retraining architecture %s (from %s)", arch_id, source)
        metrics = retrain_and_export(
            self.space, arch, self.dataset, io_utils.join(self.model_dir, rel),
            self._train_config(c.retrain_steps, c.retrain_batch_size, c.retrain_learning_rate, seed_offset=1),
            width_multiplier=c.retrain_width, options=self.standalone_options(),
            weight_decay=c.retrain_weight_decay, strategy=self.strategy, write=self.chief,
            extra_metrics={"id": arch_id, "source": source, "seed": c.seed + 1,
                           "proxy_score": scored["score"] if scored else None,
                           "proxy_kl": scored.get("kl") if scored else None})
        return {"id": arch_id, "source": source, "proxy_score": scored["score"] if scored else None,
                "test_accuracy": metrics["test_accuracy"], "params": metrics["params"],
                "saved_model": saved_model_dir(rel)}

    def architecture_summary(self, result: Dict[str, Any]) -> str:
        """What ``experiments.retrain --architecture`` ends with, for a person."""
        c = self.cfg
        score = ("not scored in this directory" if result["proxy_score"] is None
                 else f"proxy score {result['proxy_score']:.4f}")
        return (f"architecture {result['id']} ({result['source']}) retrained as winner 1 is ({c.retrain_steps} "
                f"steps, width x{c.retrain_width:g}, seed {c.seed + 1}) and exported: test accuracy "
                f"{result['test_accuracy']:.4f}, {score}, {result['params']:,} parameters, SavedModel "
                f"{io_utils.join(self.model_dir, result['saved_model'])}")

    def run(self) -> List[Dict[str, Any]]:
        self.train_proxy()
        self.score()
        return self.retrain()

    def summary(self, results: Sequence[Dict[str, Any]]) -> str:
        """What ``retrain`` (or ``run``) ends with, for a person: each
        winner's test accuracy and SavedModel, and where the results and the
        scored candidates are."""
        c = self.cfg
        how = f"{c.ranking} ranking of {len(CandidateStore(self.candidates_path).records)} scored candidates"
        if c.best_of:
            how += f", the best of its first {c.best_of} after brief training"
        lines = [f"{len(results)} winner(s) retrained and exported ({how}):"]
        for r in results:
            lines.append(f"  {r['rank']}. {r['id']}: test accuracy {r['test_accuracy']:.4f}, proxy score "
                         f"{r['proxy_score']:.4f}, {r['params']:,} parameters, SavedModel "
                         f"{io_utils.join(self.model_dir, r['saved_model'])}")
        lines.append(f"results: {io_utils.join(self.model_dir, 'results.json')}")
        lines.append(f"candidates: {self.candidates_path}")
        return "\n".join(lines)
