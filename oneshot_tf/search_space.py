"""The two interfaces every method of the package implements.

A *search space* knows architectures as data: it samples them, validates
them, turns them into JSON and back, encodes them as fixed-shape arrays that
enter compiled steps as tensors, and builds the stand-alone Keras model of
one.  A *proxy* (the one-shot model, later a SMASH or GHN hypernetwork) is
trained once and then scores many candidates, each given as its encoding.

Binaries, scoring, retraining and export only talk to these two interfaces
(and to the method registry, ``oneshot_tf.registry``, that makes them), so a
new method plugs in by implementing them and registering.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import numpy as np


class ArchitectureError(ValueError):
    """An architecture that is not part of its search space.

    The message names the offending part (for cell spaces: the block) and
    the problem.
    """


def hyperparameter_value(values: Mapping[str, Any], name: str, part: str) -> Any:
    """``values[name]``, or an ``ArchitectureError`` naming ``part`` (e.g.
    ``"block 2"``) and the missing hyperparameter."""
    try:
        return values[name]
    except KeyError:
        raise ArchitectureError(f"{part}: hyperparameter {name!r} missing") from None


def index_set(indices: Iterable[int]) -> str:
    """A set of input indices as a hyperparameter value: ``(0, 3)`` -> ``"0+3"``."""
    return "+".join(str(int(i)) for i in indices)


def parse_index_set(value: Any, part: str) -> Tuple[int, ...]:
    """The inverse of ``index_set``; an ``ArchitectureError`` naming ``part``
    for a malformed value."""
    try:
        return tuple(int(u) for u in str(value).split("+"))
    except ValueError:
        raise ArchitectureError(f"{part}: malformed inputs value {value!r}") from None


def widened_filters(filters: int, multiplier: float) -> int:
    """``filters * multiplier``, a whole number of at least 1 (for
    ``SearchSpace.widened`` of a space with an ``F``), or a ``ValueError``
    naming both."""
    out = filters * multiplier
    if multiplier <= 0 or abs(out - round(out)) > 1e-9 or round(out) < 1:
        raise ValueError(f"width multiplier {multiplier} does not give a whole number of filters from "
                         f"F={filters} (F x {multiplier} = {out:g})")
    return int(round(out))


def canonical_json(obj: Any) -> str:
    """Deterministic JSON text (sorted keys, no spaces) used for ids."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


@dataclasses.dataclass(frozen=True)
class StandaloneOptions:
    """How a stand-alone model is built, the same for every search space.

    ``mean`` and ``std`` are per-channel pixel statistics (0..255 units) that
    the model's first layer standardizes uint8 images with (``None``: 0 and
    255); ``bn_momentum`` and ``bn_epsilon`` set its batch normalization
    (suit the momentum to the number of training steps: 0.99 needs
    thousands); ``fused_bn`` runs it with TensorFlow's fused kernel in
    training (``layers.FusedBatchNormalization``: the same values, faster)
    instead of Keras' own ops.
    """

    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3
    fused_bn: bool = True

    def __post_init__(self):
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))
        if not 0.0 <= self.bn_momentum < 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1), got {self.bn_momentum}")
        if self.bn_epsilon <= 0:
            raise ValueError(f"bn_epsilon must be positive, got {self.bn_epsilon}")

    def batch_norm(self, name: str):
        """The batch normalization layer of a stand-alone model (a
        ``keras.layers.BatchNormalization``)."""
        import keras  # this module itself stays free of TensorFlow

        from oneshot_tf.layers import FusedBatchNormalization
        cls = FusedBatchNormalization if self.fused_bn else keras.layers.BatchNormalization
        return cls(momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=name)


