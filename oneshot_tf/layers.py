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
