"""The proxy interface: a model trained once that scores many candidates."""

from __future__ import annotations

import abc
from typing import Any, Dict, Mapping

import tensorflow as tf

from oneshot_tf.search_space import SearchSpace
from oneshot_tf.training import TrainTask


class Proxy(TrainTask):
    """A trainable stand-in for stand-alone training (one-shot, SMASH, GHN).

    Training goes through the package's one loop (``training.train``).
    Scoring goes through ``candidate_logits``: a batch made of ``K``
    consecutive groups of equal size and ``K`` candidate encodings (stacked
    ``space.encode`` outputs, axis 0 of length ``K``), group ``k`` evaluated
    as candidate ``k``.  One compiled function serves every candidate.
    """

    space: SearchSpace

    @abc.abstractmethod
    def candidate_logits(self, images: tf.Tensor, encodings: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Logits ``[K * g, num_classes]`` of ``images`` ``[K * g, H, W, C]``."""

    @abc.abstractmethod
    def reference_encoding(self) -> Dict[str, Any]:
        """Encoding of the reference the KL score compares against."""

    @abc.abstractmethod
    def get_config(self) -> Dict[str, Any]:
        """JSON-able settings of the proxy (written into config.json)."""
