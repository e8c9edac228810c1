"""GHN graph propagation: level-parallel forward-backward over the node-by-node
order (ppuda's GatedGNN loop; the paper's equation 15), side by side.

    python -m benchmarks.ghn_propagation [--graphs=32 --nodes=17 --edge_prob=0.3 --repeats=30]

Both run the same compiled ``GatedGraphNetwork`` on the same padded batch of
random DAGs; they differ only in the levelling: the longest-path levels (a
level's nodes update together) or one node per level in a topological order
(node by node, ``2|V| - 1`` updates per pass).  Their outputs are equal (the
tests prove it); this measures the time of one forward pass, and of a forward
and backward (gradient) pass, after a warm-up, alternating the two.  Only the
graph network: the hypernet that turns embeddings into weights is not built
yet.
"""

from __future__ import annotations

import argparse
import platform
import time


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--graphs", type=int, default=32)
    p.add_argument("--nodes", type=int, default=17)
    p.add_argument("--edge_prob", type=float, default=0.3)
    p.add_argument("--units", type=int, default=32)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf
    from hypernets.ghn.gnn import GatedGraphNetwork, topological_levels

    rng = np.random.default_rng(args.seed)
    n, d = args.nodes, args.units
    adj = np.zeros((args.graphs, n, n), np.float32)
    levels = np.zeros((args.graphs, n), np.int32)
    serial = np.zeros((args.graphs, n), np.int32)
    for g in range(args.graphs):
        a = np.triu((rng.random((n, n)) < args.edge_prob).astype(np.float32), 1)
        adj[g] = a
        lev = topological_levels(a)
        levels[g] = lev
        order = sorted(range(n), key=lambda v: (lev[v], v))
        serial[g, order] = np.arange(n)
    h = rng.normal(size=(args.graphs, n, d)).astype(np.float32)
    layer = GatedGraphNetwork(units=d)
    layer.build((None, None, d))
    forward = tf.function(lambda h, a, l: layer((h, a, l)))

    @tf.function
    def backward(h, a, l):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer((h, a, l)))
        return tape.gradient(loss, layer.trainable_variables)

    inputs = {"level_parallel": (h, adj, levels), "node_by_node": (h, adj, serial)}
    times = {(fn, k): [] for fn in ("forward", "gradient") for k in inputs}
    for fn_name, fn in (("forward", forward), ("gradient", backward)):
        for k, x in inputs.items():
            fn(*x)  # warm-up (and the one trace)
        for _ in range(args.repeats):
            for k, x in inputs.items():
                t0 = time.perf_counter()
                out = fn(*x)
                (out if fn_name == "forward" else out[0]).numpy()
                times[(fn_name, k)].append(time.perf_counter() - t0)
    print(f"{platform.processor() or platform.machine()}, TensorFlow {tf.__version__}: {args.graphs} graphs of "
          f"{n} nodes, mean depth {levels.max(1).mean() + 1:.1f} levels (node by node: {n}), {d} units")
    for fn_name in ("forward", "gradient"):
        a = np.median(times[(fn_name, "level_parallel")])
        b = np.median(times[(fn_name, "node_by_node")])
        print(f"{fn_name:9s} level-parallel {a * 1e3:8.2f} ms   node-by-node {b * 1e3:8.2f} ms   ratio {b / a:5.2f}x")


if __name__ == "__main__":
    main()
