"""Tests for oneshot_tf.training: the optimizer, resume, divergence handling."""

import dataclasses
import math
import os
import re
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from oneshot_tf import data as data_lib
from oneshot_tf import training
from oneshot_tf.methods.oneshot.cell_space import CellSearchSpace
from oneshot_tf.methods.oneshot.proxy import OneShotProxy
from oneshot_tf.training import TrainConfig, TrainingDivergedError, TrainTask, make_optimizer, train


# ---------------------------------------------------------------------------
# A scalar task whose trajectory can be computed by hand
# ---------------------------------------------------------------------------


class ScalarTask(TrainTask):
    """loss = w * scale: the gradient is ``scale`` whatever the data.

    ``scale`` is 1, or NaN for the step numbered ``nan_at_step`` (1-based), so
    divergence happens at a known step.
    """

    def __init__(self, nan_at_step=None, total_steps=None):
        self.nan_at_step = nan_at_step
        self.total_steps = total_steps
        self.model = None

    def build(self):
        if self.model is None:
            self.model = keras.Sequential(
                [keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")])

    def loss(self, images, labels, *, progress, seed, global_batch_size, num_replicas, replica_id=0):
        del seed, labels
        w = self.model.trainable_variables[0][0, 0]
        scale = tf.constant(1.0)
        if self.nan_at_step is not None:
            # progress = (step - 1) / total while step ``step`` is computed.
            step = tf.round(progress * self.total_steps) + 1.0
            scale = tf.where(tf.equal(step, float(self.nan_at_step)), tf.constant(float("nan")), 1.0)
        dummy = 0.0 * tf.reduce_sum(tf.cast(images, tf.float32)) / global_batch_size
        loss = w * scale + dummy
        return loss, {"w": tf.identity(w) / num_replicas}


def _scalar_data(n=8):
    x = np.zeros((n, 2, 2, 1), np.uint8)
    y = np.zeros((n,), np.int64)
    return x, y


def _hand_sgd_nesterov_cosine(steps, lr0, momentum=0.9, grad=1.0, total=None):
    """w after ``steps`` Keras-SGD Nesterov updates with cosine-decayed lr, w0 = 0."""
    total = total or steps
    w, m = 0.0, 0.0
    traj = []
    for i in range(steps):
        lr = lr0 * 0.5 * (1.0 + math.cos(math.pi * min(i, total) / total))
        m = momentum * m - lr * grad
        w = w + momentum * m - lr * grad
        traj.append(w)
    return traj


def _scalar_cfg(**kw):
    base = dict(steps=6, batch_size=4, learning_rate=0.1, augment=False, checkpoint_every=2,
                log_every=1, verbose=False)
    base.update(kw)
    return TrainConfig(**base)


def _restore_scalar(path):
    task = ScalarTask()
    task.build()
    opt = make_optimizer(_scalar_cfg())
    opt.build(task.trainable_variables)
    tf.train.Checkpoint(optimizer=opt, **task.checkpoint_objects()).restore(path).assert_existing_objects_matched()
    return float(task.model.trainable_variables[0].numpy()[0, 0]), int(opt.iterations.numpy())


# ---------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------


def test_make_optimizer_is_sgd_nesterov_with_cosine_decay():
    opt = make_optimizer(TrainConfig(steps=500, learning_rate=0.3))
    assert isinstance(opt, keras.optimizers.SGD)
    cfg = opt.get_config()
    assert cfg["nesterov"] is True
    assert cfg["momentum"] == pytest.approx(0.9)
    sched = keras.optimizers.schedules.deserialize(cfg["learning_rate"])
    assert isinstance(sched, keras.optimizers.schedules.CosineDecay)
    scfg = sched.get_config()
    assert scfg["initial_learning_rate"] == pytest.approx(0.3)
    assert scfg["decay_steps"] == 500
    assert scfg["alpha"] == 0.0
    # Cosine values by hand: lr(t) = 0.3 * (1 + cos(pi t / 500)) / 2.
    for t in (0, 125, 250, 500, 700):
        expected = 0.3 * 0.5 * (1 + math.cos(math.pi * min(t, 500) / 500))
        assert float(sched(t)) == pytest.approx(expected, abs=1e-6)


def test_make_optimizer_constant_and_unknown_schedule():
    opt = make_optimizer(TrainConfig(steps=10, learning_rate=0.05, lr_schedule="constant"))
    assert training.current_lr(opt) == pytest.approx(0.05)
    assert opt.get_config()["nesterov"] is True
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        make_optimizer(TrainConfig(steps=10, lr_schedule="linear"))


def test_adam_beta_1_and_epsilon_by_hand():
    """Two Adam steps on w = 1 with loss w^2 (gradient 2w), beta_1 = 0.5,
    epsilon = 1e-4, constant lr 0.1, Keras' beta_2 = 0.999, by hand:
    m_t = b1 m + (1 - b1) g, v_t = b2 v + (1 - b2) g^2,
    w -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m_t / (sqrt(v_t) + eps) (Keras' form: its epsilon
    sits outside the bias correction, PyTorch's inside)."""
    opt = make_optimizer(TrainConfig(steps=2, optimizer="adam", learning_rate=0.1, lr_schedule="constant",
                                     adam_beta_1=0.5, adam_epsilon=1e-4))
    assert isinstance(opt, keras.optimizers.Adam)
    w = keras.Variable(1.0)
    b1, b2, eps, lr = 0.5, 0.999, 1e-4, 0.1
    m = v = 0.0
    want = 1.0
    for t in (1, 2):
        g = 2 * want
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        want -= lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (math.sqrt(v) + eps)
        opt.apply_gradients([(tf.constant(2.0) * w, w)])
        assert float(w.numpy()) == pytest.approx(want, rel=1e-5), t  # float32
    # the default beta_1 (0.9) gives a different second step: the setting is what moved it
    opt9 = make_optimizer(TrainConfig(steps=2, optimizer="adam", learning_rate=0.1, lr_schedule="constant",
                                      adam_epsilon=1e-4))
    w9 = keras.Variable(1.0)
    for _ in range(2):
        opt9.apply_gradients([(tf.constant(2.0) * w9, w9)])
    assert abs(float(w9.numpy()) - want) > 1e-3


def test_cosine_floor_decays_to_the_floor_fraction():
    """lr(t) = 0.2 * (0.25 + 0.75 * (1 + cos(pi t / 400)) / 2), held at the
    floor 0.05 after the last step; read from the optimizer at its step."""
    opt = make_optimizer(TrainConfig(steps=400, learning_rate=0.2, lr_schedule="cosine_floor", lr_floor=0.25))
    assert opt.get_config()["nesterov"] is True
    for t in (0, 100, 200, 300, 400, 600):
        opt.iterations.assign(t)
        expected = 0.2 * (0.25 + 0.75 * 0.5 * (1 + math.cos(math.pi * min(t, 400) / 400)))
        assert training.current_lr(opt) == pytest.approx(expected, abs=1e-7), t
    assert training.current_lr(opt) == pytest.approx(0.05)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="lr_floor must be in \\(0, 1\\)"):
            make_optimizer(TrainConfig(steps=10, lr_schedule="cosine_floor", lr_floor=bad))


def test_training_trajectory_matches_hand_computed_sgd_nesterov_cosine(tmp_path):
    task = ScalarTask()
    x, y = _scalar_data()
    out = train(task, x, y, _scalar_cfg(), str(tmp_path / "ckpt"))
    traj = _hand_sgd_nesterov_cosine(6, 0.1)
    w = float(task.model.trainable_variables[0].numpy()[0, 0])
    assert w == pytest.approx(traj[-1], rel=1e-5)
    # The metric "w" is read before the update of step 6.
    assert out["w"] == pytest.approx(traj[-2], rel=1e-5)
    # Checkpoints at the checkpoint_every steps, the last two kept.
    assert tf.train.latest_checkpoint(str(tmp_path / "ckpt")).endswith("ckpt-6")
    w4, it4 = _restore_scalar(str(tmp_path / "ckpt" / "ckpt-4"))
    assert it4 == 4
    assert w4 == pytest.approx(traj[3], rel=1e-5)
    # A finished run does nothing more.
    again = ScalarTask()
    assert train(again, x, y, _scalar_cfg(), str(tmp_path / "ckpt")) == {}
    assert float(again.model.trainable_variables[0].numpy()[0, 0]) == pytest.approx(traj[-1], rel=1e-5)


def test_batch_size_not_divisible_by_replicas_raises(tmp_path):
    task = ScalarTask()
    x, y = _scalar_data()
    strategy = types.SimpleNamespace(num_replicas_in_sync=3)
    with pytest.raises(ValueError, match="batch size 4 does not split over 3 replicas"):
        train(task, x, y, _scalar_cfg(batch_size=4), str(tmp_path / "ckpt"), strategy=strategy)
    assert task.model is None  # nothing was built
    assert not os.path.exists(tmp_path / "ckpt")


# ---------------------------------------------------------------------------
# Divergence
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("log_every", [1, 3])
def test_nan_loss_stops_with_last_good_checkpoint_kept(tmp_path, log_every):
    """With log_every=3 the losses of steps 5 and 6 are read together at step
    6 (not after every step): the error still names step 5."""
    model_dir = str(tmp_path / "ckpt")
    task = ScalarTask(nan_at_step=5, total_steps=6)
    x, y = _scalar_data()
    with pytest.raises(TrainingDivergedError) as info:
        train(task, x, y, _scalar_cfg(log_every=log_every), model_dir, description="scalar run")
    msg = str(info.value)
    assert "scalar run" in msg
    assert "at step 5" in msg
    assert "(step 4)" in msg
    assert model_dir in msg
    assert "nan" in msg.lower()
    # The in-memory weights are ruined, the checkpoint on disk is not.
    assert not np.isfinite(task.model.trainable_variables[0].numpy()).all()
    latest = tf.train.latest_checkpoint(model_dir)
    assert latest is not None and latest.endswith("ckpt-4")
    assert os.path.exists(latest + ".index")
    w4, it4 = _restore_scalar(latest)
    assert it4 == 4
    assert w4 == pytest.approx(_hand_sgd_nesterov_cosine(4, 0.1, total=6)[-1], rel=1e-5)
    # restore_latest gives the same weights.
    fresh = ScalarTask()
    fresh.build()
    assert training.restore_latest(model_dir, model=fresh.model) == latest
    assert float(fresh.model.trainable_variables[0].numpy()[0, 0]) == pytest.approx(w4)


def test_nan_at_first_step_leaves_no_checkpoint(tmp_path):
    model_dir = str(tmp_path / "ckpt")
    task = ScalarTask(nan_at_step=1, total_steps=6)
    x, y = _scalar_data()
    with pytest.raises(TrainingDivergedError, match=r"at step 1;"):
        train(task, x, y, _scalar_cfg(), model_dir)
    assert tf.train.latest_checkpoint(model_dir) is None


class PoisonedGradientTask(ScalarTask):
    """Step ``poison_step`` has a finite loss but a NaN gradient (what an
    overflowing gradient of an exploding loss gives): the update of that step
    makes the weights NaN, and the loss of the next step is NaN."""

    def __init__(self, poison_step, total_steps):
        super().__init__()
        self.poison_step = poison_step
        self.total_steps = total_steps

    def loss(self, images, labels, *, progress, seed, global_batch_size, num_replicas, replica_id=0):
        w = self.model.trainable_variables[0][0, 0]
        step = tf.round(progress * self.total_steps) + 1.0
        poisoned = tf.equal(step, float(self.poison_step))

        @tf.custom_gradient
        def maybe_poison(v):
            def grad(dy):
                return tf.where(poisoned, tf.constant(float("nan")), dy)
            return tf.identity(v), grad

        return maybe_poison(w) + 0.0 * tf.reduce_sum(tf.cast(images, tf.float32)), {}


def test_divergence_never_calls_a_nan_checkpoint_good(tmp_path):
    """Step 4 (a checkpoint step) has a finite loss and a NaN update; step 5's
    loss is NaN.  The checkpoint that the error calls the last good one must
    hold finite weights."""
    model_dir = str(tmp_path / "ckpt")
    task = PoisonedGradientTask(poison_step=4, total_steps=6)
    x, y = _scalar_data()
    with pytest.raises(TrainingDivergedError) as info:
        train(task, x, y, _scalar_cfg(), model_dir)
    # Step 4's update made the weights NaN: caught at step 4's checkpoint, never saved.
    assert "weights became NaN or infinite at step 4" in str(info.value)
    kept = tf.train.latest_checkpoint(model_dir)
    assert kept is not None
    step = int(kept.rsplit("-", 1)[1])
    assert f"(step {step})" in str(info.value)
    w, iterations = _restore_scalar(kept)
    assert iterations == step
    assert math.isfinite(w), f"the 'last good checkpoint' {kept} holds w = {w}"


# ---------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------


def test_step_schedule_and_adam():
    """step: lr0 * factor ** (fractions of the run reached), on the update
    index t (0-based): with T=10 and (0.5, 0.75), t < 5 at lr0, 5 <= t < 8
    (round(7.5) = 8) at lr0/2, then lr0/4.  Adam takes any schedule."""
    opt = make_optimizer(TrainConfig(steps=10, learning_rate=0.4, lr_schedule="step", lr_decay_at=(0.5, 0.75),
                                     lr_decay_factor=0.5))
    assert isinstance(opt, keras.optimizers.SGD) and opt.get_config()["nesterov"] is True
    got = []
    for t in range(12):
        opt.iterations.assign(t)
        got.append(training.current_lr(opt))
    assert got == pytest.approx([0.4] * 5 + [0.2] * 3 + [0.1] * 4)
    adam = make_optimizer(TrainConfig(steps=100, learning_rate=1e-3, optimizer="adam", lr_schedule="step",
                                      lr_decay_at=(0.5, 0.75)))
    assert isinstance(adam, keras.optimizers.Adam)
    for t, lr in ((0, 1e-3), (49, 1e-3), (50, 5e-4), (74, 5e-4), (75, 2.5e-4), (99, 2.5e-4)):
        adam.iterations.assign(t)
        assert training.current_lr(adam) == pytest.approx(lr), t
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        make_optimizer(TrainConfig(steps=10, optimizer="rmsprop"))
    with pytest.raises(ValueError, match=r"lr_decay_at must be increasing fractions in \(0, 1\)"):
        make_optimizer(TrainConfig(steps=10, lr_schedule="step", lr_decay_at=(0.75, 0.5)))


def test_adam_trajectory_matches_hand_computed_adam(tmp_path):
    """ScalarTask's loss w (gradient 1, w0 = 0) under Adam at a constant lr:
    the loop's weight after 3 steps is Keras Adam's update rule by hand
    (lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), w -= lr_t m / (sqrt(v) + eps))."""
    x, y = _scalar_data()
    cfg = _scalar_cfg(steps=3, optimizer="adam", learning_rate=0.1, lr_schedule="constant")
    task = ScalarTask()
    train(task, x, y, cfg, str(tmp_path / "adam"))
    w, m, v = 0.0, 0.0, 0.0
    for t in range(1, 4):
        m, v = 0.9 * m + 0.1, 0.999 * v + 0.001
        w -= 0.1 * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (math.sqrt(v) + 1e-7)
    assert float(task.model.trainable_variables[0].numpy()[0, 0]) == pytest.approx(w, rel=1e-5)
    assert w == pytest.approx(-0.3, rel=1e-3)  # Adam's steps are ~lr each for a constant gradient


class HostMaskProxy(OneShotProxy):
    """Records the host-drawn inputs it feeds (``mask_source="host"``)."""

    fed = None

    def step_inputs(self, step, **kw):
        out = super().step_inputs(step, **kw)
        self.fed = (self.fed or []) + [(step, out["op_mask"].copy())]
        return out


@pytest.mark.integration  # two trainings (~13 s): CI's integration step
def test_path_dropout_masks_drawn_on_the_host_train_identically(digits_small, tmp_path):
    """One-shot's path dropout through the generic per-step mechanism
    (TrainTask.step_inputs): masks drawn on the host by the same function
    and seed give the same training as masks drawn inside the step."""
    x, y = digits_small
    cfg = TrainConfig(steps=4, batch_size=32, learning_rate=0.1, seed=5, checkpoint_every=4, log_every=1,
                      verbose=False)
    graph = _make_proxy()
    out_graph = train(graph, x, y, cfg, str(tmp_path / "graph"))
    keras.utils.set_random_seed(0)
    host = HostMaskProxy(_tiny_space(), input_shape=(8, 8, 1), num_classes=10, ghost_batch_size=16,
                         drop_rate=0.5, weight_decay=1e-4, mask_source="host")
    out_host = train(host, x, y, cfg, str(tmp_path / "host"))
    assert [s for s, _ in host.fed] == [0, 1, 2, 3]
    assert host.fed[0][1].shape == (2, 1, 7)  # every ghost batch of the global batch
    assert any(not np.array_equal(a, b) for (_, a), (_, b) in zip(host.fed, host.fed[1:]))
    for k in ("loss", "paths_kept", "accuracy"):
        assert out_host[k] == pytest.approx(out_graph[k], rel=1e-6, abs=1e-7), k
    for u, v in zip(_weights(graph), _weights(host)):
        np.testing.assert_allclose(v, u, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown mask_source 'disk'"):
        OneShotProxy(_tiny_space(), input_shape=(8, 8, 1), num_classes=10, mask_source="disk")


class Interrupted(Exception):
    pass


def _tiny_space():
    return CellSearchSpace(num_cells=1, num_stages=1, filters=4, num_blocks=1)


class InterruptingProxy(OneShotProxy):
    """A one-shot proxy whose run dies right after step ``die_after`` (before
    that step would be checkpointed): ``summaries`` runs on the host after
    every logged step."""

    die_after = None
    total = None

    def summaries(self, progress):
        if self.die_after is not None and round(progress * self.total) >= self.die_after:
            raise Interrupted(f"killed after step {self.die_after}")
        return super().summaries(progress)


def _make_proxy(cls=OneShotProxy):
    keras.utils.set_random_seed(0)
    # A high drop rate so path dropout really differs between steps/ghost batches.
    return cls(_tiny_space(), input_shape=(8, 8, 1), num_classes=10, ghost_batch_size=16,
               drop_rate=0.5, weight_decay=1e-4)


@pytest.fixture(scope="module")
def digits_small():
    ds = data_lib.load_dataset("digits", image_size=8, validation_size=64)
    return ds.x_train[:200], ds.y_train[:200]


@pytest.fixture(scope="module")
def resume_runs(tmp_path_factory, digits_small):
    """Run A: 6 uninterrupted steps.  Run B: killed after step 5 (last
    checkpoint: step 4), then resumed by fresh objects with other initial
    weights, the global seeds set as a new pipeline process sets them."""
    x, y = digits_small
    tmp = tmp_path_factory.mktemp("resume")
    cfg = TrainConfig(steps=6, batch_size=32, learning_rate=0.1, augment=True, seed=3,
                      checkpoint_every=2, log_every=1, verbose=False)
    dir_a, dir_b = str(tmp / "a"), str(tmp / "b")

    a = _make_proxy()
    out_a = train(a, x, y, cfg, dir_a)

    b = _make_proxy(InterruptingProxy)
    b.die_after, b.total = 5, cfg.steps
    with pytest.raises(Interrupted):
        train(b, x, y, cfg, dir_b, summary_dir=str(tmp / "b_events"))
    latest_after_kill = tf.train.latest_checkpoint(dir_b)
    # The step-4 state, loaded the way train() loads it (train returns at once).
    at4 = _make_proxy()
    assert train(at4, x, y, dataclasses.replace(cfg, steps=4), dir_b) == {}

    keras.utils.set_random_seed(123)  # other initial weights ...
    b2 = OneShotProxy(_tiny_space(), input_shape=(8, 8, 1), num_classes=10, ghost_batch_size=16,
                      drop_rate=0.5, weight_decay=1e-4)
    b2.build()
    init_b2 = [w.numpy().copy() for w in b2.model.weights]
    keras.utils.set_random_seed(0)  # ... and the global seeds a new process would set
    resumed_events = str(tmp / "b2_events")
    out_b = train(b2, x, y, cfg, dir_b, summary_dir=resumed_events)
    return types.SimpleNamespace(cfg=cfg, dir_a=dir_a, dir_b=dir_b, a=a, out_a=out_a, b=b,
                                 latest_after_kill=latest_after_kill, at4=at4, b2=b2,
                                 init_b2=init_b2, out_b=out_b, resumed_events=resumed_events)


def _weights(proxy):
    return [w.numpy() for w in proxy.model.weights]


def test_resume_after_interruption_equals_uninterrupted_run(resume_runs):
    r = resume_runs
    assert r.latest_after_kill is not None and r.latest_after_kill.endswith("ckpt-4")
    # Step 5 really ran in the killed process: its weights moved past step 4.
    assert any(not np.array_equal(u, v) for u, v in zip(_weights(r.b), _weights(r.at4)))
    # The resumed objects started elsewhere: equality below comes from the checkpoint.
    assert any(not np.allclose(u, v) for u, v in zip(r.init_b2, _weights(r.at4)))
    assert tf.train.latest_checkpoint(r.dir_b).endswith("ckpt-6")
    # The resumed run ran (and logged, log_every=1) steps 5 and 6 only.
    steps = sorted({e.step for f in tf.io.gfile.glob(os.path.join(r.resumed_events, "events*"))
                    for e in tf.compat.v1.train.summary_iterator(f)
                    if any(v.tag == "loss" for v in e.summary.value)})
    assert steps == [5, 6]

    for k in ("loss", "cross_entropy", "l2", "accuracy", "paths_kept"):
        assert r.out_b[k] == pytest.approx(r.out_a[k], rel=1e-5, abs=1e-6), k
    wa, wb = _weights(r.a), _weights(r.b2)
    assert len(wa) == len(wb)
    for u, v, var in zip(wa, wb, r.a.model.weights):
        np.testing.assert_allclose(v, u, rtol=1e-5, atol=1e-6, err_msg=var.path)
    # Steps 5 and 6 changed the weights (the comparison is not of step-4 states).
    assert any(not np.allclose(u, v) for u, v in zip(wa, _weights(r.at4)))


def test_restore_latest_loads_trained_oneshot_weights(resume_runs):
    """restore_latest(model_dir, model=...) is how a trained proxy is loaded for
    inference; it must give the weights that train() left in the checkpoint."""
    r = resume_runs
    keras.utils.set_random_seed(77)
    fresh = OneShotProxy(_tiny_space(), input_shape=(8, 8, 1), num_classes=10, ghost_batch_size=16,
                         drop_rate=0.5, weight_decay=1e-4)
    fresh.build()
    path = training.restore_latest(r.dir_a, model=fresh.model)
    assert path is not None and path.endswith("ckpt-6")
    for u, v, var in zip(_weights(r.a), _weights(fresh), r.a.model.weights):
        np.testing.assert_allclose(v, u, rtol=1e-6, atol=1e-7, err_msg=var.path)


class LabelTask(ScalarTask):
    """loss = w * mean(labels): the trajectory depends on which examples each
    step sees (and on nothing else), so it tracks the data order.  Dies after
    step ``die_after`` when set."""

    die_after = None

    def loss(self, images, labels, *, progress, seed, global_batch_size, num_replicas, replica_id=0):
        w = self.model.trainable_variables[0][0, 0]
        mean_label = tf.reduce_sum(tf.cast(labels, tf.float32)) / global_batch_size
        mean_label += 0.0 * tf.reduce_sum(tf.cast(images, tf.float32))
        return w * mean_label, {"mean_label": mean_label}

    def summaries(self, progress):
        if self.die_after is not None and round(progress * 6) >= self.die_after:
            raise Interrupted()
        return {}


def test_resume_data_order_depends_only_on_config_seed(tmp_path):
    """Resuming continues the data order of the interrupted run whatever the
    process-wide TF seed (TrainConfig.seed is the seed of the data order)."""
    x = np.zeros((24, 2, 2, 1), np.uint8)
    y = np.arange(24, dtype=np.int64)
    cfg = _scalar_cfg(steps=6, batch_size=4, seed=5, checkpoint_every=2, log_every=1)

    tf.random.set_seed(0)
    a = LabelTask()
    out_a = train(a, x, y, cfg, str(tmp_path / "a"))

    b = LabelTask()
    b.die_after = 5
    with pytest.raises(Interrupted):
        train(b, x, y, cfg, str(tmp_path / "b"), summary_dir=str(tmp_path / "events"))
    tf.random.set_seed(1)  # a new process with another global seed resumes
    b2 = LabelTask()
    out_b = train(b2, x, y, cfg, str(tmp_path / "b"))
    keras.utils.set_random_seed(0)
    assert out_b["mean_label"] == pytest.approx(out_a["mean_label"])
    assert float(b2.model.trainable_variables[0].numpy()[0, 0]) == pytest.approx(
        float(a.model.trainable_variables[0].numpy()[0, 0]), rel=1e-6)


@pytest.mark.integration  # a training subprocess signalled mid-run
def test_sigterm_leaves_a_resumable_checkpoint(tmp_path):
    """Preemption: SIGTERM to a training process makes tf.distribute's
    preemption handler save the current step; the binary exits with the
    restart code 42, and the same command resumes and finishes."""
    import glob
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    model_dir = tmp_path / "run"
    args = [sys.executable, "-m", "experiments.train", f"--model_dir={model_dir}", "--preset=tiny", "--quiet",
            "--train_steps=200", "--checkpoint_every=100000", "--log_every=1",
            "--num_cells=1", "--num_stages=1"]  # (one cell: a shorter trace)
    env = dict(os.environ, PYTHONPATH=str(repo), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(args, cwd=str(repo), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        events = glob.glob(str(model_dir / "proxy" / "train" / "events.*"))
        if events and os.path.getsize(events[0]) > 2000:  # a few logged steps
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"training ended before SIGTERM:\n{proc.stderr.read()[-3000:]}"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 42, err[-3000:]
    assert "preempted (SIGTERM) at step" in err
    step = training.checkpoint_step(str(model_dir / "proxy"))
    assert 0 < step < 200  # no periodic checkpoint: this one is the preemption's
    assert f"at step {step}" in err
    assert os.path.basename(tf.train.latest_checkpoint(str(model_dir / "proxy"))) == f"ckpt-{step}"

    done = subprocess.run(args, cwd=str(repo), env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert training.checkpoint_step(str(model_dir / "proxy")) == 200


def test_sigterm_where_tf_preemption_handling_stands_aside(tmp_path, monkeypatch):
    """Where TF's handler installs no SIGTERM handler (Cloud TPU VMs, GCE CPU
    VMs), a single-client run still saves the step it finished and stops."""
    import signal

    class StandsAside:  # what TF 2.21's handler does on those platforms
        def __init__(self, *args, **kwargs):
            self.calls = 0

        def run(self, fn, *args):
            self.calls += 1
            if self.calls == 3:
                os.kill(os.getpid(), signal.SIGTERM)  # preempted during step 3
            return fn(*args)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(tf.distribute.experimental, "PreemptionCheckpointHandler", StandsAside)
    x, y = _scalar_data()
    cfg = _scalar_cfg(steps=6, batch_size=4, checkpoint_every=100, log_every=1)
    with pytest.raises(training.TrainingPreempted, match="preempted \\(SIGTERM\\) at step 3"):
        train(ScalarTask(), x, y, cfg, str(tmp_path / "run"))
    assert signal.getsignal(signal.SIGTERM) is before  # restored
    assert training.checkpoint_step(str(tmp_path / "run")) == 3
    monkeypatch.undo()
    task = ScalarTask()
    train(task, x, y, cfg, str(tmp_path / "run"))
    assert training.checkpoint_step(str(tmp_path / "run")) == 6
    # w moves by -lr * 1 (momentum) per step whatever the interruption: same as 6 straight steps
    straight = ScalarTask()
    train(straight, x, y, cfg, str(tmp_path / "straight"))
    assert task.model.trainable_variables[0].numpy() == pytest.approx(straight.model.trainable_variables[0].numpy())


def test_progress_bar_shows_means_over_each_log_interval(tmp_path, capsys):
    """Loss on the bar: the mean over the steps since its last update (steps
    1-3, then 4-6), not a mean from the first step nor the last step alone."""
    task = ScalarTask()
    x, y = _scalar_data()
    train(task, x, y, _scalar_cfg(log_every=3, verbose=True), str(tmp_path / "ckpt"))
    shown = [float(v) for v in re.findall(r"loss: (-?\d+\.\d+)", capsys.readouterr().out)]
    w = [0.0] + _hand_sgd_nesterov_cosine(6, 0.1)  # the loss of step i is w before its update
    assert shown[-1] == pytest.approx(np.mean(w[3:6]), abs=1e-4)
    assert shown[0] == pytest.approx(np.mean(w[0:3]), abs=1e-4)
    assert abs(np.mean(w[3:6]) - np.mean(w[0:6])) > 1e-2 and abs(np.mean(w[3:6]) - w[5]) > 1e-2


class ScheduledTask(ScalarTask):
    progress_bar_summaries = ("schedule",)

    def summaries(self, progress):
        return {"schedule": 2.0 * progress, "hidden": 7.0}


def test_progress_bar_shows_the_summaries_a_task_names(tmp_path, capsys):
    """A task's named summaries (the one-shot's drop rate) appear on the bar
    at each update, as of that step; its other summaries do not."""
    x, y = _scalar_data()
    train(ScheduledTask(), x, y, _scalar_cfg(log_every=3, verbose=True), str(tmp_path / "ckpt"))
    out = capsys.readouterr().out
    assert [float(v) for v in re.findall(r"schedule: (-?\d+\.\d+)", out)][-2:] == [1.0, 2.0]
    assert "hidden" not in out
    # the one-shot proxy names one of its own summaries
    assert OneShotProxy.progress_bar_summaries == ("path_dropout/op",)
    assert set(OneShotProxy.progress_bar_summaries) <= set(_make_proxy().summaries(0.5))


class _ListHeld(keras.Model):
    """A Keras 3 layer held in a Python list: ``tf.train.Checkpoint`` does not
    see it through the model."""

    def __init__(self):
        super().__init__(name="list_held")
        self.parts = [keras.layers.Dense(1, kernel_initializer="ones", name="part")]

    def call(self, x):
        return self.parts[0](x)


def test_restore_latest_refuses_a_checkpoint_missing_variables(tmp_path):
    """A checkpoint that lacks some of the model's variables (one written
    before checkpoints listed every variable, whose list-held layers it
    missed) is refused with a clear error, not half-restored in silence;
    written now, it restores them."""
    task = ScalarTask()
    task.model = _ListHeld()
    task.model(tf.zeros([1, 1]))
    tf.train.CheckpointManager(tf.train.Checkpoint(model=task.model), str(tmp_path / "old"), max_to_keep=1).save()
    tf.train.CheckpointManager(tf.train.Checkpoint(**task.checkpoint_objects()), str(tmp_path / "new"),
                               max_to_keep=1).save()
    fresh = ScalarTask()
    fresh.model = _ListHeld()
    fresh.model(tf.zeros([1, 1]))
    for v in fresh.model.variables:
        v.assign(tf.fill(v.shape, 7.0))
    with pytest.raises(ValueError, match=r"does not hold every variable of this model .* train again "
                                         r"into a fresh --model_dir"):
        training.restore_latest(str(tmp_path / "old"), **fresh.checkpoint_objects())
    assert training.restore_latest(str(tmp_path / "none"), **fresh.checkpoint_objects()) is None
    assert training.restore_latest(str(tmp_path / "new"), **fresh.checkpoint_objects()).endswith("ckpt-1")
    np.testing.assert_array_equal(fresh.model.parts[0].kernel.numpy(), [[1.0]])
    np.testing.assert_array_equal(fresh.model.parts[0].bias.numpy(), [0.0])
