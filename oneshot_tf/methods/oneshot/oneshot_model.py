"""The one-shot model: every op and every input path of the cell space.

Architectures and path-dropout decisions reach the model as mask tensors,
one row per ghost batch:

* ``input_mask`` ``[G, num_blocks, num_blocks + 1]``: 1 keeps input ``j`` of
  block ``i`` (padding columns beyond ``2 + i`` are ignored);
* ``op_mask`` ``[G, num_blocks, num_ops]``: 1 keeps op ``o`` of block ``i``.

Masks without the ghost axis (``[num_blocks, num_blocks + 1]`` and
``[num_blocks, num_ops]``, one ``space.encode`` output) are one architecture
shared by every ghost batch; ``call(..., num_ghost=G)`` then says how many
ghost batches the batch holds (default 1).  That is how candidates are
scored (``candidates_logits``: several candidates on the same images, the
stem run once): the model runs the candidate's own inputs and ops only, each
under a ``tf.cond`` on its mask entry, with no mask multiplications, gathers
or scatters, and normalizes each state once for all its readers, so one
candidate costs less than its own stand-alone network, and it compiles with
XLA (static shapes).

The batch (axis 0) holds ``G`` consecutive ghost batches of equal size; each
gets its own masks and its own batch statistics (ghost batch norm).  The same
masks apply to every cell.  A zeroed input is removed from the block's
concatenation (its channels are multiplied by 0 after BN-ReLU, before the
1x1 convolution); a zeroed op contributes 0 to the block's sum.  Kept paths
are not rescaled, so the masked model computes exactly what the stand-alone
model of the same architecture computes with the same weights (see
``models.transfer_oneshot_weights`` and the tests).

With ``skip_inactive=True`` an op with weights that no ghost batch keeps is
skipped under a ``tf.cond`` (no layer ever runs on an empty batch), and one
that some keep is computed only on the ghost batches that keep it (gathered
and scattered back inside the one compiled step; with one or two ghost
batches, on the whole batch, masked: ``ChoiceBlock._run_kept_ghosts``), so a
training step gets cheaper as path dropout grows.  With
``static_shapes=True`` (for XLA/TPU) shapes stay static: a kept op runs on
the whole batch, masked, and ``tf.cond`` skips an op or input only when no
ghost batch keeps it.  Masks are 0/1.

Structure: small Keras layers, one per node of the network plan (``Stem``,
``Reduction``, ``OneShotCell`` of ``ChoiceBlock``s of ``OpPath``s, ``Head``),
made by the plan walk that the stand-alone model and the cost counts share
(``cell_space.walk_plan``), each creating its variables in ``build`` from
shapes.  Every node layer reads the states it depends on, already normalized
per ghost batch (BN-ReLU-Conv order: a state is read only through a BN, so
its statistics are computed once when it is made and each reader applies only
its own gamma/beta, with the ReLU, in one fused kernel), and returns its own
normalized state (the head: float32 logits).  One block computation
(``ChoiceBlock.call``) serves every mode (``BlockMode``): per-ghost masks,
shared masks (scoring), static shapes, ``skip_inactive`` off.

Mixed precision: built under a mixed global policy (``oneshot_tf.precision``),
convolutions compute in bfloat16/float16 with float32 variables.  Float32
islands: ``Standardize`` (cast back to the compute dtype), every ghost batch
norm (statistics and normalization; gamma/beta never autocast), the head's
pooling and logits layer (the model returns float32 logits), the masks (cast
to the activation dtype where they multiply), and ``path_squared_norms`` /
``masked_l2``.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from oneshot_tf.layers import Standardize
from oneshot_tf.methods.oneshot.cell_space import (BlockNode, CellArchitecture, CellSearchSpace, PlanVisitor,
                                                   op_spec, walk_plan)
from oneshot_tf.methods.oneshot.layers import (GhostBatchNorm, affine_relu, block_input_layers, head_layers,
                                               normalize, op_layers, reduction_layers)

_PACKAGE = "oneshot_tf"


@dataclasses.dataclass(frozen=True)
class BlockMode:
    """How a block computes its paths.

    ``shared``: one architecture for every ghost batch (masks ``[k]`` and
    ``[num_ops]``): each kept path runs unmasked under a ``tf.cond`` on its
    mask entry.  Otherwise per-ghost masks (``[G, k]``, ``[G, num_ops]``):
    with ``skip_inactive`` a path no ghost batch keeps is skipped under a
    ``tf.cond``; a kept op with weights runs on the ghost batches keeping it
    (gathered, when there are more than two), or on the whole batch, masked
    (with ``static_shapes`` or at most two ghost batches); without
    ``skip_inactive`` every path runs on the whole batch, masked.
    """

    shared: bool = False
    skip_inactive: bool = True
    static_shapes: bool = False


def mask_ghost(x, mask, num_ghost: int):
    """Multiply ghost batch ``g`` of ``x`` by ``mask[g]`` (``[G]`` or ``[G, C]``)."""
    shape = tf.shape(x)
    xg = tf.reshape(x, tf.concat([[num_ghost, -1], shape[1:]], 0))
    m = tf.cast(mask, x.dtype)
    rank = len(x.shape)
    if len(mask.shape) == 2:
        m = tf.reshape(m, tf.concat([[num_ghost] + [1] * (rank - 1), tf.shape(m)[-1:]], 0))
    else:
        m = tf.reshape(m, [num_ghost] + [1] * rank)
    y = tf.reshape(xg * m, shape)
    y.set_shape(x.shape)
    return y


def run_layers(layers, x, num_ghost, ghost_size=None):
    """``x`` through ``layers`` in turn, ghost BNs with ``num_ghost`` ghost
    batches (of ``ghost_size`` examples when ``num_ghost`` is a tensor).
    Every layer sequence of the model runs through here."""
    for layer in layers:
        if isinstance(layer, GhostBatchNorm):
            x = layer(x, num_ghost=num_ghost, ghost_size=ghost_size)
        else:
            x = layer(x)
    return x


def add_path(total, keep, fn, zeros, num_ghost, mode: BlockMode, *, subset=None, cheap=False):
    """``total + keep * fn()`` for one path (an input part or an op) of a block.

    ``keep`` is the path's mask entry: a scalar (``mode.shared``) or ``[G]``.
    Shared: ``fn`` runs unmasked under a ``tf.cond`` (the first kept term
    replaces ``zeros``).  Per ghost batch: ``fn()`` masked, under a
    ``tf.cond`` on some ghost batch keeping it when ``mode.skip_inactive``
    (``subset(keep)``, the path on the keeping ghost batches only, instead of
    the masked whole batch when given and shapes are dynamic); ``cheap``
    paths (weightless ops) run on the whole batch, masked, without the
    ``tf.cond`` when shapes are dynamic.
    """
    if mode.shared:
        out = tf.cond(keep > 0, fn if total is None else (lambda: total + fn()),
                      lambda: zeros if total is None else total)
        out.set_shape(zeros.shape)
        return out

    def masked():
        return mask_ghost(fn(), keep, num_ghost)

    if not mode.skip_inactive or (cheap and not mode.static_shapes):
        y = masked()
    else:
        run = masked if mode.static_shapes or subset is None else (lambda: subset(keep))
        y = tf.cond(tf.reduce_any(keep > 0), run, lambda: zeros)
        y.set_shape(zeros.shape)
    return y if total is None else total + y


def _zeros(x, channels: int):
    """Zeros shaped like ``x`` but with ``channels`` channels."""
    if x.shape[:-1].is_fully_defined():
        return tf.zeros(x.shape[:-1].concatenate([channels]), x.dtype)
    return tf.zeros(tf.concat([tf.shape(x)[:-1], [channels]], 0), x.dtype)


def _slices(sizes: Sequence[int]):
    """``(start, end)`` of each part of a concatenation of ``sizes`` channels."""
    ends = np.cumsum(sizes)
    return [(int(e - c), int(e)) for e, c in zip(ends, sizes)]


def _squared(weights) -> tf.Tensor:
    total = tf.constant(0.0)
    for w in weights:
        total += tf.reduce_sum(tf.square(tf.cast(w, tf.float32)))
    return total


def _kernels(layers) -> List[tf.Variable]:
    """The regularized weights of ``layers`` (kernels; not BN parameters or biases)."""
    out = []
    for layer in layers:
        if isinstance(layer, keras.layers.SeparableConv2D):
            out += [layer.depthwise_kernel, layer.pointwise_kernel]
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            out.append(layer.kernel)
    return out


def _checkpoint_dependencies(owner, name: str, layers):
    """Make ``layers`` (a list attribute of ``owner``) checkpoint dependencies
    ``{name}{i}`` of ``owner``: TensorFlow checkpoints do not look into the
    lists Keras tracks."""
    for i, layer in enumerate(layers):
        owner._track_trackable(layer, name=f"{name}{i}", overwrite=True)


def _shape(s) -> Tuple:
    return tuple(None if d is None else int(d) for d in s)


def _build_sequence(layers, shape):
    for layer in layers:
        layer.build(shape)
        shape = _shape(layer.compute_output_shape(shape))
    return shape


class _Node(keras.layers.Layer):
    """A node of the plan: ``call(states, input_mask, op_mask, num_ghost=,
    mode=)`` on the normalized states it reads, returning its normalized
    state.  Masks are read by cells only."""

    def __init__(self, bn_epsilon: float = 1e-3, **kwargs):
        kwargs.setdefault("autocast", False)  # its layers autocast themselves
        super().__init__(**kwargs)
        self.bn_epsilon = float(bn_epsilon)

    def _bn(self, name):
        return GhostBatchNorm(epsilon=self.bn_epsilon, name=name)

    def path_norms(self) -> Iterator[Tuple[Optional[tuple], tf.Tensor]]:
        """``(path, sum of squared kernels)``: path ``None`` for weights every
        architecture uses, ``("input", i, j)`` / ``("op", i, o)`` otherwise."""
        yield None, _squared(_kernels(self._sequence()))

    def arch_layers(self, arch: CellArchitecture):
        """The weighted layers ``arch`` uses, with the input channels they read
        (``None``: all)."""
        for layer in self._sequence():
            if layer.weights:
                yield layer, None

    def _sequence(self):
        return []

    def get_config(self):
        return {**super().get_config(), "bn_epsilon": self.bn_epsilon}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Stem(_Node):
    """The 3x3 convolution on the standardized images."""

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.conv = keras.layers.Conv2D(self.filters, 3, padding="same", use_bias=False,
                                        kernel_initializer=keras.initializers.HeNormal(), name="stem_conv")

    def build(self, input_shape):
        self.conv.build(_shape(input_shape[0]))

    def call(self, states, input_mask=None, op_mask=None, num_ghost=1, mode=None):
        return normalize(run_layers([self.conv], states[0], num_ghost), num_ghost, self.bn_epsilon)

    def _sequence(self):
        return [self.conv]

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Reduction(_Node):
    """The fixed reduction between stages (``layers.reduction_layers``)."""

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.bn, _, self.pool, self.conv = reduction_layers(self.name, self.filters, self._bn)

    def build(self, input_shape):
        shape = _shape(input_shape[0])
        self.bn.build(shape)
        _build_sequence([self.pool, self.conv], shape)

    def call(self, states, input_mask=None, op_mask=None, num_ghost=1, mode=None):
        y = run_layers([self.pool, self.conv], affine_relu(states[0], self.bn), num_ghost)
        return normalize(y, num_ghost, self.bn_epsilon)

    def _sequence(self):
        return [self.bn, self.pool, self.conv]

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Head(_Node):
    """BN-ReLU, global average pooling and the logits layer (float32 logits)."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.bn, _, self.pool, self.dense = head_layers(self.num_classes, self._bn)

    def build(self, input_shape):
        shape = _shape(input_shape[0])
        self.bn.build(shape)
        _build_sequence([self.pool, self.dense], shape)

    def call(self, states, input_mask=None, op_mask=None, num_ghost=1, mode=None):
        y = run_layers([self.pool, self.dense], affine_relu(states[0], self.bn), num_ghost)
        return tf.cast(y, tf.float32)

    def _sequence(self):
        return [self.bn, self.pool, self.dense]

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class OpPath(keras.layers.Layer):
    """One op of a choice block (``layers.op_layers``; ``spec``, its
    ``cell_space.OpSpec``, says what kind of op it is)."""

    def __init__(self, op: str, filters: int, bn_epsilon: float = 1e-3, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.op, self.filters, self.bn_epsilon = op, int(filters), float(bn_epsilon)
        self.spec = op_spec(op)
        self.steps = op_layers(op, self.filters, lambda n: GhostBatchNorm(epsilon=self.bn_epsilon, name=n),
                               self.name)
        _checkpoint_dependencies(self, "step", self.steps)

    def build(self, input_shape):
        _build_sequence(self.steps, _shape(input_shape))

    def call(self, x, num_ghost=1, ghost_size=None, normalized=False):
        """The op on ``x``; ``normalized``: ``x`` already normalized per ghost
        batch, so the first BN applies only its gamma/beta (with the ReLU)."""
        steps = self.steps
        if normalized:
            x, steps = affine_relu(x, steps[0]), steps[2:]
        return run_layers(steps, x, num_ghost, ghost_size)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "op": self.op, "filters": self.filters, "bn_epsilon": self.bn_epsilon}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ChoiceBlock(keras.layers.Layer):
    """A choice block: BN-ReLU-1x1 convolution over its candidate inputs
    (concatenated), then the sum of its ops.

    ``call(cands, input_mask, op_mask, num_ghost=, mode=)``: ``cands`` the
    candidate inputs, normalized; the masks ``[G, >= k]`` and
    ``[G, num_ops]`` (or ``[>= k]`` and ``[num_ops]`` with ``mode.shared``).
    Returns the block's output (not normalized).
    """

    def __init__(self, filters: int, candidates: Sequence[int], ops: Sequence[str], bn_epsilon: float = 1e-3,
                 **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.filters, self.bn_epsilon = int(filters), float(bn_epsilon)
        self.candidates = tuple(int(c) for c in candidates)
        self.op_names = tuple(ops)
        self.input_bn, _, self.input_conv = block_input_layers(
            self.name, self.filters, lambda n: GhostBatchNorm(epsilon=self.bn_epsilon, name=n))
        self.ops = [OpPath(op, self.filters, self.bn_epsilon, name=f"{self.name}_{op}") for op in self.op_names]
        _checkpoint_dependencies(self, "op", self.ops)
        self._normed = tuple(o for o, op in enumerate(self.ops) if op.spec.starts_with_bn)

    @classmethod
    def from_node(cls, block: BlockNode, bn_epsilon: float):
        return cls(block.filters, block.candidates, block.ops, bn_epsilon, name=block.name)

    def build(self, input_shape):
        """``input_shape``: the candidate inputs' shapes (only the first is read)."""
        spatial = _shape(input_shape[0])[:-1]
        self.input_bn.build(spatial + (sum(self.candidates),))
        self.input_conv.build(spatial + (sum(self.candidates),))
        for op in self.ops:
            op.build(spatial + (self.filters,))

    def input_channel_index(self, inputs: Sequence[int]) -> np.ndarray:
        """Channel indices, in the all-inputs concatenation, of ``inputs``."""
        starts = np.cumsum((0,) + self.candidates)
        return np.concatenate([np.arange(starts[j], starts[j] + self.candidates[j]) for j in inputs])

    # -- the block computation ---------------------------------------------
    def call(self, cands, input_mask, op_mask, num_ghost=1, mode=BlockMode()):
        cands = list(cands)
        m_in = input_mask[..., : len(self.candidates)]
        h = self._input_node(cands, m_in, num_ghost, mode)
        zeros = _zeros(h, self.filters)
        h_hat = self._normalized(h, op_mask, num_ghost, mode)
        out = None
        for o, op in enumerate(self.ops):
            normed = o in self._normed
            x = h_hat if normed else h

            def run(op=op, x=x, normed=normed):
                return op(x, num_ghost=num_ghost, normalized=normed)

            def on_kept(keep, op=op, x=x, normed=normed):
                return self._run_kept_ghosts(op, x, keep, num_ghost, normed)

            out = add_path(out, op_mask[..., o], run, zeros, num_ghost, mode,
                           subset=None if op.spec.weightless else on_kept, cheap=op.spec.weightless)
        return out

    def _normalized(self, h, op_mask, num_ghost, mode):
        """``h`` normalized per ghost batch, once for all the ops that start
        with BN (under a ``tf.cond`` on some of them being kept)."""
        if not self._normed:
            return None
        if not mode.shared and not mode.skip_inactive:
            return normalize(h, num_ghost, self.bn_epsilon)
        keep = tf.reduce_max(tf.gather(op_mask, list(self._normed), axis=-1))
        h_hat = tf.cond(keep > 0, lambda: normalize(h, num_ghost, self.bn_epsilon), lambda: h)
        h_hat.set_shape(h.shape)
        return h_hat

    def _input_node(self, cands, mask, num_ghost, mode):
        """The block's input node.

        Per-ghost masks on dynamic shapes (CPU/GPU), or without
        ``skip_inactive``: one concatenated BN-ReLU-1x1 convolution over the
        whole batch with the dropped inputs' channels zeroed per ghost batch,
        no control flow (an input never runs on a subset of the ghost batches,
        so never on an empty one; a dropped input's slices of gamma, beta and
        the kernel get exactly zero gradient).  Otherwise (shared masks;
        static shapes with ``skip_inactive`` when some input is kept by no
        ghost batch) input by input (BN is per channel and a 1x1 convolution
        of a concatenation is the sum of convolutions of its parts), each
        under a ``tf.cond`` (``add_path``), so an input that is not kept
        costs nothing.  (Input by input on CPU too made the quick preset's
        training step compile ~30% longer and run slower, for a 1x1
        convolution's worth of work.)"""
        if not mode.shared and (not mode.skip_inactive or not mode.static_shapes):
            return self._concatenated(cands, mask, num_ghost)

        def parts():
            zeros = _zeros(cands[0], self.filters)
            total = None
            for j, (x, (lo, hi)) in enumerate(zip(cands, _slices(self.candidates))):
                total = add_path(total, mask[..., j], lambda x=x, lo=lo, hi=hi: self._input_part(x, lo, hi),
                                 zeros, num_ghost, mode)
            return total

        if mode.shared:
            return parts()
        every = tf.reduce_all(tf.reduce_any(mask > 0, axis=0))
        out = tf.cond(every, lambda: self._concatenated(cands, mask, num_ghost), parts)
        out.set_shape(cands[0].shape[:-1].concatenate([self.filters]))
        return out

    def _concatenated(self, cands, mask, num_ghost):
        x = tf.concat(cands, axis=-1) if len(cands) > 1 else cands[0]
        # channel c of the concatenation belongs to input owner[c]; a gather
        # with constant indices keeps shapes static (XLA, also in the gradient
        # of a tf.cond branch, where tf.repeat's is not).
        owner = np.repeat(np.arange(len(self.candidates)), self.candidates).astype(np.int32)
        ch_mask = tf.gather(mask, owner, axis=1)
        return run_layers([self.input_conv], mask_ghost(affine_relu(x, self.input_bn), ch_mask, num_ghost),
                          num_ghost)

    def _input_part(self, x_hat, lo, hi):
        """One input's share of the input node: BN-ReLU-1x1 conv with channels
        ``lo:hi`` of the block's gamma, beta and kernel."""
        y = affine_relu(x_hat, self.input_bn, lo, hi)
        kernel = tf.cast(self.input_conv.kernel[:, :, lo:hi, :], y.dtype)  # the conv's compute dtype
        return tf.nn.conv2d(y, kernel, strides=1, padding="VALID")

    @staticmethod
    def _run_kept_ghosts(op, h, keep, num_ghost, normalized):
        """``op`` on the ghost batches where ``keep > 0`` (at least one),
        zeros elsewhere.

        With one or two ghost batches, ``op`` runs on the whole batch (its
        batch norms with TensorFlow's fused kernel, one per ghost batch) and
        a ghost batch that drops it is zeroed.  With more, on the keeping
        ghost batches only: gathered, their batch norms computed with moments
        (their number is known only when the step runs), then scattered back
        into zeros of ``h``'s shape.  With two ghost batches, gathering could
        save at most half of the op's work, and measured on the quick
        preset's training step it cost more than that saved, in step time
        over the path-dropout schedule and in tracing and graph optimization
        (README, Benchmarks).
        """
        if num_ghost <= 2:
            y = op(h, num_ghost=num_ghost, normalized=normalized)
            return y if num_ghost == 1 else mask_ghost(y, keep, num_ghost)
        ghost = int(h.shape[0]) // num_ghost if h.shape[0] is not None else None
        idx = tf.where(keep > 0)[:, 0]
        shape = tf.shape(h)
        hg = tf.reshape(h, tf.concat([[num_ghost, -1], shape[1:]], 0))
        sel = tf.gather(hg, idx)
        y = op(tf.reshape(sel, tf.concat([[-1], shape[1:]], 0)), num_ghost=tf.size(idx, tf.int32),
               ghost_size=ghost, normalized=normalized)
        out = tf.scatter_nd(idx[:, None], tf.reshape(y, tf.shape(sel)), tf.shape(hg, out_type=tf.int64))
        out = tf.reshape(out, shape)
        out.set_shape(h.shape)
        return out

    # -- paths ---------------------------------------------------------------
    def path_norms(self):
        per_channel = tf.reduce_sum(tf.square(tf.cast(self.input_conv.kernel, tf.float32)), axis=[0, 1, 3])
        seg = np.repeat(np.arange(len(self.candidates)), self.candidates)
        per_input = tf.math.unsorted_segment_sum(per_channel, seg, len(self.candidates))
        for j in range(len(self.candidates)):
            yield ("input", j), per_input[j]
        for o, op in enumerate(self.ops):
            kernels = _kernels(op.steps)
            if kernels:
                yield ("op", o), _squared(kernels)

    def arch_layers(self, inputs: Sequence[int], ops: Sequence[str]):
        channels = self.input_channel_index(inputs)
        yield self.input_bn, channels
        yield self.input_conv, channels
        for op in self.ops:
            if op.op in ops:
                yield from ((layer, None) for layer in op.steps if layer.weights)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "candidates": list(self.candidates),
                "ops": list(self.op_names), "bn_epsilon": self.bn_epsilon}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class OneShotCell(_Node):
    """A cell: its choice blocks in turn, each reading the cell's two input
    states and the earlier blocks' outputs; the output is the concatenation
    of the blocks' outputs, each normalized once when it is made."""

    def __init__(self, blocks: Sequence[ChoiceBlock], **kwargs):
        super().__init__(**kwargs)
        self.blocks = [b if isinstance(b, ChoiceBlock) else keras.saving.deserialize_keras_object(b)
                       for b in blocks]
        _checkpoint_dependencies(self, "block", self.blocks)

    def build(self, input_shape):
        shapes = [_shape(s) for s in input_shape]
        for b in self.blocks:
            b.build(shapes[: len(b.candidates)])
            shapes.append(shapes[0][:-1] + (b.filters,))

    def call(self, states, input_mask=None, op_mask=None, num_ghost=1, mode=BlockMode()):
        cands = list(states)
        for i, b in enumerate(self.blocks):
            out = b(cands[: len(b.candidates)], input_mask[..., i, :], op_mask[..., i, :], num_ghost=num_ghost,
                    mode=mode)
            cands.append(normalize(out, num_ghost, self.bn_epsilon))
        return tf.concat(cands[len(states):], axis=-1)

    def path_norms(self):
        for i, b in enumerate(self.blocks):
            for (kind, j), value in b.path_norms():
                yield (kind, i, j), value

    def arch_layers(self, arch: CellArchitecture):
        for b, chosen in zip(self.blocks, arch.blocks):
            yield from b.arch_layers(chosen.inputs, chosen.ops)

    def get_config(self):
        return {**super().get_config(), "blocks": [keras.saving.serialize_keras_object(b) for b in self.blocks]}


