"""The whole network of a one-shot cell-space architecture as a padded graph
for the Graph HyperNetwork.

GHN (Zhang et al., 2019, section 4.1) represents an architecture as a DAG
whose nodes are operators and whose edges carry activations; the GHN's graph
network runs on it and a hypernet turns every node's final embedding into
that node's parameters.  To generate **every** weight of a candidate (stem,
reductions and head too), the graph here is the whole network, every cell
unrolled (GHN-2's choice; the paper's stacked GHN over repeated modules is
an alternative), with these node types (``NODE_TYPES``):

* ``stem`` (the 3x3 convolution), ``reduce`` (a stage's BN-ReLU-pool-1x1
  reduction of one state), ``head`` (BN-ReLU-pool-dense);
* per cell and choice block ``i``: ``block_conv`` (the concatenation of the
  chosen inputs, BN-ReLU-1x1 convolution), one node per op of the space
  (``identity``, ``sep3x3``, ...), ``sum`` (the sum of two ops);
* per cell ``concat`` (the cell's output).

Every node that any architecture can have owns a fixed *slot* (index) in the
padded graph, so the node type of a slot, and which of the one-shot model's
variables it generates, never change: an architecture decides which slots
are present and how they are connected.  ``encode`` gives, as fixed-shape
float32 arrays (one traced step serves every candidate):

* ``adjacency`` ``[N, N]`` (``u -> v``), ``levels`` ``[N]`` (longest-path
  topological level, ``-1`` for an absent slot);
* ``edge_source`` ``[cells, blocks, max_inputs]``: the slot whose output is
  input ``j`` of block ``i`` in cell ``c``, ``-1`` where not chosen (the
  block's 1x1 convolution rows for an input are generated from that edge,
  the appendix's edge activations for a varying number of inputs);
* ``input_mask``, ``op_mask``: the space's own encoding (the one-shot model
  that runs the generated network reads them);
* with ``virtual_edges=s`` (GHN-2's shortest-path edges up to ``s`` hops),
  ``virtual`` ``[N, N]``: ``1 / hops`` along them (``gnn.virtual_edges``);
* with ``stacked=True`` (the stacked GHN, ``gnn.StackedGraphNetwork``):
  ``module_levels`` ``[N]``, each present slot's longest-path level in its
  module's own subgraph (-1 absent), and ``entry`` ``[N]``, 1 at the
  module's input nodes (reached by an edge from an earlier module).

Modules (``slot_modules``): cell ``c``'s slots form module ``c``; the stem
joins module 0, a stage's reductions the module of the cell that follows
them, the head the last module.

A slot is present when the stand-alone network computes it: it lies on a
path to the head (a reduction of a state no cell reads is absent, as are the
ops a block does not choose and a ``sum`` of a single op).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np

from hypernets.ghn.gnn import topological_levels, virtual_edges
from oneshot_tf.methods.oneshot.cell_space import OPS, CellArchitecture, CellSearchSpace

#: Node types, in the order of the one-hot vector a node starts from.
NODE_TYPES: Tuple[str, ...] = ("stem", "reduce", "head", "block_conv") + tuple(OPS) + ("sum", "concat")


@dataclasses.dataclass(frozen=True)
class Slot:
    """One node the network can have: its type and where it sits (``cell``,
    ``block``: -1 outside cells; ``plan``: the index of its node in
    ``space.plan``)."""

    type: str
    plan: int
    cell: int = -1
    block: int = -1


class CellNetworkGraph:
    """Slots and the ``encode`` of ``space`` (a ``CellSearchSpace``) on
    ``input_shape`` (see the module docstring)."""

    def __init__(self, space: CellSearchSpace, input_shape: Sequence[int], virtual_edges: int = 0,
                 stacked: bool = False):
        if int(virtual_edges) < 0:
            raise ValueError(f"virtual_edges must be >= 0 (0: none), got {virtual_edges}")
        self.space = space
        self.virtual_edges = int(virtual_edges)
        self.stacked = bool(stacked)
        self.plan = space.plan(tuple(int(d) for d in input_shape))
        self.slots: List[Slot] = []
        self.output_slot: List[int] = []          # per plan node: the slot holding its output
        self.conv_slot: List[List[int]] = []      # [cell][block]
        self.op_slot: List[List[List[int]]] = []  # [cell][block][op]
        self.sum_slot: List[List[int]] = []
        self.cell_plan: List[int] = []            # plan index of each cell
        for p, node in enumerate(self.plan):
            if node.kind != "cell":
                self.output_slot.append(self._add(Slot(node.kind, p)))
                continue
            c = len(self.cell_plan)
            self.cell_plan.append(p)
            convs, ops, sums = [], [], []
            for i in range(space.num_blocks):
                convs.append(self._add(Slot("block_conv", p, c, i)))
                ops.append([self._add(Slot(op, p, c, i)) for op in space.ops])
                sums.append(self._add(Slot("sum", p, c, i)))
            self.conv_slot.append(convs)
            self.op_slot.append(ops)
            self.sum_slot.append(sums)
            self.output_slot.append(self._add(Slot("concat", p, c)))
        self.head_slot = self.output_slot[-1]

    def _add(self, slot: Slot) -> int:
        self.slots.append(slot)
        return len(self.slots) - 1

    @property
    def num_nodes(self) -> int:
        return len(self.slots)

    @property
    def num_cells(self) -> int:
        return len(self.cell_plan)

    def slot_modules(self) -> List[int]:
        """Each slot's module (module docstring): its cell, the next cell
        for a stage's reductions, 0 for the stem, the last for the head."""
        out = []
        for s in self.slots:
            if s.cell >= 0:
                out.append(s.cell)
            elif s.type == "head":
                out.append(self.num_cells - 1)
            else:  # the stem and reductions: the first cell after them
                out.append(sum(1 for p in self.cell_plan if p < s.plan))
        return out

    #: the node types the embedding knows; the encoding keys the executor reads
    node_type_names = NODE_TYPES
    executor_keys = ("input_mask", "op_mask")

    def static_node_types(self) -> np.ndarray:
        """Every slot's type never changes (``node_types``)."""
        return self.node_types()

    def edge_destinations(self) -> List[int]:
        """For every flattened ``(cell, block, input)`` of ``edge_source``,
        the slot the edge enters (the block's input node)."""
        return [self.conv_slot[c][i] for c in range(self.num_cells) for i in range(self.space.num_blocks)
                for _ in range(self.space.max_inputs)]

    def node_types(self) -> np.ndarray:
        """``[N]`` int32: each slot's index in ``NODE_TYPES``."""
        return np.array([NODE_TYPES.index(s.type) for s in self.slots], np.int32)

    def edges(self, arch: CellArchitecture) -> Tuple[np.ndarray, np.ndarray]:
        """``(adjacency [N, N] bool, edge_source [cells, blocks, max_inputs]
        int)`` of ``arch`` over every slot (before absent slots are removed)."""
        space = self.space
        n = self.num_nodes
        adj = np.zeros((n, n), bool)
        src = -np.ones((self.num_cells, space.num_blocks, space.max_inputs), np.int64)
        c = 0
        for p, node in enumerate(self.plan):
            if node.kind in ("reduce", "head"):
                adj[self.output_slot[node.deps[0]], self.output_slot[p]] = True
            if node.kind != "cell":
                continue
            sources = [self.output_slot[d] for d in node.deps]
            concat = self.output_slot[p]
            for i, block in enumerate(arch.blocks):
                conv = self.conv_slot[c][i]
                for j in block.inputs:
                    adj[sources[j], conv] = True
                    src[c, i, j] = sources[j]
                chosen = [self.op_slot[c][i][space.ops.index(op)] for op in block.ops]
                for o in chosen:
                    adj[conv, o] = True
                if len(chosen) == 1:
                    out = chosen[0]
                else:
                    out = self.sum_slot[c][i]
                    for o in chosen:
                        adj[o, out] = True
                sources.append(out)
                adj[out, concat] = True
            c += 1
        return adj, src

    def present(self, adjacency: np.ndarray) -> np.ndarray:
        """``[N]`` bool: the slots with a path to the head (and the head)."""
        return reaching(adjacency, self.head_slot)

    def encode(self, arch: CellArchitecture) -> Dict[str, np.ndarray]:
        """The fixed-shape float32 arrays of ``arch`` (module docstring)."""
        arch = self.space.validate(arch)
        adj, src = self.edges(arch)
        out = graph_arrays(adj, self.head_slot, self.virtual_edges, self.slot_modules() if self.stacked else None)
        out["edge_source"] = src.astype(np.float32)
        out.update({k: np.asarray(v, np.float32) for k, v in self.space.encode(arch).items()})
        return out

    def to_json(self, arch: CellArchitecture) -> Dict[str, object]:
        """The present nodes and edges of ``arch`` as ``{"nodes": [{"id",
        "type"}], "edges": [[u, v]]}`` (slot indices as ids; for plots and
        debugging)."""
        enc = self.encode(arch)
        present = np.flatnonzero(enc["levels"] >= 0)
        return {"nodes": [{"id": int(s), "type": self.slots[s].type} for s in present],
                "edges": [[int(u), int(v)] for u, v in zip(*np.nonzero(enc["adjacency"]))]}


