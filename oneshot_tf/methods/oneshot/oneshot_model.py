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
or scatters (``_shared_block``), and normalizes each state once for all its
readers (``_rest``), so one candidate costs less than its own
stand-alone network, and it compiles with XLA (static shapes).

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
and scattered back inside the one compiled step), so a training step gets
cheaper as path dropout grows.  With ``static_shapes=True`` (for XLA/TPU)
shapes stay static: a kept op runs on the whole batch, masked, and ``tf.cond``
skips an op or input only when no ghost batch keeps it.  Masks are 0/1.

Mixed precision: built under a mixed global policy (``oneshot_tf.precision``),
convolutions compute in bfloat16/float16 with float32 variables.  Float32
islands: ``Standardize`` (cast back to the compute dtype), every ghost batch
norm (statistics and normalization; gamma/beta never autocast), the head's
pooling and logits layer (the model returns float32 logits), the masks (cast
to the activation dtype where they multiply), and ``path_squared_norms`` /
``masked_l2``.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import keras
import numpy as np
import tensorflow as tf

from oneshot_tf.methods.oneshot.cell_space import CellSearchSpace
from oneshot_tf.layers import Standardize
from oneshot_tf.methods.oneshot.layers import (GhostBatchNorm, conv_init, ghost_batch_norm, layer_prefix,
                               op_layers)
from oneshot_tf.methods.oneshot.models import block_input_layers, head_layers, reduction_layers


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


