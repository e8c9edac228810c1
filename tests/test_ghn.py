"""The GHN method: the network graph of a cell-space architecture, the
hypernet (chunks, slicing, tiling, edge-generated block inputs), and the
proxy (generated parameters run the candidate's network; gradients reach
the graph network and the hypernet; one trace for every architecture)."""

import numpy as np
import pytest
import tensorflow as tf

from hypernets.ghn import GHNSettings
from hypernets.ghn.gnn import virtual_edges
from hypernets.ghn.hypernet import ParamSpec, WeightGenerator, chunk_shapes, fit
from hypernets.ghn.network_graph import NODE_TYPES, CellNetworkGraph
from hypernets.ghn.proxy import GHNProxy
from oneshot_tf import config as config_lib
from oneshot_tf.methods.oneshot.cell_space import OPS, Block, CellArchitecture, CellSearchSpace
from oneshot_tf.search_space import ArchitectureError

SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def space():
    return CellSearchSpace(num_cells=2, num_stages=2, filters=4, num_blocks=2)


@pytest.fixture(scope="module")
def proxy(space):
    p = GHNProxy(space, input_shape=SHAPE, num_classes=3, group_size=4, chunk_channels=4)
    p.build()
    return p


def arch(*blocks):
    return CellArchitecture(tuple(Block(tuple(i), tuple(o)) for i, o in blocks))


def _slot(graph, type_, cell=-1, block=-1):
    (k,) = [k for k, s in enumerate(graph.slots) if (s.type, s.cell, s.block) == (type_, cell, block)]
    return k


# -- the network graph --------------------------------------------------------
def test_network_graph_of_a_hand_made_architecture(space):
    """Plan: stem, cell 0, 2 reductions, cell 1, head.  Block 0 reads cell
    k-1 with sep3x3; block 1 reads block 0 and cell k-2 with identity and
    maxpool (summed)."""
    g = CellNetworkGraph(space, SHAPE)
    a = arch(((1,), ("sep3x3",)), ((0, 2), ("identity", "maxpool3x3")))
    enc = g.encode(a)
    adj, levels, src = enc["adjacency"], enc["levels"], enc["edge_source"]
    stem, head = _slot(g, "stem"), _slot(g, "head")
    red0, red1 = [k for k, s in enumerate(g.slots) if s.type == "reduce"]
    conv0, sep0, conv1 = _slot(g, "block_conv", 0, 0), _slot(g, "sep3x3", 0, 0), _slot(g, "block_conv", 0, 1)
    id1, max1, sum1 = _slot(g, "identity", 0, 1), _slot(g, "maxpool3x3", 0, 1), _slot(g, "sum", 0, 1)
    conv0b, sep0b, conv1b = _slot(g, "block_conv", 1, 0), _slot(g, "sep3x3", 1, 0), _slot(g, "block_conv", 1, 1)
    id1b, max1b, sum1b = _slot(g, "identity", 1, 1), _slot(g, "maxpool3x3", 1, 1), _slot(g, "sum", 1, 1)
    cat0, cat1 = _slot(g, "concat", 0), _slot(g, "concat", 1)
    expected = {(stem, conv0), (conv0, sep0),                 # cell 0 reads the stem as k-1 and k-2
                (stem, conv1), (sep0, conv1), (conv1, id1), (conv1, max1), (id1, sum1), (max1, sum1),
                (sep0, cat0), (sum1, cat0),
                # reductions of (stem, cell 0); cell 1 reads reduce1 (k-1) in block 0, reduce0 (k-2) in block 1
                (stem, red0), (cat0, red1),
                (red1, conv0b), (conv0b, sep0b), (red0, conv1b), (sep0b, conv1b), (conv1b, id1b),
                (conv1b, max1b), (id1b, sum1b), (max1b, sum1b), (sep0b, cat1), (sum1b, cat1), (cat1, head)}
    assert {(int(u), int(v)) for u, v in zip(*np.nonzero(adj))} == expected
    present = set(np.flatnonzero(levels >= 0))
    assert present == {u for e in expected for u in e}
    assert levels[stem] == 0 and levels[conv0] == 1 and levels[sep0] == 2 and levels[sum1] == 5
    assert levels[head] == levels[cat1] + 1 == levels.max()
    assert src[0, 0].tolist() == [-1, stem, -1] and src[0, 1].tolist() == [stem, -1, sep0]
    assert src[1, 1].tolist() == [red0, -1, sep0b]
    assert enc["op_mask"].shape == (2, len(OPS)) and all(v.dtype == np.float32 for v in enc.values())


