"""How the SMASH network normalizes a score (``network.BN_MODES``): batch
statistics per group, running statistics accumulated in training (only of
the channels an architecture fills), or statistics recomputed per candidate
on fixed training images, each against a hand computation."""

import numpy as np
import pytest
import tensorflow as tf

from hypernets.smash.network import BankBatchNorm
from oneshot_tf import config as config_lib
from oneshot_tf import pipeline, registry
from tests.conftest import two_cpus

EPS = 1e-3


def _bn(c=3, momentum=0.75):
    bn = BankBatchNorm(epsilon=EPS, momentum=momentum)
    bn.build((None, 2, 2, c))
    rng = np.random.default_rng(0)
    bn.gamma.assign(rng.uniform(0.5, 1.5, c))
    bn.beta.assign(rng.normal(0, 0.5, c))
    bn.moving_mean.assign(rng.normal(0, 1, c))
    bn.moving_variance.assign(rng.uniform(0.5, 2, c))
    return bn


def _x(n=4, c=3, seed=1):
    return np.random.default_rng(seed).normal(2.0, 3.0, (n, 2, 2, c)).astype(np.float32)


def test_running_update_moves_only_the_filled_channels():
    bn = _bn()
    x = _x()
    old_m, old_v = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    y = bn(tf.constant(x), num_ghost=2, update_mask=tf.constant([1.0, 0.0, 1.0])).numpy()
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))           # the whole batch, biased
    want_m = np.where([1, 0, 1], 0.75 * old_m + 0.25 * mean, old_m)
    want_v = np.where([1, 0, 1], 0.75 * old_v + 0.25 * var, old_v)
    np.testing.assert_allclose(bn.moving_mean.numpy(), want_m, rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), want_v, rtol=1e-5)
    assert bn.moving_mean.numpy()[1] == old_m[1] and bn.moving_variance.numpy()[1] == old_v[1]
    # training normalizes with each group's own statistics, not the running ones
    g = x.reshape(2, 2, 2, 2, 3)
    want = (g - g.mean(axis=(1, 2, 3), keepdims=True)) / np.sqrt(g.var(axis=(1, 2, 3), keepdims=True) + EPS)
    want = want.reshape(x.shape) * bn.gamma.numpy() + bn.beta.numpy()
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


def test_running_and_recomputed_modes_against_hand_computation():
    bn = _bn()
    x = _x(6)
    gamma, beta = bn.gamma.numpy(), bn.beta.numpy()
    run = bn(tf.constant(x), mode="running").numpy()
    want = (x - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + EPS) * gamma + beta
    np.testing.assert_allclose(run, want, rtol=1e-5, atol=1e-5)
    rec = bn(tf.constant(x), mode="recomputed", calibration=2).numpy()
    cal = x[:2]
    want = (x - cal.mean(axis=(0, 1, 2))) / np.sqrt(cal.var(axis=(0, 1, 2)) + EPS) * gamma + beta
    np.testing.assert_allclose(rec, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="recomputed statistics need 1 to 6 calibration examples, got 0"):
        bn(tf.constant(x), mode="recomputed")
    with pytest.raises(ValueError, match="unknown BN mode 'moving'"):
        bn(tf.constant(x), mode="moving")


