"""Zero-cost proxies (synflow, naswot) against hand computations."""

import math

import keras
import numpy as np
import pytest

from oneshot_tf.fidelity.zero_cost import naswot, synflow
from oneshot_tf.layers import Standardize

W1 = np.array([[1.0, -2.0, 0.5, 3.0],
               [-1.5, 1.0, 2.0, -0.5],
               [2.0, 0.25, -1.0, 1.0]])  # 3 -> 4, Keras x @ W convention
W2 = np.array([[1.0, -3.0],
               [-0.5, 2.0],
               [4.0, 1.0],
               [-2.0, -1.5]])  # 4 -> 2


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def _assert_same_weights(before, model):
    after = model.get_weights()
    assert len(before) == len(after)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def _hand_synflow_two_layers(w1, w2):
    """R and the synflow score of x -> relu(x|W1|)|W2| on x = 1, by hand:
    h = 1^T |W1| (all >= 0, so the ReLU is the identity), R = sum(h |W2|);
    dR/dW1[i, j] = x_i * sum_k |W2|[j, k], dR/dW2[j, k] = h_j."""
    a1, a2 = np.abs(w1), np.abs(w2)
    h = np.ones(a1.shape[0]) @ a1
    r = float(np.sum(h @ a2))
    g1 = np.outer(np.ones(a1.shape[0]), a2.sum(axis=1))
    g2 = np.outer(h, np.ones(a2.shape[1]))
    return r, float(np.sum(a1 * g1) + np.sum(a2 * g2))


def _two_layer(bn=False, standardize=False):
    if standardize:
        inp = keras.Input((3,), dtype="uint8")
        x = Standardize([100.0], [3.0])(inp)
    else:
        inp = x = keras.Input((3,))
    if bn:
        x = keras.layers.Dense(4, use_bias=False, name="d1")(x)
        x = keras.layers.BatchNormalization(name="bn")(x)
        x = keras.layers.ReLU()(x)
    else:
        x = keras.layers.Dense(4, activation="relu", use_bias=False, name="d1")(x)
    out = keras.layers.Dense(2, use_bias=False, name="d2")(x)
    model = keras.Model(inp, out, name="two_layer")
    model.get_layer("d1").set_weights([W1])
    model.get_layer("d2").set_weights([W2])
    if bn:  # statistics far from the identity: they would change R if BN stayed
        model.get_layer("bn").set_weights([np.full(4, 3.0), np.full(4, -7.0), np.full(4, 5.0), np.full(4, 0.01)])
    return model


def test_synflow_two_layer_chain_by_hand():
    r, hand = _hand_synflow_two_layers(W1, W2)
    assert hand == pytest.approx(2 * r, rel=1e-12)  # each layer's sum of theta dR/dtheta is R
    model = _two_layer()
    before = _weights(model)
    assert synflow(model) == pytest.approx(2 * r, rel=1e-12)
    _assert_same_weights(before, model)
    # negative weights stay negative in the model (the clone took |W|)
    np.testing.assert_array_equal(model.get_layer("d1").get_weights()[0], W1.astype(np.float32))


def test_synflow_removes_batch_norm_and_standardize():
    r, _ = _hand_synflow_two_layers(W1, W2)
    model = _two_layer(bn=True)
    before = _weights(model)
    assert synflow(model) == pytest.approx(2 * r, rel=1e-12)
    _assert_same_weights(before, model)
    # Standardize((1 - 100) / 3 = -33) replaced by a cast: the ones reach d1 as ones
    assert synflow(_two_layer(standardize=True)) == pytest.approx(2 * r, rel=1e-12)


