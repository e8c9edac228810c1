"""Keras layers every method's models share."""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="oneshot_tf")
class Standardize(keras.layers.Layer):
    """Raw images (uint8, NHWC) to ``(x - mean) / std`` per channel.

    ``mean`` and ``std`` are constants of the config (in pixel units, 0..255),
    so an exported model takes images exactly as the dataset delivers them.
    Computed in float32 and returned in the layer's compute dtype (float32,
    or bfloat16/float16 under a mixed precision policy).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def call(self, images):
        x = tf.cast(images, tf.float32)
        x = (x - tf.constant(self.mean, tf.float32)) / tf.constant(self.std, tf.float32)
        return tf.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}


@keras.saving.register_keras_serializable(package="oneshot_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training-mode call on 4-D
    channels-last input runs TensorFlow's fused batch-norm kernel.

    Keras 3 computes batch statistics with separate ops (mean, squared
    difference, mean, then the normalization), several kernels forward and
    many more backward; the fused kernel does each direction in one.  On a
    2-core AVX2 machine with oneDNN that made a stand-alone candidate's
    training step 1.5x and its forward pass 1.6x faster (README,
    Benchmarks).  It computes what Keras' layer computes: normalization by the
    batch mean and biased variance (in float32, the result cast to the
    layer's compute dtype) and the same moving-average updates (the kernel
    returns the Bessel-corrected variance; it is converted back to the biased
    one Keras averages).  Weights, their names and the config are Keras'
    own, so checkpoints and weight transfers are unchanged.  Everything else
    (inference, a frozen layer, masks, renorm, synchronized statistics, other
    axes or ranks) is Keras' own code.
    """

    def _fused(self, inputs, training, mask) -> bool:
        rank = len(inputs.shape)
        return (bool(training) and self.trainable and mask is None and rank == 4 and not self.renorm
                and not self.synchronized and self.axis in (-1, rank - 1))

    def call(self, inputs, training=None, mask=None):
        if not self._fused(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)
        channels = x.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        y, mean, corrected = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=self.epsilon,
                                                              is_training=True)
        n = tf.cast(tf.size(x, out_type=tf.int64) // channels, tf.float32)
        # n == 1: the kernel's correction n / (n - 1) is inf; the biased variance is 0
        variance = tf.where(n > 1.0, corrected * ((n - 1.0) / tf.maximum(n, 1.0)), tf.zeros_like(corrected))
        m = self.momentum
        self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
        self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
        return tf.cast(y, self.compute_dtype)
