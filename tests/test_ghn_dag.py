"""The GHN paper's block space (``hypernets.ghn.dag_space``), its stand-alone
models and executor (``dag_models``) and network graph (``dag_network``):
hand-computed counts and plans, errors naming the node, the executor equal
to the stand-alone model with the same weights, the GHN over it."""

import json

import numpy as np
import pytest
import tensorflow as tf

from hypernets.ghn import GHNSettings
from hypernets.ghn.dag_models import DagExecutor, executor_variables, transfer_executor_weights
from hypernets.ghn.dag_network import DAG_NODE_TYPES, DagNetworkGraph
from hypernets.ghn.dag_space import OPS, DagArchitecture, DagNode, DagSearchSpace
from hypernets.ghn.proxy import GHNProxy
from oneshot_tf import config as config_lib
from oneshot_tf.search_space import ArchitectureError

SHAPE = (8, 8, 1)


def arch(*nodes):
    return DagArchitecture(tuple(DagNode(op, tuple(inputs)) for op, inputs in nodes))


@pytest.fixture(scope="module")
def space():
    return DagSearchSpace(num_nodes=4, num_blocks=3, num_stages=2, filters=4)


# -- the space ------------------------------------------------------------------
def test_size_and_plan_by_hand():
    s = DagSearchSpace(num_nodes=2, max_inputs=2, num_blocks=1, num_stages=1)
    assert s.size() == (9 * 3) * (9 * 6)   # node 0: {0}, {1}, {0,1}; node 1: 3 singles + 3 pairs
    plan = DagSearchSpace(num_blocks=18, num_stages=3, filters=32).plan((32, 32, 3))
    assert [p.channels for p in plan] == [32] * 6 + [64] * 6 + [128] * 6
    assert [p.height for p in (plan[0], plan[6], plan[12])] == [32, 16, 8]
    assert plan[0].sources == (-1, -1) and plan[1].sources == (0, -1) and plan[1].strides == (1, 1)
    assert plan[6].sources == (5, 4) and plan[6].strides == (2, 2)     # reduction after block 6
    assert plan[7].strides == (1, 2) and plan[13].strides == (1, 2)


def test_count_params_by_hand():
    """1 block, node 0 = conv1x1 of input 0; F=4 on 8x8x1, 3 classes."""
    s = DagSearchSpace(num_nodes=1, num_blocks=1, num_stages=1, filters=4)
    a = arch(("conv1x1", (0,)))
    stem, bottleneck, node, head = 9 * 1 * 4, 4 * 4 + 4 * 4, 4 * 4 + 4 * 4, 4 * 4 + 4 * 3 + 3
    assert s.count_params(a, input_shape=SHAPE, num_classes=3) == stem + bottleneck + node + head == 131
    assert s.build_model(a, input_shape=SHAPE, num_classes=3).count_params() == 131
    # a node applies its op once per input: FLOPs count both, parameters once
    b = arch(("conv1x1", (0, 1)))
    flops = lambda x: s.count_flops(x, input_shape=SHAPE, num_classes=3)  # noqa: E731
    assert flops(b) - flops(a) == 64 * 16 + 64 * 16                     # input 1's bottleneck + one more conv
    # ... and input 1's bottleneck plus the node's BN for its second input (its own statistics)
    assert s.count_params(b, input_shape=SHAPE, num_classes=3) - 131 == bottleneck + 4 * 4
    assert s.build_model(b, input_shape=SHAPE, num_classes=3).count_params() == 131 + bottleneck + 16


def test_leaves_and_unread_inputs(space):
    a = arch(("sep3x3", (0,)), ("identity", (2,)), ("maxpool3x3", (0, 2)), ("conv1x1", (3,)))
    assert a.leaves() == [2, 3] and a.reads_input(0) and not a.reads_input(1)
    names = [layer.name for layer in space.build_model(a, input_shape=SHAPE, num_classes=3).layers]
    assert "b0_in0_conv" in names and "b0_in1_conv" not in names and "b2_out" in names


