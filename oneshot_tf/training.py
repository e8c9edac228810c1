"""The one training loop of the package.

Every trainable thing (a proxy such as the one-shot model, a stand-alone
model being retrained) is a ``TrainTask``; ``train`` runs it with SGD
(Nesterov momentum, cosine decay) through ``strategy.run`` in one compiled
step, checkpoints weights, optimizer, step and (through the step) the RNG
state, resumes from the last checkpoint, stops on a NaN loss with the last
good checkpoint kept, logs to TensorBoard and shows progress.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import os
import time
from typing import Any, Dict, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from oneshot_tf import data as data_lib


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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
        """Trackables to save besides the optimizer."""
        return {"model": self.model}

    @abc.abstractmethod
    def loss(self, images, labels, *, progress, seed, global_batch_size: int,
             num_replicas: int) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
        """Per-replica loss to differentiate and metrics to sum over replicas.

        ``progress`` is the float step/total_steps in [0, 1]; ``seed`` a
        ``[2]`` int32 tensor unique to this step and replica (for stateless
        RNG, so randomness is reproducible and resumes with the step).
        Example-level terms are divided by ``global_batch_size`` and
        replica-level terms (weight decay) by ``num_replicas``, so summing
        over replicas gives the global value.
        """

    def summaries(self, progress) -> Dict[str, float]:
        """Extra scalars for TensorBoard at ``progress`` (host side)."""
        return {}


@dataclasses.dataclass
class TrainConfig:
    steps: int
    batch_size: int = 64            # global batch
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    lr_schedule: str = "cosine"     # cosine | constant
    augment: bool = True
    flip: bool = False
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 20
    jit_compile: bool = False
    verbose: bool = True


def make_optimizer(cfg: TrainConfig) -> keras.optimizers.Optimizer:
    if cfg.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=max(cfg.steps, 1))
    elif cfg.lr_schedule == "constant":
        lr = cfg.learning_rate
    else:
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r} (cosine or constant)")
    return keras.optimizers.SGD(learning_rate=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)


def current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def train(task: TrainTask, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, model_dir: str, *,
          strategy: Optional[tf.distribute.Strategy] = None, summary_dir: Optional[str] = None,
          description: str = "training") -> Dict[str, float]:
    """Train ``task`` on ``(x, y)`` for ``cfg.steps`` global steps; resumable.

    Checkpoints go to ``model_dir`` (created if needed).  Returns the metrics
    of the last step (empty if the run had already finished).
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(f"batch size {cfg.batch_size} does not split over {replicas} replicas")
    with strategy.scope():
        task.build()
        optimizer = make_optimizer(cfg)
        variables = task.trainable_variables
        optimizer.build(variables)
    ckpt = tf.train.Checkpoint(optimizer=optimizer, **task.checkpoint_objects())
    tf.io.gfile.makedirs(model_dir)
    manager = tf.train.CheckpointManager(ckpt, model_dir, max_to_keep=2)
    if manager.latest_checkpoint:
        ckpt.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("%s: resumed from %s", description, manager.latest_checkpoint)
    start = int(optimizer.iterations.numpy())
    if start >= cfg.steps:
        return {}

    ds = data_lib.make_tf_dataset(x, y, cfg.batch_size, training=True, augment=cfg.augment,
                                  flip=cfg.flip, seed=cfg.seed, drop_remainder=True, repeat=True)
    ds = ds.skip(start)
    iterator = iter(strategy.experimental_distribute_dataset(ds))
    total = float(cfg.steps)

    def replica_step(images, labels):
        ctx = tf.distribute.get_replica_context()
        step = optimizer.iterations
        progress = tf.minimum(tf.cast(step, tf.float32) / total, 1.0)
        seed = tf.stack([tf.cast(cfg.seed, tf.int64) * 1000003 + tf.cast(ctx.replica_id_in_sync_group, tf.int64),
                         tf.cast(step, tf.int64)])
        seed = tf.cast(seed % (2 ** 31 - 1), tf.int32)
        with tf.GradientTape() as tape:
            loss, metrics = task.loss(images, labels, progress=progress, seed=seed,
                                      global_batch_size=cfg.batch_size, num_replicas=replicas)
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                 for g in tape.gradient(loss, variables)]
        optimizer.apply_gradients(zip(grads, variables))
        return {"loss": loss, **metrics}

    # XLA compiles the replica step; the input pipeline stays outside it.
    compiled_step = tf.function(replica_step, jit_compile=True) if cfg.jit_compile else replica_step

    @tf.function
    def train_step(it):
        images, labels = next(it)
        per_replica = strategy.run(compiled_step, args=(images, labels))
        return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    writer = tf.summary.create_file_writer(summary_dir) if summary_dir else None
    progbar = keras.utils.Progbar(cfg.steps, verbose=1 if cfg.verbose else 0, unit_name="step")
    if start:
        progbar.update(start)
    last_saved = start
    metrics: Dict[str, float] = {}
    t0, n0 = time.time(), start
    for step in range(start + 1, cfg.steps + 1):
        out = train_step(iterator)
        metrics = {k: float(v) for k, v in out.items()}
        if not math.isfinite(metrics["loss"]):
            raise _diverged(description, f"loss became {metrics['loss']}", step, last_saved, model_dir)
        if step % cfg.log_every == 0 or step == cfg.steps:
            elapsed = time.time() - t0
            metrics["examples_per_second"] = (step - n0) * cfg.batch_size / max(elapsed, 1e-9)
            t0, n0 = time.time(), step
            if writer:
                with writer.as_default(step=step):
                    for k, v in metrics.items():
                        tf.summary.scalar(k, v)
                    tf.summary.scalar("learning_rate", current_lr(optimizer))
                    for k, v in task.summaries(min(step / total, 1.0)).items():
                        tf.summary.scalar(k, v)
                writer.flush()
            progbar.update(step, [(k, metrics[k]) for k in ("loss", "accuracy") if k in metrics])
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            if not bool(all_finite(variables)):
                raise _diverged(description, "weights became NaN or infinite", step, last_saved, model_dir)
            manager.save(checkpoint_number=step)
            last_saved = step
    if writer:
        writer.close()
    return metrics


@tf.function
def all_finite(variables) -> tf.Tensor:
    return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in variables])


def _diverged(description, what, step, last_saved, model_dir) -> TrainingDivergedError:
    kept = (f"the last good checkpoint (step {last_saved}) in {model_dir} is kept"
            if last_saved else f"no checkpoint had been written to {model_dir} yet")
    return TrainingDivergedError(
        f"{description}: {what} at step {step}; stopped. {kept[0].upper() + kept[1:]}; lower "
        f"--learning_rate or check the data, then run again (training resumes from the last checkpoint).")


def restore_latest(model_dir: str, **objects) -> Optional[str]:
    """Restore ``objects`` (e.g. ``model=...``) from the last checkpoint in
    ``model_dir`` (optimizer state is not needed for inference)."""
    latest = tf.train.latest_checkpoint(model_dir)
    if latest is None:
        return None
    tf.train.Checkpoint(**objects).restore(latest).expect_partial()
    return latest
