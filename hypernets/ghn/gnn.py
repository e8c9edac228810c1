"""The graph network of a Graph HyperNetwork (Zhang et al., ICLR 2019), on
TensorFlow ops: node embeddings updated by a GRU from messages of an MLP,
synchronously or in the paper's forward-backward order (section 4.4).

Graphs enter as padded tensors, so one traced function serves graphs of any
size and several graphs per call:

* ``h`` ``[B, N, D]``: initial node embeddings (padding rows are ignored);
* ``adjacency`` ``[B, N, N]``: ``adjacency[b, u, v] = 1`` for an edge
  ``u -> v`` (activations flow from u to v), 0 elsewhere and for padding;
* ``levels`` ``[B, N]`` int: a node's topological level (0 for sources; each
  edge goes from a lower level to a higher one), -1 for padding;
* with ``virtual_edges`` (GHN-2, Knyazev et al. 2021), ``virtual`` ``[B, N,
  N]``: ``virtual[b, u, v] = 1 / s`` where the shortest directed path from u
  to v has ``1 < s <= cutoff`` edges, 0 elsewhere (``virtual_edges()``).  A
  node then also receives ``sum_u virtual[u, v] * MLP_sp(h_u)`` from a second
  message MLP; a virtual edge, too, goes from a lower level to a higher one,
  so the level-parallel order stays exact.

Forward-backward propagation updates nodes in topological order, each from
its predecessors' current embeddings, then in reverse order, each from its
successors' (the order of a backward pass); ``passes`` repeats it.  As in
equation 15 the forward half updates every node (a source from an empty
message); the backward half updates the nodes that have successors (a sink
has nothing to receive; equation 15 would update the sinks other than the
last one visited from an empty message, which depends on the tie order).  The
paper (and ppuda's GatedGNN) visit one node per step, ``2|V| - 1`` steps.
Nodes of one level share no edge, so updating a whole level at once gives
exactly the node-by-node result in as many steps as there are levels:
``levels`` may be any topological levelling, and numbering the nodes in a
topological order (one node per level) is the node-by-node scheme itself.
"""

from __future__ import annotations

import keras
import tensorflow as tf

PROPAGATIONS = ("forward_backward", "synchronous")