class OneShotModel(keras.Model):
    """Keras model over ``{"images", "input_mask", "op_mask"}`` returning logits."""

    def __init__(self, space: CellSearchSpace, *, input_shape: Sequence[int], num_classes: int,
                 mean: Sequence[float] = None, std: Sequence[float] = None, bn_epsilon: float = 1e-3,
                 skip_inactive: bool = True, static_shapes: bool = False, **kwargs):
        super().__init__(name=kwargs.pop("name", "oneshot"), **kwargs)
        self.space = space
        self.image_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.skip_inactive = bool(skip_inactive)
        self.static_shapes = bool(static_shapes)
        self.bn_epsilon = float(bn_epsilon)
        c = self.image_shape[-1]
        self.standardize = Standardize([0.0] * c if mean is None else mean,
                                       [255.0] * c if std is None else std, name="standardize")
        self.plan = space.plan(self.image_shape)

        def make_bn(n):
            return GhostBatchNorm(epsilon=bn_epsilon, name=n)

        named: Dict[str, keras.layers.Layer] = {}
        structure = []  # per plan node: the names of its layers (nested for cells)
        self._cand_channels = {}
        cell = 0
        for node in self.plan:
            if node.kind == "stem":
                layer = keras.layers.Conv2D(node.channels, 3, padding="same", use_bias=False,
                                            kernel_initializer=conv_init(), name="stem_conv")
                structure.append([layer.name])
                named[layer.name] = layer
            elif node.kind == "reduce":
                layers = reduction_layers(node.name, node.channels, make_bn)
                structure.append([l.name for l in layers])
                named.update({l.name: l for l in layers})
            elif node.kind == "cell":
                fs = space.stage_filters(node.stage)
                cand = [self.plan[d].channels for d in node.deps] + [fs] * space.num_blocks
                blocks = []
                for i in range(space.num_blocks):
                    p = layer_prefix(node.stage, cell, i)
                    self._cand_channels[(cell, i)] = cand[: space.num_candidate_inputs(i)]
                    inp = block_input_layers(p, fs, make_bn)
                    named.update({l.name: l for l in inp})
                    ops = []
                    for op in space.ops:
                        layers = op_layers(op, fs, make_bn, f"{p}_{op}")
                        named.update({l.name: l for l in layers})
                        ops.append([l.name for l in layers])
                    blocks.append(([l.name for l in inp], ops))
                structure.append(blocks)
                cell += 1
            else:
                layers = head_layers(self.num_classes, make_bn)
                structure.append([l.name for l in layers])
                named.update({l.name: l for l in layers})
        # Layers are attributes (so TensorFlow checkpoints see them); the
        # name -> layer map is a plain dict that Keras does not track again.
        for n, layer in named.items():
            setattr(self, n, layer)
        object.__setattr__(self, "layers_by_name", named)
        self._structure = structure

    # -- helpers -----------------------------------------------------------
    def input_channel_index(self, stage: int, cell: int, block: int, inputs: Sequence[int]) -> np.ndarray:
        """Channel indices, in the block's all-inputs concatenation, of ``inputs``."""
        del stage
        sizes = self._cand_channels[(cell, block)]
        starts = np.cumsum([0] + list(sizes))
        return np.concatenate([np.arange(starts[j], starts[j] + sizes[j]) for j in inputs])

    def _run(self, names, x, num_ghost, ghost_size=None):
        for n in names:
            layer = self.layers_by_name[n]
            if isinstance(layer, GhostBatchNorm):
                x = layer(x, num_ghost=num_ghost, ghost_size=ghost_size)
            else:
                x = layer(x)
        return x

    def build_weights(self, batch_size: int = 2):
        """Create every variable by one eager call with all paths on."""
        self(self.example_inputs(batch_size, 1))
        return self

    def example_inputs(self, batch_size: int, num_ghost: int):
        nb, no = self.space.num_blocks, len(self.space.ops)
        return {"images": tf.zeros((batch_size,) + self.image_shape, tf.uint8),
                "input_mask": tf.ones((num_ghost, nb, self.space.max_inputs)),
                "op_mask": tf.ones((num_ghost, nb, no))}

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
        stem = self._stem(self.standardize(images), num_ghost)
        if shared:
            return self._rest(stem, lambda i, *args: self._shared_block(*args, input_mask[i], op_mask[i]),
                              num_ghost)
        return self._rest(stem, lambda i, *args: self._masked_block(*args, input_mask[:, i], op_mask[:, i]),
                          num_ghost)

    def _stem(self, x, num_ghost):
        """The stem's output, normalized per ghost batch (see ``_rest``)."""
        batch = x.shape[0]
        if batch is not None and batch % num_ghost:
            raise ValueError(f"a batch of {batch} does not split into {num_ghost} ghost batches")
        return self._normalize(self._run(self._structure[0], x, num_ghost), num_ghost)

    def _rest(self, stem, block, num_ghost):
        """The forward pass after the stem; ``block(i, cands, inp_names,
        op_names, sizes, num_ghost)`` computes block ``i`` of a cell.

        Every state (stem, reductions, block outputs, hence cell outputs) is
        read only through a ghost BN (BN-ReLU-Conv order), and within a ghost
        batch a tensor's statistics are the same for every reader.  So each
        state is normalized once, when it is made, and each reader applies
        only its own gamma/beta (with the ReLU, one fused kernel): a cell
        output read by several blocks and cells costs one set of statistics,
        not one per reader.
        """
        values: List[tf.Tensor] = [stem]  # normalized states
        cell = 0
        for node, names in zip(self.plan[1:], self._structure[1:]):
            if node.kind == "reduce":
                y = self._run_normalized(names, values[node.deps[0]], num_ghost)
                values.append(self._normalize(y, num_ghost))
            elif node.kind == "cell":
                cands = [values[d] for d in node.deps]
                for i, (inp_names, op_names) in enumerate(names):
                    k = self.space.num_candidate_inputs(i)
                    out = block(i, cands[:k], inp_names, op_names, self._cand_channels[(cell, i)], num_ghost)
                    cands.append(self._normalize(out, num_ghost))
                values.append(tf.concat(cands[2:], axis=-1))
                cell += 1
            else:
                return tf.cast(self._run_normalized(names, values[node.deps[0]], num_ghost), tf.float32)

    def _masked_block(self, cands, inp_names, op_names, sizes, num_ghost, input_mask, op_mask):
        """One block with per-ghost masks (``input_mask [G, num_blocks + 1]``,
        ``op_mask [G, num_ops]``), its candidate inputs normalized."""
        k = len(cands)
        h = self._block_input(cands, inp_names, input_mask[:, :k], sizes, num_ghost)
        out = None
        for o, layer_names in enumerate(op_names):
            y = self._masked_op(layer_names, h, op_mask[:, o], num_ghost)
            out = y if out is None else out + y
        return out

    def _block_input_parts(self, cands, names, mask, sizes, num_ghost, concat=False):
        """BN-ReLU-1x1 conv over the concatenated candidate inputs (already
        normalized: the block's gamma/beta with the ReLU, then the conv),
        input ``j`` of ghost batch ``g`` zeroed where ``mask[g, j] == 0``.

        BN is per channel and a 1x1 convolution of a concatenation is the sum
        of convolutions of its parts, so with ``skip_inactive`` each input
        goes through its own slice of gamma, beta and the kernel, and an input
        that no ghost batch keeps costs nothing (static shapes throughout).
        """
        self._build_input_layers(cands, names, sizes)
        bn, _, conv = (self.layers_by_name[n] for n in names)

        def concatenated():
            x = tf.concat(cands, axis=-1)
            # channel c of the concatenation belongs to input owner[c]; a
            # gather with constant indices keeps shapes static (XLA, also in
            # the gradient of a tf.cond branch, where tf.repeat's is not).
            owner = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
            ch_mask = tf.gather(mask, owner, axis=1)
            return conv(mask_ghost(self._affine_relu(x, bn), ch_mask, num_ghost))

        if not self.skip_inactive or concat:
            return concatenated()
        out_shape = cands[0].shape[:-1].concatenate([conv.filters])
        total = None
        for j, (x, (lo, hi)) in enumerate(zip(cands, _slices(sizes))):
            m = mask[:, j]

            def run(x=x, lo=lo, hi=hi, m=m):
                return self._input_part(x, names, lo, hi, num_ghost, mask=m)

            y = tf.cond(tf.reduce_any(m > 0), run, lambda x=x: _zeros(x, conv.filters))
            y.set_shape(out_shape)
            total = y if total is None else total + y
        return total

    def _input_part(self, x_hat, names, lo, hi, num_ghost, mask=None):
        """One input's share of a block's input node: BN-ReLU-1x1 conv with
        channels ``lo:hi`` of the block's gamma, beta and kernel, the input
        already normalized (zeroed on the ghost batches where ``mask`` is 0)."""
        bn, _, conv = (self.layers_by_name[n] for n in names)
        y = self._affine_relu(x_hat, bn, lo, hi)
        if mask is not None:
            y = mask_ghost(y, mask, num_ghost)
        kernel = tf.cast(conv.kernel[:, :, lo:hi, :], y.dtype)  # the conv's compute dtype
        return tf.nn.conv2d(y, kernel, strides=1, padding="VALID")

    def _shared_block(self, cands, inp_names, op_names, sizes, num_ghost, input_mask, op_mask):
        """One block for one architecture shared by every ghost batch
        (``input_mask [k]``, ``op_mask [num_ops]``), its candidate inputs
        ``cands`` normalized (``_rest``): each kept input and op is
        computed and added under a ``tf.cond`` on its mask entry; dropped
        ones cost nothing."""
        self._build_input_layers(cands, inp_names, sizes)
        zeros = _zeros(cands[0], self.layers_by_name[inp_names[2]].filters)

        def cond_add(keep, total, fn):
            # the first term replaces the zeros instead of being added to them
            out = tf.cond(keep > 0, fn if total is None else (lambda: total + fn()),
                          lambda: zeros if total is None else total)
            out.set_shape(zeros.shape)
            return out

        h = None
        for j, (x_hat, (lo, hi)) in enumerate(zip(cands, _slices(sizes))):
            h = cond_add(input_mask[j], h,
                         lambda x_hat=x_hat, lo=lo, hi=hi: self._input_part(x_hat, inp_names, lo, hi, num_ghost))
        # ops that start with BN read h normalized (once, if any of them is kept)
        normed = [o for o, names in enumerate(op_names) if names and names[0].endswith("_bn1")]
        if normed:
            keep_normed = tf.reduce_max(tf.gather(op_mask, normed))
            h_hat = tf.cond(keep_normed > 0, lambda: self._normalize(h, num_ghost), lambda: h)
            h_hat.set_shape(h.shape)
        out = None
        for o, layer_names in enumerate(op_names):
            if o in normed:
                fn = lambda names=layer_names: self._run_normalized(names, h_hat, num_ghost)
            else:
                fn = lambda names=layer_names: self._run(names, h, num_ghost)
            out = cond_add(op_mask[o], out, fn)
        return out

    # -- states normalized once (``_rest``), readers apply gamma/beta --------
    def _normalize(self, x, num_ghost):
        """``x`` normalized per ghost batch and channel, without gamma/beta."""
        ones = tf.ones(x.shape[-1:], tf.float32)
        return ghost_batch_norm(x, ones, tf.zeros_like(ones), num_ghost, self.bn_epsilon)

    @staticmethod
    def _affine_relu(x_hat, bn, lo=None, hi=None):
        """ReLU of a ghost BN's ``gamma * x_hat + beta`` (channels ``lo:hi``),
        ``x_hat`` already normalized: one fused inference-mode kernel."""
        gamma, beta = bn.gamma[lo:hi], bn.beta[lo:hi]
        # inference mode with mean 0 and variance 1 - eps: the scale is
        # rsqrt(1 - eps + eps) = 1 to float precision
        eps = 1.001e-5  # the smallest epsilon the fused kernel takes
        mean = tf.zeros_like(gamma)
        y = tf.compat.v1.nn.fused_batch_norm(tf.cast(x_hat, tf.float32), gamma, beta, mean=mean,
                                             variance=mean + (1.0 - eps), epsilon=eps, is_training=False)[0]
        return tf.cast(tf.nn.relu(y), bn.compute_dtype)

    def _run_normalized(self, names, x_hat, num_ghost):
        """``_run`` over layers that start with BN-ReLU, given the BN's input
        already normalized per ghost batch."""
        bn = self.layers_by_name[names[0]]
        if not bn.built:
            bn.build(x_hat.shape)
        return self._run(names[2:], self._affine_relu(x_hat, bn), num_ghost)

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
        stem = self._stem(self.standardize(images), num_ghost)

        def one(masks):
            block = lambda i, *args: self._shared_block(*args, masks[0][i], masks[1][i])
            return tf.cast(self._rest(stem, block, num_ghost), tf.float32)

        if int(input_mask.shape[0]) == 1:
            return one((input_mask[0], op_mask[0]))[None]
        return tf.map_fn(one, (input_mask, op_mask), fn_output_signature=tf.float32,
                         parallel_iterations=parallel_iterations)

    def _build_input_layers(self, cands, names, sizes):
        bn, _, conv = (self.layers_by_name[n] for n in names)
        if not bn.built:
            shape = cands[0].shape[:-1].concatenate([sum(sizes)])
            bn.build(shape)
            conv.build(shape)

    def _block_input(self, cands, names, mask, sizes, num_ghost):
        """The block's input node.

        Dynamic shapes (CPU/GPU): one concatenated BN-ReLU-1x1 convolution
        over the whole batch with the dropped inputs' channels zeroed per
        ghost batch, no control flow (an input never runs on a subset of the
        ghost batches, so never on an empty one; a dropped input's slices of
        gamma, beta and the kernel get exactly zero gradient).  Static shapes
        (XLA/TPU) with ``skip_inactive``: when some input is kept by no ghost
        batch, input by input (``_block_input_parts``), skipping it.  (Input
        by input on CPU too made the quick preset's training step compile
        ~30% longer and run slower, for a 1x1 convolution's worth of work.)"""
        if not self.skip_inactive or not self.static_shapes:
            return self._block_input_parts(cands, names, mask, sizes, num_ghost, concat=True)
        every = tf.reduce_all(tf.reduce_any(mask > 0, axis=0))
        out = tf.cond(every,
                      lambda: self._block_input_parts(cands, names, mask, sizes, num_ghost, concat=True),
                      lambda: self._block_input_parts(cands, names, mask, sizes, num_ghost))
        out.set_shape(cands[0].shape[:-1].concatenate([self.layers_by_name[names[2]].filters]))
        return out

    def _masked_op(self, names, h, mask, num_ghost):
        """``mask[g] * op(h)`` per ghost batch ``g`` (masks are 0/1).

        With ``skip_inactive``, an op with weights that no ghost batch keeps
        is skipped outright under a ``tf.cond``: no layer ever runs on an
        empty batch (TensorFlow's depthwise filter gradient of an empty batch
        is uninitialized memory on CPU, tensorflow/tensorflow#9949), and its
        weights get exactly zero gradient.  Kept by some ghost batch, it runs
        with ``static_shapes=False`` (CPU/GPU) only on those ghost batches
        (gathered, run, scattered back), so its cost follows the number of
        ghost batches using it; with ``static_shapes=True`` (XLA/TPU) on the
        whole batch, masked.  Weightless ops (pooling, identity) run on the
        whole batch, masked (under the ``tf.cond`` too with static shapes).
        """
        def run_all():
            return mask_ghost(self._run(names, h, num_ghost), mask, num_ghost)

        weightless = not names or names[0].endswith("_pool")
        if not self.skip_inactive or (weightless and not self.static_shapes):
            return run_all()
        run = run_all if self.static_shapes else (lambda: self._run_kept_ghosts(names, h, mask, num_ghost))
        out = tf.cond(tf.reduce_any(mask > 0), run, lambda: tf.zeros_like(h))
        out.set_shape(h.shape)
        return out

    def _run_kept_ghosts(self, names, h, mask, num_ghost):
        """``_run`` on the ghost batches where ``mask > 0`` (at least one),
        scattered back into zeros of ``h``'s shape."""
        idx = tf.where(mask > 0)[:, 0]
        ghost = int(h.shape[0]) // num_ghost if h.shape[0] is not None else None
        shape = tf.shape(h)
        hg = tf.reshape(h, tf.concat([[num_ghost, -1], shape[1:]], 0))
        sel = tf.gather(hg, idx)
        y = self._run(names, tf.reshape(sel, tf.concat([[-1], shape[1:]], 0)), tf.size(idx, tf.int32),
                      ghost_size=ghost)
        out = tf.scatter_nd(idx[:, None], tf.reshape(y, tf.shape(sel)), tf.shape(hg, out_type=tf.int64))
        out = tf.reshape(out, shape)
        out.set_shape(h.shape)
        return out

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
        inp = [[tf.constant(0.0)] * mi for _ in range(nb)]
        ops = [[tf.constant(0.0)] * no for _ in range(nb)]
        cell = 0
        for node, names in zip(self.plan, self._structure):
            if node.kind != "cell":
                for n in names:
                    for k in _kernels(self.layers_by_name[n]):
                        always += tf.reduce_sum(tf.square(tf.cast(k, tf.float32)))
                continue
            for i, (inp_names, op_names) in enumerate(names):
                kernel = tf.cast(self.layers_by_name[inp_names[2]].kernel, tf.float32)
                per_channel = tf.reduce_sum(tf.square(kernel), axis=[0, 1, 3])
                sizes = self._cand_channels[(cell, i)]
                seg = np.repeat(np.arange(len(sizes)), sizes)
                per_input = tf.math.unsorted_segment_sum(per_channel, seg, len(sizes))
                for j in range(len(sizes)):
                    inp[i][j] += per_input[j]
                for o, layer_names in enumerate(op_names):
                    for n in layer_names:
                        for k in _kernels(self.layers_by_name[n]):
                            ops[i][o] += tf.reduce_sum(tf.square(tf.cast(k, tf.float32)))
            cell += 1
        return always, tf.stack([tf.stack(r) for r in inp]), tf.stack([tf.stack(r) for r in ops])

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


def _slices(sizes: Sequence[int]):
    """``(start, end)`` of each part of a concatenation of ``sizes`` channels."""
    ends = np.cumsum(sizes)
    return [(int(e - c), int(e)) for e, c in zip(ends, sizes)]


def _zeros(x, channels: int):
    """Zeros shaped like ``x`` but with ``channels`` channels."""
    if x.shape[:-1].is_fully_defined():
        return tf.zeros(x.shape[:-1].concatenate([channels]), x.dtype)
    return tf.zeros(tf.concat([tf.shape(x)[:-1], [channels]], 0), x.dtype)


def _kernels(layer) -> List[tf.Variable]:
    if isinstance(layer, keras.layers.SeparableConv2D):
        return [layer.depthwise_kernel, layer.pointwise_kernel]
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
        return [layer.kernel]
    return []
