"""tf.distribute: strategy selection, mirrored == one device (loss, gradients,
path decisions), checkpoints across replica counts, scoring split over
replicas.  MirroredStrategy runs on two logical CPUs (tests/conftest.py)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from oneshot_tf import distribute
from oneshot_tf.methods.oneshot.cell_space import CellSearchSpace
from oneshot_tf.distribute import STRATEGIES, get_distribution_strategy
from oneshot_tf.methods.oneshot.proxy import OneShotProxy, sample_path_masks
from oneshot_tf.scoring import CandidateScorer, CandidateStore, ScoreConfig
from oneshot_tf.training import TrainConfig, checkpoint_step, restore_latest, train
from oneshot_tf.tuner import ArchitectureHyperModel, ProxyTuner, RandomArchitectureOracle
from tests.conftest import two_cpus

SPACE = CellSearchSpace(num_cells=2, num_stages=2, filters=4, num_blocks=2)
TRAIN_SPACE = CellSearchSpace(num_cells=1, num_stages=1, filters=4, num_blocks=2)  # compiles fast
SHAPE = (8, 8, 1)


def _two_cpus():
    return two_cpus()


def test_default_and_one_device_and_mirrored():
    assert get_distribution_strategy("default") is tf.distribute.get_strategy()
    one = get_distribution_strategy("one_device")
    assert isinstance(one, tf.distribute.OneDeviceStrategy) and one.num_replicas_in_sync == 1
    mirrored = get_distribution_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    # all local GPUs, else all local (here: two logical) CPUs
    assert mirrored.num_replicas_in_sync == (len(tf.config.list_logical_devices("GPU"))
                                             or len(tf.config.list_logical_devices("CPU")))
    for strategy in (tf.distribute.get_strategy(), one, mirrored):
        assert distribute.is_chief(strategy)
        assert distribute.write_dir("gs://b/run/proxy", strategy) == "gs://b/run/proxy"
    assert distribute.default_jit_compile(one) is False


def test_intra_op_threads_apply_only_before_tensorflow_runs(caplog):
    """conftest.py set one thread before TensorFlow started; once it runs,
    another value is not applied, and a warning says so."""
    assert tf.config.threading.get_intra_op_parallelism_threads() == 1
    assert distribute.configure_runtime(0) is True      # TensorFlow's default: nothing to do
    assert distribute.configure_runtime(1) is True      # already so
    tf.constant(1.0) + 1.0                              # the runtime runs
    assert distribute.configure_runtime(2) is False
    assert "--intra_op_threads=2 not applied" in caplog.text
    assert tf.config.threading.get_intra_op_parallelism_threads() == 1
    with pytest.raises(ValueError, match=r"--intra_op_threads=-1 must be >= 0"):
        distribute.configure_runtime(-1)


def test_deterministic_refuses_once_tensorflow_runs_with_concurrent_ops():
    """``--deterministic`` needs one inter-op thread, settable only before
    TensorFlow starts: later it raises instead of running unrepeatably, and
    turns nothing on."""
    tf.constant(1.0) + 1.0
    assert tf.config.threading.get_inter_op_parallelism_threads() != 1   # TensorFlow's default (conftest)
    with pytest.raises(RuntimeError, match=r"--deterministic needs one inter-op thread, which can only be set "
                                           r"before TensorFlow's runtime starts: call oneshot_tf\.distribute\."
                                           r"configure_runtime\(deterministic=True\) before running any "
                                           r"TensorFlow op"):
        distribute.configure_runtime(1, deterministic=True)
    from tensorflow.python.framework.config import is_op_determinism_enabled  # (no public reader)
    assert not is_op_determinism_enabled()


def test_unknown_strategy_names_the_choices():
    with pytest.raises(ValueError, match="unknown strategy 'horovod'; choose from " + ", ".join(STRATEGIES)):
        get_distribution_strategy("horovod")


def test_chief_and_worker_dirs_from_the_cluster(monkeypatch):
    class Resolver:
        def __init__(self, task_type, task_id, spec):
            self.task_type, self.task_id, self._spec = task_type, task_id, spec

        def cluster_spec(self):
            return tf.train.ClusterSpec(self._spec)

    workers = {"worker": ["localhost:1", "localhost:2"]}
    with_chief = {"chief": ["localhost:0"], **workers}

    def strategy(resolver):
        return type("S", (), {"cluster_resolver": resolver, "num_replicas_in_sync": 1})()

    assert distribute.is_chief(strategy(Resolver("worker", 0, workers)))
    assert not distribute.is_chief(strategy(Resolver("worker", 1, workers)))
    assert distribute.is_chief(strategy(Resolver("chief", 0, with_chief)))
    assert not distribute.is_chief(strategy(Resolver("worker", 0, with_chief)))
    w1 = strategy(Resolver("worker", 1, workers))
    assert distribute.write_dir("/r/run/proxy", w1) == "/r/run/.workertemp_worker_1/proxy"
    assert distribute.write_dir("/r/run/proxy", strategy(Resolver("worker", 0, workers))) == "/r/run/proxy"


def test_path_masks_are_the_same_under_any_replica_split():
    seed = tf.constant([4, 17], tf.int32)
    whole = [m.numpy() for m in sample_path_masks(SPACE, 4, 0.7, 0.1, seed)]
    for replicas, per in ((2, 2), (4, 1)):
        parts = [[m.numpy() for m in sample_path_masks(SPACE, per, 0.7, 0.1, seed, replica_id=r,
                                                       num_replicas=replicas)] for r in range(replicas)]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), whole[0])
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), whole[1])
    assert whole[0].min() == 0.0 or whole[1].min() == 0.0  # progress 0.7 drops some paths


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n,) + SHAPE).astype(np.uint8), rng.integers(0, 10, n)


def _proxy(space=TRAIN_SPACE):
    return OneShotProxy(space, input_shape=SHAPE, num_classes=10, ghost_batch_size=8, drop_rate=0.1)


def _weights(proxy):
    return {v.path: v.numpy() for v in proxy.model.weights}


def _run(strategy, model_dir, steps, *, init=None, lr=0.05):
    """Train a fresh proxy for ``steps`` steps (constant lr); the initial
    weights are ``init`` (a dict by path) or the seeded initialization."""
    keras.utils.set_random_seed(0)
    proxy = _proxy()
    with strategy.scope():
        proxy.build()
    if init is not None:
        for v in proxy.model.weights:
            v.assign(init[v.path])
    cfg = TrainConfig(steps=steps, batch_size=32, learning_rate=lr, lr_schedule="constant", augment=True,
                      seed=5, checkpoint_every=2, log_every=1, verbose=False)
    x, y = _data()
    metrics = train(proxy, x, y, cfg, str(model_dir), strategy=strategy)
    return proxy, metrics


@pytest.mark.integration  # two trainings on two replicas and one device: CI's integration step
def test_mirrored_two_replicas_equal_one_device(tmp_path):
    """Same data, same masks (drawn for the global batch), same loss and
    gradients: after one step the weights moved by the same gradient (that
    the trajectories still agree after two steps with path dropout active is
    checked with the checkpoint test below)."""
    keras.utils.set_random_seed(0)
    init_proxy = _proxy()
    init_proxy.build()
    init = _weights(init_proxy)
    lr, momentum = 0.05, 0.9
    one, m_one = _run(tf.distribute.get_strategy(), tmp_path / "one", 1, init=init, lr=lr)
    two, m_two = _run(_two_cpus(), tmp_path / "two", 1, init=init, lr=lr)
    assert m_two["loss"] == pytest.approx(m_one["loss"], rel=1e-5)
    assert m_two["cross_entropy"] == pytest.approx(m_one["cross_entropy"], rel=1e-5)
    assert m_two["l2"] == pytest.approx(m_one["l2"], rel=1e-5)
    w_one, w_two = _weights(one), _weights(two)
    moved = 0
    for path, w0 in init.items():
        if "moving" in path:
            continue
        # first Nesterov SGD step: w1 = w0 - (1 + momentum) * lr * grad
        g_one = (w0 - w_one[path]) / ((1 + momentum) * lr)
        g_two = (w0 - w_two[path]) / ((1 + momentum) * lr)
        np.testing.assert_allclose(g_two, g_one, rtol=1e-3, atol=1e-5, err_msg=path)
        moved += int(np.abs(g_one).max() > 0)
    assert moved > 10  # the comparison is not vacuous


@pytest.mark.integration  # the slowest unit test (two trainings and a restore): CI's integration step
def test_checkpoint_from_two_replicas_restores_on_one(tmp_path):
    """Two steps on two replicas: the trajectory of one device (path dropout
    active at step 2), and a checkpoint that one device restores and resumes."""
    keras.utils.set_random_seed(0)
    init_proxy = _proxy()
    init_proxy.build()
    init = _weights(init_proxy)
    two, m_two = _run(_two_cpus(), tmp_path / "run", 2, init=init)
    assert checkpoint_step(str(tmp_path / "run")) == 2
    one, m_one = _run(tf.distribute.get_strategy(), tmp_path / "ref", 2, init=init)
    assert m_two["loss"] == pytest.approx(m_one["loss"], rel=1e-4)
    assert m_two["paths_kept"] == pytest.approx(m_one["paths_kept"], rel=1e-6)
    assert m_one["paths_kept"] < 1.0  # path dropout was active at step 2
    for path, w in _weights(one).items():
        np.testing.assert_allclose(_weights(two)[path], w, rtol=1e-3, atol=1e-5, err_msg=path)
    # restore for inference on the default strategy
    keras.utils.set_random_seed(1)
    fresh = _proxy()
    fresh.build()
    restore_latest(str(tmp_path / "run"), **fresh.checkpoint_objects())
    for path, w in _weights(two).items():
        np.testing.assert_array_equal(_weights(fresh)[path], w)
    # resume training on one device (to 4 steps) = the same with the first
    # 2 steps also on one device (the lr/dropout schedules depend on the
    # total steps, so the reference is interrupted at the same step)
    resumed, m_resumed = _run(tf.distribute.get_strategy(), tmp_path / "run", 4, init=init)
    ref, m_ref = _run(tf.distribute.get_strategy(), tmp_path / "ref", 4, init=init)
    assert checkpoint_step(str(tmp_path / "run")) == 4
    assert m_resumed["loss"] == pytest.approx(m_ref["loss"], rel=1e-4)
    for path, w in _weights(ref).items():
        np.testing.assert_allclose(_weights(resumed)[path], w, rtol=1e-3, atol=1e-5, err_msg=path)


def _search(strategy, directory, k=4, n=10):
    keras.utils.set_random_seed(0)
    proxy = _proxy(SPACE)
    with strategy.scope():
        proxy.build()
    x, y = _data(32, seed=1)
    scorer = CandidateScorer(proxy, ScoreConfig(candidates_per_pass=k, group_size=8, kl_examples=16,
                                                verbose=False), strategy=strategy).prepare(x, y, x)
    tuner = ProxyTuner(RandomArchitectureOracle(SPACE, max_trials=n, seed=2),
                       ArchitectureHyperModel(SPACE, input_shape=SHAPE, num_classes=10), scorer=scorer,
                       store=CandidateStore(str(directory / "candidates.jsonl")), method="oneshot",
                       directory=str(directory), project_name="tuner")
    tuner.search(verbose=0)
    with open(directory / "candidates.jsonl") as f:
        return [json.loads(line) for line in f], scorer


@pytest.mark.integration  # scoring on two replicas and one device (~17 s): CI's integration step
def test_scoring_split_across_replicas_loses_and_duplicates_nothing(tmp_path):
    one, _ = _search(tf.distribute.get_strategy(), tmp_path / "one")
    two, scorer = _search(_two_cpus(), tmp_path / "two")
    assert scorer.trace_count == 1
    assert len(two) == 10 == len({r["id"] for r in two})
    assert [r["id"] for r in two] == [r["id"] for r in one]
    for a, b in zip(one, two):
        assert b["score"] == pytest.approx(a["score"]) and b["kl"] == pytest.approx(a["kl"], rel=1e-4, abs=1e-6)
    with pytest.raises(ValueError, match="candidates_per_pass 3 does not split over 2 replicas"):
        _search(_two_cpus(), tmp_path / "three", k=3)


class _MovingMeanTask:
    """A stand-alone model whose batch normalization sees the images
    themselves (standardized by 0 and 1), so its moving mean is an
    exponential average of the batches' channel means."""

    @staticmethod
    def make(momentum):
        from oneshot_tf.layers import FusedBatchNormalization, Standardize
        from oneshot_tf.retrain import StandaloneTask

        def build():
            inputs = keras.Input(SHAPE, dtype="uint8")
            x = Standardize([0.0], [1.0])(inputs)
            x = FusedBatchNormalization(momentum=momentum, name="bn")(x)
            x = keras.layers.GlobalAveragePooling2D()(x)
            return keras.Model(inputs, keras.layers.Dense(10)(x))

        return StandaloneTask(build, weight_decay=0.0)


