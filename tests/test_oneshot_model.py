"""Tests for the one-shot model: ghost BN, mask semantics (equivalence with the
stand-alone models), masked L2, scheduled path dropout and candidate scoring."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from oneshot_tf.methods.oneshot import models
from oneshot_tf.methods.oneshot.cell_space import OPS, Block, CellArchitecture, CellSearchSpace
from oneshot_tf.methods.oneshot.layers import GhostBatchNorm
from oneshot_tf.methods.oneshot.proxy import OneShotProxy, path_drop_probabilities, sample_path_masks
from oneshot_tf.methods.oneshot.oneshot_model import OneShotModel
from oneshot_tf.scoring import CandidateScorer, ScoreConfig

SPACE = CellSearchSpace(num_cells=2, num_stages=2, filters=4, num_blocks=3)
SHAPE = (8, 8, 3)
CLASSES = 5


def _arch(*blocks):
    return CellArchitecture(tuple(Block(tuple(i), tuple(o)) for i, o in blocks))


def _masks(*archs):
    encs = [SPACE.encode(a) for a in archs]
    return (np.stack([e["input_mask"] for e in encs]), np.stack([e["op_mask"] for e in encs]))


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n,) + SHAPE).astype(np.uint8)


def layers_by_name(model):
    """Every Keras layer inside ``model``, by name (names are unique)."""
    layers = [l for l in model._flatten_layers(include_self=False, recursive=True)]
    named = {l.name: l for l in layers}
    assert len(named) == len(layers)
    return named


def _randomize(model, seed):
    """Non-trivial gamma/beta and dense bias (init values 1/0 would hide slicing bugs)."""
    rng = np.random.default_rng(seed)
    for layer in layers_by_name(model).values():
        if isinstance(layer, GhostBatchNorm):
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.3, layer.beta.shape).astype(np.float32))
        elif isinstance(layer, keras.layers.Dense):
            layer.bias.assign(rng.normal(0, 0.3, layer.bias.shape).astype(np.float32))


@pytest.fixture(scope="module")
def oneshot():
    keras.utils.set_random_seed(0)
    model = OneShotModel(SPACE, input_shape=SHAPE, num_classes=CLASSES).build_weights()
    _randomize(model, 1)
    return model


ARCHS = {
    "a": _arch(((0, 1), ("sep3x3", "maxpool3x3")), ((2,), ("conv1x7_7x1",)), ((0, 2, 3), ("identity", "sep5x5"))),
    "b": _arch(((1,), ("sep7x7",)), ((0, 1, 2), ("avgpool3x3",)), ((3,), ("sep3x3", "conv1x7_7x1"))),
    # no block reads input 1: cell 0 drops out of the stand-alone model
    "no_in1": _arch(((0,), ("identity", "sep5x5")), ((0, 2), ("sep3x3",)), ((2, 3), ("maxpool3x3", "avgpool3x3"))),
    # no block reads input 0
    "no_in0": _arch(((1,), ("conv1x7_7x1",)), ((2,), ("identity", "sep7x7")), ((1, 3), ("sep3x3",))),
}
ARCHS["rand"] = SPACE.sample(np.random.default_rng(5))


@pytest.fixture(scope="module")
def standalone(oneshot):
    cache = {}

    def get(key):
        if key not in cache:
            arch = ARCHS[key]
            model = SPACE.build_model(arch, input_shape=SHAPE, num_classes=CLASSES)
            copied = models.transfer_oneshot_weights(oneshot, model, arch)
            assert copied == sum(1 for l in model.layers if l.weights)
            cache[key] = model
        return cache[key]

    return get


def _oneshot_logits(model, images, input_mask, op_mask):
    return model({"images": tf.constant(images), "input_mask": tf.constant(input_mask, tf.float32),
                  "op_mask": tf.constant(op_mask, tf.float32)}).numpy()


# ---------------------------------------------------------------------------
# ghost batch norm
# ---------------------------------------------------------------------------


def test_ghost_batch_norm_matches_numpy_per_ghost_statistics():
    rng = np.random.default_rng(0)
    g, c = 3, 5
    x = rng.normal(size=(6, 4, 3, c)).astype(np.float32)
    x += np.repeat(np.array([0.0, 5.0, -3.0]), 2)[:, None, None, None].astype(np.float32)  # ghosts differ
    x *= np.repeat(np.array([1.0, 3.0, 0.5]), 2)[:, None, None, None].astype(np.float32)
    gamma = rng.uniform(0.5, 2.0, c).astype(np.float32)
    beta = rng.normal(size=c).astype(np.float32)
    layer = GhostBatchNorm(epsilon=1e-3)
    layer.build(x.shape)
    layer.gamma.assign(gamma)
    layer.beta.assign(beta)
    y = layer(tf.constant(x), num_ghost=g).numpy()
    expected = np.empty_like(x)
    for k in range(g):
        part = x[2 * k:2 * k + 2].astype(np.float64)
        mean = part.mean(axis=(0, 1, 2))
        var = ((part - mean) ** 2).mean(axis=(0, 1, 2))  # biased
        expected[2 * k:2 * k + 2] = (part - mean) / np.sqrt(var + 1e-3) * gamma + beta
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    # the number of ghost batches as a tensor (a gathered subset inside the model)
    yt = layer(tf.constant(x), num_ghost=tf.constant(g)).numpy()
    np.testing.assert_allclose(yt, expected, rtol=1e-5, atol=1e-5)
    # with one ghost batch the statistics are over the whole batch, which differs here
    y1 = layer(tf.constant(x), num_ghost=1).numpy()
    assert np.abs(y1 - expected).max() > 0.1
    # 2-D inputs (after pooling): per-ghost statistics over the batch only
    x2 = rng.normal(size=(6, c)).astype(np.float32)
    y2 = layer(tf.constant(x2), num_ghost=g).numpy()
    e2 = np.concatenate([(p - p.mean(0)) / np.sqrt(p.var(0) + 1e-3) * gamma + beta for p in np.split(x2, g)])
    np.testing.assert_allclose(y2, e2, rtol=1e-5, atol=1e-5)


def test_ghost_batch_norm_one_ghost_equals_keras_batch_norm_training():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(8, 5, 5, 6)) * 2 + 1).astype(np.float32)
    gamma = rng.uniform(0.5, 2.0, 6).astype(np.float32)
    beta = rng.normal(size=6).astype(np.float32)
    ghost = GhostBatchNorm(epsilon=1e-3)
    ghost.build(x.shape)
    bn = keras.layers.BatchNormalization(epsilon=1e-3)
    bn.build(x.shape)
    for layer in (ghost, bn):
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
    ref = bn(x, training=True).numpy()
    np.testing.assert_allclose(ghost(tf.constant(x), num_ghost=1).numpy(), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ghost(tf.constant(x)).numpy(), ref, rtol=1e-5, atol=1e-5)
    assert ghost.epsilon == 1e-3 and GhostBatchNorm().epsilon == 1e-3


# ---------------------------------------------------------------------------
# one-shot model == stand-alone model with the same weights
# ---------------------------------------------------------------------------


def _close(a, b):
    scale = max(1.0, float(np.abs(b).max()))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("key", ["a", "b", "no_in1", "no_in0", "rand"])
def test_masked_oneshot_equals_standalone(oneshot, standalone, key):
    arch = ARCHS[key]
    x = _images(6, seed=10)
    im, om = _masks(arch)
    got = _oneshot_logits(oneshot, x, im, om)
    ref = standalone(key)(x, training=True).numpy()
    assert got.shape == (6, CLASSES)
    assert np.abs(ref).max() > 0.05
    _close(got, ref)


@pytest.mark.parametrize("key", ["a", "b", "no_in1", "no_in0", "rand"])
def test_shared_masks_equal_per_ghost_masks_and_standalone(oneshot, standalone, key):
    """One architecture for every ghost batch (masks without the ghost axis,
    the scoring path: only the kept inputs and ops run, under tf.cond) gives
    the per-ghost masked model's outputs and the stand-alone model's per
    ghost batch, eagerly and compiled."""
    arch = ARCHS[key]
    x = _images(8, seed=13)
    enc = SPACE.encode(arch)

    def shared(images):
        return oneshot({"images": images, "input_mask": tf.constant(enc["input_mask"]),
                        "op_mask": tf.constant(enc["op_mask"])}, num_ghost=2)

    got = shared(tf.constant(x)).numpy()
    _close(got, _oneshot_logits(oneshot, x, *_masks(arch, arch)))
    for half in (slice(0, 4), slice(4, 8)):
        _close(got[half], standalone(key)(x[half], training=True).numpy())
    _close(tf.function(shared)(tf.constant(x)).numpy(), got)


def test_shared_and_per_ghost_mask_errors(oneshot):
    enc = SPACE.encode(ARCHS["a"])
    x = tf.constant(_images(6, seed=1))
    with pytest.raises(ValueError, match="both need a ghost-batch axis, or neither"):
        oneshot({"images": x, "input_mask": enc["input_mask"], "op_mask": enc["op_mask"][None]})
    with pytest.raises(ValueError, match="num_ghost=3, but the masks have 2 ghost batches"):
        oneshot({"images": x, "input_mask": np.stack([enc["input_mask"]] * 2),
                 "op_mask": np.stack([enc["op_mask"]] * 2)}, num_ghost=3)
    with pytest.raises(ValueError, match="a batch of 6 does not split into 4 ghost batches"):
        oneshot({"images": x, "input_mask": enc["input_mask"], "op_mask": enc["op_mask"]}, num_ghost=4)
    # the loop over candidates takes a stack of encodings
    with pytest.raises(ValueError, match=r"candidates_logits takes input_mask \[K, 3, 4\] and op_mask \[K, 3, 7\]"):
        oneshot.candidates_logits(x, enc["input_mask"], enc["op_mask"])
    with pytest.raises(ValueError, match="a batch of 6 does not split into 4 ghost batches"):
        oneshot.candidates_logits(x, enc["input_mask"][None], enc["op_mask"][None], num_ghost=4)


def test_different_archs_give_different_outputs(oneshot, standalone):
    x = _images(6, seed=10)
    outs = {k: _oneshot_logits(oneshot, x, *_masks(ARCHS[k])) for k in ("a", "b", "no_in1")}
    assert np.abs(outs["a"] - outs["b"]).max() > 1e-2
    assert np.abs(outs["a"] - outs["no_in1"]).max() > 1e-2
    # and the stand-alone model of "a" is not equal to the masked model of "b"
    assert np.abs(standalone("a")(x, training=True).numpy() - outs["b"]).max() > 1e-2


def test_two_ghost_batches_with_two_archs(oneshot, standalone):
    x = _images(8, seed=11)
    im, om = _masks(ARCHS["a"], ARCHS["no_in1"])
    got = _oneshot_logits(oneshot, x, im, om)
    _close(got[:4], standalone("a")(x[:4], training=True).numpy())
    _close(got[4:], standalone("no_in1")(x[4:], training=True).numpy())
    # swapping the masks swaps which half follows which arch
    im2, om2 = _masks(ARCHS["no_in1"], ARCHS["a"])
    got2 = _oneshot_logits(oneshot, x, im2, om2)
    _close(got2[4:], standalone("a")(x[4:], training=True).numpy())
    assert np.abs(got2[:4] - got[:4]).max() > 1e-2


def test_skip_inactive_false_gives_same_output(oneshot, standalone):
    keras.utils.set_random_seed(3)
    full = OneShotModel(SPACE, input_shape=SHAPE, num_classes=CLASSES, skip_inactive=False).build_weights()
    assert oneshot.skip_inactive and not full.skip_inactive
    assert [v.path for v in full.weights] == [v.path for v in oneshot.weights]
    full.set_weights(oneshot.get_weights())
    x = _images(8, seed=12)
    cases = [_masks(ARCHS["b"], ARCHS["no_in0"]),
             _masks(ARCHS["a"]),
             # 4 ghost batches: ops kept by 0, 1, 2 or 3 of them (gathered subsets)
             _masks(ARCHS["a"], ARCHS["no_in1"], ARCHS["rand"], ARCHS["a"])]
    assert {0, 1, 2, 3} <= set(cases[2][1].sum(0).ravel().tolist())
    assert 2 in (cases[0][1].sum(0)).ravel().tolist()  # an op kept by both ghost batches
    # (the compiled path with several candidates is checked by the scoring tests)
    for im, om in cases:
        b = _oneshot_logits(full, x, im, om)
        a = _oneshot_logits(oneshot, x, im, om)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
        # static_shapes=True (whole-batch op, skipped only when no ghost keeps it)
        oneshot.static_shapes = not oneshot.static_shapes
        try:
            d = _oneshot_logits(oneshot, x, im, om)
        finally:
            oneshot.static_shapes = not oneshot.static_shapes
        np.testing.assert_allclose(d, b, rtol=1e-5, atol=1e-5)
    # one architecture shared by 4 ghost batches, masks without a ghost axis:
    # skip_inactive=False runs every op with the masks multiplied in
    im, om = _masks(ARCHS["rand"])
    shared = [m({"images": tf.constant(x), "input_mask": im[0], "op_mask": om[0]}, num_ghost=4).numpy()
              for m in (full, oneshot)]
    np.testing.assert_allclose(shared[0], shared[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(shared[0], _oneshot_logits(full, x, *_masks(*[ARCHS["rand"]] * 4)),
                               rtol=1e-5, atol=1e-5)
    # the 4-ghost case: each quarter is its own stand-alone model
    im, om = cases[2]
    out = _oneshot_logits(oneshot, x, im, om)
    for q, key in enumerate(["a", "no_in1", "rand", "a"]):
        _close(out[2 * q:2 * q + 2], standalone(key)(x[2 * q:2 * q + 2], training=True).numpy())


def test_gradients_equal_the_masked_reference(oneshot):
    """The training path's gradients (two ghost batches: an op kept by one
    or both on the whole batch, masked; four: on the gathered ghost batches
    that keep it, batch norms with moments; a path kept by none skipped)
    equal those of the reference model that runs every path on the whole
    batch with the masks multiplied in; weights of a path no ghost batch
    keeps get exactly zero in both.  Eager (the branches are the compiled
    step's, without tracing two models' gradients)."""
    keras.utils.set_random_seed(3)
    full = OneShotModel(SPACE, input_shape=SHAPE, num_classes=CLASSES, skip_inactive=False).build_weights()
    full.set_weights(oneshot.get_weights())
    x = tf.constant(_images(8, seed=14))
    weight = tf.constant(np.random.default_rng(15).normal(size=(8, CLASSES)).astype(np.float32))

    def grads_fn(model):
        def grads(input_mask, op_mask):
            with tf.GradientTape() as tape:
                logits = model({"images": x, "input_mask": input_mask, "op_mask": op_mask})
                loss = tf.reduce_sum(logits * weight)
            g = tape.gradient(loss, model.trainable_variables)
            return [tf.zeros_like(v) if d is None else tf.convert_to_tensor(d)
                    for v, d in zip(model.trainable_variables, g)]
        return grads

    fast, ref = grads_fn(oneshot), grads_fn(full)
    cases = [_masks(ARCHS["b"], ARCHS["no_in0"]), _masks(ARCHS["a"], ARCHS["a"]),
             _masks(ARCHS["a"], ARCHS["no_in1"], ARCHS["rand"], ARCHS["a"])]
    kept_by = [c[1].sum(0) for c in cases]
    assert 1 in kept_by[0] and 2 in kept_by[0] and 0 in kept_by[0]  # two ghost batches: one, both, neither
    assert {1, 2, 3} <= set(kept_by[2].ravel().tolist())            # four: gathered subsets
    for im, om in cases:
        got = fast(tf.constant(im, tf.float32), tf.constant(om, tf.float32))
        want = ref(tf.constant(im, tf.float32), tf.constant(om, tf.float32))
        zero = 0
        for v, a, b in zip(oneshot.trainable_variables, got, want):
            a, b = a.numpy(), b.numpy()
            scale = max(1.0, float(np.abs(b).max()))
            np.testing.assert_allclose(a, b, rtol=0, atol=2e-4 * scale, err_msg=v.path)
            if not np.any(b):
                assert not np.any(a), v.path
                zero += 1
        assert zero > 0  # the case drops some path in every ghost batch


# ---------------------------------------------------------------------------
# masked L2
# ---------------------------------------------------------------------------


def _hand_cand_sizes(cell):
    """Channels of the candidate inputs of a cell's blocks, from the module docstring:
    stage 0 reads the stem (F channels), later stages the reductions (2 F_s)."""
    stage = 0 if cell == 0 else 1  # 2 cells, 2 stages
    fs = SPACE.filters * 2 ** stage
    prev = SPACE.filters if stage == 0 else 2 * fs
    return [prev, prev] + [fs] * SPACE.num_blocks


def _hand_masked_l2(model, input_mask, op_mask):
    frac_in = input_mask.mean(0)
    frac_op = op_mask.mean(0)
    total = 0.0
    seen = set()
    for name, layer in layers_by_name(model).items():
        sq = lambda w: float(np.sum(np.square(np.asarray(w, np.float64))))  # noqa: E731
        if name == "stem_conv" or (name.startswith("s") and "_reduce" in name and name.endswith("_conv")):
            total += sq(layer.kernel)
            seen.add(name)
        elif name == "logits":
            total += sq(layer.kernel)  # not the bias
            seen.add(name)
        elif name.endswith("_in_conv"):
            cell, block = int(name[3]), int(name[5])
            sizes = _hand_cand_sizes(cell)[: 2 + block]
            kernel = np.asarray(layer.kernel)
            assert kernel.shape[2] == sum(sizes)
            start = 0
            for j, n in enumerate(sizes):
                total += frac_in[block, j] * sq(kernel[:, :, start:start + n, :])
                start += n
            seen.add(name)
        elif isinstance(layer, (keras.layers.SeparableConv2D, keras.layers.Conv2D)):
            block = int(name[5])
            op = name[7:].rsplit("_", 1)[0]
            w = frac_op[block, OPS.index(op)]
            if isinstance(layer, keras.layers.SeparableConv2D):
                total += w * (sq(layer.depthwise_kernel) + sq(layer.pointwise_kernel))
            else:
                total += w * sq(layer.kernel)
            seen.add(name)
    # every conv/dense layer was accounted for
    convs = {n for n, l in layers_by_name(model).items()
             if isinstance(l, (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.Dense))}
    assert seen == convs
    return total


def test_masked_l2_matches_hand_computation(oneshot):
    for cell in range(2):
        for i in range(SPACE.num_blocks):
            assert list(oneshot.cells[cell].blocks[i].candidates) == _hand_cand_sizes(cell)[: 2 + i]
    rng = np.random.default_rng(4)
    im0, om0 = _masks(ARCHS["a"])
    im1 = rng.integers(0, 2, im0.shape[1:]).astype(np.float32)
    im1[0, 2:] = 1.0  # padding columns switched on: must be ignored
    im1[1, 3:] = 1.0
    om1 = rng.integers(0, 2, om0.shape[1:]).astype(np.float32)
    input_mask = np.stack([im0[0], im1])
    op_mask = np.stack([om0[0], om1])
    valid = SPACE.valid_input_mask()
    hand = _hand_masked_l2(oneshot, input_mask * valid, op_mask)
    got = float(oneshot.masked_l2(tf.constant(input_mask), tf.constant(op_mask)))
    assert got == pytest.approx(hand, rel=1e-5)
    # padding columns are ignored
    assert float(oneshot.masked_l2(input_mask * valid, op_mask)) == pytest.approx(got, rel=1e-6)
    # all paths on: every conv/dense kernel of the model, nothing else
    ones_in = np.ones((2,) + im0.shape[1:], np.float32)
    ones_op = np.ones((2,) + om0.shape[1:], np.float32)
    all_kernels = sum(float(np.sum(np.square(v.numpy().astype(np.float64))))
                      for v in oneshot.weights if v.path.split("/")[-1].endswith("kernel"))
    assert float(oneshot.masked_l2(ones_in, ones_op)) == pytest.approx(all_kernels, rel=1e-5)
    # all paths off: the always-used kernels only
    zero = float(oneshot.masked_l2(np.zeros_like(ones_in), np.zeros_like(ones_op)))
    always = sum(float(np.sum(np.square(np.asarray(layers_by_name(oneshot)[n].kernel, np.float64))))
                 for n in ("stem_conv", "s1_reduce0_conv", "s1_reduce1_conv", "logits"))
    assert zero == pytest.approx(always, rel=1e-5)
    # a ghost batch mean: half of the op kernels for a path kept in one of the two ghosts
    assert zero < got < float(oneshot.masked_l2(ones_in, ones_op))


# ---------------------------------------------------------------------------
# scheduled path dropout
# ---------------------------------------------------------------------------

DROP_SPACE = CellSearchSpace()  # 4 blocks: input fan-ins 2, 3, 4, 5; 7 ops
G = 20000
R = 0.1


def test_path_drop_probabilities_schedule():
    for progress in (0.0, 0.25, 0.5, 1.0):
        p_in, p_op = path_drop_probabilities(DROP_SPACE, progress, R)
        np.testing.assert_allclose(np.asarray(p_in), [progress * R ** (1 / k) for k in (2, 3, 4, 5)], rtol=1e-6)
        assert float(p_op) == pytest.approx(progress * R ** (1 / 7), rel=1e-6)


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_path_drop_frequencies(progress):
    im, om = (m.numpy() for m in sample_path_masks(DROP_SPACE, G, progress, R, seed=[3, 4]))
    assert im.shape == (G, 4, 5) and om.shape == (G, 4, 7)
    assert set(np.unique(im)) <= {0.0, 1.0} and set(np.unique(om)) <= {0.0, 1.0}
    valid = DROP_SPACE.valid_input_mask()
    assert np.all(im[:, valid == 0] == 0)  # padding inputs always 0
    if progress == 0.0:
        np.testing.assert_array_equal(im, np.broadcast_to(valid, im.shape))
        np.testing.assert_array_equal(om, np.ones_like(om))
        return
    for i in range(4):
        k = 2 + i
        p = progress * R ** (1 / k)
        se = math.sqrt(p * (1 - p) / G)
        for j in range(k):
            drop = 1 - im[:, i, j].mean()
            assert abs(drop - p) < 4 * se, (progress, i, j, drop, p)
    p = progress * R ** (1 / 7)
    se = math.sqrt(p * (1 - p) / G)
    for i in range(4):
        for o in range(7):
            drop = 1 - om[:, i, o].mean()
            assert abs(drop - p) < 4 * se, (progress, i, o, drop, p)
    # ghost batches get different rows
    assert len({r.tobytes() for r in im}) > G // 4
    assert len({r.tobytes() for r in om}) > G // 4
    if progress == 1.0:
        # all inputs of a block dropped: probability r whatever the fan-in
        for i in range(4):
            all_dropped = np.mean(im[:, i, : 2 + i].sum(-1) == 0)
            assert abs(all_dropped - R) < 4 * math.sqrt(R * (1 - R) / G), (i, all_dropped)
        all_ops = np.mean(om.sum(-1) == 0)
        assert abs(all_ops - R) < 4 * math.sqrt(R * (1 - R) / (4 * G))
        # decisions independent across blocks / inputs: P(both kept) = product
        both = np.mean(im[:, 0, 0] * im[:, 1, 0])
        expect = (1 - R ** 0.5) * (1 - R ** (1 / 3))
        assert abs(both - expect) < 4 * math.sqrt(expect * (1 - expect) / G)


def test_path_masks_are_seeded():
    a = [m.numpy() for m in sample_path_masks(DROP_SPACE, 64, 1.0, R, seed=[7, 8])]
    b = [m.numpy() for m in sample_path_masks(DROP_SPACE, 64, 1.0, R, seed=[7, 8])]
    c = [m.numpy() for m in sample_path_masks(DROP_SPACE, 64, 1.0, R, seed=[7, 9])]
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert np.mean(a[0] != c[0]) > 0.1 and np.mean(a[1] != c[1]) > 0.1
    # same masks inside a compiled function with a tensor seed
    fn = tf.function(lambda s: sample_path_masks(DROP_SPACE, 64, tf.constant(1.0), R, s))
    d = [m.numpy() for m in fn(tf.constant([7, 8], tf.int32))]
    np.testing.assert_array_equal(a[0], d[0])
    np.testing.assert_array_equal(a[1], d[1])


def test_path_masks_of_different_training_steps_are_independent():
    """training.train seeds step t with ``[base, t]``.  Op dropout decisions at
    step t must not reuse the random numbers of the input decisions at another
    step (here t + 7919, the offset sample_path_masks adds for its op stream)."""
    base, t = 5, 100
    im_later, _ = sample_path_masks(DROP_SPACE, 2000, 1.0, R, seed=[base, t + 7919])
    _, om_now = sample_path_masks(DROP_SPACE, 2000, 1.0, R, seed=[base, t])
    inp = im_later.numpy().ravel()
    valid = np.broadcast_to(DROP_SPACE.valid_input_mask(), im_later.shape).ravel() > 0
    op = om_now.numpy().ravel()[: inp.size]
    dropped_in, kept_op = (1 - inp)[valid], op[valid]
    joint = np.mean(dropped_in * kept_op)
    expect = dropped_in.mean() * kept_op.mean()
    assert abs(joint - expect) < 4 * math.sqrt(expect * (1 - expect) / dropped_in.size), (joint, expect)


# ---------------------------------------------------------------------------
# candidate scoring: one trace, candidates independent of each other
# ---------------------------------------------------------------------------

SCORE_SPACE = CellSearchSpace(num_cells=2, num_stages=2, filters=4, num_blocks=2)
SCORE_SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def scorer():
    keras.utils.set_random_seed(0)
    proxy = OneShotProxy(SCORE_SPACE, input_shape=SCORE_SHAPE, num_classes=3, ghost_batch_size=8)
    proxy.build()
    rng = np.random.default_rng(0)
    for layer in layers_by_name(proxy.model).values():
        if isinstance(layer, GhostBatchNorm):
            layer.beta.assign(rng.normal(0, 0.5, layer.beta.shape).astype(np.float32))
    x_val = rng.integers(0, 256, (24,) + SCORE_SHAPE).astype(np.uint8)
    y_val = rng.integers(0, 3, 24)
    x_kl = rng.integers(0, 256, (16,) + SCORE_SHAPE).astype(np.uint8)
    sc = CandidateScorer(proxy, ScoreConfig(candidates_per_pass=4, group_size=8, kl_examples=16, verbose=False))
    sc.prepare(x_val, y_val, x_kl)
    sc.data = (x_val, y_val, x_kl)
    return sc


def test_scorer_traces_once(scorer):
    space = SCORE_SPACE
    archs = space.sample_unique(40, seed=9)
    assert scorer.trace_count == 1
    encs = [space.encode(a) for a in archs]
    sizes = [4, 3, 1]
    start = 0
    for n in sizes:
        out = scorer.score_encodings(encs[start:start + n])
        assert len(out) == n and all(set(r) == {"score", "accuracy", "kl"} for r in out)
        start += n
    after3 = scorer.trace_count
    for n in [4, 2, 4, 1, 3, 4, 4, 2, 4, 3]:
        scorer.score_encodings([encs[(start + j) % 40] for j in range(n)])
        start += n
    assert scorer.trace_count == after3 == 1
    with pytest.raises(ValueError, match="score_encodings takes 1 to 4 encodings, got 5"):
        scorer.score_encodings(encs[:5])


def test_scores_do_not_depend_on_pass_mates(scorer):
    space = SCORE_SPACE
    a, b, c = space.sample_unique(3, seed=21)
    ea, eb, ec = (space.encode(x) for x in (a, b, c))
    alone = scorer.score_encodings([ea])[0]
    together = scorer.score_encodings([ea, eb, ec])
    moved = scorer.score_encodings([eb, ec, ea])
    for other in (together[0], moved[2]):
        assert other["accuracy"] == alone["accuracy"]
        assert other["kl"] == pytest.approx(alone["kl"], rel=1e-4, abs=1e-7)
    assert together[1]["kl"] == pytest.approx(moved[0]["kl"], rel=1e-4, abs=1e-7)
    assert together[1]["kl"] != pytest.approx(together[0]["kl"], rel=1e-3)
    assert scorer.trace_count == 1

    # the numbers themselves, by hand from the model with one candidate per call
    x_val, y_val, x_kl = scorer.data
    model = scorer.proxy.model

    def logp(x, enc):
        logits = model({"images": tf.constant(x), "input_mask": enc["input_mask"][None],
                        "op_mask": enc["op_mask"][None]}).numpy().astype(np.float64)
        return logits - np.log(np.exp(logits).sum(-1, keepdims=True))

    refs = scorer.proxy.reference_encodings(2, seed=0)  # one reference per KL group
    correct = sum(int((logp(x_val[s:s + 8], ea).argmax(-1) == y_val[s:s + 8]).sum()) for s in (0, 8, 16))
    assert alone["accuracy"] == pytest.approx(correct / 24)
    kl = 0.0
    for j, idx in enumerate(scorer.kl_indices):  # the seeded draw of the 16 KL examples, in 2 groups
        lp, lq = logp(x_kl[idx], refs[j]), logp(x_kl[idx], ea)
        kl += float(((np.exp(lp) - np.exp(lq)) * (lp - lq)).sum())
    assert alone["kl"] == pytest.approx(kl / 16, rel=1e-4, abs=1e-7)
    assert kl > 0


def test_oneshot_candidate_loop_equals_the_tiled_default(scorer):
    """``OneShotProxy.candidates_logits`` (candidates in turn, masks shared by
    their ghost batches) gives the logits of the proxy interface's default
    (examples tiled, one ghost batch per candidate and group, per-ghost masks)."""
    from oneshot_tf.proxy import Proxy
    proxy = scorer.proxy
    encs = [SCORE_SPACE.encode(a) for a in SCORE_SPACE.sample_unique(3, seed=8)]
    enc = {k: tf.constant(np.stack([e[k] for e in encs])) for k in encs[0]}
    images = tf.constant(scorer.data[0])  # 3 groups of 8
    loop = tf.function(lambda: proxy.candidates_logits(images, enc, 8))().numpy()
    tiled = tf.function(lambda: Proxy.candidates_logits(proxy, images, enc, 8))().numpy()
    assert loop.shape == tiled.shape == (3, 24, 3)
    np.testing.assert_allclose(loop, tiled, rtol=1e-5, atol=1e-5)
    assert np.abs(loop[0] - loop[1]).max() > 1e-3


@pytest.mark.integration  # two scorer traces (~11 s): CI's integration step
def test_groups_per_pass_do_not_change_scores(scorer):
    """The 3 validation and 2 KL groups in one pass, in passes of 2 (the last
    padded) or of 1: the same scores, one trace each."""
    space = SCORE_SPACE
    encs = [space.encode(a) for a in space.sample_unique(4, seed=5)]
    x_val, y_val, x_kl = scorer.data
    results = {}
    for pass_examples in (10 ** 6, 2 * 4 * 8, 4 * 8):
        sc = CandidateScorer(scorer.proxy, ScoreConfig(candidates_per_pass=4, group_size=8, kl_examples=16,
                                                       pass_examples=pass_examples, verbose=False))
        sc.prepare(x_val, y_val, x_kl)
        assert [int(p.shape[0]) for p in sc._passes] == {10 ** 6: [40], 64: [16, 16, 16], 32: [8] * 5}[
            pass_examples]
        results[pass_examples] = sc.score_encodings(encs)
        assert sc.trace_count == 1
    for other in list(results.values())[1:]:
        for a, b in zip(results[10 ** 6], other):
            assert a["accuracy"] == b["accuracy"]
            assert a["kl"] == pytest.approx(b["kl"], rel=1e-4, abs=1e-7)


# ---------------------------------------------------------------------------
# one set of path decisions for every cell
# ---------------------------------------------------------------------------


def _op_kernel_grads(model, input_mask, op_mask, block, op):
    """Per cell: the gradient norm of ``op``'s kernels in ``block``."""
    images = tf.constant(_images(2 * input_mask.shape[0], 9))
    named = layers_by_name(model)
    cells = sorted({n.split("b")[0] for n in named if n.startswith("s") and "b" in n.split("_")[0]})
    kernels = {c: [w for n, l in named.items() if n.startswith(f"{c}b{block}_{op}_")
                   for w in l.trainable_weights if "kernel" in w.path] for c in cells}
    with tf.GradientTape() as tape:
        out = model({"images": images, "input_mask": tf.constant(input_mask, tf.float32),
                     "op_mask": tf.constant(op_mask, tf.float32)}, training=True)
        loss = tf.reduce_sum(tf.square(out))
    grads = tape.gradient(loss, [w for c in cells for w in kernels[c]])
    norms, i = {}, 0
    for c in cells:
        norms[c] = sum(float(tf.norm(tf.convert_to_tensor(g))) if g is not None else 0.0
                       for g in grads[i:i + len(kernels[c])])
        i += len(kernels[c])
    return norms


def test_one_path_decision_applies_to_every_cell(oneshot):
    """Dropping an op (one mask entry) removes it from every cell, keeping it
    keeps it in every cell; and with per-ghost masks, one ghost batch keeping
    the op is enough for its weights to train in every cell."""
    nb, no = SPACE.num_blocks, len(SPACE.ops)
    valid = SPACE.valid_input_mask()[None]
    o = SPACE.ops.index("sep3x3")
    op_off = np.ones((1, nb, no), np.float32)
    op_off[0, 1, o] = 0.0
    off = _op_kernel_grads(oneshot, valid, op_off, 1, "sep3x3")
    on = _op_kernel_grads(oneshot, valid, np.ones((1, nb, no), np.float32), 1, "sep3x3")
    assert len(off) == SPACE.num_cells == len(on)
    assert all(v == 0.0 for v in off.values())
    assert all(v > 0.0 for v in on.values())
    mixed = np.concatenate([op_off, np.ones((1, nb, no), np.float32)])
    both = _op_kernel_grads(oneshot, np.concatenate([valid, valid]), mixed, 1, "sep3x3")
    assert all(v > 0.0 for v in both.values())
