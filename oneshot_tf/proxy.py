"""The proxy interface: a model trained once that scores many candidates."""

from __future__ import annotations

import abc
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from oneshot_tf.search_space import SearchSpace
from oneshot_tf.training import TrainTask


class Proxy(TrainTask):
    """A trainable stand-in for stand-alone training (one-shot, SMASH, GHN).

    Training goes through the package's one loop (``training.train``).
    Scoring goes through ``candidates_logits`` (``scoring.CandidateScorer``):
    ``K`` candidate encodings (stacked ``encode`` outputs, axis 0 of
    length ``K``), each evaluated on the same examples, in one compiled
    function that serves every candidate.  Its default tiles the examples
    and calls ``candidate_logits``; a proxy with a cheaper way (the one-shot
    model runs one candidate's own ops per loop iteration) overrides it.
    """

    space: SearchSpace

    #: Examples per scoring group: the unit of batch statistics when a
    #: candidate is evaluated (the one-shot model's ghost batch).  Scoring
    #: evaluates every candidate on whole groups.
    group_size: int = 32

    def encode(self, arch: Any) -> Dict[str, Any]:
        """The fixed-shape arrays that stand for ``arch`` in the proxy's
        compiled steps (``candidates_logits``).  Scoring and the keras-tuner
        search call this, never ``space.encode`` directly, so a proxy may
        encode architectures its own way (a graph network reads graphs);
        the default is ``space.encode(arch)``."""
        return self.space.encode(arch)

    def validate_batch(self, batch_size: int, num_replicas: int) -> None:
        """Refuse a global training batch the proxy cannot train on, naming
        the flags (``ValueError``); called before any work starts.  The
        default asks for an equal share per replica."""
        if batch_size % num_replicas:
            raise ValueError(f"--batch_size={batch_size} does not split over {num_replicas} replicas")

    @abc.abstractmethod
    def candidate_logits(self, images: tf.Tensor, encodings: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Logits ``[K * g, num_classes]`` of ``images`` ``[K * g, H, W, C]``,
        a batch of ``K`` consecutive groups of ``g`` examples, group ``k``
        evaluated as candidate ``k`` of ``encodings``."""

    def candidates_logits(self, images: tf.Tensor, encodings: Mapping[str, tf.Tensor],
                          group_size: int) -> tf.Tensor:
        """Logits ``[K, N, num_classes]``: every one of the ``K`` candidates
        on all ``N`` ``images``, ``N / group_size`` groups that each get
        their own batch statistics (a ghost batch of the one-shot model)."""
        k = int(next(iter(encodings.values())).shape[0])
        n = int(images.shape[0])
        groups = n // group_size
        tiled = tf.tile(images, [k] + [1] * (len(images.shape) - 1))
        if groups > 1:
            encodings = {name: tf.repeat(v, groups, axis=0) for name, v in encodings.items()}
        return tf.reshape(self.candidate_logits(tiled, encodings), [k, n, -1])

    def reference_encodings(self, count: int, seed: int) -> Optional[List[Dict[str, Any]]]:
        """The reference architectures the KL score compares candidates
        against: ``count`` encodings (``encode`` layout), reference ``j``
        evaluated on group ``j`` of the KL examples (a group is the unit of
        batch statistics, like a candidate's).  Deterministic given ``seed``.
        ``None`` (the default): the proxy has no reference, and candidates
        get no KL score."""
        del count, seed
        return None

    @abc.abstractmethod
    def get_config(self) -> Dict[str, Any]:
        """JSON-able settings of the proxy (written into config.json)."""


def stack_encodings(encodings: Sequence[Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """``encode`` outputs stacked on a new axis 0 (one array per name)."""
    return {k: np.stack([e[k] for e in encodings]) for k in encodings[0]}


def map_candidates(one, k: int) -> tf.Tensor:
    """``[k, ...]`` float32: ``one(i)`` for each of ``k`` candidates, as an
    in-graph loop (``one`` is traced once; a hypernetwork proxy generates and
    runs one candidate per iteration)."""
    if k == 1:
        return one(0)[None]
    return tf.map_fn(one, tf.range(k), fn_output_signature=tf.float32, parallel_iterations=2)


class PerCandidateProxy(Proxy):
    """A proxy that evaluates candidates one at a time in an in-graph loop
    (a hypernetwork: generate a candidate's weights, run its network).

    It implements ``per_candidate``; ``candidates_logits`` (every candidate
    on the same images) and ``candidate_logits`` (candidate ``k`` on group
    ``k`` of the images) both go through it."""

    _stack = staticmethod(stack_encodings)

    @abc.abstractmethod
    def per_candidate(self, images: tf.Tensor, encodings: Mapping[str, tf.Tensor], num_ghost: int,
                      shared_images: bool) -> tf.Tensor:
        """Logits ``[K, n, num_classes]`` of the ``K`` candidates of
        ``encodings``, each on ``images`` ``[n, H, W, C]`` when
        ``shared_images``, else on its own ``images[k]`` (``[K, n, H, W,
        C]``), in ``num_ghost`` groups with their own batch statistics."""

    def candidates_logits(self, images: tf.Tensor, encodings: Mapping[str, tf.Tensor],
                          group_size: int) -> tf.Tensor:
        return self.per_candidate(images, encodings, int(images.shape[0]) // group_size, True)

    def candidate_logits(self, images: tf.Tensor, encodings: Mapping[str, tf.Tensor]) -> tf.Tensor:
        k = int(next(iter(encodings.values())).shape[0])
        n = int(images.shape[0]) // k
        per = tf.reshape(images, [k, n] + list(images.shape[1:]))
        out = self.per_candidate(per, encodings, max(1, n // self.group_size), False)
        return tf.reshape(out, [k * n, -1])
