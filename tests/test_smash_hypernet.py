"""SMASH's HyperNet (a DenseNet over c) and the channel-based weight
compression that turns its output into every op's 1x1 kernel."""

import keras
import numpy as np
import tensorflow as tf

from hypernets.smash.hypernet import HyperNet, op_kernel, weight_matrix, weight_normalized
from hypernets.smash.space import MemoryBankSpace


def test_the_papers_26_layer_densenet():
    net = HyperNet(48)
    out = net(tf.zeros([1, 3, 30, 11]))
    assert out.shape == (1, 3, 30, 48)
    assert net.num_convolutions == 26                                   # appendix C: a 26-layer DenseNet
    shapes = [tuple(v.shape) for v in net.trainable_variables]
    # first 7 channels; blocks of 8, 10, 4 layers of growth 10; 1x1 halving between blocks
    c = 11 + 7
    expected = [(3, 3, 11, 7)]
    for b, n in enumerate((8, 10, 4)):
        for _ in range(n):
            expected.append((3, 3, c, 10))
            c += 10
        if b < 2:
            expected.append((1, 1, c, c // 2))
            c //= 2
    expected.append((1, 1, c, 48))
    assert shapes == expected                                          # no biases, no normalizers
    assert len(net.non_trainable_variables) == 0


def test_simplified_weight_norm_makes_each_kernel_scale_free():
    net = HyperNet(8, block_layers=(2, 2))
    c = tf.constant(np.random.default_rng(0).normal(size=(1, 2, 6, 5)), tf.float32)
    before = net(c).numpy()
    for v in net.trainable_variables:
        v.assign(v * 7.0)
    np.testing.assert_allclose(net(c).numpy(), before, rtol=1e-5, atol=1e-6)
    k = tf.constant([[3.0, 4.0]])
    np.testing.assert_allclose(weight_normalized(k).numpy(), [[0.6, 0.8]])


def test_leaky_relu_slope_and_config_round_trip():
    net = HyperNet(4, first=3, growth=2, block_layers=(1,), negative_slope=0.5)
    c = tf.constant(np.random.default_rng(1).normal(size=(1, 1, 4, 2)), tf.float32)
    out = net(c)
    clone = HyperNet.from_config(net.get_config())
    clone(c)
    for a, b in zip(clone.weights, net.weights):
        a.assign(b)
    np.testing.assert_allclose(clone(c).numpy(), out.numpy(), rtol=1e-6)
    # by hand: first conv concatenated, one dense layer (leaky relu, conv), then leaky relu and the 1x1
    k = [weight_normalized(v).numpy() for v in net.trainable_variables]
    x = c.numpy()

    def conv(x, k):
        return tf.nn.conv2d(x, k, 1, "SAME").numpy()

    def lrelu(x):
        return np.where(x > 0, x, 0.5 * x)

    x = np.concatenate([x, conv(x, k[0])], -1)
    x = np.concatenate([x, conv(lrelu(x), k[1])], -1)
    np.testing.assert_allclose(out.numpy(), conv(lrelu(x), k[2]), rtol=1e-5, atol=1e-6)


def test_receptive_field_spans_23_columns():
    """23 3x3 layers (the 1x1s do not widen it): output column j depends on
    c's column 0 for j <= 23 and not beyond (gradients, in float64: the
    dependence shrinks about tenfold a column)."""
    net = HyperNet(2, dtype="float64")
    c = tf.constant(np.random.default_rng(2).normal(size=(1, 1, 30, 4)))
    reach = []
    for j in range(30):
        with tf.GradientTape() as tape:
            tape.watch(c)
            y = tf.reduce_sum(net(c)[:, :, j])
        reach.append(float(tf.reduce_max(tf.abs(tape.gradient(y, c)[0, 0, 0]))))
    reach = np.array(reach)
    assert (reach[:24] > 0).all() and (reach[24:] == 0).all(), reach


def test_weight_matrix_layout_and_op_kernels():
    h, w, rows, cols = 2, 3, 4, 5
    # output[h, w, r * cols + q] = 1000 h + 100 w + 10 r + q
    out = np.zeros((h, w, rows * cols), np.float32)
    for a in range(h):
        for b in range(w):
            for r in range(rows):
                for q in range(cols):
                    out[a, b, r * cols + q] = 1000 * a + 100 * b + 10 * r + q
    m = weight_matrix(tf.constant(out), rows, cols).numpy()
    assert m.shape == (w * rows, h * cols)
    for b in range(w):
        for r in range(rows):
            for a in range(h):
                for q in range(cols):
                    assert m[b * rows + r, a * cols + q] == 1000 * a + 100 * b + 10 * r + q
    k = op_kernel(tf.constant(m), 4, 8, 3).numpy()
    assert k.shape == (1, 1, 8, 3)
    np.testing.assert_allclose(k[0, 0], m[4:12, :3] / np.linalg.norm(m[4:12, :3]), rtol=1e-6)


def test_one_pass_generates_every_ops_kernel_from_its_columns_of_c():
    space = MemoryBankSpace.smash_v2(num_blocks=2, filters=32, max_banks=16, depth=2)
    arch = space.sample(np.random.default_rng(4))
    c = space.encode(arch)["c"]
    k = space.bottleneck * space.depth_compression * space.base ** 2
    net = HyperNet(k, block_layers=(2, 2, 1))
    m = weight_matrix(net(c[None])[0], space.read_unit, space.bottleneck * space.base)
    assert m.shape == (space.width_columns * space.read_unit, space.bottleneck * space.max_units)
    for lay in space.layout(arch):
        kernel = op_kernel(m, lay.row, lay.n_in, lay.n_bottle)
        assert kernel.shape == (1, 1, lay.n_in, lay.n_bottle)
        np.testing.assert_allclose(float(tf.norm(kernel)), 1.0, rtol=1e-5)
    assert isinstance(keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(net)), HyperNet)
