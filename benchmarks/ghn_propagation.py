"""GHN weight generation: level-parallel forward-backward against node-by-node
loops, side by side in one run.

    python -m benchmarks.ghn_propagation [--graphs=32 --nodes=17 --source=dag --repeats=30]

Graphs: ``--source=dag`` (the default) the blocks of the GHN paper's space
(``DagSearchSpace(num_nodes=N)``: two input nodes, N operator nodes, the
concatenation: N + 3 nodes), or ``--source=random`` DAGs of N nodes with
each forward edge present with probability ``--edge_prob``.

Weight generation is the graph network followed by the hypernet (an MLP of
2 x 64 shared by all nodes, each node's embedding to a 3x3x16x16 kernel, as
in the paper).  Three ways to run the same forward-backward scheme on the
same padded batch of random DAGs (outputs equal: the tests prove it), with
the same weights, each compiled once by ``tf.function``:

* ``ppuda loop``: ``GatedGraphNetwork.node_by_node``, ppuda's GatedGNN
  algorithm (one node index at a time for every graph of the batch, the
  message MLP on that node's neighbours, ``2N - 1`` steps a pass);
* ``one node a level``: ``call`` with one node per level (a topological
  numbering): the node-by-node order with this package's message cache;
* ``level-parallel``: ``call`` with the longest-path levels (a level's nodes
  update together: twice the depth in steps).

Timed: one forward pass, and a forward and backward (gradient) pass, after a
warm-up, the variants alternating; medians.
"""

from __future__ import annotations

import argparse
import platform
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--graphs", type=int, default=32)
    p.add_argument("--nodes", type=int, default=17)
    p.add_argument("--source", default="dag", choices=("dag", "random"))
    p.add_argument("--edge_prob", type=float, default=0.3)
    p.add_argument("--units", type=int, default=32)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf
    from hypernets.ghn.gnn import GatedGraphNetwork, topological_levels

    rng = np.random.default_rng(args.seed)
    d = args.units
    if args.source == "dag":
        from hypernets.ghn.dag_space import DagSearchSpace
        space = DagSearchSpace(num_nodes=args.nodes)
        graphs = [space.graph(space.sample(rng)) for _ in range(args.graphs)]
        n = len(graphs[0]["nodes"])
    else:
        n = args.nodes
    adj = np.zeros((args.graphs, n, n), np.float32)
    levels = np.zeros((args.graphs, n), np.int32)
    serial = np.tile(np.arange(n, dtype=np.int32), (args.graphs, 1))
    for g in range(args.graphs):
        if args.source == "dag":  # nodes listed in topological order
            ids = {node["id"]: i for i, node in enumerate(graphs[g]["nodes"])}
            a = np.zeros((n, n), np.float32)
            for src, dst in graphs[g]["edges"]:
                a[ids[src], ids[dst]] = 1.0
        else:
            a = np.triu((rng.random((n, n)) < args.edge_prob).astype(np.float32), 1)  # numbered topologically
        adj[g] = a
        levels[g] = topological_levels(a)
    h = rng.normal(size=(args.graphs, n, d)).astype(np.float32)
    layer = GatedGraphNetwork(units=d)
    layer.build((None, None, d))
    hypernet = keras.Sequential([keras.layers.Dense(64, activation="relu"), keras.layers.Dense(64, activation="relu"),
                                 keras.layers.Dense(3 * 3 * 16 * 16)])
    hypernet.build((None, d))
    params = layer.trainable_variables + hypernet.trainable_variables

    def generate(how, with_hypernet, h, a, l):
        e = layer.node_by_node((h, a, l)) if how == "ppuda" else layer((h, a, l))
        if not with_hypernet:
            return e
        return tf.reshape(hypernet(tf.reshape(e, [-1, d])), [-1, n, 3, 3, 16, 16])

    def make(how, with_hypernet):
        forward = tf.function(lambda h, a, l: generate(how, with_hypernet, h, a, l))

        @tf.function
        def gradient(h, a, l):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(generate(how, with_hypernet, h, a, l)))
            return tape.gradient(loss, params if with_hypernet else layer.trainable_variables)

        return forward, gradient

    variants = {"ppuda loop": ("ppuda", (h, adj, serial)), "one node a level": ("layer", (h, adj, serial)),
                "level-parallel": ("layer", (h, adj, levels))}
    print(f"{platform.processor() or platform.machine()}, TensorFlow {tf.__version__}: {args.graphs} "
          f"{'DagSearchSpace blocks' if args.source == 'dag' else 'random graphs'} of {n} nodes (mean depth {levels.max(1).mean() + 1:.1f} levels), {d} units; weight generation adds "
          f"the hypernet (2 x 64 -> 3x3x16x16 per node); times relative to level-parallel")
    for with_hypernet, what in ((False, "graph network"), (True, "weight generation")):
        fns = {k: make(how, with_hypernet) for k, (how, _) in variants.items()}
        ref = fns["level-parallel"][0](*variants["level-parallel"][1]).numpy()
        for k, (_, x) in variants.items():  # warm-up (the one trace), and the same outputs
            np.testing.assert_allclose(fns[k][0](*x).numpy(), ref, rtol=1e-4, atol=1e-5)
            fns[k][1](*x)
        times = {(i, k): [] for i in (0, 1) for k in variants}
        for i in (0, 1):
            for _ in range(args.repeats):
                for k, (_, x) in variants.items():
                    t0 = time.perf_counter()
                    out = fns[k][i](*x)
                    (out if i == 0 else out[0]).numpy()
                    times[(i, k)].append(time.perf_counter() - t0)
        for i, name in ((0, "forward"), (1, "gradient")):
            med = {k: float(np.median(times[(i, k)])) for k in variants}
            base = med["level-parallel"]
            print(f"{what:17s} {name:8s} " + "   ".join(f"{k} {v * 1e3:7.2f} ms ({v / base:4.2f}x)"
                                                      for k, v in med.items()))


if __name__ == "__main__":
    main()
