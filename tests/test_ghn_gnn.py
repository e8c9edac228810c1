"""The GHN graph network: level-parallel forward-backward equals the
node-by-node order (values and gradients), messages flow only along edges,
padded batches equal one graph at a time, one trace serves graphs of
different sizes, synchronous against a hand-unrolled chain."""

import numpy as np
import pytest
import tensorflow as tf

from hypernets.ghn.gnn import GatedGraphNetwork, topological_levels, virtual_edges

D = 8


def random_dag(rng, n, p=0.4):
    a = np.triu((rng.random((n, n)) < p).astype(np.float32), 1)
    perm = rng.permutation(n)  # nodes not numbered in topological order
    return a[np.ix_(perm, perm)]


def topological_order(a):
    levels = topological_levels(a)
    return sorted(range(len(levels)), key=lambda v: (levels[v], v))


def pad(graphs, n):
    """Batch (h, adjacency, levels) triples padded to n nodes."""
    h = np.zeros((len(graphs), n, D), np.float32)
    adj = np.zeros((len(graphs), n, n), np.float32)
    lev = -np.ones((len(graphs), n), np.int32)
    for i, (hi, ai, li) in enumerate(graphs):
        k = len(li)
        h[i, :k], adj[i, :k, :k], lev[i, :k] = hi, ai, li
    return h, adj, lev


@pytest.fixture(scope="module")
def gnn():
    layer = GatedGraphNetwork(units=D, messages=(16, 16))
    layer.build((None, None, D))
    return layer


def test_level_parallel_equals_node_by_node_values_and_gradients(gnn):
    rng = np.random.default_rng(0)
    for n in (5, 9, 12):
        a = random_dag(rng, n)
        h0 = rng.normal(size=(n, D)).astype(np.float32)
        levels = np.array(topological_levels(a))
        order = topological_order(a)
        one_per_level = np.empty(n, np.int32)
        one_per_level[order] = np.arange(n)  # node order[i] alone at level i: the node-by-node scheme
        assert levels.max() + 1 < n  # the levelling is shallower than node by node
        out = {}
        for name, lev in (("levels", levels), ("nodes", one_per_level)):
            with tf.GradientTape() as tape:
                y = gnn((tf.constant(h0[None]), tf.constant(a[None]), tf.constant(lev[None])))
                loss = tf.reduce_sum(y * np.arange(D, dtype=np.float32))
            out[name] = (y.numpy(), [g.numpy() for g in tape.gradient(loss, gnn.trainable_variables)])
        assert all(np.abs(g).sum() > 0 for g in out["levels"][1])  # gradients reach every GNN weight
        np.testing.assert_allclose(out["levels"][0], out["nodes"][0], rtol=1e-5, atol=1e-6)
        for g1, g2 in zip(out["levels"][1], out["nodes"][1]):
            np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6)


def test_messages_only_along_edges(gnn):
    """Changing a node with no path to or from v leaves v unchanged; changing
    a predecessor changes it."""
    # 0 -> 1 -> 2, and 3 -> 4 apart
    a = np.zeros((5, 5), np.float32)
    a[0, 1] = a[1, 2] = a[3, 4] = 1
    lev = np.array(topological_levels(a), np.int32)
    h0 = np.random.default_rng(1).normal(size=(5, D)).astype(np.float32)
    base = gnn((h0[None], a[None], lev[None])).numpy()[0]
    changed = h0.copy()
    changed[3] += 1.0
    other = gnn((changed[None], a[None], lev[None])).numpy()[0]
    np.testing.assert_array_equal(other[:3], base[:3])
    assert not np.allclose(other[3:], base[3:])
    changed = h0.copy()
    changed[0] += 1.0
    assert not np.allclose(gnn((changed[None], a[None], lev[None])).numpy()[0][2], base[2])


