"""The stacked GHN (section 4.3, equations 12-14, Table 5): module by module,
the mean embedding of module i reaching the input nodes of module i+1;
shared or per-module parameters; the graph's modules, levels and input
nodes; the stacked proxy end to end."""

import numpy as np
import pytest
import tensorflow as tf

from hypernets.ghn.gnn import GatedGraphNetwork, StackedGraphNetwork
from hypernets.ghn.network_graph import CellNetworkGraph
from hypernets.ghn.proxy import GHNProxy
from oneshot_tf.methods.oneshot.cell_space import Block, CellArchitecture, CellSearchSpace

D = 6
SHAPE = (8, 8, 1)

# Two modules of a chain each, 0 -> 1 and 2 -> 3, joined by 1 -> 2.
TOY_ADJ = np.zeros((4, 4), np.float32)
TOY_ADJ[0, 1] = TOY_ADJ[1, 2] = TOY_ADJ[2, 3] = 1
TOY_LEVELS = np.array([0, 1, 0, 1], np.int32)       # each module's own levels
TOY_ENTRY = np.array([0, 0, 1, 0], np.float32)      # node 2 is reached from module 0
MODULES = [0, 0, 1, 1]


def stacked(**kwargs):
    layer = StackedGraphNetwork(MODULES, D, (8, 8), **kwargs)
    layer.build([(None, 4, D)])
    return layer


def run(layer, h):
    return layer([tf.constant(h[None]), TOY_ADJ[None], TOY_LEVELS[None], TOY_ENTRY[None]])[0].numpy()


def hand(g0, g1, h, passing=True):
    """The stacked forward-backward pass on the toy, by hand from the
    layers' own message MLPs and GRUs (g0 for module 0, g1 for module 1)."""
    def gru(g, m, x):
        return g.gru(tf.constant(m[None]), [tf.constant(x[None])])[0].numpy()[0]

    def msg(g, x):
        return g._message(tf.constant(x[None])).numpy()[0]

    zero = np.zeros(D, np.float32)
    a0 = gru(g0, zero, h[0])                 # forward: node 0 (a source), then node 1
    b = gru(g0, msg(g0, a0), h[1])
    a = gru(g0, msg(g0, b), a0)              # backward: node 0 from its successor
    summary = (a + b) / 2 if passing else zero   # h_A0, the mean of module 0 (equation 13)
    c0 = gru(g1, summary, h[2])              # module 1's input node hears h_A0
    d = gru(g1, msg(g1, c0), h[3])
    c = gru(g1, msg(g1, d), c0)
    return np.stack([a, b, c, d])


def test_stacked_pass_is_the_hand_computation():
    layer = stacked()
    h = np.random.default_rng(0).normal(size=(4, D)).astype(np.float32)
    g = layer.gnns[0]
    np.testing.assert_allclose(run(layer, h), hand(g, g, h), rtol=1e-5, atol=1e-6)
    assert len(layer.gnns) == 1


def test_unshared_modules_each_use_their_own_network():
    layer = stacked(share=False)
    assert len(layer.gnns) == 2
    names = {v.path.split("/")[1] for v in layer.trainable_variables}
    assert names == {"graph_network_0", "graph_network_1"}
    h = np.random.default_rng(1).normal(size=(4, D)).astype(np.float32)
    np.testing.assert_allclose(run(layer, h), hand(layer.gnns[0], layer.gnns[1], h), rtol=1e-5, atol=1e-6)


def test_embedding_passing_carries_module_0_into_module_1_and_only_then():
    h = np.random.default_rng(2).normal(size=(4, D)).astype(np.float32)
    other = h.copy()
    other[0] += 1.0                                   # change module 0 only
    passing = stacked()
    out, out2 = run(passing, h), run(passing, other)
    assert np.abs(out[2:] - out2[2:]).max() > 1e-4    # module 1 hears module 0 through h_A0
    alone = stacked(pass_embeddings=False)
    out, out2 = run(alone, h), run(alone, other)
    np.testing.assert_array_equal(out[2:], out2[2:])  # no passing: module 1 on its own, exactly
    g = alone.gnns[0]
    np.testing.assert_allclose(out, hand(g, g, h, passing=False), rtol=1e-5, atol=1e-6)
    # the cross-module edge carries no message: module 1 alone is the plain network on its own subgraph
    sub = g([tf.constant(h[None, 2:]), TOY_ADJ[None, 2:, 2:], TOY_LEVELS[None, 2:]])[0].numpy()
    np.testing.assert_allclose(out[2:], sub, rtol=1e-5, atol=1e-6)


def test_stacked_layer_refuses_bad_inputs():
    with pytest.raises(ValueError, match="node_modules must give every node a module index >= 0"):
        StackedGraphNetwork([0, -1], D)
    layer = stacked()
    with pytest.raises(ValueError, match=r"takes \[h, adjacency, levels, entry\], got 3 inputs"):
        layer([tf.zeros((1, 4, D)), TOY_ADJ[None], TOY_LEVELS[None]])
    with pytest.raises(ValueError, match="graphs of 5 nodes, node_modules names 4"):
        layer([tf.zeros((1, 5, D)), tf.zeros((1, 5, 5)), tf.zeros((1, 5)), tf.zeros((1, 5))])


