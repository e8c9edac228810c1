"""Stand-alone retraining of winners, evaluation and export (any search space)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from oneshot_tf import distribute, io_utils, plots
from oneshot_tf.export import export_saved_model
from oneshot_tf.search_space import StandaloneOptions
from oneshot_tf.training import TrainConfig, TrainTask, train


#: Model construction takes the global Keras seed (Keras draws an unseeded
#: initializer's seed from Python's ``random`` when the layer is made); builds
#: happen one at a time under this lock, each right after seeding, so a model's
#: initialization depends only on its own seed, not on what the process built
#: before it (a resumed retraining initializes its next winner as an
#: uninterrupted one does; threads of a fidelity study do not interleave).
_BUILD_LOCK = threading.Lock()


def build_seeded(space, arch, seed: int, *, input_shape, num_classes: int,
                 options: StandaloneOptions) -> keras.Model:
    """``space.build_model(arch, ...)`` initialized from ``seed`` alone (safe
    to call from several threads)."""
    with _BUILD_LOCK:
        keras.utils.set_random_seed(int(seed))
        return space.build_model(arch, input_shape=input_shape, num_classes=num_classes, options=options)


class StandaloneTask(TrainTask):
    """A stand-alone Keras model trained with cross-entropy + L2 on kernels."""

    def __init__(self, build_fn, weight_decay: float = 1e-4):
        self._build_fn = build_fn
        self.weight_decay = float(weight_decay)
        self.model: Optional[keras.Model] = None

    def build(self):
        if self.model is None:
            self.model = self._build_fn()
            self._kernels = [w for w in self.model.trainable_weights
                             if "kernel" in w.path.split("/")[-1]]

    def loss(self, images, labels, *, progress, seed, global_batch_size, num_replicas, replica_id=0):
        del progress, seed, replica_id
        logits = tf.cast(self.model(images, training=True), tf.float32)
        labels = tf.cast(labels, tf.int32)
        ce = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        ce = ce / global_batch_size
        l2 = self.weight_decay * tf.add_n([tf.reduce_sum(tf.square(k)) for k in self._kernels]) / num_replicas
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        return ce + l2, {"cross_entropy": ce, "l2": l2, "accuracy": correct / global_batch_size}


def make_predict(model: keras.Model):
    """The compiled inference function ``evaluate_accuracy`` uses (class
    ids of a batch); made once, it serves every call of the same batch size."""
    return tf.function(lambda images: tf.argmax(model(images, training=False), -1))


def evaluate_accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray, batch_size: int = 256,
                      predict=None) -> float:
    """Top-1 accuracy of ``model`` (inference mode) on every example of ``(x, y)``.

    The last batch is padded to ``batch_size`` so one trace serves all
    (``predict``: a ``make_predict(model)`` to reuse; default a new one)."""
    batch_size = min(batch_size, len(x))
    predict = predict or make_predict(model)
    correct = 0
    for i in range(0, len(x), batch_size):
        chunk = x[i:i + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        pred = predict(tf.constant(chunk)).numpy()[:n]
        correct += int(np.sum(pred == y[i:i + n]))
    return correct / len(x)


def _train_standalone(space, arch, dataset, out_dir: str, cfg: TrainConfig, *, options, weight_decay, strategy,
                      write: bool, description: str):
    """``space.build_model(arch)``, initialized from ``cfg.seed`` alone
    (``build_seeded``), trained by ``cfg`` with checkpoints in
    ``out_dir/ckpt`` (resumable); returns the model and the last step's
    metrics."""
    if options is None:
        mean, std = dataset.channel_stats()
        options = StandaloneOptions(mean=mean, std=std)
    shape, classes = dataset.image_shape, dataset.num_classes

    def build():
        return build_seeded(space, arch, cfg.seed, input_shape=shape, num_classes=classes, options=options)

    task = StandaloneTask(build, weight_decay=weight_decay)
    last = train(task, dataset.x_train, dataset.y_train, cfg, io_utils.join(out_dir, "ckpt"),
                 strategy=strategy, summary_dir=io_utils.join(out_dir, "train") if write else None,
                 description=description)
    # The last step's metrics outlive the process: a run stopped after
    # training finished (its last checkpoint written) resumes with them.
    last_path = io_utils.join(out_dir, "ckpt", "last_step.json")
    if last and write:
        io_utils.write_json(last_path, last)
    elif not last and tf.io.gfile.exists(last_path):
        last = io_utils.read_json(last_path)
    return task.model, last


def brief_train(space, arch, dataset, out_dir: str, cfg: TrainConfig, *,
                options: Optional[StandaloneOptions] = None, weight_decay: float = 1e-4, strategy=None,
                write: bool = True) -> Dict[str, Any]:
    """The short stand-alone run of GHN Top-Best (``--best_of``): ``arch``
    at the searched width trained by ``cfg`` (resumable in ``out_dir/ckpt``),
    then its validation accuracy.  Leaves ``out_dir/brief.json``; a finished
    directory returns it without training."""
    path = io_utils.join(out_dir, "brief.json")
    if tf.io.gfile.exists(path):
        return io_utils.read_json(path)
    t0 = time.time()
    model, last = _train_standalone(space, arch, dataset, out_dir, cfg, options=options,
                                    weight_decay=weight_decay, strategy=strategy, write=write,
                                    description=f"brief training {out_dir}")
    result = {"id": space.arch_id(arch), "validation_accuracy": evaluate_accuracy(model, dataset.x_val,
                                                                                  dataset.y_val),
              "train_accuracy_last_step": last.get("accuracy"), "train_steps": cfg.steps,
              "train_seconds": round(time.time() - t0, 1)}
    if write:
        io_utils.write_json(path, result)
    return result


def saved_model_dir(out_dir: str) -> str:
    """Where ``retrain_and_export`` exports the model trained in ``out_dir``."""
    return io_utils.join(out_dir, "saved_model")


def _release_if_other(space, arch, out_dir: str, strategy, write: bool) -> None:
    """Empty ``out_dir`` when it holds another architecture's run (e.g.
    ``winners/1`` after a grown ``--num_candidates`` changed the winners), so
    neither its checkpoint nor its metrics pass for ``arch``'s."""
    path = io_utils.join(out_dir, "architecture.json")
    other = tf.io.gfile.exists(path) and json.loads(json.dumps(space.to_json(arch))) != io_utils.read_json(path)
    if other:
        logging.warning("%s holds another architecture's run than %s; it is replaced", out_dir,
                        space.arch_id(arch))
    if strategy is not None:
        distribute.barrier(strategy)  # every worker has looked before the chief removes
    if other and write:
        io_utils.remove(out_dir)
    if strategy is not None:
        distribute.barrier(strategy)


