"""CandidateScorer: every validation example scored once (the last group
filled up with other real images), KL examples drawn at random (seeded), the
KL score against one reference per KL group; the one-shot proxy's references."""

import math

import numpy as np
import pytest
import tensorflow as tf

from oneshot_tf.methods.oneshot.cell_space import CellSearchSpace
from oneshot_tf.methods.oneshot.proxy import OneShotProxy
from oneshot_tf.proxy import Proxy
from oneshot_tf.scoring import CandidateScorer, ScoreConfig

C = 3  # classes (and features of the fake proxy's examples)
G = 8  # group size


class GroupProxy(Proxy):
    """Logits of an example: ``(x - mean of its group) * w``, ``w`` the
    candidate's encoding, so the group's composition matters (like a ghost
    batch's statistics).  Reference ``j``: ``w = refs[j]``."""

    space = None

    def __init__(self, refs=None):
        self.refs = refs
        self.calls = []

    def build(self):
        pass

    def loss(self, *args, **kwargs):
        raise NotImplementedError

    def get_config(self):
        return {}

    def candidate_logits(self, images, encodings):
        w = encodings["w"]
        x = tf.reshape(tf.cast(images, tf.float32), [int(w.shape[0]), -1, C])
        return tf.reshape((x - tf.reduce_mean(x, axis=1, keepdims=True)) * w[:, None, :], [-1, C])

    def reference_encodings(self, count, seed):
        self.calls.append((count, seed))
        return [{"w": np.asarray(self.refs[j], np.float32)} for j in range(count)]


def _logp(x, w):
    z = (x - x.mean(0)) * w
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _data(n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, C)).astype(np.float32), rng.integers(0, C, n)


def _scorer(proxy, x_val, y_val, x_kl=None, **kw):
    cfg = dict(candidates_per_pass=2, group_size=G, kl_examples=0, verbose=False)
    return CandidateScorer(proxy, ScoreConfig(**{**cfg, **kw})).prepare(x_val, y_val, x_kl)


def test_accuracy_counts_every_validation_example_once():
    """20 examples in groups of 8: the third group holds examples 16..19 and,
    as fillers, examples 0..3 (real, distinct images: its mean is over 8 real
    examples); the accuracy is over all 20, each once."""
    x, y = _data(20, seed=4)
    w = np.array([1.0, -2.0, 0.5], np.float32)
    sc = _scorer(GroupProxy(), x, y)
    assert sc.val_indices.shape == (3, 8)
    got = sc.score_encodings([{"w": w}])[0]["accuracy"]
    groups = [list(range(0, 8)), list(range(8, 16)), [16, 17, 18, 19, 0, 1, 2, 3]]
    correct = []
    for idx in groups:
        correct.append(_logp(x[idx], w).argmax(-1) == y[idx])
    hand = (correct[0].sum() + correct[1].sum() + correct[2][:4].sum()) / 20
    assert got == pytest.approx(hand, abs=1e-12)
    # The data tell the choices apart: dropping the partial group, or filling
    # it with copies of its own examples (which weights them twice in the
    # group's mean), would give other accuracies.
    dropped = (correct[0].sum() + correct[1].sum()) / 16
    copies = _logp(x[[16, 17, 18, 19] * 2], w).argmax(-1)[:4] == y[16:20]
    with_copies = (correct[0].sum() + correct[1].sum() + copies.sum()) / 20
    assert hand != pytest.approx(dropped) and hand != pytest.approx(with_copies)


def test_max_examples_fills_the_last_group_with_the_next_examples():
    x, y = _data(20, seed=4)
    w = np.array([1.0, -2.0, 0.5], np.float32)
    sc = _scorer(GroupProxy(), x, y, max_examples=10)
    np.testing.assert_array_equal(sc.val_indices, np.arange(16).reshape(2, 8))
    correct = np.concatenate([_logp(x[:8], w).argmax(-1) == y[:8], _logp(x[8:16], w).argmax(-1) == y[8:16]])
    assert sc.score_encodings([{"w": w}])[0]["accuracy"] == pytest.approx(correct[:10].mean(), abs=1e-12)
    with pytest.raises(ValueError, match="need at least 8 validation examples"):
        _scorer(GroupProxy(), x[:7], y[:7])


def test_kl_examples_are_a_seeded_random_draw_and_use_one_reference_per_group():
    x_val, y_val = _data(16, seed=1)
    x_kl, _ = _data(40, seed=2)
    refs = [np.array([0.5, 1.0, -1.0]), np.array([-1.5, 0.2, 0.7])]
    proxy = GroupProxy(refs)
    sc = _scorer(proxy, x_val, y_val, x_kl, kl_examples=12, seed=5)
    assert proxy.calls == [(2, 5)]  # one reference per KL group, the run's seed
    idx = sc.kl_indices
    assert idx.shape == (2, 8) and len(set(idx.ravel())) == 16 and idx.min() >= 0 and idx.max() < 40
    assert not np.array_equal(idx.ravel()[:12], np.arange(12))  # not the first training examples
    np.testing.assert_array_equal(_scorer(GroupProxy(refs), x_val, y_val, x_kl, kl_examples=12, seed=5).kl_indices,
                                  idx)
    assert not np.array_equal(_scorer(GroupProxy(refs), x_val, y_val, x_kl, kl_examples=12, seed=6).kl_indices,
                              idx)
    w = np.array([1.0, -2.0, 0.5], np.float32)
    got = sc.score_encodings([{"w": w}])[0]["kl"]
    terms = []
    for j in range(2):
        lp, lq = _logp(x_kl[idx[j]], refs[j]), _logp(x_kl[idx[j]], w)
        terms.append(((np.exp(lp) - np.exp(lq)) * (lp - lq)).sum(-1))
    hand = np.concatenate(terms)[:12].mean()  # the 4 fillers of group 2 not counted
    assert got == pytest.approx(hand, rel=1e-5)
    assert got != pytest.approx(np.concatenate(terms).mean(), rel=1e-3)


