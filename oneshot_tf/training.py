"""The one training loop of the package.

Every trainable thing (a proxy such as the one-shot model, a stand-alone
model being retrained) is a ``TrainTask``; ``train`` runs it with the
optimizer and learning-rate schedule of its ``TrainConfig`` (SGD with Nesterov
momentum or Adam; cosine, constant, cosine with a floor, or step decay)
through ``strategy.run`` in one compiled step, checkpoints weights,
optimizer, step and (through the step) the RNG state, resumes from the last
checkpoint, stops on a NaN loss with the last good checkpoint kept, logs to
TensorBoard and shows progress.

A task that draws something new every step on the host (a method that
trains on a fresh random architecture per step) returns it from
``TrainTask.step_inputs``: fixed-shape arrays, fed to the compiled step as
tensors (one trace serves every step), the same on every replica, and
derived from the step's seed, so a resumed run draws what the uninterrupted
one would have.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import signal
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from oneshot_tf import data as data_lib
from oneshot_tf import distribute
from oneshot_tf.config import LR_SCHEDULES, OPTIMIZERS


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingPreempted(RuntimeError):
    """SIGTERM (preemption) arrived; a checkpoint of the current step was
    written and the run can be resumed by running the same command."""

    exit_code = 42  # the restart code of tf.distribute's preemption handling


class _StepCheckpointManager(tf.train.CheckpointManager):
    """Names checkpoints by training step, also when tf.distribute's
    preemption handler saves (it calls ``save()`` without a number), and
    runs ``before_save`` (if set) before every save, the handler's included
    (every worker saves at the same step, so it may be a collective)."""

    before_save = None

    def __init__(self, checkpoint, directory, *, step: tf.Variable, **kwargs):
        super().__init__(checkpoint, directory, **kwargs)
        self._step = step

    def save(self, checkpoint_number=None, **kwargs):
        if checkpoint_number is None:
            checkpoint_number = int(self._step.numpy())
        if self.before_save is not None:
            self.before_save()
        return super().save(checkpoint_number=checkpoint_number, **kwargs)


def checkpoint_step(model_dir: str) -> int:
    """Training steps done by the last checkpoint in ``model_dir`` (0: none)."""
    latest = tf.train.latest_checkpoint(model_dir)
    if latest is None:
        return 0
    # (tf.train.load_checkpoint would first ask whether ``latest`` is a
    # directory, which some file systems answer wrongly for a prefix.)
    reader = tf.compat.v1.train.NewCheckpointReader(latest)
    key = "step/.ATTRIBUTES/VARIABLE_VALUE"
    if reader.has_tensor(key):
        return int(reader.get_tensor(key))
    return int(latest.rsplit("-", 1)[1])


class TrainTask(abc.ABC):
    """What ``train`` needs from a model: variables, a loss, checkpoint items.

    ``build`` sets ``self.model`` (a Keras model); variables and checkpoint
    items default to that model's.
    """

    model = None

    @abc.abstractmethod
    def build(self) -> None:
        """Create ``self.model`` and its variables (called under the strategy's scope)."""

    @property
    def trainable_variables(self):
        return self.model.trainable_variables

    def checkpoint_objects(self) -> Dict[str, Any]:
        """Trackables to save besides the optimizer.

        Besides the model, every variable by its Keras path: a Keras 3 layer
        held in a Python list or dict of another layer is invisible to
        ``tf.train.Checkpoint``'s object graph, so saving the model alone would
        silently leave such a layer's variables out of the restore.
        """
        return {"model": self.model, "variables": checkpoint_variables(self.model)}

    @abc.abstractmethod
    def loss(self, images, labels, *, progress, seed, global_batch_size: int, num_replicas: int,
             replica_id=0) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
        """Per-replica loss to differentiate and metrics to sum over replicas.

        ``progress`` is the float step/total_steps in [0, 1]; ``seed`` a
        ``[2]`` int32 tensor unique to this step and shared by all replicas
        (for stateless RNG, so randomness is reproducible and resumes with the
        step); ``replica_id`` (int or scalar tensor) says which slice of the
        global batch ``images`` is, so per-example randomness can be drawn for
        the global batch and sliced, the same under any number of replicas.
        Example-level terms are divided by ``global_batch_size`` and
        replica-level terms (weight decay) by ``num_replicas``, so summing
        over replicas gives the global value.
        """

    def step_inputs(self, step: int, *, seed, progress: float,
                    global_batch_size: int) -> Optional[Dict[str, np.ndarray]]:
        """Host-side inputs of training step ``step`` (0-based), or ``None``
        (the default: the task needs none).

        Arrays of the same shapes and dtypes at every step; the loop passes
        them to ``loss`` as ``step_inputs`` (tensors, the same on every
        replica: a task slices its replica's share by ``replica_id``).
        ``seed`` is the step's ``[2]`` int32 seed that ``loss`` also gets, and
        ``progress`` the float32 ``step / total_steps`` (capped at 1) it sees,
        so an in-graph draw and a host draw can be made identical.  Must be
        deterministic in its arguments: a resumed run redraws the same.
        """
        return None

    def summaries(self, progress) -> Dict[str, float]:
        """Extra scalars for TensorBoard at ``progress`` (host side)."""
        return {}

    #: Names of ``summaries`` also shown on the progress bar, beside the
    #: loss (e.g. a schedule that explains why the loss moves).
    progress_bar_summaries: Tuple[str, ...] = ()

    def replica_local_variables(self) -> List[tf.Variable]:
        """Variables each replica updates from its own share of the batch
        (default: the model's non-trainable floating-point variables, such as
        batch normalization's moving statistics: Keras 3 gives them no
        cross-replica aggregation, so under a strategy each replica, and each
        worker, would keep its own).  The training loop replaces them by
        their mean over replicas before every checkpoint and at the end, so
        every replica and worker saves, evaluates and exports the same
        values (what tf.keras' on-read moving statistics gave)."""
        if self.model is None:
            return []
        return [v for v in checkpoint_variables(self.model)
                if not v.trainable and tf.as_dtype(v.dtype).is_floating]


@dataclasses.dataclass
class TrainConfig:
    steps: int
    batch_size: int = 64            # global batch
    optimizer: str = "sgd"          # sgd (momentum, Nesterov) | adam
    learning_rate: float = 0.1
    momentum: float = 0.9           # sgd only
    nesterov: bool = True           # sgd only
    adam_beta_1: float = 0.9        # adam only
    adam_epsilon: float = 1e-7      # adam only
    lr_schedule: str = "cosine"     # cosine (to 0) | constant | cosine_floor (to lr_floor * lr) | step
    lr_floor: float = 0.1           # cosine_floor only: the final learning rate, a fraction of the initial
    lr_decay_at: Tuple[float, ...] = (0.5, 0.75)  # step only: fractions of ``steps`` where lr is multiplied
    lr_decay_factor: float = 0.5    # step only: by this
    augment: bool = True
    flip: bool = False
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 20
    jit_compile: bool = False
    verbose: bool = True


def make_optimizer(cfg: TrainConfig, *, reusable: bool = False) -> keras.optimizers.Optimizer:
    """``cfg.optimizer`` (SGD with ``momentum``/``nesterov``, or Adam with
    ``adam_beta_1``, ``adam_epsilon`` and Keras's beta_2 0.999) with the
    learning rate of ``cfg.lr_schedule``: cosine decay to 0 over
    ``cfg.steps``; constant; ``cosine_floor``, cosine decay
    to ``lr_floor * learning_rate`` (``lr(t) = lr0 * (f + (1 - f) * (1 +
    cos(pi t / T)) / 2)``, Keras's ``CosineDecay(alpha=f)``); or ``step``,
    ``lr0 * lr_decay_factor ** (number of fractions in lr_decay_at that
    t / T has reached)`` (GHN's Adam at 1e-3 halved at 50% and 75%:
    ``lr_decay_at=(0.5, 0.75), lr_decay_factor=0.5``).  Wrapped in dynamic
    loss scaling when the global Keras policy is ``mixed_float16``.

    ``reusable``: the cosine schedules keep their initial rate and step
    count in variables (``_Compiled.start`` gives them a new run's values, and
    a compiled step that reads them needs no new trace)."""
    if reusable and cfg.lr_schedule in ("cosine", "cosine_floor"):
        lr = keras.optimizers.schedules.CosineDecay(
            tf.Variable(float(cfg.learning_rate), trainable=False, name="initial_learning_rate"),
            decay_steps=tf.Variable(float(max(cfg.steps, 1)), trainable=False, name="decay_steps"),
            alpha=cfg.lr_floor if cfg.lr_schedule == "cosine_floor" else 0.0)
    elif cfg.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=max(cfg.steps, 1))
    elif cfg.lr_schedule == "cosine_floor":
        if not 0.0 < cfg.lr_floor < 1.0:
            raise ValueError(f"lr_floor must be in (0, 1) (a fraction of the initial learning rate) for "
                             f"lr_schedule 'cosine_floor', got {cfg.lr_floor}")
        lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=max(cfg.steps, 1),
                                                    alpha=cfg.lr_floor)
    elif cfg.lr_schedule == "constant":
        lr = cfg.learning_rate
    elif cfg.lr_schedule == "step":
        fractions = tuple(float(f) for f in cfg.lr_decay_at)
        if not fractions or any(not 0.0 < f < 1.0 for f in fractions) or list(fractions) != sorted(set(fractions)):
            raise ValueError(f"lr_decay_at must be increasing fractions in (0, 1), got {cfg.lr_decay_at}")
        if not 0.0 < cfg.lr_decay_factor < 1.0:
            raise ValueError(f"lr_decay_factor must be in (0, 1), got {cfg.lr_decay_factor}")
        # The optimizer counts steps from 0: the lr of step t (0-based) is the
        # value after t updates, boundary b = round(f * T) starts the decay.
        boundaries = [max(1, int(round(f * cfg.steps))) - 1 for f in fractions]
        values = [cfg.learning_rate * cfg.lr_decay_factor ** i for i in range(len(fractions) + 1)]
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    else:
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r} ({', '.join(LR_SCHEDULES)})")
    if cfg.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    elif cfg.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=lr, beta_1=cfg.adam_beta_1, epsilon=cfg.adam_epsilon)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r} ({', '.join(OPTIMIZERS)})")
    if keras.mixed_precision.global_policy().name == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def step_seed(seed: int, step: int) -> np.ndarray:
    """The ``[2]`` int32 seed of training step ``step`` (0-based) of a run
    seeded ``seed``: what ``TrainTask.loss`` and ``step_inputs`` get."""
    m = 2 ** 31 - 1
    return np.array([seed % m, step % m], np.int32)