def test_unread_state_leaves_its_reduction_out(space):
    g = CellNetworkGraph(space, SHAPE)
    enc = g.encode(arch(((1,), ("sep3x3",)), ((2,), ("identity",))))  # no block reads cell k-2
    red0 = [k for k, s in enumerate(g.slots) if s.type == "reduce"][0]
    assert enc["levels"][red0] == -1 and not enc["adjacency"][red0].any() and not enc["adjacency"][:, red0].any()
    assert len(NODE_TYPES) == len(set(NODE_TYPES)) == 6 + len(OPS)


def test_bad_architecture_names_the_block(space):
    g = CellNetworkGraph(space, SHAPE)
    with pytest.raises(ArchitectureError, match="block 1"):
        g.encode(arch(((1,), ("sep3x3",)), ((), ("identity",))))


# -- the hypernet -------------------------------------------------------------
def test_fit_slices_centres_and_tiles_channels():
    chunk = tf.reshape(tf.range(7 * 7 * 2, dtype=tf.float32), [1, 7, 7, 2, 1])
    k3 = fit(chunk, (3, 3, 5, 1), tile_axes=(2,))
    want = np.arange(98, dtype=np.float32).reshape(7, 7, 2, 1)[2:5, 2:5]
    np.testing.assert_array_equal(k3.numpy()[0, :, :, :2], want)
    np.testing.assert_array_equal(k3.numpy()[0, :, :, 2:4], want)   # tiled
    np.testing.assert_array_equal(k3.numpy()[0, :, :, 4:5], want[:, :, :1])
    with pytest.raises(ValueError, match="not a tile axis"):
        fit(chunk, (9, 3, 2, 1), tile_axes=(2,))


def test_chunk_shapes_share_the_largest_kernel():
    specs = [ParamSpec(0, (3, 3, 8, 1), "sep/dw", "depthwise", 0, (2,)),
             ParamSpec(1, (7, 7, 32, 1), "sep/dw", "depthwise", 1, (2,)),
             ParamSpec(2, (1, 1, 40, 8), "in/k", "kernel", 2, (2, 3), (0, 0, 2, (24, 16)))]
    assert chunk_shapes(specs, 16) == {"sep/dw": (7, 7, 16, 1), "in/k": (1, 1, 16, 8)}


def test_edge_generated_rows_come_from_their_own_edge():
    """A block input's kernel rows for input j are generated from edge j
    (source and block embeddings): zero for an input not chosen, unchanged
    when another source's embedding changes."""
    spec = ParamSpec(0, (1, 1, 6, 2), "block_input/kernel", "kernel", 3, (2, 3), (0, 0, 2, (2, 4)))
    gen = WeightGenerator([spec], edge_destinations=[3, 3], hidden=(8,), chunk_channels=4, normalization="none")
    h = tf.random.normal([1, 4, 5], seed=1)
    src = tf.constant([[[[0, 1]]]], tf.float32)
    (k,) = gen([h, src])
    assert k.shape == (1, 1, 1, 6, 2)
    h2 = tf.tensor_scatter_nd_update(h, [[0, 1]], tf.random.normal([1, 5], seed=2))  # source of input 1
    (k2,) = gen([h2, src])
    np.testing.assert_array_equal(k.numpy()[..., :2, :], k2.numpy()[..., :2, :])
    assert np.abs(k.numpy()[..., 2:, :] - k2.numpy()[..., 2:, :]).max() > 0
    (k3,) = gen([h, tf.constant([[[[0, -1]]]], tf.float32)])
    np.testing.assert_array_equal(k3.numpy()[..., 2:, :], 0.0)
    np.testing.assert_array_equal(k3.numpy()[..., :2, :], k.numpy()[..., :2, :])


