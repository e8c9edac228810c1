"""The whole network of a block-space architecture (``dag_space``) as a
padded graph for the Graph HyperNetwork.

Slots, in order: ``stem``; per block ``b``: the two input nodes
(``bottleneck``), node slots ``0 .. N - 1`` (typed by the architecture's
operator: the node types are part of the encoding, ``node_types``) and
``concat`` (the block's output); ``head``.  Edges: a block's source (the
stem or the ``concat`` of block ``b - 1`` / ``b - 2``) to its input node,
each input a node reads to the node, every leaf to ``concat``, the last
``concat`` to the head.  A slot is present when it has a path to the head
(a node slot beyond the architecture's node count, or an input node no node
reads, is absent).

Every weight of the executor (``dag_models.DagExecutor``) is generated from
a slot: a node slot's embedding gives the parameters of every operator at
that slot (the executor runs the one its node type names); the stem, the
head's bias from theirs.  The input nodes' BN and 1x1 kernel and the head's
BN and logits kernel read a varying number of leaves: their rows for the
source block's leaf ``j`` are generated from the edge (leaf ``j`` ->
input node), the appendix's edge activations (``edge_source`` ``[blocks +
1, 2, N]``: the slot of leaf ``j`` of input ``t``'s source, the stem at
``j = 0`` where it is the stem, -1 elsewhere; row ``blocks`` is the head).
"""

from __future__ import annotations

import re
from typing import Dict, List, Sequence, Tuple

import numpy as np

from hypernets.ghn.dag_space import OPS, DagArchitecture, DagSearchSpace
from hypernets.ghn.network_graph import graph_arrays

#: Node types, in the order of the embedding's rows.
DAG_NODE_TYPES: Tuple[str, ...] = ("stem", "bottleneck", "concat", "head") + OPS


class DagNetworkGraph:
    """Slots and ``encode`` of ``space`` on ``input_shape`` (module docstring)."""

    node_type_names = DAG_NODE_TYPES
    executor_keys = ("node_ops", "block_adjacency", "leaves")

    def __init__(self, space: DagSearchSpace, input_shape: Sequence[int], virtual_edges: int = 0,
                 stacked: bool = False):
        if int(virtual_edges) < 0:
            raise ValueError(f"virtual_edges must be >= 0 (0: none), got {virtual_edges}")
        self.space = space
        self.virtual_edges, self.stacked = int(virtual_edges), bool(stacked)
        self.plan = space.plan(tuple(int(d) for d in input_shape))
        n = space.num_nodes
        self.stem_slot = 0
        self.bottleneck_slot: List[List[int]] = []
        self.node_slot: List[List[int]] = []
        self.concat_slot: List[int] = []
        self.types: List[str] = ["stem"]
        self.modules: List[int] = [0]
        for blk in self.plan:
            base = len(self.types)
            self.bottleneck_slot.append([base, base + 1])
            self.node_slot.append(list(range(base + 2, base + 2 + n)))
            self.concat_slot.append(base + 2 + n)
            self.types += ["bottleneck"] * 2 + ["node"] * n + ["concat"]
            self.modules += [blk.index] * (n + 3)
        self.head_slot = len(self.types)
        self.types.append("head")
        self.modules.append(len(self.plan) - 1)

    @property
    def num_nodes(self) -> int:
        return len(self.types)

    def slot_modules(self) -> List[int]:
        """Each slot's module: its block (the stem block 0's, the head the last's)."""
        return list(self.modules)

    def static_node_types(self):
        """None: node slots take their type from the architecture."""
        return None

    def edge_destinations(self) -> List[int]:
        """For every flattened ``(row, input, leaf)`` of ``edge_source``, the
        slot the edge enters (an input node, or the head)."""
        n = self.space.num_nodes
        out = [self.bottleneck_slot[b][t] for b in range(len(self.plan)) for t in (0, 1) for _ in range(n)]
        return out + [self.head_slot] * (2 * n)

    def _source(self, src: int) -> int:
        return self.stem_slot if src < 0 else self.concat_slot[src]

    def encode(self, arch: DagArchitecture) -> Dict[str, np.ndarray]:
        """The fixed-shape float32 arrays of ``arch``, a block of at most
        ``space.num_nodes`` nodes (the GHN trains on smaller ones)."""
        n = self.space.num_nodes
        k = len(getattr(arch, "nodes", ()))
        if not 1 <= k <= n:
            raise ValueError(f"the GHN's graph holds blocks of 1 to {n} nodes, got {k}")
        arch = self.space.with_nodes(k).validate(arch)
        leaves = arch.leaves()
        s = self.num_nodes
        adj = np.zeros((s, s), bool)
        src = -np.ones((len(self.plan) + 1, 2, n), np.int64)
        types = np.array([DAG_NODE_TYPES.index(t) if t != "node" else 0 for t in self.types], np.int64)
        for blk in self.plan:
            b = blk.index
            for t in (0, 1):
                if not arch.reads_input(t):
                    continue
                adj[self._source(blk.sources[t]), self.bottleneck_slot[b][t]] = True
                if blk.sources[t] < 0:
                    src[b, t, 0] = self.stem_slot
                else:
                    src[b, t, leaves] = [self.node_slot[blk.sources[t]][j] for j in leaves]
            for j, node in enumerate(arch.nodes):
                v = self.node_slot[b][j]
                types[v] = DAG_NODE_TYPES.index(node.op)
                for u in node.inputs:
                    adj[self.bottleneck_slot[b][u] if u < 2 else self.node_slot[b][u - 2], v] = True
            for j in leaves:
                adj[self.node_slot[b][j], self.concat_slot[b]] = True
        last = len(self.plan) - 1
        adj[self.concat_slot[last], self.head_slot] = True
        src[len(self.plan), 0, leaves] = [self.node_slot[last][j] for j in leaves]
        out = graph_arrays(adj, self.head_slot, self.virtual_edges, self.modules if self.stacked else None)
        enc = self.space.with_nodes(k).encode(arch)
        ops = -np.ones(n, np.float32)
        ops[:k] = enc["node_ops"]
        block_adj = np.zeros((n + 2, n), np.float32)
        block_adj[:k + 2, :k] = enc["adjacency"]
        leaf_mask = np.zeros(n, np.float32)
        leaf_mask[:k] = enc["leaves"]
        out.update(edge_source=src.astype(np.float32), node_types=types.astype(np.float32), node_ops=ops,
                   block_adjacency=block_adj, leaves=leaf_mask)
        return out


