"""Models of the GHN paper's block space (``dag_space``): the stand-alone
Keras model of one architecture, and the executor the GHN runs every
candidate on with generated weights.

Both are made of the same layers under the same names (``unit_layers``,
``bottleneck_layers``; names ``b{block}n{node}_{op}_u{unit}_*``,
``b{block}_in{t}_*``, ``stem_conv``, ``head_bn``, ``logits``), so weights
transfer by name (``transfer_executor_weights``).  A stand-alone node that
reads several inputs applies its operator's convolutions to each and gives
each input its own BN layers (``..._bn_x{input}``): the statistics of one
input are not those of another, so one BN layer's moving averages would mix
them (in training each is normalized by its own batch statistics).

The **executor** (``DagExecutor``) holds, at every node slot of every block,
the layers of every operator, and takes the architecture as tensors
(``node_ops`` ``[N]``, -1 for an absent slot; ``block_adjacency`` ``[N + 2,
N]``; ``leaves`` ``[N]``), so one traced function runs every architecture:

* node ``j`` gathers the inputs it reads (never none: an absent slot is
  skipped by a ``tf.cond``), stacks them along the batch, runs its operator
  once on the stack (``tf.switch_case``: only that operator runs) and sums
  the per-input results (equation 7).  Its batch normalization uses the
  statistics of each group of examples of one input (``num_ghost`` groups
  per batch), so each input is normalized on its own, as the stand-alone
  model does when it calls the layer on each input;
* a block's output is the concatenation of every slot times its leaf mask
  (``N x width`` channels), so the next bottleneck's and the head's kernels
  are padded with rows that read zeros: the stand-alone model concatenates
  the leaves only and its kernels hold just their rows.
* ``static_shapes`` (XLA): a node runs its operator on every slot's input and
  weights the results by the adjacency column (the same values).

Batch normalization in the executor always uses batch statistics (per
group), with the generated gamma/beta; the stand-alone model has ordinary
BN layers (moving statistics for inference).
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from hypernets.ghn.dag_space import OP_UNITS, POOLS, DagArchitecture, DagSearchSpace, Unit
from oneshot_tf.layers import Standardize
from oneshot_tf.methods.oneshot.layers import GhostBatchNorm, conv_init
from oneshot_tf.search_space import StandaloneOptions


def unit_layers(unit: Unit, channels: int, make_bn, prefix: str, convs=None, suffix: str = ""
                ) -> List[keras.layers.Layer]:
    """BN, ReLU and the convolution of one operator unit.  ``convs`` (a
    dict) shares the convolution between calls (a node applying its operator
    to each input); BN and ReLU get ``suffix`` in their names."""
    name = f"{prefix}_{'sep' if unit.kind == 'sep' else 'conv'}"
    conv = None if convs is None else convs.get(name)
    if conv is None:
        if unit.kind == "sep":
            conv = keras.layers.SeparableConv2D(channels, unit.kernel, padding="same", dilation_rate=unit.dilation,
                                                use_bias=False, depthwise_initializer=conv_init(),
                                                pointwise_initializer=conv_init(), name=name)
        else:
            conv = keras.layers.Conv2D(channels, unit.kernel, padding="same", dilation_rate=unit.dilation,
                                       use_bias=False, kernel_initializer=conv_init(), name=name)
        if convs is not None:
            convs[name] = conv
    return [make_bn(f"{prefix}_bn{suffix}"), keras.layers.ReLU(name=f"{prefix}_relu{suffix}"), conv]


def op_layers(op: str, channels: int, make_bn, prefix: str, convs=None, suffix: str = ""
              ) -> List[keras.layers.Layer]:
    """The layers of operator ``op`` (``dag_space.OP_UNITS``); ``convs`` and
    ``suffix`` as ``unit_layers``."""
    if op in POOLS:
        cls = keras.layers.MaxPooling2D if POOLS[op] == "max" else keras.layers.AveragePooling2D
        return [cls(3, strides=1, padding="same", name=f"{prefix}_pool{suffix}")]
    out = []
    for n, unit in enumerate(OP_UNITS[op]):
        out += unit_layers(unit, channels, make_bn, f"{prefix}_u{n}", convs, suffix)
    return out


def bottleneck_layers(channels: int, stride: int, make_bn, prefix: str) -> List[keras.layers.Layer]:
    """An input node: BN-ReLU, average pooling by ``stride`` (when > 1: a
    source at a finer resolution), 1x1 convolution to ``channels``."""
    out = [make_bn(f"{prefix}_bn"), keras.layers.ReLU(name=f"{prefix}_relu")]
    if stride > 1:
        out.append(keras.layers.AveragePooling2D(stride, strides=stride, padding="same", name=f"{prefix}_pool"))
    out.append(keras.layers.Conv2D(channels, 1, use_bias=False, kernel_initializer=conv_init(),
                                   name=f"{prefix}_conv"))
    return out


def _apply(layers, x, **bn_kwargs):
    for layer in layers:
        x = layer(x, **bn_kwargs) if isinstance(layer, GhostBatchNorm) else layer(x)
    return x


def _images_stats(input_shape, options: StandaloneOptions):
    c = int(input_shape[-1])
    mean = [0.0] * c if options.mean is None else list(options.mean)
    std = [255.0] * c if options.std is None else list(options.std)
    return mean, std


def build_standalone_model(space: DagSearchSpace, arch: DagArchitecture, *, input_shape, num_classes: int,
                           options: StandaloneOptions, name: str = "standalone") -> keras.Model:
    """uint8 images in, float32 logits out: ``arch`` in every block, only its
    operators and the input nodes its nodes read."""
    input_shape = tuple(int(d) for d in input_shape)

    make_bn = options.batch_norm
    images = keras.Input(input_shape, dtype="uint8", name="images")
    x = Standardize(*_images_stats(input_shape, options), name="standardize")(images)
    outs = {-1: keras.layers.Conv2D(space.filters, 3, padding="same", use_bias=False,
                                    kernel_initializer=conv_init(), name="stem_conv")(x)}
    leaves = arch.leaves()
    for blk in space.plan(input_shape):
        states: List[Optional[keras.KerasTensor]] = []
        for t in (0, 1):
            states.append(_apply(bottleneck_layers(blk.channels, blk.strides[t], make_bn, f"b{blk.index}_in{t}"),
                                 outs[blk.sources[t]]) if arch.reads_input(t) else None)
        for j, node in enumerate(arch.nodes):
            # one set of convolutions for every input; each input its own BN (own statistics, so
            # inference normalizes each input as training did; gamma/beta start alike)
            convs: Dict[str, keras.layers.Layer] = {}
            ys = [_apply(op_layers(node.op, blk.channels, make_bn, f"b{blk.index}n{j}_{node.op}", convs,
                                   f"_x{u}"), states[u]) for u in node.inputs]
            states.append(ys[0] if len(ys) == 1 else keras.layers.Add(name=f"b{blk.index}n{j}_sum")(ys))
        parts = [states[2 + j] for j in leaves]
        outs[blk.index] = parts[0] if len(parts) == 1 else keras.layers.Concatenate(
            name=f"b{blk.index}_out")(parts)
    x = make_bn("head_bn")(outs[space.num_blocks - 1])
    x = keras.layers.ReLU(name="head_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool", dtype="float32")(x)
    logits = keras.layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(images, logits, name=name)


class DagExecutor(keras.Model):
    """Every architecture of ``space`` (blocks of up to ``space.num_nodes``
    nodes) on one set of layers (module docstring).  ``call(inputs,
    num_ghost)``: ``inputs`` holds ``images`` and the architecture's
    ``node_ops``, ``block_adjacency`` and ``leaves``."""

    def __init__(self, space: DagSearchSpace, *, input_shape, num_classes: int, mean=None, std=None,
                 bn_epsilon: float = 1e-3, static_shapes: bool = False, **kwargs):
        super().__init__(name=kwargs.pop("name", "dag_executor"), **kwargs)
        self.space = space
        self.image_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.static_shapes = bool(static_shapes)
        self.plan = space.plan(self.image_shape)
        options = StandaloneOptions(mean=mean, std=std, bn_epsilon=bn_epsilon)

        def make_bn(n):
            return GhostBatchNorm(epsilon=bn_epsilon, name=n)

        self.standardize = Standardize(*_images_stats(self.image_shape, options), name="standardize")
        self.stem = keras.layers.Conv2D(space.filters, 3, padding="same", use_bias=False,
                                        kernel_initializer=conv_init(), name="stem_conv")
        self.bottlenecks = [[bottleneck_layers(blk.channels, blk.strides[t], make_bn, f"b{blk.index}_in{t}")
                             for t in (0, 1)] for blk in self.plan]
        self.node_ops = [[[op_layers(op, blk.channels, make_bn, f"b{blk.index}n{j}_{op}") for op in space.ops]
                          for j in range(space.num_nodes)] for blk in self.plan]
        self.head_bn = make_bn("head_bn")
        self.logits = keras.layers.Dense(self.num_classes, name="logits", dtype="float32")

    def build_weights(self) -> "DagExecutor":
        """Create every variable (shapes are known from the plan)."""
        h, w, c = self.image_shape
        self.stem.build((None, h, w, c))
        n = self.space.num_nodes
        for blk, bottlenecks, nodes in zip(self.plan, self.bottlenecks, self.node_ops):
            for t, layers in enumerate(bottlenecks):
                src = blk.sources[t]
                cin = self.space.source_channels(None, self.plan, src)
                hs, ws = (h, w) if src < 0 else (self.plan[src].height, self.plan[src].width)
                _build(layers, (None, hs, ws, cin))
            for ops in nodes:
                for layers in ops:
                    _build(layers, (None, blk.height, blk.width, blk.channels))
        last = self.plan[-1]
        self.head_bn.build((None, last.height, last.width, n * last.channels))
        self.logits.build((None, n * last.channels))
        self.built = True
        return self

    def _node(self, layers_per_op, stack, column, op, ghost_size: int):
        """Operator ``op`` of a node on the inputs ``column`` selects from
        ``stack`` ``[I, B, H, W, C]``, summed."""
        shape = tf.shape(stack)
        if self.static_shapes:
            chosen, weights = stack, column
        else:
            keep = column > 0
            chosen, weights = tf.boolean_mask(stack, keep), None
        flat = tf.reshape(chosen, tf.concat([[-1], shape[2:]], 0))
        flat.set_shape([None] + stack.shape[2:].as_list())
        branches = [(lambda layers=layers: _apply(layers, flat, num_ghost=None, ghost_size=ghost_size)
                     if layers else flat) for layers in layers_per_op]
        y = tf.switch_case(op, branches)
        y = tf.reshape(y, tf.concat([[-1], shape[1:]], 0))
        if weights is not None:
            y = y * tf.cast(tf.reshape(weights, [-1, 1, 1, 1, 1]), y.dtype)
        return tf.reduce_sum(y, 0)

    def call(self, inputs, num_ghost: int = 1):
        images = inputs["images"]
        batch = int(images.shape[0])
        if batch % int(num_ghost):
            raise ValueError(f"a batch of {batch} does not split into {num_ghost} groups")
        ghost_size = batch // int(num_ghost)
        ops = tf.cast(inputs["node_ops"], tf.int32)
        adjacency = tf.cast(inputs["block_adjacency"], tf.float32)
        leaves = tf.cast(inputs["leaves"], tf.float32)
        outs = {-1: self.stem(self.standardize(images))}
        n = self.space.num_nodes
        masks = {-1: None}                     # per block output: 1 on the channels of its leaves
        for blk, bottlenecks, nodes in zip(self.plan, self.bottlenecks, self.node_ops):
            masks[blk.index] = tf.repeat(leaves, blk.channels)
            states = [self._masked(bottlenecks[t], outs[blk.sources[t]], masks[blk.sources[t]], int(num_ghost))
                      for t in (0, 1)]
            for j in range(n):
                stack = tf.stack(states[:j + 2])
                column = adjacency[:j + 2, j]
                present = ops[j] >= 0
                states.append(tf.cond(
                    present,
                    lambda j=j, stack=stack, column=column: self._node(nodes[j], stack, column,
                                                                       tf.maximum(ops[j], 0), ghost_size),
                    lambda: tf.zeros_like(states[0])))
            outs[blk.index] = tf.concat([states[2 + j] * tf.cast(leaves[j], states[2 + j].dtype)
                                         for j in range(n)], -1)
        last = len(self.plan) - 1
        # the head in float32, as the stand-alone model's (pooling and logits)
        x = tf.nn.relu(tf.cast(self.head_bn(outs[last], num_ghost=int(num_ghost)), tf.float32)) * masks[last]
        x = tf.reduce_mean(x, axis=[1, 2])
        return self.logits(x)

    @staticmethod
    def _masked(layers, x, mask, num_ghost: int):
        """A bottleneck on a padded block output: the channels of non-leaves
        are zeroed after BN-ReLU (their BN would give ``relu(beta)``), as if
        only the leaves were concatenated."""
        bn, relu, rest = layers[0], layers[1], layers[2:]
        x = relu(bn(x, num_ghost=num_ghost))
        if mask is not None:
            x = x * tf.cast(mask, x.dtype)
        return _apply(rest, x)


def _build(layers, shape):
    for layer in layers:
        if not layer.built:
            layer.build(shape)
        shape = layer.compute_output_shape(shape)


_BOTTLENECK = re.compile(r"^b(\d+)_in(\d)_")
_INPUT_SUFFIX = re.compile(r"_x\d+$")


def executor_variables(executor: DagExecutor) -> Dict[str, tf.Variable]:
    """The executor's trainable variables by ``layer name/variable name``."""
    layers = [executor.stem, executor.head_bn, executor.logits]
    layers += [x for blk in executor.bottlenecks for ls in blk for x in ls]
    layers += [x for blk in executor.node_ops for node in blk for ls in node for x in ls]
    return {f"{layer.name}/{v.name}": v for layer in layers for v in layer.trainable_weights}


