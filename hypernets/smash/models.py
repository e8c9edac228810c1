"""The resulting network of a memory-bank architecture (SMASH appendix C):
every weight free, pre-activation BN-ReLU-Conv everywhere (BatchNorm instead
of the SMASH network's WeightNorm), trained and exported like every other
method's winners.

Stem: a 3x3 convolution to ``filters`` channels.  Each op: BN-ReLU-1x1
convolution over its concatenated reads, then its convolutions in Figure
2(a)'s pattern (``pattern_output``), each BN-ReLU-Conv; its outputs are added
to the banks it writes (``space`` module docstring).  Transitions:
BN-ReLU-1x1 convolution to the next block's input and 2x2 average pooling;
head: BN-ReLU, global average pooling, a dense layer.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import keras
from keras import ops

from hypernets.smash.space import BankArchitecture, BankOp, MemoryBankSpace
from oneshot_tf.layers import Standardize
from oneshot_tf.search_space import StandaloneOptions


def pattern_output(x, convs: Sequence[Optional[Callable]], add: Callable):
    """Figure 2(a): slots 0 and 2 read ``x`` in parallel, slot 1 follows
    slot 0, slot 3 follows slot 2, and the two paths are summed
    (``convs[k]`` is ``None`` where slot ``k`` is inactive).  ``add`` sums a
    list of tensors."""
    c0, c1, c2, c3 = convs
    a = c0(x)
    b = c2(x) if c2 is not None else None
    if c1 is not None:
        a = c1(a)
    if c3 is not None:
        b = c3(b)
    return a if b is None else add([a, b])


@keras.saving.register_keras_serializable(package="oneshot_tf")
class GroupedConv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` (the same kernel ``[kh, kw, cin / groups,
    filters]``, the same function) computing a grouped convolution as one
    convolution per group, concatenated.  TensorFlow's fused grouped
    convolution on CPU is 12-25x slower than a dense one of the same shape
    (measured here: 32 channels at 16x16, groups 2 and 4), and the split form
    costs what its FLOPs say on every device."""

    def convolution_op(self, inputs, kernel):
        if self.groups == 1:
            return super().convolution_op(inputs, kernel)
        xs = ops.split(inputs, self.groups, axis=-1)
        ks = ops.split(kernel, self.groups, axis=-1)
        return ops.concatenate([super(GroupedConv2D, self).convolution_op(x, k) for x, k in zip(xs, ks)], axis=-1)


def _bn_relu_conv(filters: int, kernel, dilation, groups: int, make_bn, name: str):
    bn = make_bn(f"{name}_bn")
    relu = keras.layers.ReLU(name=f"{name}_relu")
    conv = GroupedConv2D(filters, tuple(kernel), padding="same", dilation_rate=tuple(dilation),
                               groups=groups, use_bias=False, kernel_initializer="he_normal", name=f"{name}_conv")
    return lambda x: conv(relu(bn(x)))


def build_standalone_model(space: MemoryBankSpace, arch: BankArchitecture, *, input_shape, num_classes: int,
                           options: StandaloneOptions, name: str = "standalone") -> keras.Model:
    """uint8 images in, float32 logits out."""
    input_shape = tuple(int(d) for d in input_shape)
    c = input_shape[-1]
    mean = [0.0] * c if options.mean is None else list(options.mean)
    std = [255.0] * c if options.std is None else list(options.std)

    make_bn = options.batch_norm
    images = keras.Input(input_shape, dtype="uint8", name="images")
    x = Standardize(mean, std, name="standardize")(images)
    x = keras.layers.Conv2D(space.filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                            name="stem_conv")(x)
    for i, blk in enumerate(arch.blocks):
        bs = blk.bank_size
        banks: List = [x[..., k * bs:(k + 1) * bs] for k in range(space.in_channels(i) // bs)]
        for j, op in enumerate(blk.ops):
            banks = _apply_op(space, op, banks, bs, make_bn, f"b{i}op{j}")
        x = banks[0] if len(banks) == 1 else keras.layers.Concatenate(name=f"b{i}_banks")(banks)
        if i + 1 < space.num_blocks:
            x = _bn_relu_conv(space.in_channels(i + 1), (1, 1), (1, 1), 1, make_bn, f"trans{i}")(x)
            x = keras.layers.AveragePooling2D(2, padding="same", name=f"trans{i}_pool")(x)
    x = keras.layers.ReLU(name="head_relu")(make_bn("head_bn")(x))
    x = keras.layers.GlobalAveragePooling2D(name="head_pool", dtype="float32")(x)
    logits = keras.layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(images, logits, name=name)


def _apply_op(space: MemoryBankSpace, op: BankOp, banks: List, bs: int, make_bn, name: str) -> List:
    reads = [banks[b] for b in op.reads]
    x = reads[0] if len(reads) == 1 else keras.layers.Concatenate(name=f"{name}_read")(reads)
    n_in = len(op.reads) * bs
    x = _bn_relu_conv(space.n_bottle(n_in, op.units), (1, 1), (1, 1), 1, make_bn, f"{name}_1x1")(x)
    convs = [None if cv is None else _bn_relu_conv(op.units, cv.kernel, cv.dilation, cv.groups, make_bn,
                                                   f"{name}_c{k}") for k, cv in enumerate(op.convs)]
    y = pattern_output(x, convs, lambda ts: keras.layers.Add(name=f"{name}_sum")(ts))
    banks = list(banks)
    per = op.units // bs
    for k, b in enumerate(op.writes):
        piece = y[..., (k % per) * bs:(k % per + 1) * bs]
        if b < len(banks):
            banks[b] = keras.layers.Add(name=f"{name}_w{b}")([banks[b], piece])
        else:
            banks.append(piece)
    return banks