def test_replicas_updates_are_averaged():
    strategy = two_cpus()
    with strategy.scope():
        bn = _bn()
    old = bn.moving_mean.numpy()
    xs = [_x(seed=1), _x(seed=2)]

    @tf.function
    def step():
        def fn():
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            x = tf.where(tf.equal(rid, 0), tf.constant(xs[0]), tf.constant(xs[1]))
            return bn(x, update_mask=tf.ones([3]))
        return strategy.run(fn)

    step()
    want = np.mean([0.75 * old + 0.25 * x.mean(axis=(0, 1, 2)) for x in xs], axis=0)
    np.testing.assert_allclose(bn.moving_mean.numpy(), want, rtol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny SMASH proxy trained 6 steps (its running statistics moved)."""
    cfg = config_lib.resolve("tiny", {"score_bn": "recomputed", "recompute_examples": 16}, method="smash")
    run = pipeline.SearchRun(cfg, str(tmp_path_factory.mktemp("smash_bn")), verbose=False)
    run.train_proxy()
    return run, run.restore_proxy()


def test_training_accumulates_running_statistics_and_checkpoints_them(trained):
    run, proxy = trained
    fresh = pipeline.SearchRun(run.cfg, run.model_dir, verbose=False).restore_proxy()
    for bn, restored in zip(proxy.model.network.norms, fresh.model.network.norms):
        assert np.abs(bn.moving_mean.numpy()).max() > 1e-3       # moved from their zero start
        assert {v.path for v in bn.trainable_weights} == {bn.gamma.path, bn.beta.path}
        np.testing.assert_array_equal(restored.moving_mean.numpy(), bn.moving_mean.numpy())
        np.testing.assert_array_equal(restored.moving_variance.numpy(), bn.moving_variance.numpy())


def test_recomputed_scores_use_the_calibration_images_only(trained):
    """A candidate's recomputed logits of an image do not depend on the other
    images scored with it, and on the calibration images themselves equal
    batch statistics over exactly those images."""
    run, proxy = trained
    cal = proxy.calibration_images
    assert cal.shape == (16,) + run.dataset.image_shape
    seed = [run.cfg.seed, 3]
    idx = np.random.default_rng(seed).choice(len(run.dataset.x_train), 16, replace=False)
    np.testing.assert_array_equal(cal, run.dataset.x_train[idx])      # the documented seeded draw
    arch = run.space.sample(np.random.default_rng(4))
    enc = {k: tf.constant(v[None]) for k, v in proxy.encode(arch).items()}
    x = run.dataset.x_val[:8]
    a = proxy.candidates_logits(tf.constant(x), enc, 4).numpy()[0]
    b = proxy.candidates_logits(tf.constant(np.concatenate([x[:4], run.dataset.x_val[8:12]])), enc, 4).numpy()[0]
    np.testing.assert_allclose(a[:4], b[:4], rtol=1e-4, atol=1e-4)
    own = proxy.candidates_logits(tf.constant(cal), enc, 16).numpy()[0]
    one = {k: v[0] for k, v in enc.items()}
    batch = proxy.model({"images": tf.constant(cal), **one}, num_ghost=1).numpy()
    np.testing.assert_allclose(own, batch, rtol=1e-4, atol=1e-4)
    assert run.proxy.get_config()["score_bn"] == "recomputed"


def test_running_mode_scores_with_the_moving_statistics(trained):
    run, proxy = trained
    arch = run.space.sample(np.random.default_rng(5))
    enc = {k: tf.constant(v[None]) for k, v in proxy.encode(arch).items()}
    x = tf.constant(run.dataset.x_val[:8])
    proxy.score_bn = "running"
    try:
        a = proxy.candidates_logits(x, enc, 4).numpy()
        single = proxy.candidates_logits(x[:1], enc, 1).numpy()      # one image: no batch statistics needed
        np.testing.assert_allclose(a[0, :1], single[0], rtol=1e-4, atol=1e-4)
        bn = proxy.model.network.norms[-1]
        saved = bn.moving_mean.numpy()
        bn.moving_mean.assign(saved + 1.0)
        assert np.abs(proxy.candidates_logits(x, enc, 4).numpy() - a).max() > 1e-3
        bn.moving_mean.assign(saved)
    finally:
        proxy.score_bn = "recomputed"


def test_bad_bn_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown --score_bn='moving'; choose from batch, running, recomputed"):
        config_lib.validate(config_lib.resolve("tiny", {"score_bn": "moving"}, method="smash"))
    from hypernets.smash.proxy import SmashProxy
    space = registry.get("smash").settings().search_space()
    with pytest.raises(ValueError, match="--score_bn=recomputed needs calibration images"):
        SmashProxy(space, input_shape=(8, 8, 1), num_classes=3, score_bn="recomputed")