def test_padded_batch_equals_one_graph_at_a_time_in_one_trace(gnn):
    rng = np.random.default_rng(2)
    graphs = []
    for n in (3, 7, 11):
        a = random_dag(rng, n)
        graphs.append((rng.normal(size=(n, D)).astype(np.float32), a, np.array(topological_levels(a))))
    fn = tf.function(lambda h, a, l: gnn((h, a, l)),
                     input_signature=[tf.TensorSpec([None, None, D]), tf.TensorSpec([None, None, None]),
                                      tf.TensorSpec([None, None], tf.int32)])
    batch = fn(*pad(graphs, 12)).numpy()
    for i, g in enumerate(graphs):
        alone = fn(*pad([g], len(g[2]))).numpy()[0]
        np.testing.assert_allclose(batch[i, :len(g[2])], alone, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(batch[i, len(g[2]):], 0.0)  # padding stays as it came
    assert fn.experimental_get_tracing_count() == 1


def test_synchronous_on_a_chain_equals_the_hand_unrolled_updates(gnn):
    """Synchronous, 2 steps on 0 -> 1 -> 2: every node updates at once from
    its predecessors' previous embeddings (a source from a zero message)."""
    layer = GatedGraphNetwork(units=D, messages=(16, 16), propagation="synchronous", steps=2)
    layer.build((None, None, D))
    layer.set_weights(gnn.get_weights())
    a = np.zeros((3, 3), np.float32)
    a[0, 1] = a[1, 2] = 1
    h = np.random.default_rng(3).normal(size=(3, D)).astype(np.float32)
    got = layer((h[None], a[None], np.array([[0, 1, 2]], np.int32))).numpy()[0]
    x = h
    for _ in range(2):
        m = layer._message(tf.constant(x)).numpy()
        incoming = np.stack([np.zeros(D, np.float32), m[0], m[1]])
        x = layer.gru(tf.constant(incoming), [tf.constant(x)])[0].numpy()
    np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-6)


def test_forward_backward_on_a_chain_steps_in_order(gnn):
    """On 0 -> 1 -> 2 one pass is 2|V| - 1 = 5 node updates: 0, 1, 2 from
    their predecessors, then 1, 0 from their successors."""
    a = np.zeros((3, 3), np.float32)
    a[0, 1] = a[1, 2] = 1
    h = np.random.default_rng(4).normal(size=(3, D)).astype(np.float32)
    got = gnn((h[None], a[None], np.array([[0, 1, 2]], np.int32))).numpy()[0]
    x = h.copy()

    def update(v, src):
        m = gnn._message(tf.constant(x)).numpy()
        incoming = m[src].sum(0) if src else np.zeros(D, np.float32)
        x[v] = gnn.gru(tf.constant(incoming[None]), [tf.constant(x[v][None])])[0].numpy()[0]

    for v, src in ((0, []), (1, [0]), (2, [1]), (1, [2]), (0, [1])):
        update(v, src)
    np.testing.assert_allclose(got, x, rtol=1e-5, atol=1e-6)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="propagation must be one of forward_backward, synchronous"):
        GatedGraphNetwork(propagation="async")
    with pytest.raises(ValueError, match="node embeddings have 4 features, the network 8 units"):
        GatedGraphNetwork(units=8).build((None, None, 4))
    cyclic = np.array([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="the graph has a cycle through node 0"):
        topological_levels(cyclic)
    assert topological_levels(np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]])) == [0, 1, 2]
    config = GatedGraphNetwork(units=8, propagation="synchronous", steps=3).get_config()
    assert GatedGraphNetwork.from_config(config).get_config() == config


def test_a_levelling_with_empty_levels_runs_no_layer_on_them(gnn):
    """Levels 0, 2, 4 on a chain (1 and 3 empty) give what 0, 1, 2 give."""
    a = np.zeros((3, 3), np.float32)
    a[0, 1] = a[1, 2] = 1
    h = np.random.default_rng(5).normal(size=(1, 3, D)).astype(np.float32)
    compact = gnn((h, a[None], np.array([[0, 1, 2]], np.int32))).numpy()
    gapped = gnn((h, a[None], np.array([[0, 2, 4]], np.int32))).numpy()
    np.testing.assert_allclose(gapped, compact, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# GHN-2's virtual edges
# ---------------------------------------------------------------------------


def test_virtual_edges_by_hand():
    # 0 -> 1 -> 2 -> 3 -> 4, and 0 -> 2: shortest paths 0->3 is 2, 0->4 is 3, 1->3 and 2->4 are 2, 1->4 is 3
    a = np.zeros((5, 5), np.float32)
    a[0, 1] = a[1, 2] = a[2, 3] = a[3, 4] = a[0, 2] = 1
    expected = np.zeros((5, 5), np.float32)
    expected[0, 3] = expected[1, 3] = expected[2, 4] = 1 / 2
    expected[0, 4] = expected[1, 4] = 1 / 3
    np.testing.assert_array_equal(virtual_edges(a), expected)
    expected[0, 4] = expected[1, 4] = 0.0
    np.testing.assert_array_equal(virtual_edges(a, cutoff=2), expected)   # s <= cutoff only
    np.testing.assert_array_equal(virtual_edges(a, cutoff=1), np.zeros((5, 5), np.float32))


@pytest.fixture(scope="module")
def gnn_ve():
    layer = GatedGraphNetwork(units=D, messages=(16, 16), virtual_edges=True)
    layer.build((None, None, D))
    return layer


def test_virtual_edges_level_parallel_equals_node_by_node(gnn_ve):
    rng = np.random.default_rng(5)
    for n in (6, 10):
        a = random_dag(rng, n, p=0.3)
        v = virtual_edges(a)
        assert v.any()
        h0 = rng.normal(size=(n, D)).astype(np.float32)
        levels = np.array(topological_levels(a))
        one_per_level = np.empty(n, np.int32)
        one_per_level[topological_order(a)] = np.arange(n)
        out = {}
        for name, lev in (("levels", levels), ("nodes", one_per_level)):
            with tf.GradientTape() as tape:
                y = gnn_ve((h0[None], a[None], lev[None], v[None]))
                loss = tf.reduce_sum(y * np.arange(D, dtype=np.float32))
            out[name] = (y.numpy(), [g.numpy() for g in tape.gradient(loss, gnn_ve.trainable_variables)])
        assert all(np.abs(g).sum() > 0 for g in out["levels"][1])  # the virtual-edge MLP is trained too
        np.testing.assert_allclose(out["levels"][0], out["nodes"][0], rtol=1e-5, atol=1e-6)
        for g1, g2 in zip(out["levels"][1], out["nodes"][1]):
            np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6)