@pytest.mark.parametrize("obj,message", [
    ({"nodes": [{"op": "conv9x9", "inputs": [0]}] * 4}, "node 0: unknown op 'conv9x9'"),
    ({"nodes": [{"op": "identity", "inputs": [0]}, {"op": "identity", "inputs": [4]}] + [
        {"op": "identity", "inputs": [0]}] * 2}, r"node 1: input 4 out of range"),
    ({"nodes": [{"op": "identity", "inputs": [1, 0]}] + [{"op": "identity", "inputs": [0]}] * 3},
     r"node 0: inputs \[1, 0\] must be distinct and increasing"),
    ({"nodes": [{"op": "identity", "inputs": []}] + [{"op": "identity", "inputs": [0]}] * 3}, "node 0: no inputs"),
    ({"nodes": [{"op": "identity", "inputs": [0, 1, 2]}] * 1 + [{"op": "identity", "inputs": [0]}] * 3},
     "node 0: 3 inputs, at most 2"),
    ({"nodes": [{"op": "identity", "inputs": [0]}] * 3}, "the block has 3 nodes, the space 4"),
    ({"nodes": [{"op": "identity"}] * 4}, "node 0: expected"),
    ({"blocks": []}, "an architecture is"),
])
def test_bad_architectures_name_the_node(space, obj, message):
    with pytest.raises(ArchitectureError, match=message):
        space.from_json(json.dumps(obj))


def test_sampling_distribution_is_uniform_as_documented():
    s = DagSearchSpace(num_nodes=3, num_blocks=1, num_stages=1)
    rng = np.random.default_rng(0)
    archs = [s.sample(rng) for _ in range(3000)]
    ops = np.array([[OPS.index(n.op) for n in a.nodes] for a in archs])
    np.testing.assert_allclose(np.bincount(ops.ravel(), minlength=9) / ops.size, 1 / 9, atol=0.015)
    counts = np.array([[len(n.inputs) for n in a.nodes] for a in archs])
    np.testing.assert_allclose((counts == 2).mean(0), 0.5, atol=0.04)   # 1 or 2 inputs, equally likely
    single = [a.nodes[2].inputs[0] for a in archs if len(a.nodes[2].inputs) == 1]
    np.testing.assert_allclose(np.bincount(single, minlength=4) / len(single), 0.25, atol=0.04)


# -- executor and stand-alone model -----------------------------------------------
EVERY_OP = [arch(("sep3x3", (0, 1)), ("dil_sep3x3", (2,)), ("conv1x7_7x1", (1, 3)), ("avgpool3x3", (0, 4))),
            arch(("sep5x5", (1,)), ("dil_sep5x5", (0, 2)), ("conv1x1", (3,)), ("maxpool3x3", (2,))),
            arch(("identity", (0,)), ("identity", (1,)), ("conv1x1", (0, 1)), ("sep3x3", (3,)))]


def test_executor_is_the_standalone_model_with_the_same_weights(space):
    """Random weights (gammas away from 1, betas away from 0): the executor
    on a candidate's tensors equals its stand-alone model in training mode
    (batch statistics), with 2 groups = each half on its own."""
    ex = DagExecutor(space, input_shape=SHAPE, num_classes=3).build_weights()
    rng = np.random.default_rng(0)
    values = {}
    for name, var in executor_variables(ex).items():
        values[name] = (rng.normal(size=var.shape) * 0.5 + (name.endswith("gamma"))).astype(np.float32)
        var.assign(values[name])
    images = tf.cast(tf.random.uniform((8,) + SHAPE, 0, 255, seed=1), tf.uint8)
    traces = []

    @tf.function
    def run(images, enc):
        traces.append(1)
        return ex({"images": images, "node_ops": enc["node_ops"], "block_adjacency": enc["adjacency"],
                   "leaves": enc["leaves"]}, num_ghost=2)

    for a in EVERY_OP:
        model = space.build_model(a, input_shape=SHAPE, num_classes=3)
        assert transfer_executor_weights(values, model, space, a, SHAPE) > 0
        ref = np.concatenate([model(images[:4], training=True), model(images[4:], training=True)])
        out = run(images, {k: tf.constant(v) for k, v in space.encode(a).items()}).numpy()
        assert np.abs(ref).max() > 0.1
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    assert len(traces) == 1


