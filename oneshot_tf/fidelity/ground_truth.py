"""Short stand-alone training of candidates, cached: the ground truth of a
fidelity study and its SGD-for-k-steps baselines.

A run trains one architecture from scratch (SGD, Nesterov momentum, cosine
decay of the learning rate to zero over the run's steps: decay to zero makes
two seeds of one architecture agree far better than a constant rate) through
the package's one training loop, then measures validation and test accuracy.
Every finished run is a JSON file in the cache directory named by the hash of
everything that determines its result (the architecture, the data, the seed
and the training settings), so a rerun, a grown study or an added method
trains nothing twice; a run killed mid-way resumes from its checkpoint.

Batch normalization of a short run: with Keras's default momentum 0.99 the
moving statistics of a few hundred steps still remember initialization and
test accuracy sits near chance.  After training, every BN layer's statistics
are recomputed with the final weights on a fixed draw of training images
(``recompute_batch_norm``, "precise BN"), so a run of any length is evaluated
with the statistics of its own final network.

All runs of one architecture (its seeds, the SGD baselines' step counts) go
through one ``CandidateTrainer``: the model is built once and re-initialized
per seed, and the training step, the BN pass and the evaluation are traced
once (``train(..., reuse_compiled=True)``); on a CPU the traces cost more
than a short run's steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from typing import Any, Dict, Optional

import keras
import numpy as np
import tensorflow as tf

from oneshot_tf import io_utils
from oneshot_tf.retrain import StandaloneTask, build_seeded, evaluate_accuracy, make_predict
from oneshot_tf.search_space import StandaloneOptions, canonical_json
from oneshot_tf.training import TrainConfig, train

@dataclasses.dataclass(frozen=True)
class TruthTraining:
    """How a candidate is trained stand-alone in a study (every run shares
    these; the step count and seed are the run's).  ``bn_momentum`` is the
    BN momentum during training; ``bn_examples`` training images (a fixed
    draw) recompute the statistics after it (0: no recomputation, the
    moving averages as trained)."""

    batch_size: int = 64
    learning_rate: float = 0.1
    weight_decay: float = 1e-4
    bn_momentum: float = 0.9
    bn_examples: int = 1024
    augment: bool = True

    def key(self, steps: int) -> Dict[str, Any]:
        """Everything of the training that determines a run's result."""
        return {"batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "weight_decay": self.weight_decay, "bn_momentum": self.bn_momentum,
                "bn_recomputed_on": self.bn_examples, "augment": self.augment, "steps": int(steps),
                "optimizer": "sgd-nesterov-0.9", "lr_schedule": "cosine-to-0"}


def cache_key(parts: Dict[str, Any]) -> str:
    """The file name (32 hex digits of SHA-1 of the canonical JSON) of a cached result."""
    return hashlib.sha1(canonical_json(parts).encode()).hexdigest()[:32]


class ResultCache:
    """One JSON file per finished job in ``directory``, written atomically.

    ``get(parts)`` returns the stored record of the job described by the
    dict ``parts`` (or ``None``); ``put(parts, record)`` stores it with
    ``parts`` beside it, so every file says what it is."""

    def __init__(self, directory: str):
        self.directory = directory
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def path(self, parts: Dict[str, Any]) -> str:
        return io_utils.join(self.directory, cache_key(parts) + ".json")

    def get(self, parts: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        path = self.path(parts)
        if not tf.io.gfile.exists(path):
            with self._lock:
                self.misses += 1
            return None
        stored = io_utils.read_json(path)
        if stored.get("job") != parts:  # (a 128-bit collision, or a hand-edited file)
            raise RuntimeError(f"{path} holds another job's result; remove it")
        with self._lock:
            self.hits += 1
        return stored["result"]

    def put(self, parts: Dict[str, Any], result: Dict[str, Any]) -> None:
        io_utils.write_json(self.path(parts), {"job": parts, "result": result})


def _batch_norms(layer):
    for sub in getattr(layer, "layers", ()):
        if isinstance(sub, keras.layers.BatchNormalization):
            yield sub
        else:
            yield from _batch_norms(sub)


def recompute_batch_norm(model: keras.Model, images: np.ndarray, *, cache: Optional[dict] = None) -> int:
    """Set every BatchNormalization layer's moving mean and variance to the
    statistics of ``images`` (one batch, training-mode forward pass) under
    the model's current weights; returns the number of BN layers.

    The pass runs with each layer's momentum at 0, so a moving average is
    replaced by the batch's statistics; the layers' momenta are restored.
    ``cache`` (a dict) keeps the compiled pass for later calls on the same
    model and batch shape."""
    bns = list(_batch_norms(model))
    if not bns:
        return 0
    fn = (cache or {}).get("bn_pass")
    if fn is None:
        momenta = [layer.momentum for layer in bns]
        for layer in bns:
            layer.momentum = 0.0
        try:  # the momentum is read when the pass is traced
            fn = tf.function(lambda x: model(x, training=True)).get_concrete_function(
                tf.TensorSpec(images.shape, tf.as_dtype(images.dtype)))
        finally:
            for layer, m in zip(bns, momenta):
                layer.momentum = m
        if cache is not None:
            cache["bn_pass"] = fn
    fn(tf.constant(images))
    return len(bns)


class CandidateTrainer:
    """Stand-alone runs of one architecture: any seed, any step count.

    The model is built once; each run re-initializes its weights from the
    run's seed (a model built from that seed alone), trains with
    ``reuse_compiled`` and recomputes BN statistics, so every run after the
    first reuses the first one's traces."""

    def __init__(self, space, arch, dataset, training: TruthTraining):
        self.space, self.arch, self.dataset, self.training = space, arch, dataset, training
        mean, std = dataset.channel_stats()
        self.options = StandaloneOptions(mean=mean, std=std, bn_momentum=training.bn_momentum)
        self.model: Optional[keras.Model] = None
        self.task = StandaloneTask(lambda: self.model, weight_decay=training.weight_decay)
        self._cache: Dict[str, Any] = {}
        n = min(training.bn_examples, len(dataset.x_train))
        pick = np.random.default_rng([n, 15]).choice(len(dataset.x_train), n, replace=False) if n else []
        self._bn_images = dataset.x_train[np.sort(pick)] if n else None

    def run(self, *, steps: int, seed: int, work_dir: str, checkpoint_every: int = 10 ** 9) -> Dict[str, Any]:
        """Train from the initialization and data order of ``seed`` for
        ``steps`` steps; checkpoints go to ``work_dir`` (a killed run resumes
        there; the caller removes it once the result is cached).  Returns
        ``validation_accuracy``, ``test_accuracy``, ``train_accuracy_last_step``,
        ``params`` and ``seconds`` (initialization, training, BN and evaluation)."""
        t0 = time.time()
        fresh = build_seeded(self.space, self.arch, seed, input_shape=self.dataset.image_shape,
                             num_classes=self.dataset.num_classes, options=self.options)
        if self.model is None:
            self.model = fresh
        else:
            self.model.set_weights(fresh.get_weights())
        cfg = TrainConfig(steps=int(steps), batch_size=self.training.batch_size,
                          learning_rate=self.training.learning_rate, lr_schedule="cosine",
                          augment=self.training.augment, flip=self.dataset.natural_images, seed=int(seed),
                          checkpoint_every=max(1, int(checkpoint_every)), log_every=int(steps), verbose=False)
        # (a run that had finished before a kill, uncached, returns {} with its final weights restored)
        last = train(self.task, self.dataset.x_train, self.dataset.y_train, cfg, work_dir,
                     description=f"stand-alone run {work_dir}", reuse_compiled=True)
        if self._bn_images is not None:
            recompute_batch_norm(self.model, self._bn_images, cache=self._cache)
        predict = self._cache.setdefault("predict", make_predict(self.model))
        result = {
            "validation_accuracy": evaluate_accuracy(self.model, self.dataset.x_val, self.dataset.y_val,
                                                     predict=predict),
            "test_accuracy": evaluate_accuracy(self.model, self.dataset.x_test, self.dataset.y_test,
                                               predict=predict),
            "train_accuracy_last_step": last.get("accuracy"),
            "params": int(self.model.count_params()),
            "seconds": round(time.time() - t0, 2),
        }
        return result


def train_candidate(space, arch, dataset, *, steps: int, seed: int, training: TruthTraining, work_dir: str,
                    checkpoint_every: int = 10 ** 9) -> Dict[str, Any]:
    """One run of a new ``CandidateTrainer`` (see ``CandidateTrainer.run``)."""
    return CandidateTrainer(space, arch, dataset, training).run(steps=steps, seed=seed, work_dir=work_dir,
                                                                checkpoint_every=checkpoint_every)