_BOTTLENECK = re.compile(r"^b(\d+)_in(\d)_(?:bn|conv)$")
_NODE = re.compile(r"^b(\d+)n(\d+)_(\w+?)_u(\d+)_(?:bn|sep|conv)$")
_KINDS = {"gamma": "gamma", "beta": "beta", "depthwise_kernel": "depthwise", "bias": "bias"}
_GROUPS = {"sep3x3": "sep", "sep5x5": "sep", "dil_sep3x3": "dil_sep", "dil_sep5x5": "dil_sep"}


def dag_param_specs(executor, graph: DagNetworkGraph):
    """A ``ParamSpec`` for every trainable variable of ``executor`` (a
    ``dag_models.DagExecutor``, in ``trainable_variables`` order): which
    slot or edges generate it, through which branch.  The separable
    operators share branches (``sep``: 3x3 and 5x5, the 3x3 kernel the
    centre of the 5x5; ``dil_sep`` likewise), the others have their own."""
    from hypernets.ghn.dag_models import executor_variables
    from hypernets.ghn.hypernet import ParamSpec
    index = {v.path: k for k, v in enumerate(executor.trainable_variables)}
    n = graph.space.num_nodes
    plan = graph.plan
    specs = {}

    def add(var, role, slot, edge=None):
        kind = _KINDS.get(var.name, "kernel")
        rank = len(var.shape)
        tile = () if kind == "bias" else (0,) if rank <= 2 else (2,) if kind == "depthwise" else (2, 3)
        k = index[var.path]
        specs[k] = ParamSpec(k, tuple(int(d) for d in var.shape), role, kind, slot, tile, edge)

    def parts(src):
        return (graph.space.filters,) if src < 0 else (plan[src].channels,) * n

    for name, var in executor_variables(executor).items():
        layer = name.rsplit("/", 1)[0]
        if layer == "stem_conv":
            add(var, "stem/kernel", graph.stem_slot)
        elif layer == "head_bn" or (layer == "logits" and var.name == "kernel"):
            add(var, f"head/{var.name}", graph.head_slot, (len(plan), 0, 0, parts(len(plan) - 1)))
        elif layer == "logits":
            add(var, "head/bias", graph.head_slot)
        elif _BOTTLENECK.match(layer):
            b, t = (int(x) for x in _BOTTLENECK.match(layer).groups())
            axis = 2 if var.name == "kernel" else 0
            add(var, f"bottleneck/{var.name}", graph.bottleneck_slot[b][t],
                (b, t, axis, parts(plan[b].sources[t])))
        else:
            match = _NODE.match(layer)
            if match is None:
                raise ValueError(f"no graph node generates the executor layer {layer!r}")
            b, j, op, unit = match.groups()
            add(var, f"{_GROUPS.get(op, op)}/{unit}/{var.name}", graph.node_slot[int(b)][int(j)])
    missing = [v.path for k, v in enumerate(executor.trainable_variables) if k not in specs]
    if missing:
        raise ValueError(f"no graph node generates {missing}")
    return [specs[k] for k in range(len(specs))]