def current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


class _Compiled:
    """What ``train`` builds for a task besides the task itself: optimizer,
    step counter, the run's step count and seed as variables, and the
    compiled step once traced.  With ``reuse_compiled`` it is kept on the
    task and serves later runs of the same shape (``_compile_key``)."""

    def __init__(self, key, optimizer, step_var):
        self.key, self.optimizer, self.step_var = key, optimizer, step_var
        self.total_var = tf.Variable(1.0, trainable=False, name="total_steps")
        self.seed_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="run_seed")
        self.train_step = None

    def start(self, cfg: TrainConfig, fresh: bool):
        """Set the run's values; a reused one also forgets the last run
        (optimizer slots and iterations zeroed, step 0)."""
        if not fresh:
            for v in self.optimizer.variables:
                v.assign(tf.zeros_like(v))
            self.step_var.assign(0)
            lr = self.optimizer._learning_rate
            if isinstance(lr, keras.optimizers.schedules.CosineDecay):
                lr.initial_learning_rate.assign(float(cfg.learning_rate))
                lr.decay_steps.assign(float(max(cfg.steps, 1)))
            elif not isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
                self.optimizer.learning_rate = float(cfg.learning_rate)
        self.total_var.assign(float(cfg.steps))
        self.seed_var.assign(cfg.seed % (2 ** 31 - 1))