def test_moving_statistics_are_the_replicas_mean_on_every_replica(tmp_path):
    """Each replica updates batch normalization's moving statistics from its
    half of the batch; at the checkpoint the loop replaces them by the
    replicas' mean, so both replicas (and the checkpoint) hold the same
    values, and the moving mean is the exponential average of the whole
    batches' means, computed here by hand (the learning rate is 0: only the
    statistics change)."""
    x, y = _data(64)
    momentum, steps, batch = 0.8, 5, 16
    cfg = TrainConfig(steps=steps, batch_size=batch, learning_rate=0.0, augment=False, seed=3,
                      checkpoint_every=100, verbose=False)
    strategy = _two_cpus()
    task = _MovingMeanTask.make(momentum)
    train(task, x, y, cfg, str(tmp_path / "two"), strategy=strategy)
    bn = task.model.get_layer("bn")

    from oneshot_tf import data as data_lib
    batches = [b.numpy().astype(np.float64) for b, _ in data_lib.make_tf_dataset(
        x, y, batch, training=True, seed=cfg.seed, drop_remainder=True, repeat=True).take(steps)]
    whole = halves = np.zeros(SHAPE[-1])
    for b in batches:
        whole = whole * momentum + b.mean(axis=(0, 1, 2)) * (1 - momentum)
        halves = halves * momentum + b[: batch // 2].mean(axis=(0, 1, 2)) * (1 - momentum)
    assert not np.allclose(halves, whole, rtol=1e-3)   # one replica's own average is not the whole batches'
    means = [v.numpy() for v in strategy.experimental_local_results(bn.moving_mean.value)]
    variances = [v.numpy() for v in strategy.experimental_local_results(bn.moving_variance.value)]
    assert len(means) == 2
    np.testing.assert_array_equal(means[0], means[1])
    np.testing.assert_array_equal(variances[0], variances[1])
    np.testing.assert_allclose(means[0], whole, rtol=1e-5)

    restored = _MovingMeanTask.make(momentum)
    restored.build()
    restore_latest(str(tmp_path / "two"), **restored.checkpoint_objects())
    np.testing.assert_array_equal(restored.model.get_layer("bn").moving_mean.numpy(), means[0])


class _SavingHandler:
    """Stands in for tf.distribute's PreemptionCheckpointHandler on a
    multi-worker cluster: it takes SIGTERM over, and after run ``at`` it
    saves through the manager's ``save()`` (no number, outside the loop's
    checkpoint points) and calls the exit function."""

    at = 3

    def __init__(self, cluster_resolver, manager, termination_config):
        import signal
        self.manager, self.exit_fn, self.calls = manager, termination_config.exit_fn, 0
        signal.signal(signal.SIGTERM, lambda signum, frame: None)

    def run(self, fn, *args):
        out = fn(*args)
        self.calls += 1
        if self.calls == self.at:
            self.manager.save()
            self.exit_fn()
        return out


def test_a_preemption_save_holds_the_replicas_mean_statistics(tmp_path, monkeypatch):
    """The preemption handler's own save (on SIGTERM, at a step the loop
    would not checkpoint) also holds the replicas' mean moving statistics:
    the checkpoint every worker resumes from."""
    from oneshot_tf import data as data_lib
    from oneshot_tf.training import TrainingPreempted
    monkeypatch.setattr(tf.distribute.experimental, "PreemptionCheckpointHandler", _SavingHandler)
    x, y = _data(64)
    momentum, batch = 0.8, 16
    cfg = TrainConfig(steps=8, batch_size=batch, learning_rate=0.0, augment=False, seed=3,
                      checkpoint_every=100, verbose=False)
    with pytest.raises(TrainingPreempted, match="preempted \\(SIGTERM\\) at step 3"):
        train(_MovingMeanTask.make(momentum), x, y, cfg, str(tmp_path / "run"), strategy=_two_cpus())
    assert checkpoint_step(str(tmp_path / "run")) == _SavingHandler.at

    whole = np.zeros(SHAPE[-1])
    for b, _ in data_lib.make_tf_dataset(x, y, batch, training=True, seed=cfg.seed, drop_remainder=True,
                                         repeat=True).take(_SavingHandler.at):
        whole = whole * momentum + b.numpy().astype(np.float64).mean(axis=(0, 1, 2)) * (1 - momentum)
    restored = _MovingMeanTask.make(momentum)
    restored.build()
    restore_latest(str(tmp_path / "run"), **restored.checkpoint_objects())
    np.testing.assert_allclose(restored.model.get_layer("bn").moving_mean.numpy(), whole, rtol=1e-5)
