"""The one-shot proxy of Bender et al. (2018): scheduled path dropout, ghost
batch norm and masked L2 on top of ``OneShotModel``."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
import tensorflow as tf

from oneshot_tf.methods.oneshot.cell_space import CellSearchSpace
from oneshot_tf.methods.oneshot.oneshot_model import OneShotModel
from oneshot_tf.proxy import Proxy


def path_drop_probabilities(space: CellSearchSpace, progress, drop_rate: float):
    """Drop probabilities ``(inputs [num_blocks], ops scalar)`` at ``progress``.

    The schedule is linear from 0 at the start to ``r ** (1 / k)`` at the
    end, ``k`` the fan-in of the node the path enters: ``2 + i`` for the
    inputs of block ``i``, the number of ops for an op.
    """
    k_in, k_op = space.fan_in()
    progress = tf.cast(progress, tf.float32)
    p_in = progress * tf.constant(drop_rate ** (1.0 / k_in), tf.float32)
    p_op = progress * tf.constant(drop_rate ** (1.0 / k_op), tf.float32)
    return p_in, p_op


def sample_path_masks(space: CellSearchSpace, num_ghost: int, progress, drop_rate: float, seed, *,
                      replica_id=0, num_replicas: int = 1):
    """Path-dropout masks, one row per ghost batch (stateless RNG from ``seed``).

    Every path is kept independently with probability ``1 - p``; the same
    decision is used in every cell (the masks have no cell axis).  The masks
    are drawn for all ``num_ghost * num_replicas`` ghost batches of the global
    batch and replica ``replica_id`` takes its rows, so a run draws the same
    decisions for the same examples under any number of replicas.
    """
    p_in, p_op = path_drop_probabilities(space, progress, drop_rate)
    nb, mi, no = space.num_blocks, space.max_inputs, len(space.ops)
    total = num_ghost * num_replicas
    seed_in, seed_op = tf.unstack(tf.random.experimental.stateless_split(
        tf.convert_to_tensor(seed, tf.int32), 2))
    u_in = tf.random.stateless_uniform([total, nb, mi], seed=seed_in)
    u_op = tf.random.stateless_uniform([total, nb, no], seed=seed_op)
    if num_replicas > 1:
        first = tf.cast(replica_id, tf.int32) * num_ghost
        u_in = tf.slice(u_in, [first, 0, 0], [num_ghost, nb, mi])
        u_op = tf.slice(u_op, [first, 0, 0], [num_ghost, nb, no])
    input_mask = tf.cast(u_in >= p_in[None, :, None], tf.float32) * tf.constant(space.valid_input_mask())
    op_mask = tf.cast(u_op >= p_op, tf.float32)
    return input_mask, op_mask


#: Where the training step's path-dropout masks are drawn: ``graph`` (inside
#: the compiled step, stateless RNG) or ``host`` (the same draw on the host,
#: fed to the step as tensors through ``TrainTask.step_inputs``: the
#: mechanism a method that samples a new architecture per step uses).
MASK_SOURCES = ("graph", "host")

#: The KL score's references: ``dropout`` (the paper's nearly-all-on
#: architectures, path dropout at r = 1e-8) or ``all_on`` (every path on).
KL_REFERENCES = ("dropout", "all_on")


class OneShotProxy(Proxy):
    """Trains ``OneShotModel`` and scores candidates with their masks."""

    def __init__(self, space: CellSearchSpace, *, input_shape: Sequence[int], num_classes: int,
                 mean: Sequence[float] = None, std: Sequence[float] = None, ghost_batch_size: int = 32,
                 drop_rate: float = 0.1, weight_decay: float = 1e-4, skip_inactive: bool = True,
                 static_shapes: bool = False, bn_epsilon: float = 1e-3, kl_reference: str = "dropout",
                 reference_drop_rate: float = 1e-8, mask_source: str = "graph"):
        if not 0.0 < drop_rate < 1.0:
            raise ValueError(f"drop_rate r must be in (0, 1), got {drop_rate}")
        if kl_reference not in KL_REFERENCES:
            raise ValueError(f"unknown --kl_reference={kl_reference!r}; choose from {', '.join(KL_REFERENCES)}")
        if not 0.0 < reference_drop_rate < 1.0:
            raise ValueError(f"reference_drop_rate must be in (0, 1), got {reference_drop_rate}")
        if ghost_batch_size < 1:
            raise ValueError(f"ghost_batch_size must be positive, got {ghost_batch_size}")
        if mask_source not in MASK_SOURCES:
            raise ValueError(f"unknown mask_source {mask_source!r}; choose from {', '.join(MASK_SOURCES)}")
        self.space = space
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.mean, self.std = mean, std
        self.ghost_batch_size = int(ghost_batch_size)
        self.drop_rate = float(drop_rate)
        self.weight_decay = float(weight_decay)
        self.skip_inactive = bool(skip_inactive)
        self.static_shapes = bool(static_shapes)
        self.bn_epsilon = float(bn_epsilon)
        self.kl_reference = kl_reference
        self.reference_drop_rate = float(reference_drop_rate)
        self.mask_source = mask_source
        self.model = None

    @property
    def group_size(self) -> int:
        """Candidates are scored in ghost batches, as they were trained."""
        return self.ghost_batch_size

    def validate_batch(self, batch_size: int, num_replicas: int) -> None:
        if batch_size % (num_replicas * self.ghost_batch_size):
            raise ValueError(f"--batch_size={batch_size} must be a multiple of replicas ({num_replicas}) x "
                             f"--ghost_batch_size ({self.ghost_batch_size}): every replica trains on whole "
                             f"ghost batches")

    def get_config(self) -> Dict[str, Any]:
        """What the proxy computes (a model directory keeps it); how it
        computes it (``skip_inactive``, ``static_shapes``, ``mask_source``:
        the same results) is left out."""
        return {"ghost_batch_size": self.ghost_batch_size, "drop_rate": self.drop_rate,
                "weight_decay": self.weight_decay, "bn_epsilon": self.bn_epsilon,
                "kl_reference": self.kl_reference, "reference_drop_rate": self.reference_drop_rate}

    def build(self) -> None:
        if self.model is None:
            self.model = OneShotModel(self.space, input_shape=self.input_shape,
                                      num_classes=self.num_classes, mean=self.mean, std=self.std,
                                      bn_epsilon=self.bn_epsilon,
                                      skip_inactive=self.skip_inactive,
                                      static_shapes=self.static_shapes).build_weights()

    def num_ghost(self, batch_size: int) -> int:
        if batch_size % self.ghost_batch_size:
            raise ValueError(f"per-replica batch {batch_size} is not a multiple of the ghost batch "
                             f"size {self.ghost_batch_size}")
        return batch_size // self.ghost_batch_size

    def step_inputs(self, step: int, *, seed, progress: float, global_batch_size: int):
        """With ``mask_source="host"``: the step's path-dropout masks for every
        ghost batch of the global batch, drawn on the host by the same
        function and stateless seed as in the graph (so both sources train
        identically); each replica takes its rows in ``loss``."""
        if self.mask_source != "host":
            return None
        del step
        input_mask, op_mask = sample_path_masks(self.space, global_batch_size // self.ghost_batch_size,
                                                progress, self.drop_rate, seed)
        return {"input_mask": input_mask.numpy(), "op_mask": op_mask.numpy()}

    def loss(self, images, labels, *, progress, seed, global_batch_size, num_replicas, replica_id=0,
             step_inputs=None):
        g = self.num_ghost(int(images.shape[0]))
        if step_inputs is not None:  # host-drawn masks of the global batch: this replica's rows
            first = tf.cast(replica_id, tf.int32) * g
            input_mask, op_mask = (tf.slice(step_inputs[k], [first, 0, 0], [g] + list(step_inputs[k].shape[1:]))
                                   for k in ("input_mask", "op_mask"))
        else:
            input_mask, op_mask = sample_path_masks(self.space, g, progress, self.drop_rate, seed,
                                                    replica_id=replica_id, num_replicas=num_replicas)
        logits = tf.cast(self.model({"images": images, "input_mask": input_mask, "op_mask": op_mask},
                                    training=True), tf.float32)
        labels = tf.cast(labels, tf.int32)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        ce = tf.reduce_sum(ce) / global_batch_size
        l2 = self.weight_decay * self.model.masked_l2(input_mask, op_mask) / num_replicas
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32))
        kept = (tf.reduce_sum(input_mask) + tf.reduce_sum(op_mask)) / (
            g * (float(self.space.valid_input_mask().sum()) + op_mask.shape[1] * op_mask.shape[2]))
        return ce + l2, {"cross_entropy": ce, "l2": l2, "accuracy": correct / global_batch_size,
                         "paths_kept": kept / num_replicas}

    # The loss climbs while the drop rate ramps up: the bar shows both.
    progress_bar_summaries = ("path_dropout/op",)

    def summaries(self, progress) -> Dict[str, float]:
        p_in, p_op = path_drop_probabilities(self.space, progress, self.drop_rate)
        out = {"path_dropout/op": float(p_op)}
        for i, p in enumerate(np.asarray(p_in)):
            out[f"path_dropout/input_block{i}"] = float(p)
        return out

    def candidate_logits(self, images, encodings: Mapping[str, tf.Tensor]):
        return self.model({"images": images, "input_mask": encodings["input_mask"],
                           "op_mask": encodings["op_mask"]}, training=False)

    def candidates_logits(self, images, encodings: Mapping[str, tf.Tensor], group_size: int):
        """Each candidate's masks shared by all ghost batches, so only its own
        inputs and ops run, one candidate after another in an in-graph loop
        (``OneShotModel.candidates_logits``; the stem runs once)."""
        return self.model.candidates_logits(images, encodings["input_mask"], encodings["op_mask"],
                                            num_ghost=int(images.shape[0]) // group_size)

    def reference_encodings(self, count: int, seed: int) -> List[Dict[str, np.ndarray]]:
        """``kl_reference="dropout"`` (the paper's, section 5: "we sampled a
        collection of architectures where almost all the operations in the
        one-shot model were enabled (base dropout rate r = 10^-8)"): one
        architecture per KL group, drawn as training draws a ghost batch's
        masks at the end of the schedule, each path dropped independently
        with probability ``reference_drop_rate ** (1 / k)`` (the same
        decisions in every cell), from a stateless seed of its own
        (``[seed, -1]``; training's steps use ``[seed, step >= 0]``).
        ``"all_on"``: the one-shot model with every path on, for every group."""
        if self.kl_reference == "all_on":
            return [self.space.encode(self.space.all_on())] * count
        input_mask, op_mask = sample_path_masks(self.space, count, 1.0, self.reference_drop_rate,
                                                [seed % (2 ** 31 - 1), -1])
        return [{"input_mask": i, "op_mask": o} for i, o in zip(input_mask.numpy(), op_mask.numpy())]