def reaching(adjacency: np.ndarray, sink: int) -> np.ndarray:
    """``[N]`` bool: the nodes with a path to ``sink`` (and ``sink``)."""
    keep = np.zeros(adjacency.shape[0], bool)
    keep[sink] = True
    frontier = [sink]
    while frontier:
        v = frontier.pop()
        for u in np.flatnonzero(adjacency[:, v]):
            if not keep[u]:
                keep[u] = True
                frontier.append(int(u))
    return keep


def graph_arrays(adjacency: np.ndarray, sink: int, virtual_cutoff: int = 0, modules=None) -> Dict[str, np.ndarray]:
    """The GHN's graph arrays of a padded network graph (``adjacency``
    ``[N, N]`` bool over every slot, ``u -> v``): the slots without a path
    to ``sink`` (the head) are removed; ``adjacency``, ``levels``
    (longest-path, -1 absent); ``virtual`` with ``virtual_cutoff``; with
    ``modules`` (each slot's module), ``module_levels`` and ``entry``
    (module docstring)."""
    keep = reaching(adjacency, sink)
    adj = adjacency & keep[:, None] & keep[None, :]
    levels = np.where(keep, np.asarray(topological_levels(adj)), -1)
    out = {"adjacency": adj.astype(np.float32), "levels": levels.astype(np.float32)}
    if virtual_cutoff:
        out["virtual"] = virtual_edges(adj, cutoff=virtual_cutoff)
    if modules is not None:
        modules = np.asarray(modules)
        same = modules[:, None] == modules[None, :]
        inner = np.asarray(topological_levels(adj & same))
        out["module_levels"] = np.where(keep, inner, -1).astype(np.float32)
        out["entry"] = (adj & ~same).any(0).astype(np.float32)
    return out