# -- the network graph -------------------------------------------------------------
def test_network_graph_of_a_hand_made_architecture(space):
    g = DagNetworkGraph(space, SHAPE)
    a = arch(("sep3x3", (0,)), ("identity", (2,)), ("maxpool3x3", (0, 2)), ("conv1x1", (3,)))
    enc = g.encode(a)
    adj = enc["adjacency"]
    b0, b1 = g.bottleneck_slot[1]
    n = g.node_slot[1]
    edges = {(int(u), int(v)) for u, v in zip(*np.nonzero(adj))}
    assert {(g.concat_slot[0], b0), (b0, n[0]), (n[0], n[1]), (b0, n[2]), (n[0], n[2]), (n[1], n[3]),
            (n[2], g.concat_slot[1]), (n[3], g.concat_slot[1])} <= edges
    assert not adj[b1].any() and enc["levels"][b1] == -1            # nobody reads input 1
    assert enc["node_types"][n[2]] == DAG_NODE_TYPES.index("maxpool3x3")
    assert enc["edge_source"][2, 0].tolist() == [-1, -1, g.node_slot[1][2], g.node_slot[1][3]]  # block 1's leaves
    assert enc["edge_source"][0, 0].tolist() == [g.stem_slot, -1, -1, -1]
    assert enc["edge_source"][3, 0].tolist() == [-1, -1, g.node_slot[2][2], g.node_slot[2][3]]  # the head
    assert enc["levels"][g.head_slot] == enc["levels"].max()
    # a smaller block (the GHN trains on them): the slots beyond it are absent
    small = g.encode(arch(("conv1x1", (1,)), ("identity", (0, 2))))
    assert all(small["levels"][g.node_slot[b][j]] == -1 for b in range(3) for j in (2, 3))
    assert small["node_ops"].tolist() == [OPS.index("conv1x1"), 0, -1, -1]
    assert {k: v.shape for k, v in small.items()} == {k: v.shape for k, v in enc.items()}
    with pytest.raises(ValueError, match="the GHN's graph holds blocks of 1 to 4 nodes, got 5"):
        g.encode(arch(*[("identity", (0,))] * 5))


# -- the GHN over the block space ---------------------------------------------------
@pytest.fixture(scope="module")
def proxy(space):
    p = GHNProxy(space, input_shape=SHAPE, num_classes=3, group_size=4, chunk_channels=4,
                 train_space=space.with_nodes(2))
    p.build()
    return p