# ---------------------------------------------------------------------------
# the one-shot proxy's references
# ---------------------------------------------------------------------------

SPACE = CellSearchSpace(num_cells=2, num_stages=2, filters=4, num_blocks=2)
SHAPE = (8, 8, 1)


def _proxy(**kw):
    return OneShotProxy(SPACE, input_shape=SHAPE, num_classes=C, ghost_batch_size=G, **kw)


def test_dropout_references_drop_paths_at_r_1e8_seeded():
    """The paper's reference collection: each path dropped independently with
    probability 1e-8 ** (1 / k), k its fan-in (2 + i for block i's inputs,
    the 7 ops for an op); padding columns off; deterministic per seed."""
    n = 4000
    refs = _proxy().reference_encodings(n, seed=3)
    assert len(refs) == n
    inp = np.stack([r["input_mask"] for r in refs])
    ops = np.stack([r["op_mask"] for r in refs])
    assert set(np.unique(inp)) <= {0.0, 1.0} and set(np.unique(ops)) <= {0.0, 1.0}
    np.testing.assert_array_equal(inp * (1 - SPACE.valid_input_mask()), 0)
    k_in, k_op = SPACE.fan_in()
    p_op = 1e-8 ** (1 / k_op)
    assert k_op == 7 and p_op == pytest.approx(0.0720, abs=1e-4)
    drop = 1 - ops.mean()
    assert abs(drop - p_op) < 4 * math.sqrt(p_op * (1 - p_op) / ops.size)
    for i, k in enumerate(k_in):
        p = 1e-8 ** (1 / k)
        d = 1 - inp[:, i, :int(k)].mean()
        assert abs(d - p) < 4 * math.sqrt(p * (1 - p) / (n * k)) + 1 / (n * k), (i, d, p)
    again = _proxy().reference_encodings(n, seed=3)
    other = _proxy().reference_encodings(n, seed=4)
    assert all(np.array_equal(a["op_mask"], b["op_mask"]) and np.array_equal(a["input_mask"], b["input_mask"])
               for a, b in zip(refs, again))
    assert not np.array_equal(ops, np.stack([r["op_mask"] for r in other]))
    all_on = SPACE.encode(SPACE.all_on())
    for r in _proxy(kl_reference="all_on").reference_encodings(3, seed=3):
        np.testing.assert_array_equal(r["input_mask"], all_on["input_mask"])
        np.testing.assert_array_equal(r["op_mask"], all_on["op_mask"])
    with pytest.raises(ValueError, match="unknown --kl_reference='some'; choose from dropout, all_on"):
        _proxy(kl_reference="some")


@pytest.mark.parametrize("kind", ["dropout", "all_on"])
def test_kl_equals_the_model_under_per_group_reference_masks(kind):
    """The KL score equals a hand computation with the one-shot model called
    as training calls it (one mask row per ghost batch): the KL groups as
    ghost batches, reference ``j``'s masks on group ``j``."""
    tf.keras.utils.set_random_seed(0)
    proxy = _proxy(kl_reference=kind)
    proxy.build()
    rng = np.random.default_rng(0)
    x_val = rng.integers(0, 256, (8,) + SHAPE).astype(np.uint8)
    y_val = rng.integers(0, C, 8)
    x_kl = rng.integers(0, 256, (30,) + SHAPE).astype(np.uint8)
    sc = _scorer(proxy, x_val, y_val, x_kl, kl_examples=16, seed=2)
    refs = proxy.reference_encodings(2, seed=2)
    if kind == "dropout":  # this seed drops some ops, others in each group: neither is the all-on model
        assert all(r["op_mask"].min() == 0 for r in refs)
        assert not np.array_equal(refs[0]["op_mask"], refs[1]["op_mask"])
    cand = SPACE.encode(SPACE.sample_unique(1, seed=2)[0])
    got = sc.score_encodings([cand])[0]["kl"]
    images = tf.constant(x_kl[sc.kl_indices.ravel()])

    def logp(input_mask, op_mask):
        z = proxy.model({"images": images, "input_mask": tf.constant(input_mask),
                         "op_mask": tf.constant(op_mask)}, training=False).numpy().astype(np.float64)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lp = logp(np.stack([r["input_mask"] for r in refs]), np.stack([r["op_mask"] for r in refs]))
    lq = logp(np.stack([cand["input_mask"]] * 2), np.stack([cand["op_mask"]] * 2))
    hand = ((np.exp(lp) - np.exp(lq)) * (lp - lq)).sum(-1).mean()
    assert got == pytest.approx(hand, rel=1e-4)
    assert got > 0
