"""Candidate scoring with any proxy, a resumable candidates.jsonl, ranking."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from oneshot_tf import io_utils
from oneshot_tf.config import RANKINGS
from oneshot_tf.proxy import Proxy, stack_encodings


@dataclasses.dataclass
class ScoreConfig:
    candidates_per_pass: int = 8   # K: candidates per forward pass
    group_size: int = 32           # examples per group, the unit of batch statistics (Proxy.group_size)
    max_examples: Optional[int] = None  # validation examples scored, the first ones (None: all)
    kl_examples: int = 64          # unlabeled training examples for the KL score, drawn at random
    seed: int = 0                  # seeds the KL examples' draw and the proxy's reference architectures
    pass_examples: int = 4096      # at most this many (candidate, example) pairs per forward pass
    jit_compile: bool = False
    verbose: bool = True


class CandidateScorer:
    """Scores architectures with a trained proxy in one compiled function.

    Each pass evaluates ``K`` candidates on the same ``C`` groups of ``g``
    examples (``Proxy.candidates_logits``; a group is the unit of batch
    statistics).  The function is traced once for all candidates
    (``trace_count`` counts traces).
    Scores: ``accuracy`` on the validation examples (the ``score``), and
    ``kl``, the paper's symmetrized KL divergence between the proxy's
    reference architectures (``Proxy.reference_encodings``: reference ``j``
    on KL group ``j``) and the candidate on ``kl_examples`` unlabeled training
    examples drawn at random (seeded), averaged over examples (lower is better).

    Every example is scored: ``n`` examples make ``ceil(n / g)`` groups, and
    the last group is filled up with the examples that follow in the pool
    (the validation set in order, wrapping to its start; the KL draw's next
    examples), each scored example counted exactly once and the fillers not
    at all.  Fillers are real images distinct from the group's own (the pool
    holds at least ``g``), so the last group's batch statistics are, like
    every other group's, those of ``g`` distinct real images; copies of the
    group's own examples would weight those twice in its statistics, and
    zeros would shift them.
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

    def _group_positions(self, pool: int, n: int, what: str) -> np.ndarray:
        """Positions ``[ceil(n / g), g]`` in a pool of ``pool`` examples of the
        ``n`` scored ones (positions ``0 .. n - 1``), the last group filled up
        with the positions that follow (modulo ``pool``: ``g <= pool``
        consecutive positions are distinct, so a group never holds an
        example twice)."""
        g = self.cfg.group_size
        if pool < g:
            raise ValueError(f"need at least {g} {what} examples to score (one group of {g}), got {pool}")
        if n < 1:
            raise ValueError(f"no {what} examples to score")
        groups = -(-n // g)
        return (np.arange(groups * g) % pool).reshape(groups, g)

    def prepare(self, x_val, y_val, x_kl=None):
        """Cache the evaluation passes (and the reference predictions for KL).

        Validation groups and KL groups go through the same passes of ``C``
        groups each (``C * K * g <= pass_examples``; the last pass is filled
        up with copies of whole groups, whose outputs are ignored), so one
        traced function serves all of them."""
        g, k = self.cfg.group_size, self.cfg.candidates_per_pass
        n_val = len(x_val) if self.cfg.max_examples is None else min(self.cfg.max_examples, len(x_val))
        pos = self._group_positions(len(x_val), n_val, "validation")
        self.val_indices = pos                              # into x_val, [groups, g]
        self._val_weight = (np.arange(pos.size) < n_val).reshape(pos.shape)
        self._num_val_examples = n_val
        self._labels = np.asarray(y_val)[pos]
        val = [np.asarray(x_val)[p] for p in pos]
        kl = []
        self.kl_indices = None
        refs = None
        if x_kl is not None and self.cfg.kl_examples:
            n_kl = min(self.cfg.kl_examples, len(x_kl))
            pos = self._group_positions(len(x_kl), n_kl, "KL")
            refs = self.proxy.reference_encodings(len(pos), seed=self.cfg.seed)
        if refs is not None:
            # A seeded random draw from the pool (the training split), in
            # random order; the fillers are the draw's next examples.
            draw = np.random.default_rng([self.cfg.seed, 2]).permutation(len(x_kl))
            self.kl_indices = draw[pos]                     # into x_kl, [groups, g]
            self._kl_weight = (np.arange(pos.size) < n_kl).reshape(pos.shape)
            self._num_kl_examples = n_kl
            kl = [np.asarray(x_kl)[p] for p in self.kl_indices]
        self._num_val, self._num_kl = len(val), len(kl)
        groups = val + kl
        cap = max(1, self.cfg.pass_examples // (k * g))
        passes = -(-len(groups) // cap)
        per_pass = -(-len(groups) // passes)
        self._per_pass = per_pass
        groups += [groups[-1]] * (passes * per_pass - len(groups))
        self._passes = [tf.constant(np.concatenate(groups[i * per_pass:(i + 1) * per_pass]))
                        for i in range(passes)]
        self._ref = None
        if kl:
            self._ref = self._reference_predictions(list(refs))
        return self

    def _reference_predictions(self, refs) -> np.ndarray:
        """Log-probabilities ``[KL groups, g, classes]``: KL group ``j`` under
        the proxy's reference ``j`` (``refs[j]``).  Distinct references are
        evaluated like candidates (``K`` per call), on the passes that hold KL
        groups only."""
        k = self.cfg.candidates_per_pass
        if len(refs) != self._num_kl:
            raise ValueError(f"{type(self.proxy).__name__}.reference_encodings returned {len(refs)} "
                             f"encodings for {self._num_kl} KL groups")
        keys = [tuple(np.asarray(e[name], np.float32).tobytes() for name in sorted(e)) for e in refs]
        unique = {}
        for key, enc in zip(keys, refs):
            unique.setdefault(key, enc)
        first = self._num_val // self._per_pass       # the first pass with a KL group
        offset = self._num_val - first * self._per_pass
        preds = {}
        order = list(unique)
        for s in range(0, len(order), k):
            chunk = [unique[key] for key in order[s:s + k]]
            logp = self._predict(self._stack(chunk + [chunk[-1]] * (k - len(chunk))), first_pass=first)
            for i, key in enumerate(order[s:s + k]):
                preds[key] = logp[i, offset:offset + self._num_kl]
        return np.stack([preds[key][j] for j, key in enumerate(keys)])

    def _predict(self, enc, first_pass: int = 0) -> np.ndarray:
        """Log-probabilities ``[K, groups, g, classes]`` over every pass from
        ``first_pass`` on."""
        g = self.cfg.group_size
        out = [self._forward(images, enc).numpy() for images in self._passes[first_pass:]]
        out = np.concatenate(out, axis=1)
        return out.reshape(out.shape[0], -1, g, out.shape[-1])

    @staticmethod
    def _stack(encodings: Sequence[Dict[str, np.ndarray]]):
        return {k: tf.constant(v) for k, v in stack_encodings(encodings).items()}

    def score_encodings(self, encodings: Sequence[Dict[str, np.ndarray]]) -> List[Dict[str, float]]:
        """Scores of up to ``K`` candidates (one compiled call per pass)."""
        k = self.cfg.candidates_per_pass
        n = len(encodings)
        if not 0 < n <= k:
            raise ValueError(f"score_encodings takes 1 to {k} encodings, got {n}")
        enc = self._stack(list(encodings) + [encodings[-1]] * (k - n))
        logp = self._predict(enc)
        pred = logp[:, :self._num_val].argmax(-1)                       # [K, groups, g]
        correct = (pred == self._labels[None]) & self._val_weight[None]  # fillers not counted
        acc = correct.reshape(k, -1).sum(-1) / self._num_val_examples
        if self._ref is not None:
            logq = logp[:, self._num_val:self._num_val + self._num_kl]  # [K, groups, g, classes]
            ref = self._ref[None]
            kl = ((np.exp(ref) - np.exp(logq)) * (ref - logq)).sum(-1) * self._kl_weight[None]
            kl = kl.reshape(k, -1).sum(-1) / self._num_kl_examples
        return [{"score": float(acc[i]), "accuracy": float(acc[i]),
                 **({"kl": float(kl[i])} if self._ref is not None else {})} for i in range(n)]


def member_score_key(member: int) -> str:
    """The record key of ensemble member ``member``'s own score."""
    return f"member_{member}_score"


class EnsembleScorer:
    """The scorers of several proxies of one method trained with different
    seeds (``--proxy_ensemble``; SMASH's ensemble of HyperNets, its Figure
    5b): a candidate's every score (``score``, ``accuracy``, ``kl``) is the
    members' mean, and ``member_<i>_score`` is member ``i``'s ``score``.  The
    members' proxies encode an architecture alike (one method, one space):
    the first member's encodes for all."""

    def __init__(self, scorers: Sequence[CandidateScorer]):
        if len(scorers) < 2:
            raise ValueError(f"an ensemble needs at least 2 scorers, got {len(scorers)}")
        if len({s.cfg.candidates_per_pass for s in scorers}) != 1:
            raise ValueError("the ensemble's scorers score different numbers of candidates per pass")
        self.scorers = list(scorers)
        self.proxy = scorers[0].proxy
        self.cfg = scorers[0].cfg

    @property
    def trace_count(self) -> int:
        return sum(s.trace_count for s in self.scorers)

    def score_encodings(self, encodings: Sequence[Dict[str, np.ndarray]]) -> List[Dict[str, float]]:
        per = [s.score_encodings(encodings) for s in self.scorers]
        return [{**{k: float(np.mean([p[i][k] for p in per])) for k in per[0][i]},
                 **{member_score_key(j): p[i]["score"] for j, p in enumerate(per)}} for i in range(len(encodings))]


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
    raise ValueError(f"unknown --ranking={mode!r}; choose from {', '.join(RANKINGS)}")