def test_synflow_through_a_sliced_tensor():
    """A functional slice (``x[..., :2]``, a stateless operation of the graph,
    as the memory-bank models' banks) is kept in the float64 clone: Dense(3)
    with |W| = 2 on the first 2 of 4 ones, then Dense(1) with |V| = 3:
    R = 3 * 3 * 2 * 2 = 36 and synflow = 2R (two homogeneous layers)."""
    inp = keras.Input((4,))
    x = keras.layers.Dense(3, use_bias=False, name="d1")(inp[..., :2])
    out = keras.layers.Dense(1, use_bias=False, name="d2")(x)
    model = keras.Model(inp, out, name="sliced")
    model.get_layer("d1").set_weights([np.full((2, 3), -2.0, np.float32)])
    model.get_layer("d2").set_weights([np.full((3, 1), 3.0, np.float32)])
    assert synflow(model) == pytest.approx(72.0, rel=1e-12)


def test_synflow_float64_where_float32_overflows():
    """A chain of 4 Dense(4, dtype="float32") with weights +-2^40: per unit
    after L layers 4^L 2^(40L), R = 4 * 4^4 * 2^160 = 2^170 (> 3.4e38), and
    synflow = 4 R = 2^172, exactly in float64."""
    depth, width, w = 4, 4, 2.0 ** 40
    inp = x = keras.Input((width,))
    for i in range(depth):
        x = keras.layers.Dense(width, use_bias=False, dtype="float32", name=f"d{i}")(x)
    model = keras.Model(inp, x, name="big_chain")
    signs = np.where(np.add.outer(np.arange(width), np.arange(width)) % 2 == 0, 1.0, -1.0)
    for i in range(depth):
        model.get_layer(f"d{i}").set_weights([(signs * w).astype(np.float32)])
    r = width * (width * w) ** depth
    assert r == 2.0 ** 170 and r > float(np.finfo(np.float32).max)
    # float32 overflows on the same computation
    with np.errstate(over="ignore"):
        h32 = np.ones(width, np.float32)
        for _ in range(depth):
            h32 = h32 @ np.full((width, width), w, np.float32)
    assert np.isinf(h32.sum())
    assert synflow(model) == depth * r  # exact: powers of two


def test_synflow_float64_through_float32_head_under_mixed_precision():
    """Conv (bfloat16 under the mixed policy) -> GlobalAveragePooling2D and
    Dense declared float32, as the stand-alone models' head: weights 2^70,
    GAP of a 2x2 map of 2^70 is 2^70 per channel, each logit 2 * 2^140,
    R = 2^142 > float32 max, synflow = 2R (two homogeneous layers)."""
    from oneshot_tf.precision import precision_scope
    with precision_scope("mixed_bfloat16"):
        inp = keras.Input((2, 2, 1))
        x = keras.layers.Conv2D(2, 1, use_bias=False, name="conv")(inp)
        x = keras.layers.GlobalAveragePooling2D(dtype="float32")(x)
        out = keras.layers.Dense(2, use_bias=False, dtype="float32", name="logits")(x)
        model = keras.Model(inp, out, name="head")
    model.get_layer("conv").set_weights([np.full((1, 1, 1, 2), -(2.0 ** 70), np.float32)])
    model.get_layer("logits").set_weights([np.full((2, 2), 2.0 ** 70, np.float32)])
    assert synflow(model) == 2.0 * 2.0 ** 142


def test_synflow_without_kernels_raises():
    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.ReLU()(inp), name="no_kernels")
    with pytest.raises(ValueError, match="no_kernels"):
        synflow(model)


# -- naswot ----------------------------------------------------------------
NW1 = np.array([[1.0, -1.0, 0.5],
                [-0.5, 1.0, 1.0]])  # 2 -> 3
NB1 = np.array([0.1, 0.0, -0.6])
NW2 = np.array([[1.0, -1.0],
                [-1.0, 0.5],
                [0.5, -1.0]])  # 3 -> 2
NB2 = np.array([0.0, 0.3])
NW3 = np.array([[1.0], [-1.0]])