def retrain_and_export(space, arch, dataset, out_dir: str, cfg: TrainConfig, *, width_multiplier: float = 1.0,
                       options: Optional[StandaloneOptions] = None, weight_decay: float = 1e-4, strategy=None,
                       extra_metrics: Optional[Dict[str, Any]] = None, write: bool = True) -> Dict[str, Any]:
    """Train ``arch`` from scratch, evaluate on the test split, export.

    The model is ``space.widened(width_multiplier).build_model(arch, ...)``
    with ``options`` (default: ``StandaloneOptions`` with the dataset's
    channel statistics).

    Leaves in ``out_dir``: ``architecture.json``, ``ckpt/`` (resumable),
    ``metrics.json``, ``saved_model/`` and, for a space that describes its
    architectures as graphs, ``architecture.png`` (the drawing of
    ``space.graph``).  A finished directory (metrics and
    SavedModel present) is left as it is and its metrics returned.  With
    ``write=False`` (a non-chief worker) it trains in step with the others
    but writes nothing in ``out_dir``.
    """
    metrics_path = io_utils.join(out_dir, "metrics.json")
    export_path = saved_model_dir(out_dir)
    _release_if_other(space, arch, out_dir, strategy, write)
    if tf.io.gfile.exists(metrics_path) and tf.io.gfile.exists(export_path):
        return io_utils.read_json(metrics_path)
    if write:
        io_utils.write_json(io_utils.join(out_dir, "architecture.json"), space.to_json(arch))
    target = space.widened(width_multiplier)
    shape, classes = dataset.image_shape, dataset.num_classes
    t0 = time.time()
    model, last = _train_standalone(target, arch, dataset, out_dir, cfg, options=options,
                                    weight_decay=weight_decay, strategy=strategy, write=write,
                                    description=f"retrain {out_dir}")
    train_seconds = time.time() - t0
    metrics = {
        "test_accuracy": evaluate_accuracy(model, dataset.x_test, dataset.y_test),
        "validation_accuracy": evaluate_accuracy(model, dataset.x_val, dataset.y_val),
        "train_accuracy_last_step": last.get("accuracy"),
        "params": int(model.count_params()),
        "flops": int(target.count_flops(arch, input_shape=shape, num_classes=classes)),
        "width": target.width(), "width_multiplier": width_multiplier,
        "train_steps": cfg.steps, "train_seconds": round(train_seconds, 1),
        **(extra_metrics or {}),
    }
    if not write:
        return metrics
    drawing = plots.space_architecture_png(target, arch, title=f"{space.arch_id(arch)}: test accuracy "
                                                              f"{metrics['test_accuracy']:.4f}")
    if drawing is not None:
        io_utils.atomic_write_bytes(io_utils.join(out_dir, "architecture.png"), drawing)
    export_saved_model(model, export_path,
                       source_image_shape=getattr(dataset, "source_image_shape", None))
    io_utils.write_json(metrics_path, metrics)
    logging.info("%s: test accuracy %.4f", out_dir, metrics["test_accuracy"])
    return metrics
