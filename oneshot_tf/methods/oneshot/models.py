"""Stand-alone Keras models of cell-space architectures, and weight transfer
from the one-shot model (which proves the mask semantics in the tests and
lets a user warm-start a stand-alone model)."""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np

from oneshot_tf.layers import Standardize
from oneshot_tf.methods.oneshot.cell_space import CellArchitecture, CellSearchSpace, PlanVisitor, walk_plan
from oneshot_tf.methods.oneshot.layers import (GhostBatchNorm, block_input_layers, conv_init, head_layers,
                                               op_layers, reduction_layers)
from oneshot_tf.search_space import StandaloneOptions

__all__ = ["build_standalone_model", "transfer_oneshot_weights", "reduction_layers", "block_input_layers",
           "head_layers"]


def _apply(layers, x):
    for layer in layers:
        x = layer(x)
    return x


class _StandaloneGraph(PlanVisitor):
    """``walk_plan`` visitor: the functional graph of one architecture."""

    def __init__(self, num_classes: int, make_bn):
        self.num_classes, self.make_bn = num_classes, make_bn

    def stem(self, node, x, in_channels):
        return keras.layers.Conv2D(node.channels, 3, padding="same", use_bias=False,
                                   kernel_initializer=conv_init(), name="stem_conv")(x)

    def reduce(self, node, x, in_channels):
        return _apply(reduction_layers(node.name, node.channels, self.make_bn), x)

    def block(self, node, block, inputs):
        p = block.name
        h = inputs[0] if len(inputs) == 1 else keras.layers.Concatenate(name=f"{p}_concat")(inputs)
        h = _apply(block_input_layers(p, block.filters, self.make_bn), h)
        outs = [_apply(op_layers(op, block.filters, self.make_bn, f"{p}_{op}"), h) for op in block.ops]
        return outs[0] if len(outs) == 1 else keras.layers.Add(name=f"{p}_sum")(outs)

    def cell(self, node, cell, outputs):
        return keras.layers.Concatenate(name=f"s{node.stage}c{cell}_out")(outputs)

    def head(self, node, x, in_channels):
        return _apply(head_layers(self.num_classes, self.make_bn), x)


def build_standalone_model(space: CellSearchSpace, arch: CellArchitecture, *, input_shape,
                           num_classes: int, options: Optional[StandaloneOptions] = None,
                           name: str = "standalone") -> keras.Model:
    """A functional Keras model with only ``arch``'s active inputs and ops.

    Takes uint8 NHWC images, returns logits.  BN is ordinary (running
    statistics at inference) with ``options.bn_momentum`` (suit it to the
    number of training steps: 0.99 needs thousands) and ``options.bn_epsilon``;
    images are standardized with ``options.mean`` and ``options.std``.

    Under the global mixed precision policy (``oneshot_tf.precision``) at
    construction time, convolutions compute in bfloat16/float16 with float32
    variables; Keras' BatchNormalization keeps its statistics and
    normalization in float32, and the head (pooling, logits) is float32, so
    the model returns float32 logits.
    """
    options = options or StandaloneOptions()
    input_shape = tuple(int(d) for d in input_shape)
    channels = input_shape[-1]
    mean = [0.0] * channels if options.mean is None else options.mean
    std = [255.0] * channels if options.std is None else options.std

    make_bn = options.batch_norm
    images = keras.Input(input_shape, dtype="uint8", name="images")
    x = Standardize(mean, std, name="standardize")(images)
    logits = walk_plan(space, input_shape, _StandaloneGraph(num_classes, make_bn), arch, x=x)
    return keras.Model(images, logits, name=name)


def transfer_oneshot_weights(oneshot, standalone: keras.Model, arch: CellArchitecture) -> int:
    """Copy the one-shot model's weights for ``arch`` into ``standalone``.

    The one-shot model lists the layers ``arch`` uses with, for a block's
    input BN and 1x1 convolution, the channels of its chosen inputs
    (``OneShotModel.arch_layers``); each goes to the stand-alone layer of
    the same name, sliced to those channels.  BN moving statistics are left
    as they are (the one-shot model has none).  Returns the number of layers
    copied.
    """
    dst = {layer.name: layer for layer in standalone.layers if layer.weights}
    copied = 0
    for src, channels in oneshot.arch_layers(arch):
        layer = dst.get(src.name)
        if layer is None:  # a layer of a cell the stand-alone model does not need
            continue
        if isinstance(src, GhostBatchNorm):
            gamma, beta = np.asarray(src.gamma), np.asarray(src.beta)
            if channels is not None:
                gamma, beta = gamma[channels], beta[channels]
            layer.gamma.assign(gamma)
            layer.beta.assign(beta)
        elif channels is not None:  # the block input's 1x1 convolution
            layer.kernel.assign(np.asarray(src.kernel)[:, :, channels, :])
        else:
            for w_dst, w_src in zip(layer.weights, src.weights):
                w_dst.assign(w_src)
        copied += 1
    return copied
