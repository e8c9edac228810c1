"""The padded SMASH network against a direct memory-bank implementation
(banks as a Python list, real grouped and dilated convolutions), and one
trace for every architecture."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from hypernets.smash.hypernet import HyperNet, op_kernel, weight_matrix
from hypernets.smash.models import GroupedConv2D, pattern_output
from hypernets.smash.network import SmashNetwork, block_sizes, conv_combos, network_structure
from hypernets.smash.space import MemoryBankSpace
from oneshot_tf.methods.oneshot.layers import ghost_batch_norm

V2 = MemoryBankSpace.smash_v2(num_blocks=2, filters=16, base=8, max_units=16, max_banks=8, depth=2,
                              depth_compression=2, kernel_sizes=(3, 5), max_extent=5, max_dilation=2,
                              groups=(1, 2, 4))
V1 = MemoryBankSpace.smash_v1(num_blocks=2, filters=18, base=6, max_units=12, max_banks=12, depth=1)


def reference_logits(space, net, arch, images, matrix, num_ghost):
    """The SMASH network of ``arch`` written out op by op."""
    x = tf.nn.relu(tf.nn.conv2d(images, net.stem, 1, "SAME"))
    layout = space.layout(arch)
    for i, blk in enumerate(arch.blocks):
        bs = blk.bank_size
        banks = [x[..., k * bs:(k + 1) * bs] for k in range(space.in_channels(i) // bs)]
        for op, lay in zip(blk.ops, [lay for lay in layout if lay.block == i]):
            inp = tf.concat([banks[b] for b in op.reads], -1)
            h = tf.nn.relu(tf.nn.conv2d(inp, op_kernel(matrix, lay.row, lay.n_in, lay.n_bottle), 1, "VALID"))

            def conv(slot, cin, op=op):
                cv = op.convs[slot]
                w = net.slots[i][slot]
                a, b = (net.kmax - cv.kernel[0]) // 2, (net.kmax - cv.kernel[1]) // 2
                kernel = w[a:a + cv.kernel[0], b:b + cv.kernel[1], :cin // cv.groups, :op.units]
                pin, pout = cin // cv.groups, op.units // cv.groups

                def grouped(t):  # one convolution per group (TF has no CPU gradient for grouped ones)
                    t = tf.nn.relu(t)
                    return tf.concat([tf.nn.convolution(t[..., g * pin:(g + 1) * pin],
                                                        kernel[..., g * pout:(g + 1) * pout], padding="SAME",
                                                        dilations=list(cv.dilation)) for g in range(cv.groups)], -1)

                return grouped

            convs = [None if c is None else conv(s, lay.n_bottle if s in (0, 2) else op.units)
                     for s, c in enumerate(op.convs)]
            y = pattern_output(h, convs, lambda ts: ts[0] + ts[1])
            per = op.units // bs
            for k, b in enumerate(op.writes):
                piece = y[..., (k % per) * bs:(k % per + 1) * bs]
                if b < len(banks):
                    banks[b] = banks[b] + piece
                else:
                    banks.append(piece)
        y = tf.concat(banks, -1)
        c = int(y.shape[-1])
        bn = net.norms[i]
        y = tf.nn.relu(ghost_batch_norm(y, bn.gamma[:c], bn.beta[:c], num_ghost, bn.epsilon))
        if i + 1 < space.num_blocks:
            x = tf.nn.avg_pool2d(tf.nn.conv2d(y, net.transitions[i][:, :, :c], 1, "SAME"), 2, 2, "SAME")
        else:
            return tf.matmul(tf.reduce_mean(y, axis=[1, 2]), net.dense[:c]) + net.bias


def _setup(space, shape=(8, 8, 1), static_shapes=False):
    net = SmashNetwork(space, image_channels=shape[-1], num_classes=5, static_shapes=static_shapes)
    k = space.bottleneck * space.depth_compression * space.base ** 2
    hyper = HyperNet(k, block_layers=(2, 2, 1))
    rng = np.random.default_rng(0)
    for bn in net.norms:   # gamma and beta away from 1 and 0, so a masking slip shows
        bn.gamma.assign(rng.uniform(0.5, 1.5, bn.gamma.shape))
        bn.beta.assign(rng.normal(0, 0.3, bn.beta.shape))
    images = tf.constant(rng.normal(size=(8,) + shape), tf.float32)
    return net, hyper, images


def _matrix(space, hyper, arch):
    c = space.encode(arch)["c"]
    return weight_matrix(hyper(c[None])[0], space.read_unit, space.bottleneck * space.base)


@pytest.mark.parametrize("static_shapes", [False, True], ids=["own_widths", "static"])
@pytest.mark.parametrize("space", [V2, V1], ids=["v2", "v1"])
def test_padded_network_equals_the_memory_bank_reference(space, static_shapes):
    """Ops at their own widths (dynamic shapes) and at the padded maxima
    (XLA's static shapes) give the op-by-op reference's logits."""
    net, hyper, images = _setup(space, static_shapes=static_shapes)
    traces = []

    @tf.function
    def run(images, structure, matrix):
        traces.append(1)
        return net(images, structure, matrix, num_ghost=2)

    patterns = set()
    for s in range(6):
        arch = space.sample(np.random.default_rng(s))
        patterns.update(op.pattern for blk in arch.blocks for op in blk.ops)
        matrix = _matrix(space, hyper, arch)
        st = {k: tf.constant(v) for k, v in network_structure(space, arch).items()}
        got = run(images, st, matrix).numpy()
        want = reference_logits(space, net, arch, images, matrix, 2).numpy()
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    assert len(traces) == 1                                  # one trace serves every architecture
    if space is V2:
        assert len(patterns) >= 4                            # the patterns were exercised
        assert any(cv is not None and cv.groups > 1 for s in range(6)
                   for blk in space.sample(np.random.default_rng(s)).blocks for op in blk.ops for cv in op.convs)


#: V2 with one kernel size (3x3, dilation 1 or 2): every slot has 4 switch branches, not 9, so the gradient
#: graph traces in a third of the time; groups, dilations and the four patterns as in V2.
V2_SMALL = MemoryBankSpace.smash_v2(num_blocks=2, filters=16, base=8, max_units=16, max_banks=8, depth=2,
                                    depth_compression=2, kernel_sizes=(3,), max_extent=5, max_dilation=2,
                                    groups=(1, 2, 4))


@pytest.mark.parametrize("static_shapes", [False, pytest.param(True, marks=pytest.mark.integration)],
                         ids=["own_widths", "static"])  # static: XLA's path, with the XLA tests
def test_padded_network_gradients_equal_the_reference(static_shapes):
    """Gradients into the HyperNet and every learned weight equal the op-by-op
    reference's, in both modes (a weight no op of the architecture uses gets
    exactly zero)."""
    space = V2_SMALL
    net, hyper, images = _setup(space, static_shapes=static_shapes)
    labels = tf.constant(np.arange(8) % 5, tf.int32)
    _matrix(space, hyper, space.sample(np.random.default_rng(0)))  # the HyperNet's variables, outside the trace
    variables = hyper.trainable_variables + net.trainable_variables

    def loss(logits):
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    @tf.function
    def run(structure, c):
        with tf.GradientTape() as tape:
            value = loss(net(images, structure, weight_matrix(hyper(c[None])[0], space.read_unit,
                                                             space.bottleneck * space.base), num_ghost=2))
        return tape.gradient(value, variables)

    dilated = grouped = False
    for s in range(3):
        arch = space.sample(np.random.default_rng(s))
        convs = [cv for blk in arch.blocks for op in blk.ops for cv in op.convs if cv is not None]
        dilated |= any(cv.dilation != (1, 1) for cv in convs)
        grouped |= any(cv.groups > 1 for cv in convs)
        got = run({k: tf.constant(v) for k, v in network_structure(space, arch).items()},
                  tf.constant(space.encode(arch)["c"]))
        with tf.GradientTape() as tape:
            value = loss(reference_logits(space, net, arch, images, _matrix(space, hyper, arch), 2))
        for v, g, w in zip(variables, got, tape.gradient(value, variables)):
            g = tf.convert_to_tensor(g).numpy()
            if w is None:  # e.g. a slot no op of this architecture runs
                assert np.abs(g).max() == 0.0, v.name
            else:
                np.testing.assert_allclose(g, tf.convert_to_tensor(w).numpy(), rtol=2e-3, atol=2e-5, err_msg=v.name)
    assert dilated and grouped                               # the sampled architectures exercised both
    assert run.experimental_get_tracing_count() == 1


def test_gradients_reach_the_hypernet_and_every_learned_weight():
    space = V2
    net, hyper, images = _setup(space)
    arch = space.sample(np.random.default_rng(1))
    st = {k: tf.constant(v) for k, v in network_structure(space, arch).items()}
    with tf.GradientTape() as tape:
        logits = net(images, st, _matrix(space, hyper, arch), num_ghost=2)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.zeros(8, tf.int32), logits))
    variables = hyper.trainable_variables + [net.stem, net.dense, net.bias] + net.transitions + \
        [net.slots[0][0], net.slots[1][0]]
    grads = tape.gradient(loss, variables)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_structure_shapes_and_combos():
    arch = V2.sample(np.random.default_rng(2))
    st = network_structure(V2, arch)
    for i in range(V2.num_blocks):
        p, r = block_sizes(V2, i)
        assert st[f"b{i}_read_idx"].shape == (p, r) and st[f"b{i}_write_src"].shape == (p, V2.capacity)
        assert st[f"b{i}_op_mask"].sum() == len(arch.blocks[i].ops)
    # kernels 3 and 5 with extent at most 5: (3, 1), (3, 2), (5, 1) per axis
    assert conv_combos(V2) == [(kh, dh, kw, dw) for kh, dh in ((3, 1), (3, 2), (5, 1))
                               for kw, dw in ((3, 1), (3, 2), (5, 1))]
    assert conv_combos(V1) == [(3, 1, 3, 1), (3, 2, 3, 2), (3, 3, 3, 3)]


@pytest.mark.parametrize("groups,dilation", [(1, 1), (2, 2), (4, 1)])
def test_grouped_conv_equals_keras_grouped_conv(groups, dilation):
    """The split grouped convolution of the resulting network is Keras'
    grouped Conv2D with the same kernel: values and gradients."""
    x = tf.constant(np.random.default_rng(1).normal(size=(2, 6, 6, 8)).astype(np.float32))
    ref = keras.layers.Conv2D(12, (3, 5), padding="same", groups=groups, dilation_rate=dilation, use_bias=False)
    ours = GroupedConv2D(12, (3, 5), padding="same", groups=groups, dilation_rate=dilation, use_bias=False)
    ref.build(x.shape)
    ours.build(x.shape)
    assert ours.kernel.shape == ref.kernel.shape == (3, 5, 8 // groups, 12)
    ours.kernel.assign(ref.kernel)
    outs = []
    for layer in (ref, ours):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * tf.range(12, dtype=tf.float32))
        outs.append((y, *tape.gradient(loss, [x, layer.kernel])))
    for a, b in zip(*outs):  # float32 sums of up to 120 products: round-off of ~1e-5 of their scale
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-5 * float(np.abs(a.numpy()).max()))
    assert GroupedConv2D.from_config(ours.get_config()).groups == groups
