"""The hypernet of a Graph HyperNetwork: node embeddings to every parameter
of a candidate network.

``H`` (equation 8) is an MLP shared by all nodes (the paper: 2 x 64).  As
the appendix describes, its last layer has one output branch per kind of
parameter (a *role*: the depthwise kernel of a separable op's first
convolution, a reduction's BN gamma, ...), and smaller kernels are sliced
from the largest: the 3x3, 5x5 and 7x7 separable ops share branches of 7x7
kernels, a 3x3 kernel being the centre of the generated 7x7.  Channels are
generated in chunks of ``chunk_channels`` and tiled to a tensor's size
(GHN-2's tiling), so one branch serves every stage's width.

Parameters of a choice block's input (the BN and 1x1 convolution over the
concatenation of the chosen inputs) are generated per incoming edge, from
the concatenation of the source's and the block's embeddings (the
appendix's edge activations, "allowing the dimensionality of the predicted
bottleneck weights to be proportional to the number of incoming edges"):
the rows that read input ``j`` come from edge ``j``.

Generated values: kernels as the branch gives them, or, with
``normalization="fan_in"`` (GHN-2's parameter normalization), scaled by
``sqrt(2 / fan_in)`` (``fan_in``: kernel height x width x input channels,
1 input channel for a depthwise kernel); BN ``gamma = 1 + output`` and
``beta = output``; the head's bias as given.  The network's batch
normalization always uses the statistics of the batch (group) it runs on,
during training and scoring alike, with the generated gamma/beta, so no
running statistics are kept for random architectures.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

NORMALIZATIONS = ("none", "fan_in")


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One generated tensor: a variable of the network that runs candidates.

    ``role``: the output branch; ``slot``: the graph node whose embedding
    generates it (``-1`` for edge-generated block inputs); ``tile_axes``: the
    channel axes a chunk is tiled along (other axes are sliced, spatial ones
    centred); ``edge``: ``(cell, block, axis, channels)`` for a block input's
    parameters, whose ``axis`` is split into ``channels`` per input."""

    index: int
    shape: Tuple[int, ...]
    role: str
    kind: str                      # kernel | depthwise | gamma | beta | bias
    slot: int = -1
    tile_axes: Tuple[int, ...] = ()
    edge: Optional[Tuple[int, int, int, Tuple[int, ...]]] = None

    def to_json(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["edge"] = None if self.edge is None else [self.edge[0], self.edge[1], self.edge[2], list(self.edge[3])]
        return out

    @classmethod
    def from_json(cls, d) -> "ParamSpec":
        d = dict(d)
        d["shape"], d["tile_axes"] = tuple(d["shape"]), tuple(d["tile_axes"])
        if d.get("edge") is not None:
            c, b, axis, ch = d["edge"]
            d["edge"] = (int(c), int(b), int(axis), tuple(int(x) for x in ch))
        return cls(**d)

    def part_shapes(self) -> List[Tuple[int, ...]]:
        """The shape generated per source: the whole tensor, or one per
        incoming edge for a block input."""
        if self.edge is None:
            return [self.shape]
        axis = self.edge[2]
        return [self.shape[:axis] + (c,) + self.shape[axis + 1:] for c in self.edge[3]]

    def fan_in(self) -> int:
        if self.kind == "depthwise":
            return int(np.prod(self.shape[:-2]))
        return int(np.prod(self.shape[:-1]))


def chunk_shapes(specs: Sequence[ParamSpec], chunk_channels: int) -> Dict[str, Tuple[int, ...]]:
    """Per role, the shape its branch generates: the largest size of each
    axis over the role's tensors, capped at ``chunk_channels`` on tile axes."""
    out: Dict[str, List[int]] = {}
    for s in specs:
        for shape in s.part_shapes():
            cur = out.setdefault(s.role, [0] * len(shape))
            if len(cur) != len(shape):
                raise ValueError(f"role {s.role!r} holds tensors of different ranks")
            for a, d in enumerate(shape):
                cur[a] = max(cur[a], min(d, chunk_channels) if a in s.tile_axes else d)
    return {r: tuple(v) for r, v in out.items()}


def fit(chunk: tf.Tensor, shape: Sequence[int], tile_axes: Sequence[int]) -> tf.Tensor:
    """``chunk`` ``[B, *chunk_shape]`` to ``[B, *shape]``: axes in
    ``tile_axes`` tiled (when larger) and cut from the start, the others cut
    from the centre (a 3x3 kernel from a 7x7 one)."""
    src = chunk.shape[1:]
    reps = [1] + [math.ceil(d / s) if a in tile_axes else 1 for a, (d, s) in enumerate(zip(shape, src))]
    if any(r > 1 for r in reps):
        chunk = tf.tile(chunk, reps)
    begin, size = [0], [-1]
    for a, d in enumerate(shape):
        have = int(chunk.shape[a + 1])
        if d > have:
            raise ValueError(f"axis {a} of size {d} exceeds the generated {have} and is not a tile axis")
        begin.append(0 if a in tile_axes else (have - d) // 2)
        size.append(int(d))
    return tf.slice(chunk, begin, size)


def _mlp(hidden: Sequence[int], name: str) -> List[keras.layers.Layer]:
    return [keras.layers.Dense(h, activation="relu", name=f"{name}_{i}") for i, h in enumerate(hidden)]


def _run(layers, x):
    for layer in layers:
        x = layer(x)
    return x


class WeightGenerator(keras.layers.Layer):
    """``call(h [B, N, D], edge_source [B, cells, blocks, inputs])`` ->
    one tensor ``[B, *spec.shape]`` per spec, in spec order.

    ``specs``: the ``ParamSpec``s (or their JSON); ``hidden``: the shared
    MLP (the paper's 2 x 64); one output branch per role;
    ``edge_destinations``: for every flattened ``(cell, block, input)`` of
    ``edge_source``, the slot of the block's input node (the edge's head)."""

    def __init__(self, specs, edge_destinations=(), hidden=(64, 64), chunk_channels: int = 16,
                 normalization: str = "none", **kwargs):
        super().__init__(**kwargs)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
        if int(chunk_channels) < 1:
            raise ValueError(f"chunk_channels must be >= 1, got {chunk_channels}")
        self.specs = [s if isinstance(s, ParamSpec) else ParamSpec.from_json(s) for s in specs]
        self.edge_destinations = tuple(int(v) for v in edge_destinations)
        self.hidden = tuple(int(h) for h in hidden)
        self.chunk_channels = int(chunk_channels)
        self.normalization = normalization
        self.chunks = chunk_shapes(self.specs, self.chunk_channels)
        self.roles = sorted(self.chunks)
        self.node_trunk = _mlp(self.hidden, "node")
        self.edge_trunk = _mlp(self.hidden, "edge")
        self.branches = {r: keras.layers.Dense(int(np.prod(self.chunks[r])), name="branch_" + r.replace("/", "_"))
                         for r in self.roles}
        self._node_roles = sorted({s.role for s in self.specs if s.edge is None})
        self._edge_roles = sorted({s.role for s in self.specs if s.edge is not None})

    def build(self, input_shape):
        d = int(input_shape[0][-1])
        shape = (None, d)
        for layer in self.node_trunk:
            layer.build(shape)
            shape = (None, layer.units)
        shape = (None, 2 * d)
        for layer in self.edge_trunk:
            layer.build(shape)
            shape = (None, layer.units)
        for r in self.roles:
            self.branches[r].build((None, self.hidden[-1] if self.hidden else d))
        self.built = True

    def _chunks(self, features, role):
        """Branch ``role`` on features ``[B, n, H]`` -> ``[B, n, *chunk]``."""
        out = self.branches[role](features)
        return tf.reshape(out, tf.concat([tf.shape(out)[:2], self.chunks[role]], 0))

    def call(self, inputs):
        h, edge_source = inputs
        h = tf.convert_to_tensor(h)
        b = tf.shape(h)[0]
        node_features = _run(self.node_trunk, h)                              # [B, N, H]
        edge_source = tf.cast(edge_source, tf.int32)                          # [B, C, NB, MI]
        flat_src = tf.reshape(edge_source, [b, -1])
        chosen = tf.cast(flat_src >= 0, h.dtype)
        src_h = tf.gather(h, tf.maximum(flat_src, 0), batch_dims=1)           # [B, E, D]
        edge_features = None
        if self._edge_roles:
            if len(self.edge_destinations) != int(flat_src.shape[1]):
                raise ValueError(f"edge_source holds {flat_src.shape[1]} edges, the generator was made for "
                                 f"{len(self.edge_destinations)}")
            dst_h = tf.gather(h, list(self.edge_destinations), axis=1)        # [B, E, D]
            edge_features = _run(self.edge_trunk, tf.concat([src_h, dst_h], -1))  # [B, E, H]
        shape_e = edge_source.shape[1:]
        out: List[Optional[tf.Tensor]] = [None] * len(self.specs)
        for role in self._node_roles:
            specs = [(k, s) for k, s in enumerate(self.specs) if s.role == role]
            chunks = self._chunks(tf.gather(node_features, [s.slot for _, s in specs], axis=1), role)
            for n, (k, s) in enumerate(specs):
                out[k] = self._finish(fit(chunks[:, n], s.shape, s.tile_axes), s)
        for role in self._edge_roles:
            chunks = self._chunks(edge_features, role)                         # [B, E, *chunk]
            for k, s in enumerate(self.specs):
                if s.role != role:
                    continue
                cell, block, axis, channels = s.edge
                parts = []
                for j, shape in enumerate(s.part_shapes()):
                    e = (cell * shape_e[1] + block) * shape_e[2] + j
                    keep = tf.reshape(chosen[:, e], [-1] + [1] * len(shape))
                    parts.append(fit(chunks[:, e], shape, s.tile_axes) * keep)
                out[k] = self._finish(tf.concat(parts, axis=axis + 1), s)
        return out

    def _finish(self, x, spec: ParamSpec):
        if spec.kind == "gamma":
            return 1.0 + x
        if spec.kind in ("kernel", "depthwise") and self.normalization == "fan_in":
            return x * math.sqrt(2.0 / spec.fan_in())
        return x

    def get_config(self):
        return {**super().get_config(), "specs": [s.to_json() for s in self.specs],
                "edge_destinations": list(self.edge_destinations), "hidden": list(self.hidden),
                "chunk_channels": self.chunk_channels, "normalization": self.normalization}
