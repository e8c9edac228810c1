"""``SmashProxy``: the SMASH network and its HyperNet trained on a fresh
random architecture every step through the package's one training loop;
a candidate's score is its validation accuracy with generated weights (the
SMASH score).

An architecture reaches the compiled step as tensors: the encoding c and the
padded structure of ``network.network_structure`` (``encode``); one trace
serves every architecture in training and in scoring.  Training draws the
step's architecture on the host (``step_inputs``, seeded by the step, so a
resumed run redraws the same ones).  The loss is the cross entropy plus L2
weight decay on the freely learned weights (not the HyperNet's, as in the
reference code).  BN uses batch statistics per group of ``group_size``
examples in training (accumulating running statistics as it goes); a score
normalizes as ``score_bn`` says (``network.BN_MODES``: batch statistics per
group, the running statistics, or statistics recomputed per candidate on
``calibration_images``, a fixed draw of training images).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from hypernets.smash.hypernet import HyperNet, weight_matrix
from hypernets.smash.network import BN_MODES, SmashNetwork, network_structure
from hypernets.smash.space import MemoryBankSpace
from oneshot_tf.layers import Standardize
from oneshot_tf.proxy import PerCandidateProxy, map_candidates


class SmashModel(keras.Model):
    """Standardize, HyperNet and SMASH network: ``call(inputs, num_ghost)``
    with ``inputs`` holding ``images`` and one architecture's encoding."""

    def __init__(self, space: MemoryBankSpace, *, input_shape, num_classes: int, mean, std, bn_epsilon: float,
                 bn_momentum: float, growth: int, block_layers: Sequence[int], static_shapes: bool = False,
                 **kwargs):
        super().__init__(name=kwargs.pop("name", "smash"), **kwargs)
        self.space = space
        self.standardize = Standardize(mean, std, name="standardize")
        self.hypernet = HyperNet(space.bottleneck * space.depth_compression * space.base ** 2, growth=growth,
                                 block_layers=block_layers, name="hypernet")
        self.network = SmashNetwork(space, image_channels=int(input_shape[-1]), num_classes=num_classes,
                                    bn_epsilon=bn_epsilon, bn_momentum=bn_momentum, static_shapes=static_shapes,
                                    name="network")

    def weights_matrix(self, c):
        """The generated 1x1 weights of the architecture with encoding ``c`` ``[H, W, C]``."""
        out = self.hypernet(c[None])[0]
        return weight_matrix(out, self.space.read_unit, self.space.bottleneck * self.space.base)

    def call(self, inputs, num_ghost: int = 1, bn: str = "batch", calibration: int = 0, update_stats: bool = False):
        enc = {k: v for k, v in inputs.items() if k not in ("images", "c")}
        x = self.standardize(inputs["images"])
        return self.network(x, enc, self.weights_matrix(inputs["c"]), num_ghost=num_ghost, bn=bn,
                            calibration=calibration, update_stats=update_stats)


