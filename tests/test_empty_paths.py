"""A path (op or block input) that no ghost batch of a step keeps is skipped
outright: no layer runs on an empty batch (TensorFlow's depthwise filter
gradient of an empty batch is uninitialized memory on CPU, so such a path used
to get garbage updates), its weights get exactly zero gradient, and the step
changes them exactly as the optimizer does for a zero gradient.  On one device
and on a replica whose only ghost batch drops the path."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from oneshot_tf.methods.oneshot import proxy as oneshot_lib  # (the sampler the proxy calls)
from oneshot_tf.methods.oneshot.cell_space import CellSearchSpace
from oneshot_tf.methods.oneshot.proxy import OneShotProxy
from oneshot_tf.methods.oneshot import oneshot_model
from tests.test_oneshot_model import layers_by_name
from oneshot_tf.training import TrainConfig, make_optimizer
from tests.conftest import two_cpus

SPACE = CellSearchSpace(num_cells=1, num_stages=1, filters=4, num_blocks=2)
SHAPE = (8, 8, 3)
CLASSES = 5
GHOST = 4
NB, MI, NO = SPACE.num_blocks, SPACE.max_inputs, len(SPACE.ops)
WEIGHTED_OPS = [op for op in SPACE.ops if op.startswith(("sep", "conv"))]
MOMENTUM = 0.9


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.integers(0, 256, (n,) + SHAPE).astype(np.uint8)),
            tf.constant(rng.integers(0, CLASSES, n).astype(np.int32)))


def _all_on(num_ghost):
    return (np.tile(SPACE.valid_input_mask()[None], [num_ghost, 1, 1]).astype(np.float32),
            np.ones((num_ghost, NB, NO), np.float32))


def _dropping(num_ghost, block, op=None, inp=None, seed=0):
    """Random masks (each ghost batch its own) with ``op`` or input ``inp``
    of ``block`` dropped in every ghost batch."""
    rng = np.random.default_rng(seed)
    input_mask = (rng.uniform(size=(num_ghost, NB, MI)) < 0.7) * SPACE.valid_input_mask()[None]
    op_mask = rng.uniform(size=(num_ghost, NB, NO)) < 0.7
    if op is not None:
        op_mask[:, block, SPACE.ops.index(op)] = 0
    if inp is not None:
        input_mask[:, block, inp] = 0
    return input_mask.astype(np.float32), op_mask.astype(np.float32)


class _FixedMasks:
    """Replaces path dropout's sampler: the step uses the masks last given
    to ``set`` (global-batch rows; each replica takes its ghost batches'
    rows), held in variables so one traced step serves every setting."""

    def __init__(self, num_ghost_global):
        self.vars = [tf.Variable(m, trainable=False) for m in _all_on(num_ghost_global)]

    def set(self, masks):
        for v, m in zip(self.vars, masks):
            v.assign(m)

    def __call__(self, space, num_ghost, progress, drop_rate, seed, *, replica_id=0, num_replicas=1):
        first = tf.cast(replica_id, tf.int32) * num_ghost
        input_mask, op_mask = (tf.convert_to_tensor(v) for v in self.vars)
        return (tf.slice(input_mask, [first, 0, 0], [num_ghost, NB, MI]),
                tf.slice(op_mask, [first, 0, 0], [num_ghost, NB, NO]))


def _path_slices(model, block, op=None, inp=None):
    """``(variable, index)`` pairs: what of each variable the path owns, in every cell."""
    out = []
    if op is not None:
        pattern = re.compile(rf"s\d+c\d+b{block}_{op}_")
        for name, layer in layers_by_name(model).items():
            if pattern.match(name):
                out += [(w, slice(None)) for w in layer.trainable_weights]
    else:
        for cell in model.cells:
            b = cell.blocks[block]
            ch = b.input_channel_index([inp])
            out += [(b.input_bn.gamma, ch), (b.input_bn.beta, ch),
                    (b.input_conv.kernel, (slice(None), slice(None), ch))]
    assert out
    return out


class _Rig:
    """A one-shot proxy, its optimizer and one compiled training step (the
    loss, gradients and update of ``training.train``'s replica step), with
    path dropout replaced by ``masks``; ``reset`` restores the initial state."""

    def __init__(self, strategy, num_ghost_global, check_batches=False):
        self.strategy = strategy
        self.batch = num_ghost_global * GHOST
        self.masks = _FixedMasks(num_ghost_global)
        with strategy.scope():
            keras.utils.set_random_seed(0)
            self.proxy = OneShotProxy(SPACE, input_shape=SHAPE, num_classes=CLASSES, ghost_batch_size=GHOST,
                                      weight_decay=1e-2)
            self.proxy.build()
            self.optimizer = make_optimizer(TrainConfig(steps=10, learning_rate=0.1, momentum=MOMENTUM,
                                                        lr_schedule="constant"))
            self.optimizer.build(self.proxy.trainable_variables)
        self._state = [v.numpy() for v in self.proxy.trainable_variables + list(self.optimizer.variables)]
        variables = self.proxy.trainable_variables
        real_run = oneshot_model.run_layers
        masks = self.masks

        def checked_run(layers, x, num_ghost, ghost_size=None):
            names = [l.name for l in layers]
            check = tf.debugging.assert_positive(tf.shape(x)[0], message=f"empty batch into {names}")
            with tf.control_dependencies([check]):
                x = tf.identity(x)
            return real_run(layers, x, num_ghost, ghost_size)

        def replica_step(images, labels):
            ctx = tf.distribute.get_replica_context()
            with tf.GradientTape() as tape:
                loss, _ = self.proxy.loss(images, labels, progress=tf.constant(0.5), seed=tf.constant([0, 0]),
                                          global_batch_size=self.batch, num_replicas=ctx.num_replicas_in_sync,
                                          replica_id=ctx.replica_id_in_sync_group)
            grads = tape.gradient(loss, variables)
            self.optimizer.apply_gradients(zip(grads, variables))
            return grads

        @tf.function
        def step(images, labels):
            return strategy.run(replica_step, args=(images, labels))

        # The same global batch every step, split as a distributed dataset
        # splits it (replica r: rows [r * per, (r + 1) * per)); fixed per-replica
        # values instead of a tf.data iterator, whose deletion by a later garbage
        # collection stalled whichever test it fell in for up to a minute.
        images, labels = _data(self.batch)
        per = self.batch // strategy.num_replicas_in_sync

        def local(ctx):
            r = ctx.replica_id_in_sync_group
            return images[r * per:(r + 1) * per], labels[r * per:(r + 1) * per]

        self._inputs = strategy.experimental_distribute_values_from_function(local)
        # trace once, with the sampler (and the empty-batch check) patched
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(oneshot_lib, "sample_path_masks", masks)
            if check_batches:
                mp.setattr(oneshot_model, "run_layers", checked_run)
            step(*self._inputs)  # (reset() undoes this step)
        self._step = step

    def reset(self):
        for v, value in zip(self.proxy.trainable_variables + list(self.optimizer.variables), self._state):
            v.assign(value)

    def step(self, masks):
        self.masks.set(masks)
        return self._step(*self._inputs)

    def two_steps(self, masks, path):
        """Step 1 with every path on (so the optimizer has momentum), step 2
        with ``masks``; returns the path's per-replica gradients of step 2 and
        its values before and after step 2, and its momentum before it."""
        self.reset()
        self.step(_all_on(self.batch // GHOST))
        slices = _path_slices(self.proxy.model, **path)
        opt = self.optimizer
        before = [np.array(w.numpy()[i]) for w, i in slices]
        momenta = [np.array(opt.momentums[opt._get_variable_index(w)].numpy()[i]) for w, i in slices]
        grads = self.step(masks)
        index = {id(v): k for k, v in enumerate(self.proxy.trainable_variables)}
        per_replica = []
        for r in range(self.strategy.num_replicas_in_sync):
            local = [self.strategy.experimental_local_results(g)[r] for g in grads]
            per_replica.append([np.array(tf.convert_to_tensor(local[index[id(w)]]).numpy()[i])
                                for w, i in slices])
        after = [np.array(w.numpy()[i]) for w, i in slices]
        return per_replica, before, after, momenta


@pytest.fixture(scope="module")
def one_device():
    return _Rig(tf.distribute.get_strategy(), 2, check_batches=True)


@pytest.fixture(scope="module")
def two_replicas():
    return _Rig(two_cpus(), 2, check_batches=True)


def _assert_zero_gradient_update(per_replica_grads, before, after, momenta):
    for grads in per_replica_grads:
        for g in grads:
            assert np.array_equal(g, np.zeros_like(g)), "a dropped path got a non-zero gradient"
    mu = np.float32(MOMENTUM)
    for w0, w1, m in zip(before, after, momenta):
        assert np.any(m != 0)  # step 1 used the path: the update below is not trivially 0
        # Keras SGD (Nesterov) with g = 0: m <- m * mu; w <- w + m * mu (no decay: the
        # masked L2 counts a path by the fraction of ghost batches keeping it, 0 here)
        np.testing.assert_array_equal(w1, w0 + (m * mu) * mu)


PATHS = [dict(block=b, op=op) for b in range(NB) for op in WEIGHTED_OPS] + \
        [dict(block=1, inp=j) for j in range(SPACE.num_candidate_inputs(1))]


def _label(p):
    return f"block{p['block']}-" + (p["op"] if "op" in p else f"input{p['inp']}")


@pytest.mark.parametrize("path", PATHS, ids=_label)
def test_path_dropped_by_every_ghost_batch_gets_zero_gradient_and_update(one_device, path):
    masks = _dropping(2, seed=path["block"], **path)
    _assert_zero_gradient_update(*one_device.two_steps(masks, path))


@pytest.mark.parametrize("path", [dict(block=0, op="sep3x3"), dict(block=1, op="conv1x7_7x1"),
                                  dict(block=1, inp=0)], ids=_label)
def test_replica_whose_only_ghost_batch_drops_a_path(two_replicas, path):
    """Two replicas, one ghost batch each; replica 1's drops the path, replica
    0's keeps it: replica 1's gradient of the path is exactly zero.  Dropped
    by both: the zero-gradient update."""
    masks = _all_on(2)
    if "op" in path:
        masks[1][1, path["block"], SPACE.ops.index(path["op"])] = 0
    else:
        masks[0][1, path["block"], path["inp"]] = 0
    per_replica, _, _, _ = two_replicas.two_steps(masks, path)
    assert any(np.any(g != 0) for g in per_replica[0])  # the keeping replica trains it
    for g in per_replica[1]:
        assert np.array_equal(g, np.zeros_like(g))
    if "op" in path:
        masks[1][:, path["block"], SPACE.ops.index(path["op"])] = 0
    else:
        masks[0][:, path["block"], path["inp"]] = 0
    _assert_zero_gradient_update(*two_replicas.two_steps(masks, path))


@pytest.mark.parametrize("rig", ["one_device", "two_replicas"])
def test_no_layer_runs_on_an_empty_batch(request, rig):
    """Every layer the compiled training step runs (forward and gradient)
    sees a non-empty batch (the rigs' steps check it), with every weighted op
    of a block and an input dropped by every ghost batch (of a replica)."""
    rig = request.getfixturevalue(rig)
    rig.reset()
    input_mask, op_mask = _dropping(2, block=1, inp=0, seed=3)
    op_mask[:, 0, [SPACE.ops.index(op) for op in WEIGHTED_OPS]] = 0
    op_mask[1, 1, :] = 0  # replica 1's only ghost batch: no op of block 1
    grads = rig.step((input_mask, op_mask))
    for r in range(rig.strategy.num_replicas_in_sync):
        local = [tf.convert_to_tensor(rig.strategy.experimental_local_results(g)[r]).numpy() for g in grads]
        assert all(np.all(np.isfinite(g)) for g in local)