class _OneShotLayers(PlanVisitor):
    """``walk_plan`` visitor: the one-shot model's node layers."""

    def __init__(self, num_classes: int, bn_epsilon: float):
        self.num_classes, self.eps = num_classes, bn_epsilon
        self.nodes: List[_Node] = []

    def _add(self, layer):
        self.nodes.append(layer)
        return layer

    def stem(self, node, x, in_channels):
        return self._add(Stem(node.channels, bn_epsilon=self.eps, name="stem"))

    def reduce(self, node, x, in_channels):
        return self._add(Reduction(node.channels, bn_epsilon=self.eps, name=node.name))

    def block(self, node, block, inputs):
        return ChoiceBlock.from_node(block, self.eps)

    def cell(self, node, cell, outputs):
        return self._add(OneShotCell(outputs, bn_epsilon=self.eps, name=f"s{node.stage}c{cell}"))

    def head(self, node, x, in_channels):
        return self._add(Head(self.num_classes, bn_epsilon=self.eps, name="head"))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class OneShotModel(keras.Model):
    """Keras model over ``{"images", "input_mask", "op_mask"}`` returning logits."""

    def __init__(self, space: CellSearchSpace, *, input_shape: Sequence[int], num_classes: int,
                 mean: Sequence[float] = None, std: Sequence[float] = None, bn_epsilon: float = 1e-3,
                 skip_inactive: bool = True, static_shapes: bool = False, **kwargs):
        super().__init__(name=kwargs.pop("name", "oneshot"), **kwargs)
        if isinstance(space, dict):
            space = CellSearchSpace.from_config(space)
        self.space = space
        self.image_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.skip_inactive = bool(skip_inactive)
        self.static_shapes = bool(static_shapes)
        self.bn_epsilon = float(bn_epsilon)
        c = self.image_shape[-1]
        self.mean = [0.0] * c if mean is None else [float(v) for v in mean]
        self.std = [255.0] * c if std is None else [float(v) for v in std]
        self.standardize = Standardize(self.mean, self.std, name="standardize")
        self.plan = space.plan(self.image_shape)
        visitor = _OneShotLayers(self.num_classes, self.bn_epsilon)
        walk_plan(space, self.image_shape, visitor)
        self.node_layers = visitor.nodes  # one layer per plan node, in plan order
        _checkpoint_dependencies(self, "node", self.node_layers)

    @property
    def stem(self) -> Stem:
        return self.node_layers[0]

    @property
    def head(self) -> Head:
        return self.node_layers[-1]

    @property
    def cells(self) -> List[OneShotCell]:
        return [n for n in self.node_layers if isinstance(n, OneShotCell)]

    def build(self, input_shape=None):
        """Every variable, from the plan's shapes (``input_shape`` is ignored:
        the model was made for one image shape)."""
        shapes = []
        image = (None,) + self.image_shape
        for node, layer in zip(self.plan, self.node_layers):
            layer.build([shapes[d] for d in node.deps] or [image])
            shapes.append((None, node.height, node.width, node.channels))

    def build_weights(self, batch_size: int = 2):
        """``build()``, returning the model (``batch_size`` is not used)."""
        del batch_size
        if not self.built:
            self.build()
        return self

    def get_config(self):
        return {"name": self.name, "trainable": self.trainable, "space": self.space.get_config(),
                "input_shape": list(self.image_shape), "num_classes": self.num_classes, "mean": self.mean,
                "std": self.std, "bn_epsilon": self.bn_epsilon, "skip_inactive": self.skip_inactive,
                "static_shapes": self.static_shapes}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("trainable", None)
        return cls(config.pop("space"), **config)

    def example_inputs(self, batch_size: int, num_ghost: int):
        nb, no = self.space.num_blocks, len(self.space.ops)
        return {"images": tf.zeros((batch_size,) + self.image_shape, tf.uint8),
                "input_mask": tf.ones((num_ghost, nb, self.space.max_inputs)),
                "op_mask": tf.ones((num_ghost, nb, no))}

    def arch_layers(self, arch: CellArchitecture):
        """``(layer, channels)`` for every weighted Keras layer ``arch`` uses:
        ``channels`` the input channels a block input's BN and 1x1 convolution
        read for ``arch`` (else ``None``).  Stand-alone layers have the same
        names (``models.transfer_oneshot_weights``)."""
        for layer in self.node_layers:
            yield from layer.arch_layers(arch)

    # -- forward -----------------------------------------------------------
    def call(self, inputs, training=False, num_ghost=None):
        images = inputs["images"]
        # Masks stay float32 (Keras may have autocast them to the compute
        # dtype on the way in; 0/1 are exact) and are cast where multiplied.
        input_mask = tf.cast(inputs["input_mask"], tf.float32)
        op_mask = tf.cast(inputs["op_mask"], tf.float32)
        shared = len(input_mask.shape) == 2
        if shared != (len(op_mask.shape) == 2):
            raise ValueError(f"input_mask {input_mask.shape} and op_mask {op_mask.shape}: both need a "
                             "ghost-batch axis, or neither (one architecture for every ghost batch)")
        if not shared:
            if num_ghost is not None and int(num_ghost) != int(input_mask.shape[0]):
                raise ValueError(f"num_ghost={num_ghost}, but the masks have {input_mask.shape[0]} ghost batches")
            num_ghost = int(input_mask.shape[0])
        else:
            num_ghost = 1 if num_ghost is None else int(num_ghost)
            if not self.skip_inactive:  # the reference path: every op, masks multiplied
                input_mask = tf.tile(input_mask[None], [num_ghost, 1, 1])
                op_mask = tf.tile(op_mask[None], [num_ghost, 1, 1])
                shared = False
        stem = self._stem(images, num_ghost)
        return self._rest(stem, input_mask, op_mask, num_ghost, self._mode(shared))

    def _mode(self, shared: bool) -> BlockMode:
        return BlockMode(shared=shared, skip_inactive=self.skip_inactive, static_shapes=self.static_shapes)

    def _stem(self, images, num_ghost):
        """The stem's output, normalized per ghost batch."""
        batch = images.shape[0]
        if batch is not None and batch % num_ghost:
            raise ValueError(f"a batch of {batch} does not split into {num_ghost} ghost batches")
        return self.stem([self.standardize(images)], num_ghost=num_ghost)

    def _rest(self, stem, input_mask, op_mask, num_ghost, mode):
        """The forward pass after the stem: each node layer on the normalized
        states it reads (see the module docstring)."""
        values = [stem]
        for node, layer in zip(self.plan[1:], self.node_layers[1:]):
            values.append(layer([values[d] for d in node.deps], input_mask, op_mask, num_ghost=num_ghost,
                                mode=mode))
        return values[-1]

    def candidates_logits(self, images, input_mask, op_mask, num_ghost: int = 1, parallel_iterations: int = 2):
        """Logits ``[K, N, classes]`` of ``K`` architectures on the same
        ``N`` images: ``input_mask [K, num_blocks, num_blocks + 1]`` and
        ``op_mask [K, num_blocks, num_ops]`` hold one ``space.encode`` output
        per candidate, each shared by the ``num_ghost`` ghost batches.

        Equals ``call`` on each candidate in turn; the stem, which no
        architecture changes, runs once for all of them, then an in-graph
        loop (``parallel_iterations`` candidates in flight) runs each
        candidate's own inputs and ops.
        """
        input_mask = tf.cast(input_mask, tf.float32)
        op_mask = tf.cast(op_mask, tf.float32)
        nb, mi, no = self.space.num_blocks, self.space.max_inputs, len(self.space.ops)
        if input_mask.shape[1:] != (nb, mi) or op_mask.shape[1:] != (nb, no) \
                or input_mask.shape[0] != op_mask.shape[0]:
            raise ValueError(f"candidates_logits takes input_mask [K, {nb}, {mi}] and op_mask [K, {nb}, {no}], "
                             f"got {input_mask.shape} and {op_mask.shape}")
        num_ghost = int(num_ghost)
        stem = self._stem(images, num_ghost)
        mode = self._mode(True)

        def one(masks):
            return tf.cast(self._rest(stem, masks[0], masks[1], num_ghost, mode), tf.float32)

        if int(input_mask.shape[0]) == 1:
            return one((input_mask[0], op_mask[0]))[None]
        return tf.map_fn(one, (input_mask, op_mask), fn_output_signature=tf.float32,
                         parallel_iterations=parallel_iterations)

    # -- masked L2 ---------------------------------------------------------
    def path_squared_norms(self):
        """Sums of squared kernel entries, grouped by the path that uses them.

        Returns ``(always, inputs, ops)``: a scalar for weights every
        architecture uses (stem, reductions, head dense); ``[num_blocks, num_blocks + 1]`` for the block
        input 1x1 convolutions, split by the input whose channels a kernel
        row reads; ``[num_blocks, num_ops]`` for the ops' kernels.  Each is
        summed over all cells (every cell shares the architecture).
        BN parameters and biases are not regularized.  All float32 (the
        variables are float32 under every precision policy).
        """
        nb, no, mi = self.space.num_blocks, len(self.space.ops), self.space.max_inputs
        always = tf.constant(0.0)
        grid = {"input": [[tf.constant(0.0)] * mi for _ in range(nb)],
                "op": [[tf.constant(0.0)] * no for _ in range(nb)]}
        for layer in self.node_layers:
            for path, value in layer.path_norms():
                if path is None:
                    always += value
                else:
                    kind, i, j = path
                    grid[kind][i][j] += value
        return always, tf.stack([tf.stack(r) for r in grid["input"]]), tf.stack([tf.stack(r) for r in grid["op"]])

    def masked_l2(self, input_mask, op_mask):
        """Sum of squared kernels on the paths the step uses.

        With per-ghost-batch masks, a path's weights count in proportion to
        the fraction of ghost batches that use the path (the mean over ghost
        batches of each ghost batch's own L2 term).  Padding columns of
        ``input_mask`` are ignored.
        """
        always, inp, ops = self.path_squared_norms()
        valid = tf.constant(self.space.valid_input_mask())
        frac_in = tf.reduce_mean(tf.cast(input_mask, tf.float32), axis=0) * valid
        frac_op = tf.reduce_mean(tf.cast(op_mask, tf.float32), axis=0)
        return always + tf.reduce_sum(frac_in * inp) + tf.reduce_sum(frac_op * ops)
