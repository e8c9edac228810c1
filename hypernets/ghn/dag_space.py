"""The search space of the GHN paper (Zhang et al., ICLR 2019, section 5.1.1
and appendix 7.1): one block, a DAG of ``N`` operator nodes, repeated in
every block of the network.

A block has two *input nodes*, bottlenecks reading the outputs of blocks
``i - 1`` and ``i - 2`` (the stem where there is none): BN-ReLU, average
pooling by the resolution ratio where the source is larger (stride 2 at a
reduction), and a 1x1 convolution to the block's width.  Node ``j``
(``0 <= j < N``) reads one or more of the inputs ``0, 1`` (the input nodes)
and ``2 + i`` (node ``i < j``) and, as equation 7 says, sums its operator
applied to each input: ``x_j = sum_u f_j(x_u)``, one set of weights for all
of them (each input normalized by its own batch normalization).  The block's output is the concatenation of its *leaves* (nodes no
other node reads).  Operators (the appendix's nine; ``OPS``), pre-activation
like the rest of the package: ``identity``; ``conv1x1``; ``sep3x3`` and
``sep5x5`` (two BN-ReLU-separable convolution units); ``dil_sep3x3`` and
``dil_sep5x5`` (one, dilation 2); ``conv1x7_7x1`` (BN-ReLU-1x7, BN-ReLU-7x1);
``maxpool3x3`` and ``avgpool3x3`` (stride 1).  The network: a 3x3 stem
convolution to ``F`` channels, ``num_blocks`` blocks in ``num_stages`` equal
stages (the paper: 18 blocks, reductions after blocks 6 and 12), stage ``s``
at width ``F * 2^s`` and resolution halved per stage, then BN-ReLU, global
average pooling and the logits.

**Sampling distribution** (``sample``): for each node ``j`` in turn, the
number of inputs uniform in ``1 .. min(max_inputs, j + 2)``, the inputs
uniform without replacement among the ``j + 2`` available, the operator
uniform among ``OPS``; every block of the network is that one block.

Architectures are data: ``DagArchitecture`` of ``DagNode(op, inputs)``,
JSON ``{"nodes": [{"op": "sep3x3", "inputs": [0, 2]}, ...]}``, validated
with errors naming the node.  ``encode``: ``node_ops`` ``[N]`` (index in
``ops``), ``adjacency`` ``[N + 2, N]`` (row ``u``: input ``u`` of node
``v``), ``leaves`` ``[N]``.  The GHN proxy encodes the whole network as its
own graph (``dag_network``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from oneshot_tf.search_space import (ArchitectureError, SearchSpace, StandaloneOptions, hyperparameter_value,
                                     index_set, parse_index_set, widened_filters)

OPS: Tuple[str, ...] = ("identity", "conv1x1", "sep3x3", "sep5x5", "dil_sep3x3", "dil_sep5x5", "conv1x7_7x1",
                        "maxpool3x3", "avgpool3x3")


@dataclasses.dataclass(frozen=True)
class Unit:
    """One BN-ReLU-convolution unit of an operator."""

    kind: str                 # conv | sep
    kernel: Tuple[int, int]
    dilation: int = 1


#: The units of each operator (empty: identity and the pools).
OP_UNITS: Dict[str, Tuple[Unit, ...]] = {
    "identity": (),
    "conv1x1": (Unit("conv", (1, 1)),),
    "sep3x3": (Unit("sep", (3, 3)), Unit("sep", (3, 3))),
    "sep5x5": (Unit("sep", (5, 5)), Unit("sep", (5, 5))),
    "dil_sep3x3": (Unit("sep", (3, 3), 2),),
    "dil_sep5x5": (Unit("sep", (5, 5), 2),),
    "conv1x7_7x1": (Unit("conv", (1, 7)), Unit("conv", (7, 1))),
    "maxpool3x3": (),
    "avgpool3x3": (),
}
POOLS = {"maxpool3x3": "max", "avgpool3x3": "avg"}


@dataclasses.dataclass(frozen=True)
class DagNode:
    op: str
    inputs: Tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class DagArchitecture:
    nodes: Tuple[DagNode, ...]

    def leaves(self) -> List[int]:
        """The nodes no other node reads (the block's output, in order)."""
        read = {u - 2 for n in self.nodes for u in n.inputs if u >= 2}
        return [j for j in range(len(self.nodes)) if j not in read]

    def reads_input(self, t: int) -> bool:
        return any(t in n.inputs for n in self.nodes)


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """Where block ``index`` sits: its stage, width, resolution, and for each
    input node the source (``-1``: the stem) and the pooling stride."""

    index: int
    stage: int
    channels: int
    height: int
    width: int
    sources: Tuple[int, int]
    strides: Tuple[int, int]


class DagSearchSpace(SearchSpace):
    """Blocks of ``num_nodes`` nodes over ``ops`` (module docstring)."""

    name = "dag"

    def __init__(self, num_nodes: int = 17, max_inputs: int = 2, num_blocks: int = 18, num_stages: int = 3,
                 filters: int = 32, ops: Sequence[str] = OPS):
        for key, value, low in [("num_nodes", num_nodes, 1), ("max_inputs", max_inputs, 1),
                                ("num_blocks", num_blocks, 1), ("num_stages", num_stages, 1),
                                ("filters", filters, 1)]:
            if int(value) != value or int(value) < low:
                raise ValueError(f"--{key} must be a whole number >= {low}, got {value}")
        if num_stages > num_blocks:
            raise ValueError(f"--num_stages={num_stages} exceeds --num_blocks={num_blocks}: every stage needs "
                             f"a block")
        ops = tuple(ops)
        unknown = [o for o in ops if o not in OP_UNITS]
        if unknown or not ops or len(set(ops)) != len(ops):
            raise ValueError(f"ops must be distinct names from {', '.join(OPS)}; got {list(ops)}")
        self.num_nodes, self.max_inputs = int(num_nodes), int(max_inputs)
        self.num_blocks, self.num_stages, self.filters = int(num_blocks), int(num_stages), int(filters)
        self.ops = ops

    # -- definition --------------------------------------------------------
    def get_config(self) -> Dict[str, Any]:
        return {"name": self.name, "num_nodes": self.num_nodes, "max_inputs": self.max_inputs,
                "num_blocks": self.num_blocks, "num_stages": self.num_stages, "filters": self.filters,
                "ops": list(self.ops)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "DagSearchSpace":
        config = {k: v for k, v in config.items() if k != "name"}
        return cls(**config)

    def with_nodes(self, num_nodes: int) -> "DagSearchSpace":
        """The same network with blocks of ``num_nodes`` nodes (the GHN
        trains on smaller blocks than it scores, section 5.4)."""
        return type(self).from_config({**self.get_config(), "num_nodes": int(num_nodes)})

    def _input_sets(self, j: int) -> List[Tuple[int, ...]]:
        avail = j + 2
        return [c for k in range(1, min(self.max_inputs, avail) + 1) for c in itertools.combinations(range(avail), k)]

    def size(self) -> int:
        return math.prod(len(self.ops) * len(self._input_sets(j)) for j in range(self.num_nodes))

    # -- architectures as data ---------------------------------------------
    def sample(self, rng: np.random.Generator) -> DagArchitecture:
        nodes = []
        for j in range(self.num_nodes):
            k = int(rng.integers(1, min(self.max_inputs, j + 2) + 1))
            inputs = tuple(sorted(int(u) for u in rng.choice(j + 2, size=k, replace=False)))
            nodes.append(DagNode(self.ops[int(rng.integers(len(self.ops)))], inputs))
        return DagArchitecture(tuple(nodes))

    def validate(self, arch: Any) -> DagArchitecture:
        if not isinstance(arch, DagArchitecture):
            raise ArchitectureError(f"expected a DagArchitecture, got {type(arch).__name__}")
        if len(arch.nodes) != self.num_nodes:
            raise ArchitectureError(f"the block has {len(arch.nodes)} nodes, the space {self.num_nodes}")
        for j, node in enumerate(arch.nodes):
            if node.op not in self.ops:
                raise ArchitectureError(f"node {j}: unknown op {node.op!r}; choose from {', '.join(self.ops)}")
            if not node.inputs:
                raise ArchitectureError(f"node {j}: no inputs")
            if len(node.inputs) > self.max_inputs:
                raise ArchitectureError(f"node {j}: {len(node.inputs)} inputs, at most {self.max_inputs}")
            if list(node.inputs) != sorted(set(node.inputs)):
                raise ArchitectureError(f"node {j}: inputs {list(node.inputs)} must be distinct and increasing")
            bad = [u for u in node.inputs if not 0 <= u < j + 2]
            if bad:
                raise ArchitectureError(f"node {j}: input {bad[0]} out of range: node {j} reads 0, 1 (the input "
                                        f"nodes) or 2 + i for an earlier node i (at most {j + 1})")
        return arch

    def to_json(self, arch: DagArchitecture) -> Dict[str, Any]:
        self.validate(arch)
        return {"nodes": [{"op": n.op, "inputs": list(n.inputs)} for n in arch.nodes]}

    def from_json(self, obj: Any) -> DagArchitecture:
        if isinstance(obj, (str, bytes)):
            try:
                obj = json.loads(obj)
            except json.JSONDecodeError as e:
                raise ArchitectureError(f"architecture is not valid JSON: {e}") from None
        if not isinstance(obj, Mapping) or not isinstance(obj.get("nodes"), list):
            raise ArchitectureError('an architecture is {"nodes": [{"op": ..., "inputs": [...]}, ...]}')
        nodes = []
        for j, n in enumerate(obj["nodes"]):
            if not isinstance(n, Mapping) or set(n) != {"op", "inputs"} or not isinstance(n["inputs"], list):
                raise ArchitectureError(f'node {j}: expected {{"op": str, "inputs": [int, ...]}}, got {n!r}')
            if not all(isinstance(u, int) and not isinstance(u, bool) for u in n["inputs"]):
                raise ArchitectureError(f"node {j}: inputs must be integers, got {n['inputs']!r}")
            nodes.append(DagNode(str(n["op"]), tuple(n["inputs"])))
        return self.validate(DagArchitecture(tuple(nodes)))

    def encode(self, arch: DagArchitecture) -> Dict[str, np.ndarray]:
        self.validate(arch)
        n = self.num_nodes
        ops = np.array([self.ops.index(x.op) for x in arch.nodes], np.float32)
        adj = np.zeros((n + 2, n), np.float32)
        for j, node in enumerate(arch.nodes):
            adj[list(node.inputs), j] = 1.0
        leaves = np.zeros(n, np.float32)
        leaves[arch.leaves()] = 1.0
        return {"node_ops": ops, "adjacency": adj, "leaves": leaves}

    def describe(self, arch: DagArchitecture) -> str:
        names = ["in0", "in1"] + [f"n{j}" for j in range(self.num_nodes)]
        return "; ".join(f"n{j}={n.op}({'+'.join(names[u] for u in n.inputs)})" for j, n in enumerate(arch.nodes))

    def graph(self, arch: DagArchitecture) -> Dict[str, Any]:
        """The block: the two input nodes (those some node reads), the
        operator nodes, and ``out`` (the concatenation of the leaves)."""
        self.validate(arch)
        nodes = [{"id": f"in{t}", "label": f"block i-{1 + t}", "kind": "input"}
                 for t in (0, 1) if arch.reads_input(t)]
        names = ["in0", "in1"] + [f"n{j}" for j in range(self.num_nodes)]
        edges = []
        for j, node in enumerate(arch.nodes):
            nodes.append({"id": names[2 + j], "label": node.op, "kind": "op"})
            edges.extend([names[u], names[2 + j]] for u in node.inputs)
        nodes.append({"id": "out", "label": "concat", "kind": "output"})
        edges.extend([names[2 + j], "out"] for j in arch.leaves())
        return {"nodes": nodes, "edges": edges}

    # -- keras-tuner ---------------------------------------------------------
    def declare_hyperparameters(self, hp) -> None:
        """Per node ``j``: ``node{j}_op`` and ``node{j}_inputs`` (a non-empty
        set of at most ``max_inputs`` inputs, e.g. ``"0+3"``).  Every value
        combination is an architecture."""
        for j in range(self.num_nodes):
            hp.Choice(f"node{j}_op", list(self.ops))
            hp.Choice(f"node{j}_inputs", [index_set(c) for c in self._input_sets(j)])

    def to_hyperparameters(self, arch: DagArchitecture) -> Dict[str, Any]:
        self.validate(arch)
        out = {}
        for j, n in enumerate(arch.nodes):
            out[f"node{j}_op"] = n.op
            out[f"node{j}_inputs"] = index_set(n.inputs)
        return out

    def from_hyperparameters(self, values: Mapping[str, Any]) -> DagArchitecture:
        nodes = []
        for j in range(self.num_nodes):
            op = hyperparameter_value(values, f"node{j}_op", f"node {j}")
            inputs = parse_index_set(hyperparameter_value(values, f"node{j}_inputs", f"node {j}"), f"node {j}")
            nodes.append(DagNode(str(op), inputs))
        return self.validate(DagArchitecture(tuple(nodes)))

    # -- the network -------------------------------------------------------
    def blocks_per_stage(self) -> List[int]:
        base, extra = divmod(self.num_blocks, self.num_stages)
        return [base + (1 if s < extra else 0) for s in range(self.num_stages)]

    def plan(self, input_shape) -> List[BlockPlan]:
        h, w = int(input_shape[0]), int(input_shape[1])
        stages = [s for s, n in enumerate(self.blocks_per_stage()) for _ in range(n)]
        out = []
        for b, s in enumerate(stages):
            sources = (b - 1 if b >= 1 else -1, b - 2 if b >= 2 else -1)
            strides = tuple(2 ** (s - (stages[src] if src >= 0 else 0)) for src in sources)
            out.append(BlockPlan(b, s, self.filters * 2 ** s, math.ceil(h / 2 ** s), math.ceil(w / 2 ** s),
                                 sources, strides))
        return out

    def source_channels(self, arch: Optional[DagArchitecture], plan: Sequence[BlockPlan], src: int) -> int:
        """Channels of a block's output (``F`` for the stem, ``-1``); with
        ``arch=None`` the padded width of every node (``N x width``)."""
        if src < 0:
            return self.filters
        leaves = self.num_nodes if arch is None else len(arch.leaves())
        return plan[src].channels * leaves

    def build_model(self, arch, *, input_shape, num_classes: int, options: Optional[StandaloneOptions] = None):
        from hypernets.ghn.dag_models import build_standalone_model
        return build_standalone_model(self, self.validate(arch), input_shape=input_shape, num_classes=num_classes,
                                      options=options or StandaloneOptions())

    def widened(self, multiplier: float) -> "DagSearchSpace":
        return type(self).from_config({**self.get_config(), "filters": widened_filters(self.filters, multiplier)})

    def width(self) -> int:
        return self.filters

    def _costs(self, arch: DagArchitecture, input_shape, num_classes: int) -> Tuple[int, int]:
        self.validate(arch)
        h, w, c_in = (int(d) for d in input_shape)
        plan = self.plan(input_shape)
        params = 9 * c_in * self.filters
        flops = h * w * 9 * c_in * self.filters
        for blk in plan:
            hw, c = blk.height * blk.width, blk.channels
            for t in (0, 1):
                if arch.reads_input(t):
                    ci = self.source_channels(arch, plan, blk.sources[t])
                    params += 4 * ci + ci * c
                    flops += hw * ci * c
            for node in arch.nodes:
                p, f, bn = op_cost(node.op, c)
                params += p + bn * (len(node.inputs) - 1)   # each input its own BN (dag_models)
                flops += hw * f * len(node.inputs)
        c = self.source_channels(arch, plan, len(plan) - 1)
        params += 4 * c + c * num_classes + num_classes
        flops += c * num_classes
        return params, flops

    def count_params(self, arch, *, input_shape, num_classes: int) -> int:
        return self._costs(arch, input_shape, num_classes)[0]

    def count_flops(self, arch, *, input_shape, num_classes: int) -> int:
        return self._costs(arch, input_shape, num_classes)[1]


def op_cost(op: str, channels: int) -> Tuple[int, int, int]:
    """(parameters for one input, multiply-adds per pixel and input, BN
    parameters among them) of ``op`` at ``channels``."""
    p = f = bn = 0
    c = channels
    for unit in OP_UNITS[op]:
        k = unit.kernel[0] * unit.kernel[1]
        bn += 4 * c
        if unit.kind == "sep":
            p += 4 * c + k * c + c * c
            f += k * c + c * c
        else:
            p += 4 * c + k * c * c
            f += k * c * c
    return p, f, bn