def _naswot_net():
    """Dense(3, relu) -> Dense(2) -> Activation(relu) -> ReLU -> Dense(1):
    the codes of d1's 3 units, the Activation's 2 and the ReLU layer's 2
    (the same as the Activation's); the last Dense has no ReLU."""
    inp = keras.Input((2,))
    x = keras.layers.Dense(3, activation="relu", name="d1")(inp)
    x = keras.layers.Dense(2, name="d2")(x)
    x = keras.layers.Activation("relu", name="act")(x)
    x = keras.layers.ReLU(name="relu")(x)
    out = keras.layers.Dense(1, name="d3")(x)
    model = keras.Model(inp, out, name="naswot_net")
    model.get_layer("d1").set_weights([NW1, NB1])
    model.get_layer("d2").set_weights([NW2, NB2])
    model.get_layer("d3").set_weights([NW3, np.zeros(1)])
    return model


def _hand_naswot(x):
    h1 = x @ NW1 + NB1
    a1 = np.maximum(h1, 0)
    h2 = a1 @ NW2 + NB2
    codes = np.concatenate([h1 > 0, h2 > 0, h2 > 0], axis=1)  # d1, act, relu
    n = len(x)
    k = np.array([[codes.shape[1] - np.sum(codes[i] != codes[j]) for j in range(n)] for i in range(n)],
                 dtype=np.float64)  # units minus the Hamming distance
    return codes, k


def test_naswot_by_hand():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-2.0, -2.0], [-1.0, -2.0]])
    codes, k = _hand_naswot(x)
    assert len({tuple(c) for c in codes}) == 4
    sign, logdet = np.linalg.slogdet(k)
    assert sign != 0 and abs(np.linalg.det(k)) > 1  # K is integer: det 336, far from singular
    assert naswot(_naswot_net(), x) == pytest.approx(logdet, rel=1e-9, abs=1e-9)
    assert naswot(_naswot_net(), x[:3]) == pytest.approx(np.linalg.slogdet(_hand_naswot(x[:3])[1])[1],
                                                          rel=1e-9, abs=1e-9)


def test_naswot_identical_codes_is_minus_inf():
    x = np.array([[1.0, 0.0], [1.0, -1.0], [0.0, 1.0]])  # rows 0 and 1: different inputs, same codes
    codes, _ = _hand_naswot(x)
    np.testing.assert_array_equal(codes[0], codes[1])
    assert naswot(_naswot_net(), x) == -math.inf


def test_naswot_errors():
    with pytest.raises(ValueError, match="at least 2"):
        naswot(_naswot_net(), np.zeros((1, 2)))
    inp = keras.Input((2,))
    model = keras.Model(inp, keras.layers.Dense(1)(inp), name="linear_only")
    with pytest.raises(ValueError, match="linear_only"):
        naswot(model, np.zeros((3, 2)))


# -- a real stand-alone model of the cell space --------------------------------
@pytest.fixture(scope="module")
def cell_models():
    from oneshot_tf import config as C, pipeline, registry
    from oneshot_tf.search_space import StandaloneOptions
    cfg = C.resolve("tiny", {})  # one-shot method's tiny preset: digits 8x8
    ds = pipeline.load_data(cfg)
    space, _ = registry.get("oneshot").build(cfg, ds)
    mean, std = ds.channel_stats()
    archs = [space.sample_at(0, 0), space.sample_at(0, 1)]
    assert space.to_json(archs[0]) != space.to_json(archs[1])
    models = [space.build_model(a, input_shape=ds.image_shape, num_classes=ds.num_classes,
                                options=StandaloneOptions(mean=mean, std=std)) for a in archs]
    return ds, models


def test_cell_space_model(cell_models):
    ds, (model, other) = cell_models
    before = _weights(model)
    score = synflow(model)
    assert math.isfinite(score) and score > 0
    _assert_same_weights(before, model)
    other_score = synflow(other)
    assert math.isfinite(other_score) and other_score > 0
    assert score != other_score
    nw = naswot(model, ds.x_train[:32])
    assert math.isfinite(nw)
    _assert_same_weights(before, model)  # BN moving statistics restored after the training-mode call
