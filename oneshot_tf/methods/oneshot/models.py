"""Stand-alone Keras models of cell-space architectures, and weight transfer
from the one-shot model (which proves the mask semantics in the tests and
lets a user warm-start a stand-alone model)."""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import numpy as np

from oneshot_tf.methods.oneshot.cell_space import CellArchitecture, CellSearchSpace
from oneshot_tf.layers import Standardize
from oneshot_tf.search_space import StandaloneOptions
from oneshot_tf.methods.oneshot.layers import conv_init, layer_prefix, op_layers


def _apply(layers, x):
    for layer in layers:
        x = layer(x)
    return x


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

    def make_bn(n):
        return keras.layers.BatchNormalization(momentum=options.bn_momentum, epsilon=options.bn_epsilon,
                                               name=n)

    images = keras.Input(input_shape, dtype="uint8", name="images")
    x = Standardize(mean, std, name="standardize")(images)
    nodes = space.plan(input_shape)
    values = {}
    cell = 0
    for idx, node in enumerate(nodes):
        if node.kind == "stem":
            values[idx] = keras.layers.Conv2D(node.channels, 3, padding="same", use_bias=False,
                                              kernel_initializer=conv_init(), name="stem_conv")(x)
        elif node.kind == "reduce":
            values[idx] = _apply(reduction_layers(node.name, node.channels, make_bn), values[node.deps[0]])
        elif node.kind == "cell":
            fs = space.stage_filters(node.stage)
            cands = [values[d] for d in node.deps]
            for i, b in enumerate(arch.blocks):
                p = layer_prefix(node.stage, cell, i)
                chosen = [cands[j] for j in b.inputs]
                h = chosen[0] if len(chosen) == 1 else keras.layers.Concatenate(name=f"{p}_concat")(chosen)
                h = _apply(block_input_layers(p, fs, make_bn), h)
                outs = [_apply(op_layers(op, fs, make_bn, f"{p}_{op}"), h) for op in b.ops]
                cands.append(outs[0] if len(outs) == 1 else keras.layers.Add(name=f"{p}_sum")(outs))
            values[idx] = keras.layers.Concatenate(name=f"s{node.stage}c{cell}_out")(cands[2:])
            cell += 1
        else:
            logits = _apply(head_layers(num_classes, make_bn), values[node.deps[0]])
    return keras.Model(images, logits, name=name)


def reduction_layers(prefix: str, filters: int, make_bn):
    """The fixed reduction between stages: BN-ReLU, 2x2 average pooling with
    stride 2 (``same`` padding: an odd size rounds up, an edge window
    averages its valid pixels only), then a 1x1 convolution to ``filters``.

    Pooling then 1x1 equals 1x1 at every pixel then pooling, so it costs the
    parameters and multiply-adds of a 1x1 stride-2 convolution without
    skipping three pixels in four.  Starts with [BN, ReLU] as the one-shot
    model's ``_run_normalized`` requires.
    """
    return [make_bn(f"{prefix}_bn"), keras.layers.ReLU(name=f"{prefix}_relu"),
            keras.layers.AveragePooling2D(2, strides=2, padding="same", name=f"{prefix}_pool"),
            keras.layers.Conv2D(filters, 1, use_bias=False, kernel_initializer=conv_init(),
                                name=f"{prefix}_conv")]


def block_input_layers(prefix: str, filters: int, make_bn):
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


def transfer_oneshot_weights(oneshot, standalone: keras.Model, arch: CellArchitecture) -> int:
    """Copy the one-shot model's weights for ``arch`` into ``standalone``.

    Block input BN and 1x1 convolutions are sliced to the channels of the
    active inputs; BN moving statistics are left as they are (the one-shot
    model has none).  Returns the number of layers copied.
    """
    src = oneshot.layers_by_name
    copied = 0
    for layer in standalone.layers:
        if not layer.weights or layer.name not in src:
            continue
        s = src[layer.name]
        if layer.name.endswith("_in_bn") or layer.name.endswith("_in_conv"):
            stage, cell, block = _parse_prefix(layer.name)
            idx = oneshot.input_channel_index(stage, cell, block, arch.blocks[block].inputs)
            if layer.name.endswith("_in_conv"):
                layer.kernel.assign(np.asarray(s.kernel)[:, :, idx, :])
            else:
                layer.gamma.assign(np.asarray(s.gamma)[idx])
                layer.beta.assign(np.asarray(s.beta)[idx])
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.gamma.assign(s.gamma)
            layer.beta.assign(s.beta)
        else:
            for w_dst, w_src in zip(layer.weights, s.weights):
                w_dst.assign(w_src)
        copied += 1
    return copied


def _parse_prefix(name: str):
    head = name.split("_")[0]  # s{stage}c{cell}b{block}
    stage, rest = head[1:].split("c")
    cell, block = rest.split("b")
    return int(stage), int(cell), int(block)