def transfer_executor_weights(values: Dict[str, np.ndarray], standalone: keras.Model, space: DagSearchSpace,
                              arch: DagArchitecture, input_shape) -> int:
    """Copy executor values (``{layer name/variable name: array}``, e.g.
    generated ones) of ``arch`` into ``standalone``: each layer of the same
    name; a bottleneck's or the head's BN and kernel keep only the rows of
    the source block's leaves (BN moving statistics are left alone).
    Returns the number of layers copied."""
    plan = space.plan(tuple(int(d) for d in input_shape))
    leaves = arch.leaves()
    copied = 0
    for layer in standalone.layers:
        if not layer.weights:
            continue
        match = _BOTTLENECK.match(layer.name)
        if layer.name in ("head_bn", "logits"):
            src = len(plan) - 1
        elif match:
            src = plan[int(match.group(1))].sources[int(match.group(2))]
        else:
            src = -1
        rows = None
        if src >= 0:
            c = plan[src].channels
            rows = np.concatenate([np.arange(j * c, (j + 1) * c) for j in leaves])
        for var in layer.weights:
            if var.name in ("moving_mean", "moving_variance"):
                continue
            value = np.asarray(values[f"{_INPUT_SUFFIX.sub('', layer.name)}/{var.name}"])
            if rows is not None and var.name != "bias":
                value = value[rows] if value.ndim in (1, 2) else value[:, :, rows, :]
            var.assign(value)
        copied += 1
    return copied