def test_fan_in_normalization_and_gamma(space):
    spec_k = ParamSpec(0, (3, 3, 4, 2), "k", "kernel", 0, (2, 3))
    spec_g = ParamSpec(1, (4,), "g", "gamma", 0, (0,))
    h = tf.random.normal([1, 1, 5], seed=3)
    src = tf.zeros([1, 0, 0, 0])
    raw = WeightGenerator([spec_k, spec_g], hidden=(8,), normalization="none", name="raw")
    scaled = WeightGenerator([spec_k, spec_g], hidden=(8,), normalization="fan_in", name="scaled")
    raw([h, src]), scaled([h, src])
    scaled.set_weights(raw.get_weights())
    (k_raw, g_raw), (k_s, g_s) = raw([h, src]), scaled([h, src])
    np.testing.assert_allclose(k_s.numpy(), k_raw.numpy() * np.sqrt(2 / 36), rtol=1e-6)
    np.testing.assert_allclose(g_s.numpy(), g_raw.numpy(), rtol=1e-6)
    np.testing.assert_allclose((g_raw - 1).numpy(), raw.branches["g"](raw.node_trunk[0](h)).numpy()[0], rtol=1e-5,
                               atol=1e-6)


# -- the proxy --------------------------------------------------------------------
def test_generated_parameters_have_every_variables_shape_for_every_op(space, proxy):
    specs = proxy.model.generator.specs
    variables = proxy.executor.trainable_variables
    assert [s.shape for s in specs] == [tuple(v.shape) for v in variables]
    types = {proxy.graph.slots[s.slot].type for s in specs}
    assert set(op for op in OPS if op not in ("identity", "maxpool3x3", "avgpool3x3")) <= types
    assert {"stem", "reduce", "head", "block_conv"} <= types
    enc = proxy._stack([proxy.encode(space.sample(np.random.default_rng(i))) for i in range(3)])
    values = proxy.generate(enc)
    assert [tuple(v.shape) for v in values] == [(3,) + tuple(v.shape) for v in variables]
    assert all(np.isfinite(v.numpy()).all() for v in values)


def test_generated_network_is_the_executor_with_those_weights(space, proxy):
    """``network_logits`` (stateless) equals the one-shot model with the
    generated values assigned, for the candidate's masks."""
    a = space.sample(np.random.default_rng(5))
    enc = proxy._stack([proxy.encode(a)])
    values = [v[0] for v in proxy.generate(enc)]
    images = tf.cast(tf.random.uniform((8,) + SHAPE, 0, 255, seed=4), tf.uint8)
    got = proxy.network_logits(values, images, enc, 0, 2)
    saved = [v.numpy() for v in proxy.executor.trainable_variables]
    try:
        for var, value in zip(proxy.executor.trainable_variables, values):
            var.assign(value)
        want = proxy.executor({"images": images, "input_mask": enc["input_mask"][0],
                               "op_mask": enc["op_mask"][0]}, num_ghost=2)
    finally:
        for var, value in zip(proxy.executor.trainable_variables, saved):
            var.assign(value)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_graph_network_and_the_hypernet(space, proxy):
    """Every branch the architecture uses gets a gradient (this one uses
    every kind of weighted op), and so does every part of the GHN."""
    a = arch(((1,), ("sep3x3", "conv1x7_7x1")), ((0, 2), ("sep7x7", "maxpool3x3")))
    si = proxy._stack([proxy.encode(a)])
    images = tf.cast(tf.random.uniform((8,) + SHAPE, 0, 255, seed=5), tf.uint8)
    labels = tf.constant([0, 1, 2, 0, 1, 2, 0, 1])
    with tf.GradientTape() as tape:
        loss, metrics = proxy.loss(images, labels, progress=0.0, seed=None, global_batch_size=8, num_replicas=1,
                                   step_inputs=si)
    grads = dict(zip([v.path for v in proxy.trainable_variables],
                     tape.gradient(loss, proxy.trainable_variables)))
    assert all(g is not None for g in grads.values())
    assert not any(v.path.startswith("ghn_network") for v in proxy.trainable_variables)
    for part in ("graph_network/update", "graph_network/message_0", "hypernet/node_0", "hypernet/edge_0",
                 "hypernet/branch_stem", "hypernet/branch_head_kernel", "node_type_embedding"):
        norms = [float(tf.norm(g)) for p, g in grads.items() if part in p]
        assert norms and max(norms) > 0, part
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0 and np.isfinite(float(loss))


def test_step_inputs_are_seeded_architectures(space, proxy):
    a = proxy.step_inputs(7, seed=np.array([1, 7], np.int32), progress=0.5, global_batch_size=8)
    b = proxy.step_inputs(7, seed=np.array([1, 7], np.int32), progress=0.9, global_batch_size=8)
    c = proxy.step_inputs(8, seed=np.array([1, 8], np.int32), progress=0.5, global_batch_size=8)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    assert a["adjacency"].shape == (1, proxy.graph.num_nodes, proxy.graph.num_nodes)