def test_external_message_equals_in_node_by_node_and_level_parallel():
    gnn = GatedGraphNetwork(D, (8, 8))
    gnn.build((None, None, D))
    rng = np.random.default_rng(3)
    h = rng.normal(size=(1, 4, D)).astype(np.float32)
    ext = rng.normal(size=(1, 4, D)).astype(np.float32)
    levels = np.array([[0, 1, 2, 3]], np.int32)
    a = gnn([h, TOY_ADJ[None], levels], external=ext).numpy()
    b = gnn.node_by_node([h, TOY_ADJ[None], levels], external=ext).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.abs(a - gnn([h, TOY_ADJ[None], levels]).numpy()).max() > 1e-4


# -- the cell space's modules and the stacked proxy ----------------------------
@pytest.fixture(scope="module")
def space():
    return CellSearchSpace(num_cells=2, num_stages=2, filters=4, num_blocks=2)


def arch(*blocks):
    return CellArchitecture(tuple(Block(tuple(i), tuple(o)) for i, o in blocks))


def _slot(graph, type_, cell=-1, block=-1):
    (k,) = [k for k, s in enumerate(graph.slots) if (s.type, s.cell, s.block) == (type_, cell, block)]
    return k


def test_modules_levels_and_input_nodes_of_a_hand_made_architecture(space):
    """Plan: stem, cell 0, two reductions, cell 1, head.  Module 0: the stem
    and cell 0; module 1: the reductions, cell 1 and the head."""
    g = CellNetworkGraph(space, SHAPE, stacked=True)
    enc = g.encode(arch(((1,), ("sep3x3",)), ((0, 2), ("identity", "maxpool3x3"))))
    modules = g.slot_modules()
    red0, red1 = [k for k, s in enumerate(g.slots) if s.type == "reduce"]
    assert modules[_slot(g, "stem")] == 0 and modules[_slot(g, "concat", 0)] == 0
    assert modules[red0] == modules[red1] == modules[_slot(g, "head")] == modules[_slot(g, "sum", 1, 1)] == 1
    assert set(np.flatnonzero(enc["entry"])) == {red0, red1}     # each reads module 0 (the stem, cell 0)
    lev = enc["module_levels"]
    expected = {"stem": 0, ("block_conv", 0, 0): 1, ("sep3x3", 0, 0): 2, ("block_conv", 0, 1): 3,
                ("identity", 0, 1): 4, ("sum", 0, 1): 5, ("concat", 0): 6,
                ("block_conv", 1, 0): 1, ("sep3x3", 1, 0): 2, ("block_conv", 1, 1): 3, ("maxpool3x3", 1, 1): 4,
                ("sum", 1, 1): 5, ("concat", 1): 6, "head": 7}
    for key, level in expected.items():
        key = (key,) if isinstance(key, str) else key
        assert lev[_slot(g, *key)] == level, key
    assert lev[red0] == lev[red1] == 0
    np.testing.assert_array_equal(lev < 0, enc["levels"] < 0)    # the same present slots
    assert "module_levels" not in CellNetworkGraph(space, SHAPE).encode(arch(((1,), ("sep3x3",)),
                                                                             ((0,), ("identity",))))


@pytest.mark.parametrize("share,passing", [(True, True), (False, True), (False, False)])
def test_stacked_proxy_generates_every_weight_and_trains_every_part(space, share, passing):
    p = GHNProxy(space, input_shape=SHAPE, num_classes=3, group_size=4, chunk_channels=4, graph="stacked",
                 stack_share=share, stack_pass=passing)
    p.build()
    a = arch(((1,), ("sep3x3", "conv1x7_7x1")), ((0, 2), ("sep7x7", "maxpool3x3")))
    si = p._stack([p.encode(a)])
    weights = p.generate(si)
    assert [tuple(w.shape[1:]) for w in weights] == [tuple(v.shape) for v in p.executor.trainable_variables]
    images = tf.cast(tf.random.uniform((8,) + SHAPE, 0, 255, seed=5), tf.uint8)
    with tf.GradientTape() as tape:
        loss, _ = p.loss(images, tf.constant([0, 1, 2, 0, 1, 2, 0, 1]), progress=0.0, seed=None,
                         global_batch_size=8, num_replicas=1, step_inputs=si)
    grads = dict(zip([v.path for v in p.trainable_variables], tape.gradient(loss, p.trainable_variables)))
    parts = (["graph_network/update", "hypernet/node_0", "node_type_embedding/"] if share else
             [f"{part}_{i}/" for part in ("graph_network", "hypernet", "node_type_embedding") for i in (0, 1)])
    for part in parts:
        norms = [float(tf.norm(g)) for path, g in grads.items() if part in path and g is not None]
        assert norms and max(norms) > 0, part
    assert p.get_config()["graph"] == "stacked"
    assert (p.get_config()["stack_share"], p.get_config()["stack_pass"]) == (share, passing)


def test_stacked_options_are_refused_without_stacking(space):
    with pytest.raises(ValueError, match="unknown --graph='tree'; choose from network, stacked"):
        GHNProxy(space, input_shape=SHAPE, num_classes=3, graph="tree")
    with pytest.raises(ValueError, match="--stack_share and --stack_pass are options of --graph=stacked"):
        GHNProxy(space, input_shape=SHAPE, num_classes=3, stack_pass=False)
    assert "stack_share" not in GHNProxy(space, input_shape=SHAPE, num_classes=3).get_config()
