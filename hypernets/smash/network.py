"""The SMASH network: every architecture of a memory-bank space on one set
of layers, in one trace (SMASH section 3, appendices B and C).

A candidate enters as tensors (``structure``: its ops padded to the space's
maxima and masked) plus the HyperNet's matrix of generated 1x1 weights
(``hypernet.weight_matrix``).  Per block a ``tf.while_loop`` runs the
block's ops over a *memory*, a ``[B, H, W, capacity]`` tensor in which bank
``b`` of size ``s`` is channels ``b * s .. (b + 1) * s`` (so a block's
banks are always a prefix of it):

* every op runs at its own widths (dynamic shapes inside the loop: no padded
  channel is computed; with ``static_shapes``, for XLA, at the block's
  maximum widths with the padding masked to zero, the same values): it
  gathers the ``n_in`` channels of the banks it reads (``read_idx``),
  applies its generated 1x1 kernel (rows ``row .. row + n_in``, columns
  ``.. n_bottle`` of the matrix, divided by its norm: the simplified
  WeightNorm) and a ReLU;
* then its convolutions in Figure 2(a)'s pattern, each ReLU-Conv with the
  block's learned weights for that slot, shared by all its ops and sliced to
  the op's kernel size (centre), input channels (``/ groups``) and units as
  in the reference code.  Kernel size and dilation select one of the space's
  (kernel, dilation) combinations with a ``tf.switch_case`` (static kernel
  sizes and dilations inside each branch; a dilation runs as space-to-batch
  around an undilated convolution, which has CPU gradients); groups are a
  block-diagonal mask on a dense ``[k, k, cin, units]`` kernel gathered from
  the sliced grouped one (the same function as a grouped convolution, at
  ``groups`` times its multiply-adds); inactive slots are skipped with
  ``tf.cond``;
* its outputs are added to the memory channels of the banks it writes
  (``write_src``: the output channel that feeds each memory channel).

Only the 1x1 kernels are generated; the stem (a 3x3 convolution and a ReLU),
the slot convolutions, the transitions (BN-ReLU, 1x1 convolution, 2x2
average pooling) and the head (BN-ReLU, global average pooling, a dense
layer) are learned freely, their weights sliced by the number of channels
the block's banks fill (masked).  BN is the paper's only normalization, at
the transitions and before the head (``BankBatchNorm``).  Training always
normalizes with batch statistics per group of ``group_size`` examples and
accumulates running statistics of the channels each step's architecture fills;
a score normalizes with one of (``BN_MODES``):

* ``batch``: the candidate's own batch statistics per group of validation
  examples, as in training (and as the one-shot method scores);
* ``running``: the running statistics accumulated over the random
  architectures of training (what the reference code's evaluation uses);
* ``recomputed``: statistics recomputed for the candidate on a fixed draw of
  training images, passed through its network in the same call ahead of the
  validation images (``calibration``: every BN takes its statistics from
  those images only, so each layer's statistics are those of the candidate's
  own calibrated lower layers, as a recompute pass in training mode gives).
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import keras
import numpy as np
import tensorflow as tf

from hypernets.smash.hypernet import weight_normalized
from hypernets.smash.space import BankArchitecture, MemoryBankSpace
from oneshot_tf.methods.oneshot.layers import ghost_batch_norm

#: How a score normalizes (module docstring).
BN_MODES = ("batch", "running", "recomputed")


class BankBatchNorm(keras.layers.Layer):
    """Batch normalization of a block's memory with running statistics.

    ``call(x, num_ghost, mode="batch", calibration=0, update_mask=None)``:
    ``batch`` normalizes each of ``num_ghost`` consecutive groups with its
    own statistics (``ghost_batch_norm``), ``running`` with the moving mean
    and variance, ``recomputed`` every example with the statistics of the
    first ``calibration`` examples.  With ``update_mask`` (``[channels]``,
    1 where the architecture fills a channel; training) the moving statistics
    of those channels take a step ``1 - momentum`` toward the whole batch's
    (biased variance, as Keras' BatchNormalization); the others keep theirs,
    so an architecture that does not fill a channel does not pull its
    statistics toward zero.  Under a distribution strategy the replicas'
    updates are averaged.
    """

    def __init__(self, epsilon: float = 1e-3, momentum: float = 0.9, **kwargs):
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.momentum = float(momentum)

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(c,), initializer="ones", autocast=False)
        self.beta = self.add_weight(name="beta", shape=(c,), initializer="zeros", autocast=False)
        self.moving_mean = self.add_weight(name="moving_mean", shape=(c,), initializer="zeros", trainable=False,
                                           autocast=False, aggregation="mean")
        self.moving_variance = self.add_weight(name="moving_variance", shape=(c,), initializer="ones",
                                               trainable=False, autocast=False, aggregation="mean")

    def _affine(self, x, mean, var):
        scale = tf.math.rsqrt(var + self.epsilon) * self.gamma
        return x * scale + (self.beta - mean * scale)

    def call(self, x, num_ghost: int = 1, mode: str = "batch", calibration: int = 0, update_mask=None):
        x = tf.cast(x, tf.float32)
        if update_mask is not None:
            mean, var = tf.nn.moments(tf.stop_gradient(x), axes=[0, 1, 2])
            m, keep = self.momentum, tf.cast(update_mask, tf.float32)
            self.moving_mean.assign(self.moving_mean + (1 - m) * keep * (mean - self.moving_mean))
            self.moving_variance.assign(self.moving_variance + (1 - m) * keep * (var - self.moving_variance))
        if mode == "batch":
            y = ghost_batch_norm(x, self.gamma, self.beta, num_ghost, self.epsilon)
        elif mode == "running":
            y = self._affine(x, self.moving_mean, self.moving_variance)
        elif mode == "recomputed":
            if not 0 < calibration <= int(x.shape[0]):
                raise ValueError(f"recomputed statistics need 1 to {x.shape[0]} calibration examples, "
                                 f"got {calibration}")
            mean, var = tf.nn.moments(x[:calibration], axes=[0, 1, 2])
            y = self._affine(x, mean, var)
        else:
            raise ValueError(f"unknown BN mode {mode!r}; choose from {', '.join(BN_MODES)}")
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "momentum": self.momentum}


def conv_combos(space: MemoryBankSpace) -> List[Tuple[int, int, int, int]]:
    """The (kernel height, dilation height, kernel width, dilation width)
    combinations a convolution of ``space`` can take: one switch branch each."""
    axis = [(k, d) for k in space.kernel_sizes for d in space.allowed_dilations(k)]
    if space.op_kind == "single":
        return [(k, d, k, d) for k, d in axis]
    return [(kh, dh, kw, dw) for kh, dh in axis for kw, dw in axis]


def block_sizes(space: MemoryBankSpace, block: int) -> Tuple[int, int]:
    """(ops, read channels) a block's padded structure holds: every op reads
    at least one column of c, so at most ``max_columns`` ops, each reading at
    most ``min(capacity, max_columns * read_unit)`` channels."""
    cols = space.max_columns(block)
    return cols, min(space.capacity, cols * space.read_unit)


def network_structure(space: MemoryBankSpace, arch: BankArchitecture) -> Dict[str, np.ndarray]:
    """The padded, masked tensors of ``arch`` the network reads (module
    docstring), float32, the same shapes for every architecture."""
    combos = conv_combos(space)
    out: Dict[str, np.ndarray] = {}
    layout = space.layout(arch)
    cap = space.capacity
    for i, blk in enumerate(arch.blocks):
        p, r = block_sizes(space, i)
        f = {k: np.zeros(s, np.float32) for k, s in (
            ("op_mask", [p]), ("read_idx", [p, r]), ("row", [p]), ("n_in", [p]),
            ("n_bottle", [p]), ("units", [p]), ("active", [p, 4]), ("branch", [p, 4]), ("groups", [p, 4]),
            ("write_src", [p, cap]), ("write_mask", [p, cap]), ("out_mask", [cap]))}
        bs = blk.bank_size
        lays = [lay for lay in layout if lay.block == i]
        for j, (op, lay) in enumerate(zip(blk.ops, lays)):
            f["op_mask"][j] = 1
            chans = [b * bs + t for b in op.reads for t in range(bs)]
            f["read_idx"][j, :len(chans)] = chans
            f["row"][j], f["n_in"][j], f["n_bottle"][j], f["units"][j] = lay.row, lay.n_in, lay.n_bottle, op.units
            for s, conv in enumerate(op.convs):
                f["groups"][j, s] = 1
                if conv is not None:
                    f["active"][j, s] = 1
                    f["branch"][j, s] = combos.index((conv.kernel[0], conv.dilation[0], conv.kernel[1],
                                                      conv.dilation[1]))
                    f["groups"][j, s] = conv.groups
            per = op.units // bs
            for k, b in enumerate(op.writes):
                for t in range(bs):
                    f["write_src"][j, b * bs + t] = (k % per) * bs + t
                    f["write_mask"][j, b * bs + t] = 1
        f["out_mask"][:space.block_banks(i, blk) * bs] = 1
        out.update({f"b{i}_{k}": v for k, v in f.items()})
    return out


class SmashNetwork(keras.layers.Layer):
    """``call(images, structure, matrix, num_ghost)``: float32 logits of the
    architecture ``structure`` describes, with 1x1 kernels from ``matrix``
    (``[rows, bottleneck * max_units]``, the HyperNet's for that
    architecture) on standardized ``images`` (module docstring); ``bn``,
    ``calibration`` and ``update_stats`` as ``BankBatchNorm`` takes them."""

    def __init__(self, space: MemoryBankSpace, *, image_channels: int, num_classes: int, bn_epsilon: float = 1e-3,
                 bn_momentum: float = 0.9, static_shapes: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.space = space
        self.static_shapes = bool(static_shapes)
        self.image_channels = int(image_channels)
        self.num_classes = int(num_classes)
        self.combos = conv_combos(space)
        self.kmax = max(space.kernel_sizes)
        units = space.max_units
        self.bottle = min(space.bottleneck * units, max(block_sizes(space, i)[1] for i in range(space.num_blocks)))
        init = keras.initializers.HeNormal()
        self.stem = self.add_weight(name="stem", shape=(3, 3, self.image_channels, space.filters), initializer=init)
        self.slots = [[self.add_weight(name=f"b{i}_slot{s}", initializer=init,
                                       shape=(self.kmax, self.kmax, self.bottle if s in (0, 2) else units, units))
                       for s in range(4)] for i in range(space.num_blocks)]
        cap = space.capacity
        self.norms = [BankBatchNorm(epsilon=bn_epsilon, momentum=bn_momentum, name=f"bn{i}")
                      for i in range(space.num_blocks)]
        for bn in self.norms:
            bn.build((None, None, None, cap))
        self.transitions = [self.add_weight(name=f"trans{i}", shape=(1, 1, cap, space.in_channels(i + 1)),
                                            initializer=init) for i in range(space.num_blocks - 1)]
        self.dense = self.add_weight(name="logits_kernel", shape=(cap, self.num_classes),
                                     initializer="glorot_uniform")
        self.bias = self.add_weight(name="logits_bias", shape=(self.num_classes,), initializer="zeros")

    # -- one convolution slot --------------------------------------------------
    def _slot(self, x, kernel, branch, groups, cin, units):
        """ReLU-Conv of ``x`` with ``kernel`` sliced as the reference slices
        it: the grouped kernel ``kernel[:, :, :cin / groups, :units]``, as a
        dense block-diagonal kernel.  ``x`` holds the op's own ``cin``
        channels and the output its ``units`` (dynamic shapes), or, with
        ``static_shapes``, the slot's maximum widths with the rest zero."""
        if self.static_shapes:
            c_dim, u_dim = int(kernel.shape[2]), int(kernel.shape[3])
        else:
            c_dim, u_dim = cin, units
            kernel = kernel[:, :, :, :units]
        per_in = tf.maximum(cin // groups, 1)
        per_out = tf.maximum(units // groups, 1)
        ci, co = tf.range(c_dim), tf.range(u_dim)
        dense = tf.gather(kernel, tf.math.floormod(ci, per_in), axis=2)
        mask = (ci[:, None] // per_in) == (co[None, :] // per_out)
        if self.static_shapes:
            mask = mask & (ci[:, None] < cin) & (co[None, :] < units)
        dense = dense * tf.cast(mask, dense.dtype)
        x = tf.nn.relu(x)

        def branch_fn(kh, dh, kw, dw):
            a, b = (self.kmax - kh) // 2, (self.kmax - kw) // 2
            w = dense[a:a + kh, b:b + kw]
            if (dh, dw) == (1, 1):
                return lambda: tf.nn.conv2d(x, w, 1, "SAME")
            # dilation as space-to-batch around an undilated convolution (what tf.nn.convolution does, but it
            # needs the kernel's channel counts static): CPU gradients for every dilation
            return lambda: tf.nn.with_space_to_batch(x, [dh, dw], "SAME", lambda inp, num_spatial_dims, padding:
                                                     tf.nn.conv2d(inp, w, 1, padding), filter_shape=[kh, kw])

        return tf.switch_case(branch, [branch_fn(*c) for c in self.combos])

    # -- one block ---------------------------------------------------------------
    def _block(self, i: int, x, st, matrix):
        space = self.space
        p, r = block_sizes(space, i)
        cap = space.capacity
        mem = tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, cap - int(x.shape[-1])]])
        num_ops = tf.cast(tf.reduce_sum(st["op_mask"]), tf.int32)
        slots = self.slots[i]
        if self.static_shapes:
            rows = tf.pad(matrix, [[0, r], [0, 0]])  # a row slice of the maximum height never runs off the end
            idx_r, idx_b = tf.range(r), tf.range(self.bottle)

        def op_input(mem, j, n_in, nb, row):
            """The op's 1x1 bottleneck ``h``: its own ``n_in`` read channels
            to ``nb`` (or, static, ``r`` to ``self.bottle``, zero beyond)."""
            idx = tf.cast(st["read_idx"][j], tf.int32)
            if not self.static_shapes:
                xin = tf.gather(mem, idx[:n_in], axis=-1)
                return tf.nn.conv2d(xin, weight_normalized(tf.slice(matrix, [row, 0], [n_in, nb]))[None, None], 1,
                                    "VALID")
            xin = tf.gather(mem, idx, axis=-1) * tf.cast(idx_r < n_in, mem.dtype)
            k = tf.slice(rows, [row, 0], [r, self.bottle])
            k = k * tf.cast((idx_r < n_in)[:, None] & (idx_b < nb)[None, :], k.dtype)
            return tf.nn.conv2d(xin, weight_normalized(k)[None, None], 1, "VALID")

        def body(j, mem):
            n_in = tf.cast(st["n_in"][j], tf.int32)
            nb = tf.cast(st["n_bottle"][j], tf.int32)
            units = tf.cast(st["units"][j], tf.int32)
            h = tf.nn.relu(op_input(mem, j, n_in, nb, tf.cast(st["row"][j], tf.int32)))
            act = st["active"][j]
            br = tf.cast(st["branch"][j], tf.int32)
            gr = tf.cast(st["groups"][j], tf.int32)
            a = self._slot(h, slots[0], br[0], gr[0], nb, units)
            a = tf.cond(act[1] > 0, lambda: self._slot(a, slots[1], br[1], gr[1], units, units), lambda: a)
            b = tf.cond(act[2] > 0, lambda: self._slot(h, slots[2], br[2], gr[2], nb, units), lambda: tf.zeros_like(a))
            b = tf.cond(act[3] > 0, lambda: self._slot(b, slots[3], br[3], gr[3], units, units), lambda: b)
            out = a + b
            mem = mem + tf.gather(out, tf.cast(st["write_src"][j], tf.int32), axis=-1) * st["write_mask"][j]
            return j + 1, mem

        _, mem = tf.while_loop(lambda j, m: j < num_ops, body, (tf.constant(0), mem),
                               maximum_iterations=p)
        return mem

    def call(self, images, structure: Dict[str, tf.Tensor], matrix, num_ghost: int = 1, bn: str = "batch",
             calibration: int = 0, update_stats: bool = False):
        space = self.space
        x = tf.nn.relu(tf.nn.conv2d(images, self.stem, 1, "SAME"))
        for i in range(space.num_blocks):
            st = {k[len(f"b{i}_"):]: v for k, v in structure.items() if k.startswith(f"b{i}_")}
            mem = self._block(i, x, st, matrix)
            y = self.norms[i](mem, num_ghost=num_ghost, mode=bn, calibration=calibration,
                              update_mask=st["out_mask"] if update_stats else None)
            y = tf.nn.relu(y) * st["out_mask"]
            if i + 1 < space.num_blocks:
                y = tf.nn.conv2d(y, self.transitions[i], 1, "SAME")
                x = tf.nn.avg_pool2d(y, 2, 2, "SAME")
            else:
                return tf.matmul(tf.reduce_mean(y, axis=[1, 2]), self.dense) + self.bias