class SmashProxy(PerCandidateProxy):
    def __init__(self, space: MemoryBankSpace, *, input_shape: Sequence[int], num_classes: int,
                 mean: Sequence[float] = None, std: Sequence[float] = None, group_size: int = 32,
                 weight_decay: float = 1e-4, growth: int = 10, block_layers: Sequence[int] = (8, 10, 4),
                 bn_epsilon: float = 1e-3, score_bn: str = "batch", running_momentum: float = 0.9,
                 calibration_images: Optional[np.ndarray] = None, static_shapes: bool = False):
        if not isinstance(space, MemoryBankSpace):
            raise ValueError(f"SMASH searches a memory-bank space, got {space.name or type(space).__name__}")
        for name, value in [("group_size", group_size), ("growth", growth)]:
            if int(value) < 1:
                raise ValueError(f"--{name} must be positive, got {value}")
        if weight_decay < 0:
            raise ValueError(f"--weight_decay must be >= 0, got {weight_decay}")
        if score_bn not in BN_MODES:
            raise ValueError(f"unknown --score_bn={score_bn!r}; choose from {', '.join(BN_MODES)}")
        if not 0 <= running_momentum < 1:
            raise ValueError(f"--running_momentum must be in [0, 1), got {running_momentum}")
        if score_bn == "recomputed":
            if calibration_images is None or len(calibration_images) < 2:
                raise ValueError("--score_bn=recomputed needs calibration images (--recompute_examples >= 2 "
                                 "training images)")
            calibration_images = np.asarray(calibration_images, np.uint8)
            if calibration_images.shape[1:] != tuple(int(d) for d in input_shape):
                raise ValueError(f"calibration images of shape {calibration_images.shape[1:]} for input shape "
                                 f"{tuple(input_shape)}")
        else:
            calibration_images = None
        self.space = space
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        c = self.input_shape[-1]
        self.mean = [0.0] * c if mean is None else [float(m) for m in mean]
        self.std = [255.0] * c if std is None else [float(s) for s in std]
        self._group_size = int(group_size)
        self.weight_decay = float(weight_decay)
        self.growth = int(growth)
        self.block_layers = tuple(int(n) for n in block_layers)
        self.bn_epsilon = float(bn_epsilon)
        self.score_bn = score_bn
        self.running_momentum = float(running_momentum)
        self.calibration_images = calibration_images
        self.static_shapes = bool(static_shapes)
        self.model = None

    @property
    def group_size(self) -> int:
        return self._group_size

    def get_config(self) -> Dict[str, Any]:
        return {"group_size": self._group_size, "weight_decay": self.weight_decay, "growth": self.growth,
                "block_layers": list(self.block_layers), "bn_epsilon": self.bn_epsilon, "score_bn": self.score_bn,
                "running_momentum": self.running_momentum,
                "recompute_examples": 0 if self.calibration_images is None else len(self.calibration_images)}

    def validate_batch(self, batch_size: int, num_replicas: int) -> None:
        unit = num_replicas * self._group_size
        if batch_size % unit:
            raise ValueError(f"--batch_size={batch_size} must be a multiple of replicas ({num_replicas}) x "
                             f"--group_size ({self._group_size}): every replica trains on whole BN groups")

    def build(self) -> None:
        if self.model is not None:
            return
        self.model = SmashModel(self.space, input_shape=self.input_shape, num_classes=self.num_classes,
                                mean=self.mean, std=self.std, bn_epsilon=self.bn_epsilon,
                                bn_momentum=self.running_momentum, growth=self.growth,
                                block_layers=self.block_layers, static_shapes=self.static_shapes)
        enc = self.encode(self.space.sample(np.random.default_rng(0)))
        self.model({"images": np.zeros((self._group_size,) + self.input_shape, np.uint8), **enc})

    def encode(self, arch) -> Dict[str, np.ndarray]:
        """c (appendix B) and the padded structure of ``arch``."""
        return {"c": self.space.encode(arch)["c"], **network_structure(self.space, arch)}

    # -- training ----------------------------------------------------------
    def step_inputs(self, step: int, *, seed, progress: float, global_batch_size: int):
        """The step's architecture, drawn with the step's seed (``[1, ...]``)."""
        del step, progress, global_batch_size
        rng = np.random.default_rng([int(s) & 0xFFFFFFFF for s in np.asarray(seed).ravel()])
        return self._stack([self.encode(self.space.sample(rng))])

    def _free_kernels(self):
        net = self.model.network
        return [net.stem, net.dense] + list(net.transitions) + [w for slots in net.slots for w in slots]

    def loss(self, images, labels, *, progress, seed, global_batch_size, num_replicas, replica_id=0,
             step_inputs=None):
        del progress, seed, replica_id
        if step_inputs is None:
            raise ValueError("SMASH trains on the architecture of step_inputs; none was given")
        n = int(images.shape[0])
        if n % self._group_size:
            raise ValueError(f"a replica batch of {n} does not split into groups of {self._group_size}")
        enc = {k: v[0] for k, v in step_inputs.items()}
        logits = tf.cast(self.model({"images": images, **enc}, num_ghost=n // self._group_size, update_stats=True),
                         tf.float32)
        labels = tf.cast(labels, tf.int32)
        ce = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        ce = ce / global_batch_size
        l2 = tf.add_n([tf.reduce_sum(tf.square(w)) for w in self._free_kernels()]) * (0.5 * self.weight_decay)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        return ce + l2 / num_replicas, {"cross_entropy": ce, "accuracy": correct / global_batch_size}

    # -- scoring -----------------------------------------------------------
    def _score_logits(self, images, enc, num_ghost: int):
        """One candidate's float32 logits of ``images``, normalized as
        ``score_bn`` says (the calibration images go first and are dropped)."""
        if self.score_bn == "recomputed":
            cal = tf.constant(self.calibration_images)
            n = int(cal.shape[0])
            out = self.model({"images": tf.concat([cal, tf.cast(images, cal.dtype)], 0), **enc}, bn="recomputed",
                             calibration=n)
            return tf.cast(out[n:], tf.float32)
        return tf.cast(self.model({"images": images, **enc}, num_ghost=num_ghost, bn=self.score_bn), tf.float32)

    def per_candidate(self, images, encodings, num_ghost: int, shared_images: bool):
        """The HyperNet and the network once per candidate, in an in-graph loop
        (each candidate runs at its own widths)."""
        k = int(encodings["c"].shape[0])

        def one(i):
            enc = {name: v[i] for name, v in encodings.items()}
            return self._score_logits(images if shared_images else images[i], enc, num_ghost)

        return map_candidates(one, k)