class GatedGraphNetwork(keras.layers.Layer):
    """Message passing over padded DAGs; returns the final embeddings ``[B, N, D]``.

    ``messages``: hidden sizes of the message MLP (ReLU between layers, the
    last one linear to the embedding size); the update is a GRU cell of the
    embedding size (the paper: embeddings of 32, a 2 x 32 message MLP).
    ``propagation``: ``forward_backward`` (the paper's) or ``synchronous``
    (every node at once from its predecessors, ``steps`` times).  A padding
    node's embedding is returned unchanged; a node without predecessors
    (or, backward, successors) receives a zero message.  ``static_shapes``
    (for XLA): a level step computes the GRU for every node and keeps the
    level's, instead of gathering the level's nodes (the same values).
    ``virtual_edges``: inputs are ``[h, adjacency, levels, virtual]``.
    """

    def __init__(self, units: int = 32, messages=(32, 32), propagation: str = "forward_backward",
                 passes: int = 1, steps: int = 5, static_shapes: bool = False, virtual_edges: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        if propagation not in PROPAGATIONS:
            raise ValueError(f"propagation must be one of {', '.join(PROPAGATIONS)}, got {propagation!r}")
        if int(passes) < 1 or int(steps) < 1:
            raise ValueError(f"passes and steps must be >= 1, got {passes} and {steps}")
        self.units, self.messages = int(units), tuple(int(m) for m in messages)
        self.propagation, self.passes, self.steps = propagation, int(passes), int(steps)
        self.static_shapes = bool(static_shapes)
        self.virtual_edges = bool(virtual_edges)
        self.message_layers = [keras.layers.Dense(m, activation="relu", name=f"message_{i}")
                               for i, m in enumerate(self.messages)]
        self.message_out = keras.layers.Dense(self.units, name="message_out")
        if self.virtual_edges:
            self.virtual_layers = [keras.layers.Dense(m, activation="relu", name=f"virtual_message_{i}")
                                   for i, m in enumerate(self.messages)]
            self.virtual_out = keras.layers.Dense(self.units, name="virtual_message_out")
        self.gru = keras.layers.GRUCell(self.units, name="update")

    def build(self, input_shape):
        h_shape = input_shape[0] if isinstance(input_shape, (list, tuple)) and isinstance(
            input_shape[0], (list, tuple)) else input_shape
        d = int(h_shape[-1])
        if d != self.units:
            raise ValueError(f"node embeddings have {d} features, the network {self.units} units")
        stacks = [(self.message_layers, self.message_out)]
        if self.virtual_edges:
            stacks.append((self.virtual_layers, self.virtual_out))
        for hidden, out in stacks:
            shape = (None, d)
            for layer in hidden:
                layer.build(shape)
                shape = (None, layer.units)
            out.build(shape)
        self.gru.build((None, self.units))
        self.built = True

    def _message(self, h):
        """A node's outgoing messages ``[..., D]``; with virtual edges its
        virtual-edge message follows on the same axis (``[..., 2D]``)."""
        x = h
        for layer in self.message_layers:
            x = layer(x)
        m = self.message_out(x)
        if not self.virtual_edges:
            return m
        x = h
        for layer in self.virtual_layers:
            x = layer(x)
        return tf.concat([m, self.virtual_out(x)], -1)

    def _incoming(self, weights, messages, equation):
        """Messages summed along ``weights`` by ``equation`` (with virtual
        edges, ``weights`` stacks real and virtual ones on its last axis)."""
        d = self.units
        if not self.virtual_edges:
            return tf.einsum(equation, weights, messages)
        return (tf.einsum(equation, weights[..., 0], messages[..., :d])
                + tf.einsum(equation, weights[..., 1], messages[..., d:]))

    def _update(self, h, incoming_weights, update_mask, external=None):
        """Nodes where ``update_mask`` ``[B, N]`` is true take the GRU of
        their incoming messages along ``incoming_weights`` ``[B, N(dst),
        N(src)(, 2)]`` (plus ``external`` ``[B, N, D]`` where given)."""
        b, n = tf.shape(h)[0], tf.shape(h)[1]
        flat = tf.reshape(h, [-1, self.units])
        m = tf.reshape(self._message(flat), [b, n, -1])
        incoming = self._incoming(incoming_weights, m, "bvu,bud->bvd")  # [B, N(dst), D]: sum over sources
        if external is not None:
            incoming = incoming + external
        new, _ = self.gru(tf.reshape(incoming, [-1, self.units]), [flat])
        new = tf.reshape(new, [b, n, self.units])
        return tf.where(update_mask[..., None], new, h)

    def _level_step(self, h, messages, weights, update_mask, external=None):
        """Update only the nodes of ``update_mask`` ``[B, N]`` (a level),
        each from the cached messages of the nodes ``weights`` ``[B, N(v),
        N(u)(, 2)]`` connects it to (plus ``external`` ``[B, N, D]`` where
        given), and refresh their messages in the cache.  A level with no
        node to update (possible under a levelling other than the
        longest-path one) runs no layer: layers never see empty batches."""
        if self.static_shapes:  # XLA: every node computed, the level's kept (the same values)
            return self._update(h, weights, update_mask, external), messages
        idx = tf.where(update_mask)                                      # [K, 2]: (graph, node)

        def step():
            incoming = self._incoming(tf.gather_nd(weights, idx), tf.gather(messages, idx[:, 0]), "kn,knd->kd")
            if external is not None:
                incoming = incoming + tf.gather_nd(external, idx)
            new, _ = self.gru(incoming, [tf.gather_nd(h, idx)])
            return (tf.tensor_scatter_nd_update(h, idx, new),
                    tf.tensor_scatter_nd_update(messages, idx, self._message(new)))

        return tf.cond(tf.shape(idx)[0] > 0, step, lambda: (h, messages))

    def call(self, inputs, external=None):
        """``external`` ``[B, N, D]`` (optional): a message added to what
        each node receives from its predecessors (every synchronous step;
        the forward halves of forward-backward), e.g. the stacked GHN's
        embedding of the previous module at a module's input nodes."""
        expected = 4 if self.virtual_edges else 3
        if len(inputs) != expected:
            raise ValueError(f"the graph network takes [h, adjacency, levels{', virtual' * self.virtual_edges}] "
                             f"(virtual_edges={self.virtual_edges}), got {len(inputs)} inputs")
        h, adjacency, levels = inputs[:3]
        h = tf.convert_to_tensor(h)
        adjacency = tf.cast(adjacency, h.dtype)
        levels = tf.cast(levels, tf.int32)
        real = levels >= 0
        edges = adjacency                                   # [B, u, v]: u -> v (virtual ones on a last axis)
        if self.virtual_edges:
            edges = tf.stack([adjacency, tf.cast(inputs[3], h.dtype)], -1)
        predecessors = tf.transpose(edges, [0, 2, 1, 3] if self.virtual_edges else [0, 2, 1])  # [B, v, u]
        if external is not None:
            external = tf.cast(external, h.dtype)
        if self.propagation == "synchronous":
            for _ in range(self.steps):
                h = self._update(h, predecessors, real, external)
            return h
        top = tf.reduce_max(levels)  # the deepest level over the batch
        has_successor = tf.reduce_any(adjacency > 0, axis=2)  # a virtual edge implies a real path
        b, n = tf.shape(h)[0], tf.shape(h)[1]
        # XLA needs a static bound to differentiate the loops: with static_shapes, N (a longest-path levelling
        # has at most N levels); otherwise none (any levelling, gaps included).
        bound = h.shape[1] if self.static_shapes else None
        for _ in range(self.passes):
            messages = tf.reshape(self._message(tf.reshape(h, [-1, self.units])), [b, n, -1])
            h, messages = tf.while_loop(
                lambda l, h, m: l <= top,
                lambda l, h, m: (l + 1, *self._level_step(h, m, predecessors, tf.equal(levels, l), external)),
                (tf.constant(0), h, messages), maximum_iterations=bound)[1:]
            # backward: from the second deepest level down, each node with successors from them
            h = tf.while_loop(
                lambda l, h, m: l >= 0,
                lambda l, h, m: (l - 1, *self._level_step(h, m, edges, tf.equal(levels, l) & has_successor)),
                (top - 1, h, messages), maximum_iterations=bound)[1]
        return h

    def node_by_node(self, inputs, external=None):
        """The forward-backward scheme visited one node at a time, as ppuda's
        GatedGNN does (the baseline of ``benchmarks/ghn_propagation`` and
        an independent check of ``call``): step ``v`` gathers node ``v``'s
        neighbours in every graph of the batch, runs the message MLP on
        them, sums and updates node ``v`` by the GRU, so a pass is ``2N - 1``
        steps of an ``N``-node padded batch and messages are computed per
        edge, not cached.  Nodes must be numbered in a topological order
        (every edge ``u -> v`` has ``u < v``); same inputs and the same
        result as ``call`` (the backward half skips nodes without
        successors, as ``call`` does; ppuda also updates sinks from a zero
        message), ``external`` included.  Forward-backward only."""
        h, adjacency, levels = inputs[:3]
        h = tf.convert_to_tensor(h)
        adjacency = tf.cast(adjacency, h.dtype)
        real = tf.cast(levels, tf.int32) >= 0
        weights = adjacency                                            # [B, u, v]
        if self.virtual_edges:
            weights = tf.stack([adjacency, tf.cast(inputs[3], h.dtype)], -1)
        b, n = tf.shape(h)[0], int(h.shape[1])
        has_successor = tf.reduce_any(adjacency > 0, axis=2)
        d = self.units

        def visit(h, v, w, update, extra=None):
            """Node ``v`` of every graph where ``update`` ``[B]``, from the
            neighbours ``w`` ``[B, N(, 2)]`` weighs (plus ``extra`` ``[B, D]``)."""
            connected = tf.reduce_any(tf.reshape(w, [b, n, -1]) > 0, -1)
            e = tf.where(connected)                                    # [E, 2]: (graph, neighbour)

            def gathered():
                m = self._incoming(tf.gather_nd(w, e), self._message(tf.gather_nd(h, e)), "e,ed->ed")
                return tf.math.unsorted_segment_sum(m, e[:, 0], b)

            incoming = tf.cond(tf.shape(e)[0] > 0, gathered, lambda: tf.zeros([b, d], h.dtype))
            if extra is not None:
                incoming = incoming + extra
            new, _ = self.gru(incoming, [h[:, v]])
            new = tf.where(update[:, None], new, h[:, v])
            index = tf.stack([tf.range(b), tf.fill([b], v)], 1)
            return tf.tensor_scatter_nd_update(h, index, new)

        for _ in range(self.passes):
            for v in range(n):                              # forward: from the predecessors
                h = visit(h, v, weights[:, :, v], real[:, v], None if external is None else external[:, v])
            for v in range(n - 2, -1, -1):                  # backward: from the successors
                h = visit(h, v, weights[:, v, :], real[:, v] & has_successor[:, v])
        return h

    def get_config(self):
        return {**super().get_config(), "units": self.units, "messages": list(self.messages),
                "propagation": self.propagation, "passes": self.passes, "steps": self.steps,
                "static_shapes": self.static_shapes, "virtual_edges": self.virtual_edges}


class StackedGraphNetwork(keras.layers.Layer):
    """The stacked GHN (section 4.3, equations 12-14): the graph network run
    module by module along the depth of a network of repeated modules.

    Module ``i``'s nodes propagate over the edges inside module ``i`` only
    (``GatedGraphNetwork`` on the module's subgraph: the other nodes are
    padding for it); its *input nodes* (``entry``: the nodes an edge from an
    earlier module reaches) receive the module's predecessor embedding
    ``h_A(i-1)``, the mean final embedding of module ``i - 1``'s nodes
    (equation 13; ``h_A(-1) = 0``, equation 12), as an extra message
    (``GatedGraphNetwork.call``'s ``external``).  ``share``: one graph
    network for every module (the paper's) or one per module; ``pass_embeddings``
    off sends no ``h_A`` (each module on its own): the two ablations of
    Table 5.

    ``node_modules``: each node's module (static: a padded node's slot
    belongs to one module whatever the architecture).  Inputs
    ``[h, adjacency, levels, entry(, virtual)]``: ``levels`` ``[B, N]``
    levels of each module's own subgraph (-1 for padding), ``entry`` ``[B,
    N]`` 1 at the input nodes.  Other arguments as ``GatedGraphNetwork``.
    """

    def __init__(self, node_modules, units: int = 32, messages=(32, 32), *, share: bool = True,
                 pass_embeddings: bool = True, propagation: str = "forward_backward", passes: int = 1,
                 steps: int = 5, static_shapes: bool = False, virtual_edges: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.node_modules = [int(m) for m in node_modules]
        if not self.node_modules or min(self.node_modules) < 0:
            raise ValueError(f"node_modules must give every node a module index >= 0, got {node_modules}")
        self.num_modules = max(self.node_modules) + 1
        self.units = int(units)
        self.share, self.pass_embeddings = bool(share), bool(pass_embeddings)
        self.virtual_edges = bool(virtual_edges)
        self._gnn_config = dict(messages=tuple(int(m) for m in messages), propagation=propagation,
                                passes=int(passes), steps=int(steps), static_shapes=bool(static_shapes),
                                virtual_edges=self.virtual_edges)
        self.gnns = [GatedGraphNetwork(self.units, name="graph_network" if self.share else f"graph_network_{i}",
                                       **self._gnn_config)
                     for i in range(1 if self.share else self.num_modules)]

    def build(self, input_shape):
        for gnn in self.gnns:
            gnn.build(input_shape)
        self.built = True

    def call(self, inputs):
        expected = 5 if self.virtual_edges else 4
        if len(inputs) != expected:
            raise ValueError(f"the stacked graph network takes [h, adjacency, levels, entry"
                             f"{', virtual' * self.virtual_edges}], got {len(inputs)} inputs")
        h, adjacency, levels, entry = inputs[:4]
        h = tf.convert_to_tensor(h)
        if int(h.shape[1]) != len(self.node_modules):
            raise ValueError(f"graphs of {h.shape[1]} nodes, node_modules names {len(self.node_modules)}")
        adjacency = tf.cast(adjacency, h.dtype)
        levels = tf.cast(levels, tf.int32)
        entry = tf.cast(entry, h.dtype)
        modules = tf.constant(self.node_modules, tf.int32)
        summary = None                                                   # h_A(i - 1) [B, D]
        for i in range(self.num_modules):
            inside = tf.equal(modules, i)[None] & (levels >= 0)          # [B, N]
            f = tf.cast(inside, h.dtype)
            pair = f[:, :, None] * f[:, None, :]
            graph = [h, adjacency * pair, tf.where(inside, levels, -1)]
            if self.virtual_edges:
                graph.append(tf.cast(inputs[4], h.dtype) * pair)
            external = None
            if summary is not None:
                external = summary[:, None, :] * (entry * f)[..., None]
            h = self.gnns[0 if self.share else i](graph, external=external)
            if self.pass_embeddings:
                count = tf.maximum(tf.reduce_sum(f, 1, keepdims=True), 1.0)
                summary = tf.reduce_sum(h * f[..., None], 1) / count
        return h

    def get_config(self):
        return {**super().get_config(), "node_modules": self.node_modules, "units": self.units,
                "share": self.share, "pass_embeddings": self.pass_embeddings,
                **{k: list(v) if isinstance(v, tuple) else v for k, v in self._gnn_config.items()}}


def topological_levels(adjacency) -> "list[int]":
    """Longest-path levels of a DAG given as an ``[N, N]`` 0/1 matrix
    (``adjacency[u][v]``: edge u -> v); raises ValueError naming a node on a
    cycle."""
    import numpy as np
    a = np.asarray(adjacency) != 0
    n = a.shape[0]
    if a.shape != (n, n):
        raise ValueError(f"adjacency must be square, got shape {a.shape}")
    indegree = a.sum(0).astype(int)
    level = [0] * n
    ready = [v for v in range(n) if indegree[v] == 0]
    seen = 0
    while ready:
        u = ready.pop()
        seen += 1
        for v in np.flatnonzero(a[u]):
            level[v] = max(level[v], level[u] + 1)
            indegree[v] -= 1
            if indegree[v] == 0:
                ready.append(int(v))
    if seen < n:
        cyclic = int(np.flatnonzero(indegree > 0)[0])
        raise ValueError(f"the graph has a cycle through node {cyclic}")
    return level


def virtual_edges(adjacency, cutoff: int = 50):
    """GHN-2's virtual edges of a DAG ``[N, N]`` (``adjacency[u][v]``: edge
    u -> v): ``[N, N]`` float32 with ``1 / s`` where the shortest directed
    path from u to v has ``s`` edges, ``1 < s <= cutoff``, else 0."""
    import numpy as np
    a = np.asarray(adjacency) != 0
    n = a.shape[0]
    if a.shape != (n, n):
        raise ValueError(f"adjacency must be square, got shape {a.shape}")
    out = np.zeros((n, n), np.float32)
    for u in range(n):
        frontier = np.flatnonzero(a[u])
        seen = set(frontier.tolist())
        for s in range(2, int(cutoff) + 1):
            nxt = sorted({int(w) for v in frontier for w in np.flatnonzero(a[v])} - seen)
            if not nxt:
                break
            seen.update(nxt)
            out[u, nxt] = 1.0 / s
            frontier = nxt
    return out