def test_one_trace_scores_architectures_of_different_sizes(space, proxy):
    images = tf.cast(tf.random.uniform((8,) + SHAPE, 0, 255, seed=6), tf.uint8)
    traces = []

    @tf.function
    def score(images, enc):
        traces.append(1)
        return proxy.candidates_logits(images, enc, 4)

    small = arch(((1,), ("identity",)), ((2,), ("identity",)))
    big = arch(((0, 1), ("sep7x7", "conv1x7_7x1")), ((0, 1, 2), ("sep5x5", "avgpool3x3")))
    sizes = [int((proxy.encode(a)["levels"] >= 0).sum()) for a in (small, big)]
    assert sizes[0] < sizes[1]
    out = [score(images, proxy._stack([proxy.encode(a), proxy.encode(b)])) for a, b in [(small, big), (big, small)]]
    assert len(traces) == 1
    np.testing.assert_allclose(out[0].numpy()[0], out[1].numpy()[1], rtol=1e-5, atol=1e-5)
    # and candidates_logits is the per-candidate default on tiled images
    default = tf.reshape(proxy.candidate_logits(tf.tile(images, [2, 1, 1, 1]),
                                                proxy._stack([proxy.encode(small), proxy.encode(big)])), [2, 8, -1])
    np.testing.assert_allclose(out[0].numpy(), default.numpy(), rtol=1e-5, atol=1e-5)


def test_bad_settings_are_refused_by_name(space):
    with pytest.raises(ValueError, match="--batch_size=48 must be a multiple of replicas \\(1\\) x --meta_batch "
                                         "\\(2\\) x --group_size \\(16\\)"):
        GHNProxy(space, input_shape=SHAPE, num_classes=3, group_size=16, meta_batch=2).validate_batch(48, 1)
    with pytest.raises(ValueError, match="unknown --propagation='sideways'"):
        GHNProxy(space, input_shape=SHAPE, num_classes=3, propagation="sideways")
    cfg = config_lib.resolve("tiny", {"weight_normalization": "l2"}, method="ghn")
    with pytest.raises(ValueError, match="unknown --weight_normalization='l2'"):
        config_lib.validate(cfg)
    cfg = config_lib.resolve("tiny", {"num_stages": 3}, method="ghn")
    with pytest.raises(ValueError, match="--num_stages=3 exceeds --num_cells=1"):
        config_lib.validate(cfg)
    assert isinstance(cfg.settings, GHNSettings) and cfg.optimizer == "adam" and cfg.lr_schedule == "step"


def test_virtual_edges_reach_the_graph_network(space):
    """--virtual_edges=s: the encoding carries the shortest-path edges of the
    present graph up to s hops, and the virtual-edge MLP is trained."""
    p = GHNProxy(space, input_shape=SHAPE, num_classes=3, group_size=4, chunk_channels=4, virtual_edges=3)
    p.build()
    a = arch(((1,), ("sep3x3",)), ((0, 2), ("identity", "maxpool3x3")))
    enc = p.encode(a)
    np.testing.assert_array_equal(enc["virtual"], virtual_edges(enc["adjacency"], cutoff=3))
    assert set(np.unique(enc["virtual"]).tolist()) == {0.0, 0.5, float(np.float32(1 / 3))}
    images = tf.cast(tf.random.uniform((4,) + SHAPE, 0, 255, seed=7), tf.uint8)
    with tf.GradientTape() as tape:
        loss, _ = p.loss(images, tf.constant([0, 1, 2, 0]), progress=0.0, seed=None, global_batch_size=4,
                         num_replicas=1, step_inputs=p._stack([enc]))
    grads = tape.gradient(loss, p.trainable_variables)
    virtual = [float(tf.norm(g)) for v, g in zip(p.trainable_variables, grads) if "virtual_message" in v.path]
    assert len(virtual) == 6 and min(virtual) > 0      # 2 hidden layers + output, kernels and biases
    assert p.get_config()["virtual_edges"] == 3
    with pytest.raises(ValueError, match=r"^virtual_edges must be >= 0 \(0: none\), got -1$"):
        GHNProxy(space, input_shape=SHAPE, num_classes=3, virtual_edges=-1)