def test_virtual_edges_synchronous_by_hand_and_zero_virtual_is_the_plain_network(gnn_ve):
    """One synchronous step on 0 -> 1 -> 2: node 2 receives MLP(h1) + MLP_sp(h0) / 2; with no virtual
    edge the network is the one without the option (same shared weights)."""
    layer = GatedGraphNetwork(units=D, messages=(16, 16), propagation="synchronous", steps=1, virtual_edges=True)
    layer.build((None, None, D))
    layer.set_weights(gnn_ve.get_weights())
    a = np.zeros((3, 3), np.float32)
    a[0, 1] = a[1, 2] = 1
    v = virtual_edges(a)
    h = np.random.default_rng(6).normal(size=(3, D)).astype(np.float32)
    lev = np.array([[0, 1, 2]], np.int32)
    got = layer((h[None], a[None], lev, v[None])).numpy()[0]
    m = layer._message(tf.constant(h)).numpy()
    real, virtual = m[:, :D], m[:, D:]
    incoming = np.stack([np.zeros(D, np.float32), real[0], real[1] + virtual[0] / 2])
    np.testing.assert_allclose(got, layer.gru(tf.constant(incoming), [tf.constant(h)])[0].numpy(),
                               rtol=1e-5, atol=1e-6)
    plain = GatedGraphNetwork(units=D, messages=(16, 16))
    plain.build((None, None, D))
    plain.set_weights([w.numpy() for w in gnn_ve.weights if "virtual" not in w.path])
    rng = np.random.default_rng(7)
    a = random_dag(rng, 8)
    h = rng.normal(size=(8, D)).astype(np.float32)
    lev = np.array(topological_levels(a), np.int32)
    np.testing.assert_allclose(gnn_ve((h[None], a[None], lev[None], np.zeros((1, 8, 8), np.float32))).numpy(),
                               plain((h[None], a[None], lev[None])).numpy(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"takes \[h, adjacency, levels, virtual\] \(virtual_edges=True\), "
                                         r"got 3 inputs"):
        gnn_ve((h[None], a[None], lev[None]))


@pytest.mark.parametrize("virtual", [False, True])
def test_level_parallel_equals_ppuda_style_node_loop(gnn, gnn_ve, virtual):
    """``call`` (level by level) against ``node_by_node`` (one node per step,
    messages per edge, batched over graphs by node index as ppuda's GatedGNN):
    an independent implementation of the same scheme, on a padded batch."""
    layer = gnn_ve if virtual else gnn
    rng = np.random.default_rng(8)
    graphs = []
    for n in (4, 9, 11):
        a = np.triu((rng.random((n, n)) < 0.35).astype(np.float32), 1)   # numbered in a topological order
        graphs.append((rng.normal(size=(n, D)).astype(np.float32), a, np.array(topological_levels(a))))
    h, a, lev = pad(graphs, 11)
    inputs = [h, a, lev] + ([np.stack([virtual_edges(x) for x in a])] if virtual else [])
    with tf.GradientTape(persistent=True) as tape:
        fast, slow = layer(inputs), layer.node_by_node(inputs)
        weights = np.arange(D, dtype=np.float32)
        losses = [tf.reduce_sum(y * weights) for y in (fast, slow)]
    np.testing.assert_allclose(fast.numpy(), slow.numpy(), rtol=1e-5, atol=1e-6)
    for g1, g2 in zip(*[tape.gradient(loss, layer.trainable_variables) for loss in losses]):
        # The two sum messages in different orders (einsum, segment sum): float32 rounding at the scale of the
        # tensor's largest entries, so an entry that nearly cancels is compared against that scale.
        g1, g2 = g1.numpy(), g2.numpy()
        np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6 * max(1.0, float(np.abs(g2).max())))