def _compile_key(cfg: TrainConfig, strategy, x: np.ndarray, y: np.ndarray):
    """What a compiled step depends on besides variables: a later run with
    the same key reuses it (learning rate, step count and seed may differ,
    and so may the step count of a cosine or constant schedule)."""
    schedule = (cfg.lr_schedule, cfg.lr_floor if cfg.lr_schedule == "cosine_floor" else None,
                (cfg.steps, tuple(cfg.lr_decay_at), cfg.lr_decay_factor) if cfg.lr_schedule == "step" else None)
    return (id(strategy), cfg.batch_size, cfg.optimizer, cfg.momentum, cfg.nesterov, cfg.adam_beta_1,
            cfg.adam_epsilon, schedule, cfg.jit_compile,
            x.shape[1:], str(x.dtype), y.shape[1:], str(y.dtype), keras.mixed_precision.global_policy().name)


def train(task: TrainTask, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, model_dir: str, *,
          strategy: Optional[tf.distribute.Strategy] = None, summary_dir: Optional[str] = None,
          description: str = "training", reuse_compiled: bool = False) -> Dict[str, float]:
    """Train ``task`` on ``(x, y)`` for ``cfg.steps`` global steps; resumable.

    Checkpoints go to ``model_dir`` (created if needed).  Returns the metrics
    of the last step (empty if the run had already finished).

    ``reuse_compiled``: keep the optimizer and the compiled step on ``task``
    and reuse them in a later call with the same batch, optimizer, schedule
    kind and data shapes (a study training one architecture with several
    seeds and step counts traces once).  A reused call starts from zeroed
    optimizer state and step 0, with this call's learning rate, step count
    and seed; the task's weights are the caller's to re-initialize.  Not
    under ``mixed_float16`` (its loss scale is optimizer state).
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(f"batch size {cfg.batch_size} does not split over {replicas} replicas")
    reuse_compiled = reuse_compiled and keras.mixed_precision.global_policy().name != "mixed_float16"
    with strategy.scope():
        task.build()
        variables = task.trainable_variables
        # (the same variables too: a task whose model was rebuilt gets a new step)
        key = _compile_key(cfg, strategy, x, y) + (tuple(id(v) for v in variables),)
        compiled = getattr(task, "_compiled", None) if reuse_compiled else None
        fresh = compiled is None or compiled.key != key
        if fresh:
            optimizer = make_optimizer(cfg, reusable=reuse_compiled)
            optimizer.build(variables)
            # Steps taken, counted apart from optimizer.iterations, which does not
            # advance when dynamic loss scaling skips a step (mixed_float16).
            step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                                   aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            compiled = _Compiled(key, optimizer, step_var)
            if reuse_compiled:
                task._compiled = compiled
        compiled.start(cfg, fresh)
        optimizer, step_var = compiled.optimizer, compiled.step_var
    ckpt = tf.train.Checkpoint(optimizer=optimizer, step=step_var, **task.checkpoint_objects())
    # Only the chief keeps checkpoints in model_dir; every worker saves (the
    # values are collected collectively), the others into a temporary dir.
    chief = distribute.is_chief(strategy)
    save_dir = distribute.write_dir(model_dir, strategy)
    tf.io.gfile.makedirs(save_dir)
    manager = _StepCheckpointManager(ckpt, save_dir, max_to_keep=2, step=step_var)
    # Restore before the preemption handler attaches its own counter to the
    # checkpoint (checkpoints written where it stands aside lack it).
    latest = tf.train.latest_checkpoint(model_dir)
    if latest:
        ckpt.restore(latest).assert_existing_objects_matched()
        logging.info("%s: resumed from %s", description, latest)
    previous_sigterm = signal.getsignal(signal.SIGTERM) if _main_thread() else None
    preemption = sigterm = None
    if previous_sigterm is not None:
        # tf.distribute's preemption handling: on SIGTERM (any worker), all
        # workers save a checkpoint at the same step, then TrainingPreempted.
        preemption = tf.distribute.experimental.PreemptionCheckpointHandler(
            distribute.cluster_resolver(strategy), manager,
            termination_config=tf.distribute.experimental.TerminationConfig(
                exit_fn=_preempted(description, model_dir, step_var)))
        if signal.getsignal(signal.SIGTERM) is previous_sigterm and distribute.single_client(strategy):
            # The handler stands aside on this platform (TF 2.21: Cloud TPU
            # VMs, GCE CPU VMs; GCE GPU VMs watch maintenance events, not
            # SIGTERM).  One client needs no coordination: SIGTERM sets a
            # flag, and the loop saves the step it finished and stops.
            sigterm = threading.Event()
            signal.signal(signal.SIGTERM, lambda signum, frame: sigterm.set())
    try:
        return _train_loop(task, x, y, cfg, strategy, compiled, variables, manager, preemption,
                           sigterm, model_dir, summary_dir if chief else None, description)
    finally:
        if previous_sigterm is not None:
            del preemption
            signal.signal(signal.SIGTERM, previous_sigterm)
        distribute.remove_write_dir(model_dir, strategy)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _preempted(description, model_dir, step):
    def exit_fn():
        raise TrainingPreempted(f"{description}: preempted (SIGTERM) at step {int(step.numpy())}; a checkpoint "
                                f"of that step is in {model_dir}; run the same command again to resume")
    return exit_fn


def _train_loop(task, x, y, cfg, strategy, compiled, variables, manager, preemption, sigterm,
                model_dir, summary_dir, description):
    replicas = strategy.num_replicas_in_sync
    optimizer, step_var = compiled.optimizer, compiled.step_var
    start = int(step_var.numpy())
    if start >= cfg.steps:
        return {}

    ds = data_lib.make_tf_dataset(x, y, cfg.batch_size, training=True, augment=cfg.augment,
                                  flip=cfg.flip, seed=cfg.seed, drop_remainder=True, repeat=True,
                                  skip_batches=start)
    iterator = iter(strategy.experimental_distribute_dataset(ds))
    total = float(cfg.steps)

    per_replica_batch = cfg.batch_size // replicas

    def host_inputs(step: int):
        """``task.step_inputs`` of 0-based ``step``, with the seed and
        progress the compiled step computes for it."""
        progress = np.minimum(np.float32(step) / np.float32(total), np.float32(1.0))
        return task.step_inputs(step, seed=step_seed(cfg.seed, step), progress=float(progress),
                                global_batch_size=cfg.batch_size)

    probe = host_inputs(start)
    feeds = probe is not None

    def replica_step(images, labels, extra=None):
        ctx = tf.distribute.get_replica_context()
        # Static per-replica shapes (multi-worker input rebatching hides them;
        # XLA/TPU and tasks that split the batch, such as into ghost batches, need them).
        images = tf.ensure_shape(images, [per_replica_batch] + list(images.shape[1:]))
        labels = tf.ensure_shape(labels, [per_replica_batch] + list(labels.shape[1:]))
        step = step_var
        progress = tf.minimum(tf.cast(step, tf.float32) / compiled.total_var, 1.0)
        # One seed per step for all replicas: tasks draw randomness for the
        # global batch and take their replica's slice (same under any split).
        seed = tf.stack([compiled.seed_var.read_value(), tf.cast(step, tf.int64)])
        seed = tf.cast(seed % (2 ** 31 - 1), tf.int32)  # = step_seed(cfg.seed, step)
        with tf.GradientTape() as tape:
            kwargs = {"step_inputs": extra} if feeds else {}
            loss, metrics = task.loss(images, labels, progress=progress, seed=seed,
                                      global_batch_size=cfg.batch_size, num_replicas=replicas,
                                      replica_id=ctx.replica_id_in_sync_group, **kwargs)
            loss = tf.cast(loss, tf.float32)
            scaled = optimizer.scale_loss(loss)
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                 for g in tape.gradient(scaled, variables)]
        optimizer.apply_gradients(zip(grads, variables))
        return {"loss": loss, **metrics}

    # XLA compiles the replica step; the input pipeline stays outside it.
    compiled_step = tf.function(replica_step, jit_compile=True) if cfg.jit_compile else replica_step

    def train_step(it, extra=None):
        images, labels = next(it)
        # ``extra`` (host-side step inputs) is not per-replica: every replica gets all of it.
        per_replica = strategy.run(compiled_step, args=(images, labels) + ((extra,) if feeds else ()))
        out = {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}
        with tf.control_dependencies(list(out.values())):
            step_var.assign_add(1)
        return out

    if compiled.train_step is None:
        compiled.train_step = tf.function(train_step)
    train_step = compiled.train_step
    # Replica-local variables are averaged before every checkpoint (the
    # preemption handler's too) and so at the end, whose step is saved.
    manager.before_save = _replica_mean_fn(strategy, task.replica_local_variables())

    writer = tf.summary.create_file_writer(summary_dir) if summary_dir else None
    # The bar shows loss and accuracy averaged over the steps since its last
    # update (stateful: Keras would otherwise average from the first step
    # during the run and show the last step alone at the end).
    shown = ("loss", "accuracy")
    progbar = keras.utils.Progbar(cfg.steps, verbose=1 if cfg.verbose else 0, unit_name="step",
                                  stateful_metrics=shown + tuple(task.progress_bar_summaries))
    sums: Dict[str, float] = {}
    count = 0
    if start:
        progbar.update(start)
    last_saved = start
    metrics: Dict[str, float] = {}
    # Step results are read on the host only when something needs them (a
    # log line, a checkpoint, SIGTERM), not after every step, so the device
    # runs ahead of Python; every step's loss is still checked, in order.
    pending: List[Dict[str, tf.Tensor]] = []
    t0, n0 = time.time(), start
    for step in range(start + 1, cfg.steps + 1):
        args = (iterator,)
        if feeds:
            extra = probe if step == start + 1 else host_inputs(step - 1)
            args += ({k: tf.constant(v) for k, v in extra.items()},)
        out = preemption.run(train_step, *args) if preemption is not None else train_step(*args)
        pending.append(out)
        log = step % cfg.log_every == 0 or step == cfg.steps
        save = step % cfg.checkpoint_every == 0 or step == cfg.steps
        stop = sigterm is not None and sigterm.is_set()
        if not (log or save or stop):
            continue
        for s, out in enumerate(pending, start=step - len(pending) + 1):
            metrics = {k: float(v) for k, v in out.items()}
            if not math.isfinite(metrics["loss"]):
                raise _diverged(description, f"loss became {metrics['loss']}", s, last_saved, model_dir)
            count += 1
            for k in shown:
                if k in metrics:
                    sums[k] = sums.get(k, 0.0) + metrics[k]
        pending = []
        if stop:
            manager.save(checkpoint_number=step)
            _preempted(description, model_dir, step_var)()
        if log:
            elapsed = time.time() - t0
            metrics["examples_per_second"] = (step - n0) * cfg.batch_size / max(elapsed, 1e-9)
            t0, n0 = time.time(), step
            extra = task.summaries(min(step / total, 1.0))
            if writer:
                with writer.as_default(step=step):
                    for k, v in metrics.items():
                        tf.summary.scalar(k, v)
                    tf.summary.scalar("learning_rate", current_lr(optimizer))
                    for k, v in extra.items():
                        tf.summary.scalar(k, v)
                writer.flush()
            progbar.update(step, [(k, v / count) for k, v in sums.items()]
                           + [(k, extra[k]) for k in task.progress_bar_summaries])
            sums, count = {}, 0
        if save:
            if not bool(all_finite(variables)):
                raise _diverged(description, "weights became NaN or infinite", step, last_saved, model_dir)
            manager.save(checkpoint_number=step)
            last_saved = step
    if writer:
        writer.close()
    return metrics


def _replica_mean_fn(strategy, variables):
    """A compiled function that sets each of ``variables`` on every replica
    to its mean over all replicas (a collective: every worker calls it at the
    same point); ``None`` with one replica or no such variables."""
    if strategy.num_replicas_in_sync == 1 or not variables:
        return None

    def replica_fn():
        ctx = tf.distribute.get_replica_context()
        means = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.identity(v) for v in variables])
        for v, m in zip(variables, means):
            v.assign(m)

    return tf.function(lambda: strategy.run(replica_fn))


@tf.function
def all_finite(variables) -> tf.Tensor:
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables])


def _diverged(description, what, step, last_saved, model_dir) -> TrainingDivergedError:
    kept = (f"the last good checkpoint (step {last_saved}) in {model_dir} is kept"
            if last_saved else f"no checkpoint had been written to {model_dir} yet")
    return TrainingDivergedError(
        f"{description}: {what} at step {step}; stopped. {kept[0].upper() + kept[1:]}; lower "
        f"--learning_rate or check the data, then run again (training resumes from the last checkpoint).")


def checkpoint_variables(model) -> List[tf.Variable]:
    """``model.variables`` in their (deterministic) build order, for a
    checkpoint that reaches every variable whatever Python container holds
    its layer.  By position, not by path: auto-generated layer names differ
    between two builds of one model in one process.

    Random-number states (a ``keras.random.SeedGenerator``'s, e.g. a GRU
    cell's dropout RNG) are left out: they are not learned.
    """
    rng_states = {id(sg.state) for layer in model._flatten_layers(include_self=True)
                  for sg in getattr(layer, "_seed_generators", ())}
    return [v for v in model.variables if id(v) not in rng_states]


def restore_latest(model_dir: str, **objects) -> Optional[str]:
    """Restore ``objects`` (e.g. ``model=...``) from the last checkpoint in
    ``model_dir`` (optimizer state is not needed for inference)."""
    latest = tf.train.latest_checkpoint(model_dir)
    if latest is None:
        return None
    status = tf.train.Checkpoint(**objects).restore(latest).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ValueError(
            f"the checkpoint {latest} does not hold every variable of this model (it was written "
            f"for another model or by an older version of this package); train again into a "
            f"fresh --model_dir. ({str(e).splitlines()[0][:200]})") from None
    return latest
