"""SMASH's HyperNet (appendices A to C) and its channel-based weight
compression (section 3.2, appendix B).

``HyperNet``: a fully convolutional DenseNet over the encoding tensor c,
26 layers: a first 3x3 convolution of 7 channels concatenated to its input,
dense blocks of 8, 10 and 4 layers (each Leaky ReLU, slope 0.02, then a 3x3
convolution of 10 channels concatenated to its input), a 1x1 convolution
halving the channels after the first two blocks, and a last Leaky ReLU and
1x1 convolution to ``k = bottleneck * D * N**2`` channels.  Every
convolution has the simplified WeightNorm (the whole kernel divided by its
Euclidean norm) and no bias; there are no normalizers.  (The reference code
also concatenates a channel of fresh Gaussian noise to c; the paper does
not, nor does this.)

``weight_matrix``: the HyperNet's ``[H, W, k]`` output reshaped, block by
block, to the ``[W * D * N, H * bottleneck * N]`` matrix of generated 1x1
weights: position ``(h, w)`` of the output fills rows ``w * D * N ...`` (the
input channels that column w of c describes) and columns ``h *
bottleneck * N ...`` (the output channels that row h describes).  An op's
1x1 kernel is rows ``column * D * N`` to ``+ n_in`` and columns ``0`` to
``n_bottle`` of it (``op_kernel``), divided by its norm (simplified
WeightNorm).
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf


def weight_normalized(kernel):
    """SMASH's simplified WeightNorm: the whole tensor over its Euclidean norm."""
    return kernel / tf.norm(kernel)


@keras.saving.register_keras_serializable(package="oneshot_tf")
class HyperNet(keras.layers.Layer):
    """c ``[B, H, W, C]`` -> ``[B, H, W, output_channels]`` (module docstring)."""

    def __init__(self, output_channels: int, *, first: int = 7, growth: int = 10,
                 block_layers: Sequence[int] = (8, 10, 4), negative_slope: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.output_channels = int(output_channels)
        self.first = int(first)
        self.growth = int(growth)
        self.block_layers = tuple(int(n) for n in block_layers)
        self.negative_slope = float(negative_slope)
        if self.output_channels < 1 or self.first < 1 or self.growth < 1 or not self.block_layers:
            raise ValueError(f"HyperNet needs positive sizes, got output_channels={output_channels}, "
                             f"first={first}, growth={growth}, block_layers={block_layers}")

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self._plan = []  # (kernel, concatenate?, activate first?)

        def conv(size, c_in, c_out, name):
            # orthogonal initialization, as the reference code's (the scale is divided out anyway)
            return self.add_weight(name=name, shape=(size, size, c_in, c_out),
                                   initializer=keras.initializers.Orthogonal())

        self._plan.append((conv(3, channels, self.first, "first"), True, False))
        channels += self.first
        for b, n in enumerate(self.block_layers):
            for j in range(n):
                self._plan.append((conv(3, channels, self.growth, f"block{b}_layer{j}"), True, True))
                channels += self.growth
            if b + 1 < len(self.block_layers):
                self._plan.append((conv(1, channels, channels // 2, f"transition{b}"), False, True))
                channels //= 2
        self._plan.append((conv(1, channels, self.output_channels, "output"), False, True))

    @property
    def num_convolutions(self) -> int:
        return len(self._plan)

    def call(self, c):
        x = c
        for kernel, concatenate, activate in self._plan:
            h = tf.nn.leaky_relu(x, self.negative_slope) if activate else x
            y = tf.nn.conv2d(h, tf.cast(weight_normalized(kernel), h.dtype), 1, "SAME")
            x = tf.concat([x, y], -1) if concatenate else y
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_channels,)

    def get_config(self):
        return {**super().get_config(), "output_channels": self.output_channels, "first": self.first,
                "growth": self.growth, "block_layers": list(self.block_layers),
                "negative_slope": self.negative_slope}


def weight_matrix(output, rows_per_column: int, columns_per_row: int):
    """The HyperNet's output ``[H, W, rows_per_column * columns_per_row]``
    (one architecture) as the ``[W * rows_per_column, H * columns_per_row]``
    matrix of generated 1x1 weights (module docstring)."""
    h, w = int(output.shape[0]), int(output.shape[1])
    if int(output.shape[2]) != rows_per_column * columns_per_row:
        raise ValueError(f"the HyperNet's {output.shape[2]} output channels do not split into "
                         f"{rows_per_column} x {columns_per_row}")
    x = tf.reshape(output, [h, w, rows_per_column, columns_per_row])
    x = tf.transpose(x, [1, 2, 0, 3])                      # [W, rows, H, cols]
    return tf.reshape(x, [w * rows_per_column, h * columns_per_row])


def op_kernel(matrix, row: int, n_in: int, n_bottle: int):
    """One op's generated 1x1 kernel ``[1, 1, n_in, n_bottle]`` with the
    simplified WeightNorm."""
    return weight_normalized(matrix[row:row + n_in, :n_bottle])[None, None]
