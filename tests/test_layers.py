"""The shared Keras layers (``oneshot_tf.layers``): the fused batch norm of
every stand-alone model against Keras' own BatchNormalization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from oneshot_tf.layers import FusedBatchNormalization
from oneshot_tf.search_space import StandaloneOptions


def _pair(shape, momentum=0.9, epsilon=1e-3, seed=0, **kwargs):
    """A Keras BatchNormalization and a FusedBatchNormalization with the same
    (non-trivial) weights."""
    rng = np.random.default_rng(seed)
    c = shape[-1]
    weights = [rng.normal(1.0, 0.3, c), rng.normal(0.0, 0.5, c), rng.normal(0.0, 1.0, c), rng.uniform(0.5, 2.0, c)]
    layers = []
    for cls in (keras.layers.BatchNormalization, FusedBatchNormalization):
        layer = cls(momentum=momentum, epsilon=epsilon, **kwargs)
        layer.build(shape)
        layer.set_weights([w.astype(np.float32) for w in weights][:len(layer.weights)])
        layers.append(layer)
    return layers


def _run(layer, x, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 3)  # non-linear: d loss / dx is not ~0
    grads = tape.gradient(loss, [x] + layer.trainable_variables)
    return y, grads, [v.numpy() for v in layer.non_trainable_variables]


@pytest.mark.parametrize("shape", [(8, 5, 5, 3), (3, 4, 2, 16), (1, 1, 1, 4), (2, 1, 1, 4)])
def test_training_call_equals_keras_batch_norm(shape):
    """Outputs, gradients (input, gamma, beta) and moving statistics equal
    Keras' layer, including one value per channel (biased variance 0)."""
    keras_bn, fused = _pair(shape)
    x = tf.constant(np.random.default_rng(1).normal(2.0, 3.0, shape).astype(np.float32))
    moving_variance = fused.moving_variance.numpy()
    y0, g0, s0 = _run(keras_bn, x, True)
    y1, g1, s1 = _run(fused, x, True)
    assert fused._fused(x, True, None)
    np.testing.assert_allclose(y1.numpy(), y0.numpy(), rtol=1e-4, atol=1e-4)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-3 * float(np.abs(b.numpy()).max()))
    for a, b in zip(s1, s0):  # moving mean and variance after one update
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    if shape[0] * shape[1] * shape[2] == 1:  # batch variance 0: the moving variance only decays
        np.testing.assert_allclose(s1[1], 0.9 * moving_variance, rtol=1e-6)


def test_moving_statistics_by_hand():
    """One update: moving = m * moving + (1 - m) * batch statistic, with the
    biased batch variance (as Keras), not the kernel's Bessel-corrected one."""
    (fused,) = _pair((4, 2, 2, 2), momentum=0.75)[1:]
    before_mean, before_var = fused.moving_mean.numpy(), fused.moving_variance.numpy()
    x = np.random.default_rng(3).normal(0.0, 2.0, (4, 2, 2, 2)).astype(np.float32)
    fused(tf.constant(x), training=True)
    flat = x.reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(fused.moving_mean.numpy(), 0.75 * before_mean + 0.25 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(fused.moving_variance.numpy(), 0.75 * before_var + 0.25 * flat.var(0), rtol=1e-5)


def test_inference_and_other_ranks_are_keras_own():
    keras_bn, fused = _pair((5, 3))
    x = tf.constant(np.random.default_rng(2).normal(size=(5, 3)).astype(np.float32))
    assert not fused._fused(x, True, None)
    np.testing.assert_array_equal(fused(x, training=True).numpy(), keras_bn(x, training=True).numpy())
    keras_bn, fused = _pair((2, 3, 3, 4))
    x4 = tf.constant(np.random.default_rng(2).normal(size=(2, 3, 3, 4)).astype(np.float32))
    assert not fused._fused(x4, False, None)
    np.testing.assert_array_equal(fused(x4, training=False).numpy(), keras_bn(x4, training=False).numpy())
    fused.trainable = False  # a frozen layer uses its moving statistics, as Keras'
    keras_bn.trainable = False
    np.testing.assert_array_equal(fused(x4, training=True).numpy(), keras_bn(x4, training=True).numpy())


def test_mixed_precision_and_compiled():
    """Under a mixed policy: float32 statistics, output in the compute dtype
    (as Keras); inside tf.function the moving statistics update too."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        keras_bn, fused = _pair((4, 3, 3, 8))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = tf.constant(np.random.default_rng(4).normal(size=(4, 3, 3, 8)), tf.bfloat16)
    f = tf.function(lambda v: fused(v, training=True))
    y1 = f(x)
    y0 = keras_bn(x, training=True)
    assert y1.dtype == y0.dtype == tf.bfloat16
    np.testing.assert_allclose(y1.numpy().astype(np.float32), y0.numpy().astype(np.float32), atol=2e-2)
    np.testing.assert_allclose(fused.moving_mean.numpy(), keras_bn.moving_mean.numpy(), rtol=1e-5, atol=1e-6)


def test_stand_alone_models_use_it_and_it_round_trips():
    assert type(StandaloneOptions().batch_norm("bn")) is FusedBatchNormalization
    assert type(StandaloneOptions(fused_bn=False).batch_norm("bn")) is keras.layers.BatchNormalization
    layer = StandaloneOptions(bn_momentum=0.8, bn_epsilon=1e-4).batch_norm("bn")
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(again) is FusedBatchNormalization
    assert (again.momentum, again.epsilon, again.name) == (0.8, 1e-4, "bn")
