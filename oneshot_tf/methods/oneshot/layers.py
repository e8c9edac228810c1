"""Keras layers of the cell space: ghost batch norm (one-shot model) and the
ops shared by the one-shot and stand-alone models."""

from __future__ import annotations

from typing import Callable, List

import keras
import tensorflow as tf

from oneshot_tf.methods.oneshot.cell_space import op_spec


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


def normalize(x, num_ghost, epsilon: float, ghost_size=None):
    """``x`` normalized per ghost batch and channel, without gamma/beta (a
    state normalized once for all its readers, see ``oneshot_model``)."""
    ones = tf.ones(x.shape[-1:], tf.float32)
    return ghost_batch_norm(x, ones, tf.zeros_like(ones), num_ghost, epsilon, ghost_size=ghost_size)


def affine_relu(x_hat, bn: GhostBatchNorm, lo=None, hi=None):
    """ReLU of a ghost BN's ``gamma * x_hat + beta`` (channels ``lo:hi``),
    ``x_hat`` already normalized, computed in float32 and returned in the
    BN's compute dtype.

    The per-channel scale is a 1x1 depthwise convolution with ``gamma`` as
    its filter, followed by a bias add and the ReLU: TensorFlow fuses the
    three into one kernel (``_FusedDepthwiseConv2dNative``).  Measured on a
    2-core AMD EPYC (AVX2, oneDNN) at the shapes the quick preset meets, it
    ran 2 to 5x faster than oneDNN's inference-mode batch norm with ReLU
    (the earlier form) at 16 to 64 channels and within 25% of it at 8, and
    faster than it with gradients at every shape (``benchmarks``, README).
    """
    gamma, beta = bn.gamma[lo:hi], bn.beta[lo:hi]
    y = tf.nn.depthwise_conv2d(tf.cast(x_hat, tf.float32), tf.reshape(gamma, [1, 1, -1, 1]),
                               strides=[1, 1, 1, 1], padding="VALID")
    return tf.cast(tf.nn.relu(tf.nn.bias_add(y, beta)), bn.compute_dtype)


def conv_init():
    return keras.initializers.HeNormal()


def op_layers(op: str, filters: int, make_bn: Callable[[str], keras.layers.Layer],
              prefix: str) -> List[keras.layers.Layer]:
    """The layers of one op of the cell space (``cell_space.OP_SPECS``), in
    BN-ReLU-Conv order.

    ``make_bn(name)`` makes the normalization layer (ghost BN in the one-shot
    model, ordinary BN in stand-alone models).  Every layer gets a name
    ``f"{prefix}_{...}"`` identical in both models (weights transfer by name).
    """
    spec = op_spec(op)
    if spec.pool == "max":
        return [keras.layers.MaxPooling2D(3, strides=1, padding="same", name=f"{prefix}_pool")]
    if spec.pool == "avg":
        return [keras.layers.AveragePooling2D(3, strides=1, padding="same", name=f"{prefix}_pool")]
    out = []
    for n, k in enumerate(spec.kernels, 1):
        out += [make_bn(f"{prefix}_bn{n}"), keras.layers.ReLU(name=f"{prefix}_relu{n}")]
        if spec.separable:
            out.append(keras.layers.SeparableConv2D(filters, k, padding="same", use_bias=False,
                                                    depthwise_initializer=conv_init(),
                                                    pointwise_initializer=conv_init(), name=f"{prefix}_sep{n}"))
        else:
            out.append(keras.layers.Conv2D(filters, k, padding="same", use_bias=False,
                                           kernel_initializer=conv_init(), name=f"{prefix}_conv{n}"))
    return out


def reduction_layers(prefix: str, filters: int, make_bn):
    """The fixed reduction between stages: BN-ReLU, 2x2 average pooling with
    stride 2 (``same`` padding: an odd size rounds up, an edge window
    averages its valid pixels only), then a 1x1 convolution to ``filters``.

    Pooling then 1x1 equals 1x1 at every pixel then pooling, so it costs the
    parameters and multiply-adds of a 1x1 stride-2 convolution without
    skipping three pixels in four.
    """
    return [make_bn(f"{prefix}_bn"), keras.layers.ReLU(name=f"{prefix}_relu"),
            keras.layers.AveragePooling2D(2, strides=2, padding="same", name=f"{prefix}_pool"),
            keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer=conv_init(),
                                name=f"{prefix}_conv")]


def block_input_layers(prefix: str, filters: int, make_bn):
    """A choice block's input node: BN-ReLU-1x1 convolution to ``filters``."""
    return [make_bn(f"{prefix}_in_bn"), keras.layers.ReLU(name=f"{prefix}_in_relu"),
            keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer=conv_init(),
                                name=f"{prefix}_in_conv")]


def head_layers(num_classes: int, make_bn):
    """BN-ReLU, global average pooling and the logits layer.

    The pooling and the dense layer always compute in float32 (a float32
    island under a mixed precision policy, as Keras advises for the last
    layer), so the logits, and the softmax/losses computed from them, are
    float32.
    """
    return [make_bn("head_bn"), keras.layers.ReLU(name="head_relu"),
            keras.layers.GlobalAveragePooling2D(name="head_pool", dtype="float32"),
            keras.layers.Dense(num_classes, name="logits", dtype="float32")]


def layer_prefix(stage: int, cell: int, block: int) -> str:
    return f"s{stage}c{cell}b{block}"