class SearchSpace(abc.ABC):
    """A set of architectures.

    Architectures are immutable Python values; ``to_json``/``from_json``
    convert them to and from plain JSON-able dicts, ``encode`` turns one into
    a dict of fixed-shape ``float32`` arrays (the same shapes for every
    architecture of the space, so one traced function serves them all).
    """

    #: short registry name of the space, written into config.json
    name: str = ""

    # -- definition --------------------------------------------------------
    @abc.abstractmethod
    def get_config(self) -> Dict[str, Any]:
        """JSON-able definition from which ``from_config`` rebuilds the space."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Mapping[str, Any]) -> "SearchSpace":
        ...

    @abc.abstractmethod
    def size(self) -> int:
        """Number of distinct architectures in the space."""

    # -- architectures as data --------------------------------------------
    @abc.abstractmethod
    def sample(self, rng: np.random.Generator) -> Any:
        """One architecture drawn from the space's documented distribution."""

    @abc.abstractmethod
    def validate(self, arch: Any) -> Any:
        """Return ``arch`` if it belongs to the space, else raise ArchitectureError."""

    @abc.abstractmethod
    def to_json(self, arch: Any) -> Dict[str, Any]:
        ...

    @abc.abstractmethod
    def from_json(self, obj: Any) -> Any:
        """Parse (a dict or JSON text) and validate; raises ArchitectureError."""

    @abc.abstractmethod
    def encode(self, arch: Any) -> Dict[str, np.ndarray]:
        """Fixed-shape float32 arrays describing ``arch`` for compiled steps."""

    def arch_id(self, arch: Any) -> str:
        """A stable id: the first 16 hex digits of SHA-1 of the canonical JSON."""
        return hashlib.sha1(canonical_json(self.to_json(arch)).encode()).hexdigest()[:16]

    def sample_at(self, seed: int, index: int, attempt: int = 0) -> Any:
        """The ``attempt``-th draw for position ``index`` of the sequence of
        ``seed``: ``sample(numpy.random.default_rng([seed, index, attempt]))``.
        Random search and the random oracle both use it, so a position's
        candidate depends only on (seed, index) and resumes identically."""
        return self.sample(np.random.default_rng([int(seed), int(index), int(attempt)]))

    def sample_unique(self, n: int, seed: int) -> list:
        """``n`` distinct architectures drawn with ``seed``: position ``i``
        holds the first of ``sample_at(seed, i, 0), sample_at(seed, i, 1), ...``
        not seen before (the sequence ``RandomArchitectureOracle`` proposes)."""
        if n > self.size():
            raise ValueError(f"asked for {n} distinct architectures, the space has {self.size()}")
        seen, out = set(), []
        for index in range(n):
            attempt = 0
            while True:
                arch = self.sample_at(seed, index, attempt)
                key = self.arch_id(arch)
                if key not in seen:
                    break
                attempt += 1
            seen.add(key)
            out.append(arch)
        return out

    # -- keras-tuner ---------------------------------------------------------
    @abc.abstractmethod
    def declare_hyperparameters(self, hp) -> None:
        """Declare every decision of the space on a ``keras_tuner.HyperParameters``."""

    @abc.abstractmethod
    def to_hyperparameters(self, arch: Any) -> Dict[str, Any]:
        """The hyperparameter values (name -> value) of ``arch``."""

    @abc.abstractmethod
    def from_hyperparameters(self, values: Mapping[str, Any]) -> Any:
        """The architecture of hyperparameter values (validated)."""

    def perturb(self, arch: Any, rng: np.random.Generator, rate: float) -> Optional[Any]:
        """``arch`` with each of its decisions resampled with probability
        ``rate`` (at least one), for the refinement and evolution searches.
        The default, ``None``, lets them resample hyperparameter values one by
        one, right for spaces whose every combination of values is an
        architecture; a space whose decisions vary in number or constrain one
        another (SMASH's memory banks) perturbs architectures itself."""
        return None

    # -- stand-alone models ------------------------------------------------
    @abc.abstractmethod
    def build_model(self, arch: Any, *, input_shape, num_classes: int,
                    options: Optional[StandaloneOptions] = None):
        """The stand-alone Keras model of ``arch`` (uint8 images in, float32
        logits out), built as ``options`` says (default ``StandaloneOptions()``)."""

    def widened(self, multiplier: float) -> "SearchSpace":
        """The same space with every architecture's width scaled by
        ``multiplier`` (retraining a winner wider than it was searched, as the
        one-shot paper retrains F=16 winners at F=64).  Architectures of this
        space are architectures of the widened one.  The default supports
        only ``multiplier == 1``."""
        if multiplier == 1:
            return self
        raise ValueError(f"the {self.name or type(self).__name__} search space cannot be widened "
                         f"(asked for x{multiplier}); use a width multiplier of 1")

    def width(self) -> Optional[float]:
        """The space's width (for example the cell space's F), recorded with
        a retrained winner's metrics; ``None`` where a space has no one width."""
        return None

    @abc.abstractmethod
    def count_params(self, arch: Any, *, input_shape, num_classes: int) -> int:
        """Trainable + non-trainable parameters of the stand-alone model."""

    @abc.abstractmethod
    def count_flops(self, arch: Any, *, input_shape, num_classes: int) -> int:
        """Multiply-adds of one stand-alone forward pass on one image."""

    def describe(self, arch: Any) -> str:
        """Human-readable one-line description (default: canonical JSON)."""
        return canonical_json(self.to_json(arch))

    def graph(self, arch: Any) -> Dict[str, Any]:
        """The repeated unit of ``arch`` (e.g. the cell) as a directed acyclic graph.

        Returns ``{"nodes": [{"id": str, "label": str, "kind": str}, ...],
        "edges": [[src_id, dst_id], ...]}`` with the nodes in topological
        order (every edge goes from an earlier node to a later one).  Ids are
        unique within the graph; labels are short human-readable names; kinds
        are free-form strings that group nodes (e.g. ``"input"``, ``"op"``,
        ``"combine"``, ``"output"``).  Plots draw it
        (``oneshot_tf.plots.architecture_png``) and graph-based proxies read
        it.  Raises ArchitectureError for an architecture outside the space.
        Optional: the default raises NotImplementedError.
        """
        raise NotImplementedError(f"{type(self).__name__} does not describe architectures as graphs")