def test_generated_weights_run_the_candidate(space, proxy):
    """Every executor variable is generated with its shape; the generated
    network of a candidate is the executor holding those weights."""
    a = EVERY_OP[0]
    si = proxy._stack([proxy.encode(a)])
    weights = proxy.generate(si)
    assert [tuple(w.shape[1:]) for w in weights] == [tuple(v.shape) for v in proxy.executor.trainable_variables]
    images = tf.cast(tf.random.uniform((4,) + SHAPE, 0, 255, seed=2), tf.uint8)
    out = proxy.network_logits([w[0] for w in weights], images, si, 0, 1)
    for var, w in zip(proxy.executor.trainable_variables, weights):
        var.assign(w[0])
    direct = proxy.executor({"images": images, "node_ops": si["node_ops"][0],
                             "block_adjacency": si["block_adjacency"][0], "leaves": si["leaves"][0]})
    np.testing.assert_allclose(out.numpy(), direct.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.integration  # a traced GHN training step's gradient (~25 s): CI's integration step
def test_training_draws_smaller_blocks_and_reaches_every_part():
    """In the traced step (as training runs it) every GHN variable has a
    gradient, and every part of the GHN a nonzero one (one block of 3 nodes
    keeps the trace short)."""
    space = DagSearchSpace(num_nodes=3, num_blocks=1, num_stages=1, filters=4)
    proxy = GHNProxy(space, input_shape=SHAPE, num_classes=3, group_size=4, chunk_channels=4,
                     train_space=space.with_nodes(2))
    proxy.build()
    si = proxy.step_inputs(3, seed=np.array([1, 3], np.int32), progress=0.0, global_batch_size=8)
    assert (si["node_ops"][0] >= 0).sum() == 2                    # --train_nodes blocks
    images = tf.cast(tf.random.uniform((8,) + SHAPE, 0, 255, seed=5), tf.uint8)

    @tf.function
    def grads(images, si):
        with tf.GradientTape() as tape:
            loss, _ = proxy.loss(images, tf.constant([0, 1, 2, 0, 1, 2, 0, 1]), progress=0.0, seed=None,
                                 global_batch_size=8, num_replicas=1, step_inputs=si)
        return loss, tape.gradient(loss, proxy.trainable_variables)

    loss, g = grads(images, si)
    g = dict(zip([v.path for v in proxy.trainable_variables], g))
    assert np.isfinite(float(loss)) and all(x is not None for x in g.values())
    for part in ("graph_network/update", "hypernet/node_0", "hypernet/edge_0", "hypernet/branch_stem",
                 "hypernet/branch_bottleneck_kernel", "hypernet/branch_head_kernel", "node_type_embedding"):
        assert max(float(tf.norm(x)) for p, x in g.items() if part in p) > 0, part


def test_one_trace_scores_blocks_of_different_sizes():
    """One block (a short trace): a block of 2 of its 4 nodes and one of 4
    in one pass, then swapped; each scores the same in either slot."""
    space = DagSearchSpace(num_nodes=4, num_blocks=1, num_stages=1, filters=4)
    proxy = GHNProxy(space, input_shape=SHAPE, num_classes=3, group_size=4, chunk_channels=4)
    proxy.build()
    images = tf.cast(tf.random.uniform((8,) + SHAPE, 0, 255, seed=6), tf.uint8)
    traces = []

    @tf.function
    def score(images, enc):
        traces.append(1)
        return proxy.candidates_logits(images, enc, 4)

    small, big = arch(("identity", (0,)), ("conv1x1", (2,))), EVERY_OP[1]
    out = [score(images, proxy._stack([proxy.encode(x), proxy.encode(y)])) for x, y in [(small, big), (big, small)]]
    assert len(traces) == 1
    np.testing.assert_allclose(out[0].numpy()[1], out[1].numpy()[0], rtol=1e-5, atol=1e-5)


def test_stacked_ghn_over_blocks(space):
    p = GHNProxy(space, input_shape=SHAPE, num_classes=3, group_size=4, chunk_channels=4, graph="stacked")
    p.build()
    enc = p.encode(EVERY_OP[2])
    assert set(p.graph.slot_modules()) == {0, 1, 2}
    assert enc["entry"][p.graph.bottleneck_slot[1][0]] == 1 and enc["entry"][p.graph.node_slot[1][0]] == 0
    weights = p.generate(p._stack([enc]))
    assert len(weights) == len(p.executor.trainable_variables)


def test_bad_settings_are_refused_by_name(space):
    cfg = config_lib.resolve("tiny", {"train_nodes": 5}, method="ghn")
    with pytest.raises(ValueError, match="--train_nodes=5 exceeds --num_nodes=3"):
        config_lib.validate(cfg)
    with pytest.raises(ValueError, match="a training space must be the searched block space"):
        GHNProxy(space, input_shape=SHAPE, num_classes=3, train_space=space.with_nodes(2).widened(2))
    with pytest.raises(ValueError, match="--num_stages=4 exceeds --num_blocks=3"):
        DagSearchSpace(num_blocks=3, num_stages=4)
    assert GHNSettings().space == "dag"
