"""Mixed precision: the one-shot and stand-alone models under mixed_bfloat16 /
mixed_float16 policies (float32 variables, float32 BN / standardization /
logits) against float32 models with the same weights."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from oneshot_tf.methods.oneshot import models
from oneshot_tf.methods.oneshot.cell_space import CellSearchSpace
from oneshot_tf.layers import Standardize
from oneshot_tf.methods.oneshot.layers import GhostBatchNorm
from oneshot_tf.methods.oneshot.oneshot_model import OneShotModel
from oneshot_tf.precision import PRECISIONS, current_precision, precision_scope, set_precision
from tests.test_oneshot_model import _randomize

SPACE = CellSearchSpace(num_cells=2, num_stages=2, filters=4, num_blocks=2)
SHAPE = (8, 8, 1)
CLASSES = 3
GHOST = 8
MIXED = ("mixed_bfloat16", "mixed_float16")
LOW = {"mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}
# max |logit difference| / max(1, max |float32 logit|)
TOL = {"mixed_bfloat16": 5e-2, "mixed_float16": 1e-2}


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n,) + SHAPE).astype(np.uint8)


def _masks(*archs):
    encs = [SPACE.encode(a) for a in archs]
    return (np.stack([e["input_mask"] for e in encs]), np.stack([e["op_mask"] for e in encs]))


def _call(model, images, input_mask, op_mask, training=False):
    return model({"images": tf.constant(images), "input_mask": tf.constant(input_mask, tf.float32),
                  "op_mask": tf.constant(op_mask, tf.float32)}, training=training)


def _copy_weights(src, dst):
    """Assign ``src``'s variables to ``dst``'s, matched by variable path."""
    by_path = {v.path: v for v in src.weights}
    assert sorted(by_path) == sorted(v.path for v in dst.weights)
    for v in dst.weights:
        v.assign(by_path[v.path])


def _assert_close(got, ref, precision):
    assert got.dtype == np.float32
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(got - ref).max()) / scale
    assert err < TOL[precision], (precision, err)


def _build_oneshot(precision=None, **kwargs):
    keras.utils.set_random_seed(0)
    if precision is None:
        return OneShotModel(SPACE, input_shape=SHAPE, num_classes=CLASSES, **kwargs).build_weights()
    with precision_scope(precision):
        return OneShotModel(SPACE, input_shape=SHAPE, num_classes=CLASSES, **kwargs).build_weights()


@pytest.fixture(scope="module")
def reference():
    model = _build_oneshot()
    _randomize(model, 1)
    return model


@pytest.fixture(scope="module", params=MIXED)
def mixed(request, reference):
    model = _build_oneshot(request.param)
    _copy_weights(reference, model)
    return request.param, model


ARCH = SPACE.sample(np.random.default_rng(5))
ARCH2 = SPACE.sample(np.random.default_rng(6))


# ---------------------------------------------------------------------------
# precision helpers
# ---------------------------------------------------------------------------


def test_set_precision_and_scope():
    assert PRECISIONS == ("float32", "mixed_bfloat16", "mixed_float16")
    assert current_precision() == "float32"
    with pytest.raises(ValueError, match="float32, mixed_bfloat16, mixed_float16"):
        set_precision("float64")
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        with precision_scope("bfloat16"):
            pass
    assert current_precision() == "float32"
    for p in MIXED:
        with precision_scope(p):
            assert keras.mixed_precision.global_policy().name == p
        assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError):  # restored on an exception too
        with precision_scope("mixed_float16"):
            raise RuntimeError("boom")
    assert current_precision() == "float32"
    try:
        set_precision("mixed_bfloat16")
        assert current_precision() == "mixed_bfloat16"
    finally:
        set_precision("float32")
    assert current_precision() == "float32"


# ---------------------------------------------------------------------------
# float32 islands
# ---------------------------------------------------------------------------


class _Probe(keras.layers.Layer):
    """Reads a variable of another layer inside its own (mixed) call."""

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        self.read = layer

    def call(self, x):
        v = self.read.gamma if hasattr(self.read, "gamma") else self.read.kernel
        return tf.convert_to_tensor(v)


@pytest.mark.parametrize("precision", MIXED)
def test_ghost_batch_norm_and_standardize_compute_in_float32(precision):
    with precision_scope(precision):
        bn = GhostBatchNorm(epsilon=1e-3)
        std = Standardize([100.0], [50.0])
    assert bn.compute_dtype == LOW[precision].name and bn.variable_dtype == "float32"
    rng = np.random.default_rng(0)
    # values around 300: x**2 overflows float16 (max 65504), a low-precision
    # variance would be inf / meaningless
    x32 = (300.0 + rng.normal(size=(16, 4, 4, 3)) * np.repeat([1.0, 3.0], 8)[:, None, None, None])
    x32 = x32.astype(np.float32)
    x = tf.cast(x32, LOW[precision])
    bn.build(x.shape)
    assert bn.gamma.dtype == "float32" and bn.beta.dtype == "float32"
    xr = tf.cast(x, tf.float32).numpy().astype(np.float64)  # the rounded inputs
    expected = np.concatenate([(p - p.mean((0, 1, 2))) / np.sqrt(p.var((0, 1, 2)) + 1e-3)
                               for p in np.split(xr, 2)])
    for num_ghost in (2, tf.constant(2)):  # fused kernels / moments
        y = bn(x, num_ghost=num_ghost)
        assert y.dtype == LOW[precision]
        y = tf.cast(y, tf.float32).numpy()
        assert np.all(np.isfinite(y))
        np.testing.assert_allclose(y, expected, atol=4 * TOL[precision])
    # inside a mixed layer's autocast scope gamma/beta are still read in float32
    with precision_scope(precision):
        probe = _Probe(bn)
    assert probe(x).dtype == tf.float32
    with precision_scope(precision):
        other = _Probe(keras.layers.Dense(1))
    other.read.build((None, 3))
    assert other(x).dtype == LOW[precision]  # (an ordinary variable is autocast)
    images = rng.integers(0, 256, (2, 4, 4, 1)).astype(np.uint8)
    out = std(tf.constant(images))
    assert out.dtype == LOW[precision]
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), (images - 100.0) / 50.0,
                               atol=TOL[precision])


# ---------------------------------------------------------------------------
# (a) dtypes and finiteness of the one-shot model
# ---------------------------------------------------------------------------


def test_oneshot_mixed_dtypes(mixed):
    precision, model = mixed
    assert current_precision() == "float32"  # the scope was left
    assert model.dtype_policy.name == precision
    assert model.stem.conv.compute_dtype == LOW[precision].name
    assert model.head.dense.compute_dtype == "float32"
    assert model.weights and all(v.dtype == "float32" for v in model.weights)
    x = _images(2 * GHOST, 3)
    im, om = _masks(ARCH, ARCH2)
    logits = _call(model, x, im, om, training=True)
    assert logits.dtype == tf.float32 and logits.shape == (2 * GHOST, CLASSES)
    assert np.all(np.isfinite(logits.numpy()))
    # activations really are low precision, ghost BN outputs finite
    stem = model.stem.conv(model.standardize(tf.constant(x)))
    assert stem.dtype == LOW[precision]
    bn = model.head.bn
    h = tf.cast(tf.random.stateless_normal((2 * GHOST, 2, 2, bn.gamma.shape[0]), [1, 2]) * 50.0,
                LOW[precision])
    y = bn(h, num_ghost=2)
    assert y.dtype == LOW[precision] and np.all(np.isfinite(tf.cast(y, tf.float32).numpy()))
    # masked L2 terms are float32
    assert model.masked_l2(im, om).dtype == tf.float32
    assert all(t.dtype == tf.float32 for t in model.path_squared_norms())
    ref = model.masked_l2(im, om).numpy()
    assert np.isfinite(ref) and ref > 0


# ---------------------------------------------------------------------------
# (b) same weights: mixed logits close to float32 logits
# ---------------------------------------------------------------------------


def test_oneshot_mixed_matches_float32(mixed, reference):
    precision, model = mixed
    x = _images(2 * GHOST, 4)
    all_on = _masks(SPACE.all_on())
    cases = {"all_on": (x[:GHOST],) + all_on,
             "arch": (x[:GHOST],) + _masks(ARCH),
             "two_ghosts": (x,) + _masks(ARCH, ARCH2)}
    for name, (images, im, om) in cases.items():
        ref = _call(reference, images, im, om).numpy()
        assert np.abs(ref).max() > 0.05
        for static in (False, True):
            model.static_shapes = static
            try:
                got = _call(model, images, im, om).numpy()
            finally:
                model.static_shapes = False
            _assert_close(got, ref, precision)
    # masked L2 equals the float32 model's (same float32 variables)
    im, om = _masks(ARCH, ARCH2)
    np.testing.assert_allclose(model.masked_l2(im, om).numpy(), reference.masked_l2(im, om).numpy(),
                               rtol=1e-6)
    # the architecture matters more than the rounding
    a = _call(model, x[:GHOST], *_masks(ARCH)).numpy()
    b = _call(reference, x[:GHOST], *_masks(ARCH2)).numpy()
    assert np.abs(a - b).max() / max(1.0, np.abs(b).max()) > TOL[precision]


def test_oneshot_mixed_compiled_static_shapes(mixed, reference):
    """tf.function with static_shapes (the XLA/TPU path): tf.cond branches agree in
    dtype, including inputs and ops that no ghost batch keeps."""
    precision, model = mixed
    x = _images(2 * GHOST, 5)
    im, om = _masks(ARCH, ARCH)  # ops / inputs unused by every ghost batch
    assert (om.sum(0) == 0).any()
    model.static_shapes = True
    try:
        fn = tf.function(lambda a, b, c: model({"images": a, "input_mask": b, "op_mask": c}, training=True))
        got = fn(tf.constant(x), tf.constant(im), tf.constant(om))
    finally:
        model.static_shapes = False
    assert got.dtype == tf.float32
    _assert_close(got.numpy(), _call(reference, x, im, om).numpy(), precision)


@pytest.mark.integration  # an XLA compile
def test_oneshot_bfloat16_xla_training_step(reference):
    """The TPU configuration: mixed_bfloat16, static_shapes, one XLA-compiled
    forward/backward pass with an input and ops that no ghost batch keeps."""
    model = _build_oneshot("mixed_bfloat16", static_shapes=True)
    _copy_weights(reference, model)
    x = _images(2 * GHOST, 8)
    im, om = _masks(ARCH, ARCH)
    im[:, 1, 0] = 0.0  # input 0 of block 1 unused by every ghost batch
    im[:, 1, 1] = 1.0
    labels = tf.constant(np.arange(2 * GHOST) % CLASSES)

    @tf.function(jit_compile=True)
    def step(images, input_mask, op_mask):
        with tf.GradientTape() as tape:
            logits = model({"images": images, "input_mask": input_mask, "op_mask": op_mask}, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                               from_logits=True))
        return logits, loss, tape.gradient(loss, model.trainable_variables)

    logits, loss, grads = step(tf.constant(x), tf.constant(im), tf.constant(om))
    assert logits.dtype == tf.float32 and loss.dtype == tf.float32
    _assert_close(logits.numpy(), _call(reference, x, im, om).numpy(), "mixed_bfloat16")
    for v, g in zip(model.trainable_variables, grads):
        g = tf.convert_to_tensor(g)
        assert g.dtype == tf.float32 and np.all(np.isfinite(g.numpy())), v.path


# ---------------------------------------------------------------------------
# (c) gradients
# ---------------------------------------------------------------------------


def test_oneshot_mixed_gradients_finite_float32(mixed, reference):
    precision, model = mixed
    x = _images(2 * GHOST, 6)
    labels = tf.constant(np.random.default_rng(6).integers(0, CLASSES, 2 * GHOST))
    im, om = _masks(SPACE.all_on(), ARCH)

    def grads(m):
        with tf.GradientTape() as tape:
            logits = _call(m, x, im, om, training=True)
            assert logits.dtype == tf.float32
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                               from_logits=True))
            loss += 1e-4 * m.masked_l2(im, om)
        assert loss.dtype == tf.float32
        return loss, tape.gradient(loss, m.trainable_variables)

    loss, gs = grads(model)
    ref_loss, ref_gs = grads(reference)
    assert len(gs) == len(model.trainable_variables) == len(ref_gs)
    assert float(loss) == pytest.approx(float(ref_loss), rel=TOL[precision])
    nonzero = 0
    for v, g, r in zip(model.trainable_variables, gs, ref_gs):
        assert g is not None, v.path
        g = tf.convert_to_tensor(g)
        assert g.dtype == tf.float32, v.path
        assert np.all(np.isfinite(g.numpy())), v.path
        nonzero += float(tf.norm(g)) > 0
    assert nonzero > len(gs) // 2
    # the gradient direction agrees with float32's
    flat = np.concatenate([tf.reshape(tf.convert_to_tensor(g), [-1]).numpy() for g in gs])
    ref_flat = np.concatenate([tf.reshape(tf.convert_to_tensor(g), [-1]).numpy() for g in ref_gs])
    cos = flat @ ref_flat / (np.linalg.norm(flat) * np.linalg.norm(ref_flat))
    assert cos > 0.95, cos


# ---------------------------------------------------------------------------
# (d) the stand-alone model
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("precision", MIXED)
def test_standalone_mixed_matches_float32(precision, reference):
    keras.utils.set_random_seed(0)
    ref = SPACE.build_model(ARCH, input_shape=SHAPE, num_classes=CLASSES)
    models.transfer_oneshot_weights(reference, ref, ARCH)
    with precision_scope(precision):
        model = SPACE.build_model(ARCH, input_shape=SHAPE, num_classes=CLASSES)
    assert current_precision() == "float32"
    assert all(v.dtype == "float32" for v in model.weights)
    assert model.get_layer("stem_conv").compute_dtype == LOW[precision].name
    _copy_weights(ref, model)
    x = _images(GHOST, 7)
    expected = {}
    for training in (True, False):
        out = model(tf.constant(x), training=training)
        expected[training] = ref(tf.constant(x), training=training).numpy()
        assert out.dtype == tf.float32 and model.outputs[0].dtype == "float32"
        _assert_close(out.numpy(), expected[training], precision)
    # Keras BN: float32 moving statistics, updated finitely by a training call
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns
    for layer in bns:
        for v in (layer.moving_mean, layer.moving_variance, layer.gamma, layer.beta):
            assert v.dtype == "float32"
            assert np.all(np.isfinite(v.numpy()))
    ref_bns = {l.name: l for l in ref.layers if isinstance(l, keras.layers.BatchNormalization)}
    for layer in bns:
        np.testing.assert_allclose(layer.moving_mean.numpy(), ref_bns[layer.name].moving_mean.numpy(),
                                   atol=TOL[precision], rtol=TOL[precision])
    # the one-shot model under the same policy computes the same thing
    mixed_oneshot = _build_oneshot(precision)
    _copy_weights(reference, mixed_oneshot)
    masked = _call(mixed_oneshot, x, *_masks(ARCH)).numpy()
    _assert_close(masked, expected[True], precision)


@pytest.mark.integration  # two mixed-precision trainings and a resume: CI's integration step
def test_mixed_float16_training_uses_loss_scaling_and_resumes(tmp_path):
    """train() under mixed_float16: the optimizer is Keras's LossScaleOptimizer,
    losses and metrics are finite float32, variables stay float32, and a
    checkpoint resumes (the loss scale is part of it)."""
    from oneshot_tf.methods.oneshot.proxy import OneShotProxy
    from oneshot_tf.training import TrainConfig, checkpoint_step, train

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32,) + SHAPE).astype(np.uint8)
    y = rng.integers(0, CLASSES, 32)
    cfg = TrainConfig(steps=2, batch_size=16, learning_rate=0.05, seed=1, checkpoint_every=1, log_every=1,
                      verbose=False)
    with precision_scope("mixed_float16"):
        from oneshot_tf import training
        assert isinstance(training.make_optimizer(cfg), keras.optimizers.LossScaleOptimizer)
        one_cell = CellSearchSpace(num_cells=1, num_stages=1, filters=4, num_blocks=2)  # (a shorter trace)
        proxy = OneShotProxy(one_cell, input_shape=SHAPE, num_classes=CLASSES, ghost_batch_size=8)
        metrics = train(proxy, x, y, cfg, str(tmp_path / "run"))
        assert all(np.isfinite(v) for v in metrics.values())
        assert {v.dtype for v in proxy.model.weights} == {"float32"}
        reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "run")))
        assert any("dynamic_scale" in k for k in reader.get_variable_to_shape_map())
        again = OneShotProxy(one_cell, input_shape=SHAPE, num_classes=CLASSES, ghost_batch_size=8)
        train(again, x, y, dataclasses.replace(cfg, steps=3), str(tmp_path / "run"))
        assert checkpoint_step(str(tmp_path / "run")) == 3
    assert current_precision() == "float32"


@pytest.mark.integration  # a whole pipeline in bfloat16: CI's integration step
def test_pipeline_runs_in_mixed_bfloat16(tmp_path):
    """The whole pipeline with --precision=mixed_bfloat16: the proxy trains
    and scores, the winner retrains and its SavedModel serves float32
    probabilities."""
    from oneshot_tf import config as config_lib
    from oneshot_tf.export import load_serving
    from oneshot_tf.pipeline import SearchRun

    try:
        cfg = config_lib.resolve("tiny", {"precision": "mixed_bfloat16", "num_winners": 1})
        run = SearchRun(cfg, str(tmp_path / "run"), verbose=False)
        results = run.run()
        assert current_precision() == "mixed_bfloat16"
        assert run.proxy.model.compute_dtype == "bfloat16"
    finally:
        set_precision("float32")
    assert 0.0 <= results[0]["test_accuracy"] <= 1.0
    serve = load_serving(str(tmp_path / "run" / "winners" / "1" / "saved_model"))
    probs = serve(tf.constant(run.dataset.x_test[:5])).numpy()
    assert probs.dtype == np.float32 and np.allclose(probs.sum(-1), 1.0, atol=1e-3)
