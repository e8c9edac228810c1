"""Short stand-alone training of candidates, cached: the ground truth of a
fidelity study and its SGD-for-k-steps baselines.

A job trains one architecture from scratch (SGD, Nesterov momentum, cosine
decay of the learning rate to zero over the job's steps: decay to zero makes
two seeds of one architecture agree far better than a constant rate) through
the package's one training loop, then measures validation and test accuracy.
Every finished job is a JSON file in the cache directory named by the hash of
everything that determines its result (the architecture, the data, the seed
and the training settings), so a rerun, a grown study or an added method
trains nothing twice; a job killed mid-way resumes from its checkpoint.

Batch normalization of a short run: Keras's default momentum 0.99 averages
over ~100 steps, so after a few hundred steps the moving statistics still
remember initialization and test accuracy sits near chance.  The momentum is
chosen from the step count (``bn_momentum_for_steps``): the moving averages
cover about the last tenth of the run, where the decayed learning rate has
nearly stopped the weights.
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
from oneshot_tf.retrain import StandaloneTask, evaluate_accuracy
from oneshot_tf.search_space import StandaloneOptions, canonical_json
from oneshot_tf.training import TrainConfig, train

#: Model construction takes the global Keras seed; jobs run in threads build
#: their models one at a time under this lock, each after seeding, so a job's
#: initialization depends only on its own seed.
_BUILD_LOCK = threading.Lock()


def bn_momentum_for_steps(steps: int) -> float:
    """BN momentum whose moving averages span about the last tenth of a run
    of ``steps`` steps: ``1 - clip(10 / steps, 0.01, 0.5)`` (100 steps: 0.9;
    1,000 and more: 0.99; 20 or fewer: 0.5)."""
    return float(1.0 - min(0.5, max(0.01, 10.0 / max(int(steps), 1))))


@dataclasses.dataclass(frozen=True)
class TruthTraining:
    """How a candidate is trained stand-alone in a study (every job of one
    budget shares these; ``bn_momentum`` 0 means ``bn_momentum_for_steps``)."""

    batch_size: int = 64
    learning_rate: float = 0.1
    weight_decay: float = 1e-4
    bn_momentum: float = 0.0
    augment: bool = True

    def momentum(self, steps: int) -> float:
        return self.bn_momentum or bn_momentum_for_steps(steps)

    def key(self, steps: int) -> Dict[str, Any]:
        """Everything of the training that determines a job's result."""
        return {"batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "weight_decay": self.weight_decay, "bn_momentum": self.momentum(steps),
                "augment": self.augment, "steps": int(steps), "optimizer": "sgd-nesterov-0.9",
                "lr_schedule": "cosine-to-0"}


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


def build_seeded(space, arch, seed: int, *, input_shape, num_classes: int,
                 options: StandaloneOptions) -> keras.Model:
    """``space.build_model(arch, ...)`` initialized from ``seed`` alone (safe
    to call from several threads)."""
    with _BUILD_LOCK:
        keras.utils.set_random_seed(int(seed))
        return space.build_model(arch, input_shape=input_shape, num_classes=num_classes, options=options)


def train_candidate(space, arch, dataset, *, steps: int, seed: int, training: TruthTraining, work_dir: str,
                    checkpoint_every: int = 10 ** 9) -> Dict[str, Any]:
    """Train ``arch`` stand-alone for ``steps`` steps from the initialization
    and data order of ``seed``; return its accuracies and cost.

    Checkpoints go to ``work_dir`` (a killed job resumes there; the caller
    removes it once the result is cached).  The result holds
    ``validation_accuracy``, ``test_accuracy``, ``train_accuracy_last_step``,
    ``params``, ``bn_momentum`` and ``seconds`` (build, trace, training and
    evaluation)."""
    mean, std = dataset.channel_stats()
    options = StandaloneOptions(mean=mean, std=std, bn_momentum=training.momentum(steps))
    t0 = time.time()
    task = StandaloneTask(lambda: build_seeded(space, arch, seed, input_shape=dataset.image_shape,
                                               num_classes=dataset.num_classes, options=options),
                          weight_decay=training.weight_decay)
    cfg = TrainConfig(steps=int(steps), batch_size=training.batch_size, learning_rate=training.learning_rate,
                      lr_schedule="cosine", augment=training.augment, flip=dataset.natural_images,
                      seed=int(seed), checkpoint_every=max(1, int(checkpoint_every)), log_every=int(steps),
                      verbose=False)
    last = train(task, dataset.x_train, dataset.y_train, cfg, work_dir, description=f"stand-alone job {work_dir}")
    # (a job whose run had finished before a kill, uncached, gets ``last == {}``
    # and its final weights restored by ``train``)
    result = {
        "validation_accuracy": evaluate_accuracy(task.model, dataset.x_val, dataset.y_val),
        "test_accuracy": evaluate_accuracy(task.model, dataset.x_test, dataset.y_test),
        "train_accuracy_last_step": last.get("accuracy"),
        "params": int(task.model.count_params()),
        "bn_momentum": options.bn_momentum,
        "seconds": round(time.time() - t0, 2),
    }
    if not all(np.isfinite(result[k]) for k in ("validation_accuracy", "test_accuracy")):
        raise RuntimeError(f"stand-alone job {work_dir}: accuracy is not finite")
    return result
