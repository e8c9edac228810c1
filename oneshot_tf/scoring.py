"""Candidate scoring with any proxy, a resumable candidates.jsonl, ranking."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from oneshot_tf import io_utils
from oneshot_tf.proxy import Proxy


@dataclasses.dataclass
class ScoreConfig:
    candidates_per_pass: int = 8   # K: candidates per forward pass, one per ghost batch
    group_size: int = 32           # examples per candidate per pass (the ghost batch)
    max_examples: Optional[int] = None  # validation examples used (None: all whole groups)
    kl_examples: int = 64          # unlabeled training examples for the KL score
    pass_examples: int = 4096      # at most this many (candidate, example) pairs per forward pass
    jit_compile: bool = False
    verbose: bool = True


class CandidateScorer:
    """Scores architectures with a trained proxy in one compiled function.

    Each pass evaluates ``K`` candidates on the same ``C`` groups of ``g``
    examples (``Proxy.candidates_logits``; a group is the unit of batch
    statistics).  The function is traced once for all candidates
    (``trace_count`` counts traces); the last group is padded with copies.
    Scores: ``accuracy`` on the validation examples (the ``score``), and
    ``kl``, the paper's symmetrized KL divergence between the reference
    (all paths on) and the candidate on unlabeled training examples, averaged
    over examples (lower is better).
    """

    def __init__(self, proxy: Proxy, cfg: ScoreConfig, strategy: Optional[tf.distribute.Strategy] = None):
        self.proxy = proxy
        self.cfg = cfg
        self.strategy = strategy or tf.distribute.get_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if cfg.candidates_per_pass % replicas:
            raise ValueError(f"candidates_per_pass {cfg.candidates_per_pass} does not split over "
                             f"{replicas} replicas; use a multiple of {replicas}")
        self.trace_count = 0
        # XLA compiles the per-replica forward pass (static shapes throughout).
        self._replica_forward = (tf.function(self._forward_impl, jit_compile=True) if cfg.jit_compile
                                 else self._forward_impl)
        self._forward = tf.function(self._distributed_forward)

    def _distributed_forward(self, images, encodings):
        """Every replica (of every worker) evaluates ``K / replicas`` of the
        ``K`` candidates on the same examples; the results are all-gathered,
        so each worker holds every candidate's predictions exactly once."""
        self.trace_count += 1  # Python side effect: runs once per trace
        replicas = self.strategy.num_replicas_in_sync
        per_replica = self.cfg.candidates_per_pass // replicas

        def replica_fn(images, encodings):
            if replicas > 1:
                first = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int32)
                first = first * per_replica
                encodings = {name: tf.slice(v, [first] + [0] * (len(v.shape) - 1),
                                            [per_replica] + list(v.shape[1:]))
                             for name, v in encodings.items()}
            return self._replica_forward(images, encodings)

        out = self.strategy.run(replica_fn, args=(images, encodings))
        return self.strategy.gather(out, axis=0)

    def _forward_impl(self, images, encodings):
        """``images``: ``C`` groups of ``g`` examples; ``encodings``: ``k``
        candidates, each evaluated on every group (``Proxy.candidates_logits``)."""
        logits = self.proxy.candidates_logits(images, encodings, self.cfg.group_size)
        return tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)

    def _groups(self, x, n=None) -> List[np.ndarray]:
        g = self.cfg.group_size
        n = len(x) if n is None else min(n, len(x))
        count = n // g
        if count == 0:
            raise ValueError(f"need at least {g} examples to score (one group), got {n}")
        return [np.asarray(x[i * g:(i + 1) * g]) for i in range(count)]

    def prepare(self, x_val, y_val, x_kl=None):
        """Cache the evaluation passes (and the reference predictions for KL).

        Validation groups and KL groups go through the same passes of ``C``
        groups each (``C * K * g <= pass_examples``; the last pass is padded
        with copies), so one traced function serves all of them."""
        g, k = self.cfg.group_size, self.cfg.candidates_per_pass
        val = self._groups(x_val, self.cfg.max_examples)
        self._labels = np.stack([np.asarray(y_val[i * g:(i + 1) * g]) for i in range(len(val))])
        kl = self._groups(x_kl, self.cfg.kl_examples) if x_kl is not None and self.cfg.kl_examples else []
        self._num_val, self._num_kl = len(val), len(kl)
        groups = val + kl
        cap = max(1, self.cfg.pass_examples // (k * g))
        passes = -(-len(groups) // cap)
        per_pass = -(-len(groups) // passes)
        groups += [groups[-1]] * (passes * per_pass - len(groups))
        self._passes = [tf.constant(np.concatenate(groups[i * per_pass:(i + 1) * per_pass]))
                        for i in range(passes)]
        self._ref = None
        if kl:
            ref = self._stack([self.proxy.reference_encoding()] * k)
            self._ref = self._predict(ref)[0, self._num_val:self._num_val + self._num_kl]
        return self

    def _predict(self, enc) -> np.ndarray:
        """Log-probabilities ``[K, groups, g, classes]`` over every pass."""
        g = self.cfg.group_size
        out = [self._forward(images, enc).numpy() for images in self._passes]
        out = np.concatenate(out, axis=1)
        return out.reshape(out.shape[0], -1, g, out.shape[-1])

    @staticmethod
    def _stack(encodings: Sequence[Dict[str, np.ndarray]]):
        return {k: tf.constant(np.stack([e[k] for e in encodings])) for k in encodings[0]}

    @property
    def num_examples(self) -> int:
        return self._num_val * self.cfg.group_size

    def score_encodings(self, encodings: Sequence[Dict[str, np.ndarray]]) -> List[Dict[str, float]]:
        """Scores of up to ``K`` candidates (one compiled call per pass)."""
        k = self.cfg.candidates_per_pass
        n = len(encodings)
        if not 0 < n <= k:
            raise ValueError(f"score_encodings takes 1 to {k} encodings, got {n}")
        enc = self._stack(list(encodings) + [encodings[-1]] * (k - n))
        logp = self._predict(enc)
        pred = logp[:, :self._num_val].argmax(-1)                       # [K, groups, g]
        acc = (pred == self._labels[None]).reshape(k, -1).mean(-1)
        if self._ref is not None:
            logq = logp[:, self._num_val:self._num_val + self._num_kl]  # [K, groups, g, classes]
            ref = self._ref[None]
            kl = ((np.exp(ref) - np.exp(logq)) * (ref - logq)).sum(-1).reshape(k, -1).mean(-1)
        return [{"score": float(acc[i]), "accuracy": float(acc[i]),
                 **({"kl": float(kl[i])} if self._ref is not None else {})} for i in range(n)]


class CandidateStore:
    """candidates.jsonl: one JSON object per scored candidate, appended.

    A scoring run killed mid-way resumes: ids already in the file are
    skipped, and unreadable lines (a torn last line from a kill during a
    write) are dropped, so those candidates are scored again.
    Local files are appended and fsynced per group; other file systems
    (gs://) are rewritten atomically.
    """

    def __init__(self, path: str):
        self.path = path
        self.records: List[Dict[str, Any]] = []
        self.ids = set()
        if tf.io.gfile.exists(path):
            text = io_utils.read_text(path)
            good, dropped = [], 0
            for line in text.splitlines(keepends=True):
                try:
                    rec = json.loads(line)
                    rec["id"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    dropped += 1  # a torn last line (killed mid-write) or a damaged one
                    continue
                if not line.endswith("\n"):
                    line += "\n"
                good.append(line)
                if rec["id"] not in self.ids:
                    self.ids.add(rec["id"])
                    self.records.append(rec)
            if "".join(good) != text:
                logging.warning("%s: dropped %d unreadable line(s); those candidates are scored again",
                                path, dropped)
                io_utils.atomic_write_text(path, "".join(good))

    def append(self, records: Iterable[Dict[str, Any]]):
        new = [r for r in records if r["id"] not in self.ids]
        if not new:
            return
        lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in new)
        if io_utils.is_local(self.path):
            with open(self.path, "a") as f:
                f.write(lines)
                f.flush()
                os.fsync(f.fileno())
        else:
            existing = io_utils.read_text(self.path) if tf.io.gfile.exists(self.path) else ""
            io_utils.atomic_write_text(self.path, existing + lines)
        for r in new:
            self.ids.add(r["id"])
            self.records.append(r)


def candidate_record(space, arch, scores: Dict[str, float], *, index: int, method: str, input_shape,
                     num_classes: int, **extra) -> Dict[str, Any]:
    """One line of candidates.jsonl: id, index, method, architecture, the
    proxy's scores, and the stand-alone model's parameters and FLOPs."""
    return {"id": space.arch_id(arch), "index": int(index), "method": method, **extra,
            "architecture": space.to_json(arch), **scores,
            "params": space.count_params(arch, input_shape=input_shape, num_classes=num_classes),
            "flops": space.count_flops(arch, input_shape=input_shape, num_classes=num_classes)}


def score_architectures(scorer: CandidateScorer, space, archs: Sequence[Any], store: CandidateStore,
                        *, input_shape, num_classes: int, method: str, start_index: int = 0,
                        verbose: bool = True) -> List[Dict[str, Any]]:
    """Score ``archs`` not yet in ``store`` and append their records."""
    todo = [(i, a) for i, a in enumerate(archs, start_index) if space.arch_id(a) not in store.ids]
    k = scorer.cfg.candidates_per_pass
    bar = keras.utils.Progbar(len(archs), verbose=1 if verbose else 0, unit_name="candidate")
    bar.update(len(archs) - len(todo))
    for s in range(0, len(todo), k):
        group = todo[s:s + k]
        scores = scorer.score_encodings([space.encode(a) for _, a in group])
        store.append([candidate_record(space, arch, sc, index=index, method=method, input_shape=input_shape,
                                       num_classes=num_classes) for (index, arch), sc in zip(group, scores)])
        bar.update(len(archs) - len(todo) + s + len(group),
                   [("best", max(r["score"] for r in store.records))])
    return store.records


def rank_candidates(records: Sequence[Dict[str, Any]], mode: str = "top",
                    percentile: float = 90.0) -> List[Dict[str, Any]]:
    """Order candidates best first.

    ``top``: highest score first (ties: fewer parameters, then id).
    ``small``: the paper's One-Shot Small: among candidates whose score is
    at least the ``percentile``-th percentile of all scores, fewest
    parameters first (ties: higher score, then id).
    """
    recs = list(records)
    if not recs:
        return []
    if mode == "top":
        return sorted(recs, key=lambda r: (-r["score"], r["params"], r["id"]))
    if mode == "small":
        threshold = float(np.percentile([r["score"] for r in recs], percentile))
        eligible = [r for r in recs if r["score"] >= threshold]
        return sorted(eligible, key=lambda r: (r["params"], -r["score"], r["id"]))
    raise ValueError(f"unknown ranking {mode!r}: use 'top' or 'small'")
