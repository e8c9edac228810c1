"""Keras layers of the cell space: ghost batch norm (one-shot model) and the
ops shared by the one-shot and stand-alone models."""

from __future__ import annotations

from typing import Callable, List

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="oneshot_tf")
class GhostBatchNorm(keras.layers.Layer):
    """Batch normalization with separate batch statistics per ghost batch.

    ``call(x, num_ghost=G)`` splits the batch (axis 0, size ``B = G * g``)
    into ``G`` consecutive ghost batches of ``g`` examples and normalizes each
    with its own mean and (biased) variance over batch, height and width,
    then applies the shared per-channel ``gamma`` and ``beta``.  It always
    uses batch statistics (training and candidate scoring alike, as in the
    one-shot paper), so it keeps no moving averages.  With ``num_ghost=1``
    it equals ``keras.layers.BatchNormalization(epsilon=...)`` called with
    ``training=True``.

    Under a mixed precision policy it is a float32 island, like Keras'
    BatchNormalization: ``gamma``/``beta`` are float32 variables that are
    never autocast, statistics and normalization are computed in float32,
    and the result is cast to the layer's compute dtype.
    """

    def __init__(self, epsilon: float = 1e-3, **kwargs):
        # No autocasting: inputs are cast to float32 in ``ghost_batch_norm``
        # and gamma/beta are read in float32 even inside a mixed model.
        kwargs["autocast"] = False
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        c = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(c,), initializer="ones", autocast=False)
        self.beta = self.add_weight(name="beta", shape=(c,), initializer="zeros", autocast=False)

    def call(self, x, num_ghost=1, ghost_size=None):
        y = ghost_batch_norm(x, self.gamma, self.beta, num_ghost, self.epsilon, ghost_size=ghost_size)
        return tf.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def ghost_batch_norm(x, gamma, beta, num_ghost, epsilon: float, ghost_size=None):
    """The computation of ``GhostBatchNorm`` with explicit ``gamma``/``beta``.

    ``num_ghost`` is a Python int (fused kernels) or a tensor (a gathered
    subset of ghost batches, never empty) with ``ghost_size`` a Python int.
    Statistics and normalization are computed in float32 whatever the dtype
    of ``x`` (bfloat16/float16 under mixed precision); the result has the
    dtype of ``x``.
    """
    dtype = x.dtype
    x = tf.cast(x, tf.float32)
    gamma, beta = tf.cast(gamma, tf.float32), tf.cast(beta, tf.float32)
    if isinstance(num_ghost, int) and ghost_size is None and len(x.shape) == 4:
        # A static number of ghost batches: fused kernels, one per ghost batch.
        parts = tf.split(x, num_ghost) if num_ghost > 1 else [x]
        outs = [tf.compat.v1.nn.fused_batch_norm(p, gamma, beta, epsilon=epsilon, is_training=True)[0]
                for p in parts]
        return tf.cast(outs[0] if num_ghost == 1 else tf.concat(outs, 0), dtype)
    # A dynamic number (a gathered subset of ghost batches): moments.
    shape = tf.shape(x)
    lead = [-1, ghost_size] if ghost_size is not None else [num_ghost, -1]
    xg = tf.reshape(x, tf.concat([lead, shape[1:]], 0))
    axes = list(range(1, len(x.shape)))
    mean, var = tf.nn.moments(xg, axes=axes, keepdims=True)
    scale = tf.math.rsqrt(var + epsilon) * gamma
    offset = beta - mean * scale
    y = tf.reshape(xg * scale + offset, shape)
    y.set_shape(x.shape)
    return tf.cast(y, dtype)


def conv_init():
    return keras.initializers.HeNormal()


def op_layers(op: str, filters: int, make_bn: Callable[[str], keras.layers.Layer],
              prefix: str) -> List[keras.layers.Layer]:
    """The layers of one op of the cell space, in BN-ReLU-Conv order.

    ``make_bn(name)`` makes the normalization layer (ghost BN in the one-shot
    model, ordinary BN in stand-alone models).  Every layer gets a name
    ``f"{prefix}_{...}"`` identical in both models, so weights transfer by name.
    """
    if op == "identity":
        return []
    if op.startswith("sep"):
        k = int(op[3])
        out = []
        for n in (1, 2):
            out += [make_bn(f"{prefix}_bn{n}"), keras.layers.ReLU(name=f"{prefix}_relu{n}"),
                    keras.layers.SeparableConv2D(filters, k, padding="same", use_bias=False,
                                                 depthwise_initializer=conv_init(),
                                                 pointwise_initializer=conv_init(),
                                                 name=f"{prefix}_sep{n}")]
        return out
    if op == "conv1x7_7x1":
        out = []
        for n, k in ((1, (1, 7)), (2, (7, 1))):
            out += [make_bn(f"{prefix}_bn{n}"), keras.layers.ReLU(name=f"{prefix}_relu{n}"),
                    keras.layers.Conv2D(filters, k, padding="same", use_bias=False,
                                        kernel_initializer=conv_init(), name=f"{prefix}_conv{n}")]
        return out
    if op == "maxpool3x3":
        return [keras.layers.MaxPooling2D(3, strides=1, padding="same", name=f"{prefix}_pool")]
    if op == "avgpool3x3":
        return [keras.layers.AveragePooling2D(3, strides=1, padding="same", name=f"{prefix}_pool")]
    raise ValueError(f"unknown op {op!r}")


def layer_prefix(stage: int, cell: int, block: int) -> str:
    return f"s{stage}c{cell}b{block}"
