"""The cell search space of Bender et al. (ICML 2018), section 3.1.

Network: a stem (3x3 convolution with F filters), then ``num_cells`` cells
split evenly into ``num_stages`` stages.  Stage ``s`` works with
``F * 2**s`` filters per choice block; before every stage but the first, a
fixed reduction is applied to each of the two most recent states: BN-ReLU,
2x2 average pooling with stride 2, then a 1x1 convolution with
``2 * F * 2**s`` filters (the same as a 1x1 convolution applied at every
pixel and then averaged, since the two commute; it costs the parameters of
a 1x1 stride-2 convolution and reads every pixel).  The head is
BN-ReLU-global average pooling-dense.

The reductions are this light because the paper's parameter counts imply
it (its text does not describe the layers between stages): with them the
paper preset's space (6 cells, 3 stages, 32x32x3, 10 classes) has Table 1's
"All On" and "Random" counts within 10% at F=16..128 (all-on F=64 19.7M
against 18.5M, random F=64 6.7M on average against 6.7M; see
tests/test_cell_space.py), where full 3x3 stride-2 convolutions put them
far above (24.9M and 11.8M) with layers that no architecture changes.  It is
also how Zoph et al. (2017), whom the paper follows, bring a state to a
lower resolution when a cell reads it ("factorized reduction": 1x1
convolutions on stride-2 subsamplings).

Cell: ``num_blocks`` choice blocks (N_choice).  Choice block ``i`` reads
from ``2 + i`` candidate inputs, numbered

* ``0``: the output of the cell before the previous one (cell k-2),
* ``1``: the output of the previous cell (cell k-1),
* ``2 + j``: the output of choice block ``j < i`` of the same cell,

and chooses at least one and at most ``2 + i`` of them.  The chosen inputs
are concatenated and pass through BN-ReLU-1x1 convolution (``F_s`` filters);
then one or two of the seven ops are applied and their outputs summed.  The
cell's output is the concatenation of its blocks' outputs.  Every cell of the
network shares one architecture (one list of blocks).

Sampling distribution (fixed, documented): every block independently draws
its input subset uniformly among the ``2**(2+i) - 1`` non-empty subsets and
its op set uniformly among the ``C(7,1) + C(7,2) = 28`` sets of one or two
ops; i.e. architectures are uniform over the space.
"""

from __future__ import annotations

import abc
import dataclasses
import itertools
import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from oneshot_tf.search_space import (ArchitectureError, SearchSpace, StandaloneOptions, hyperparameter_value,
                                     index_set, parse_index_set, widened_filters)

#: The seven ops of the paper, in mask order.
OPS: Tuple[str, ...] = (
    "identity",
    "sep3x3",      # a pair of depthwise separable 3x3 convolutions
    "sep5x5",
    "sep7x7",
    "conv1x7_7x1",  # a 1x7 then a 7x1 convolution
    "maxpool3x3",
    "avgpool3x3",
)


@dataclasses.dataclass(frozen=True)
class Block:
    """One choice block: sorted input indices and the chosen ops (mask order)."""

    inputs: Tuple[int, ...]
    ops: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class CellArchitecture:
    """The architecture shared by every cell: one Block per choice block."""

    blocks: Tuple[Block, ...]


def _split_cells(num_cells: int, num_stages: int) -> List[int]:
    base, extra = divmod(num_cells, num_stages)
    return [base + (1 if s < extra else 0) for s in range(num_stages)]


@dataclasses.dataclass(frozen=True)
class CellNode:
    """One piece of the network plan (used for counting and for building)."""

    name: str
    kind: str              # stem | reduce | cell | head
    stage: int
    deps: Tuple[int, ...]   # indices of the state nodes it reads
    height: int
    width: int
    channels: int          # output channels


@dataclasses.dataclass(frozen=True)
class BlockNode:
    """One choice block of a cell, as ``walk_plan`` visits it."""

    index: int                  # i: the block's place in its cell
    name: str                   # s{stage}c{cell}b{i}, the prefix of its layers' names
    filters: int                # F_s
    candidates: Tuple[int, ...]  # channels of each candidate input 0 .. 1 + i
    inputs: Tuple[int, ...]      # the inputs it reads (every candidate without an architecture)
    ops: Tuple[str, ...]         # its ops (every op of the space without an architecture)


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """What the models and the counts need to know of an op (data, not names
    parsed back): one [BN, ReLU, conv] unit per entry of ``kernels``
    (``separable``: depthwise separable convolutions), or one 3x3 stride-1
    pooling layer, or nothing (identity)."""

    name: str
    kernels: Tuple[Tuple[int, int], ...] = ()  # one (kh, kw) per [BN, ReLU, conv] unit
    separable: bool = False
    pool: Optional[str] = None                 # "max" | "avg": a 3x3 stride-1 pooling

    @property
    def starts_with_bn(self) -> bool:
        """Its layers start with BN-ReLU (it reads its input normalized)."""
        return bool(self.kernels)

    @property
    def weightless(self) -> bool:
        return not self.kernels


#: The descriptors of the seven ops (``OPS`` order).
OP_SPECS: Dict[str, OpSpec] = {
    "identity": OpSpec("identity"),
    "sep3x3": OpSpec("sep3x3", ((3, 3), (3, 3)), separable=True),
    "sep5x5": OpSpec("sep5x5", ((5, 5), (5, 5)), separable=True),
    "sep7x7": OpSpec("sep7x7", ((7, 7), (7, 7)), separable=True),
    "conv1x7_7x1": OpSpec("conv1x7_7x1", ((1, 7), (7, 1))),
    "maxpool3x3": OpSpec("maxpool3x3", pool="max"),
    "avgpool3x3": OpSpec("avgpool3x3", pool="avg"),
}


def op_spec(op: str) -> OpSpec:
    try:
        return OP_SPECS[op]
    except KeyError:
        raise ValueError(f"unknown op {op!r}") from None


class PlanVisitor(abc.ABC):
    """What ``walk_plan`` calls at each piece of the network; every method
    returns the piece's value (a tensor, a layer, a cost: the visitor's
    choice), which the walk hands to the pieces that read it.
    ``in_channels`` is the channels of the state a node reads."""

    @abc.abstractmethod
    def stem(self, node: CellNode, x, in_channels: int):
        """The stem, reading the images ``x``."""

    @abc.abstractmethod
    def reduce(self, node: CellNode, x, in_channels: int):
        """A reduction between stages, reading the state ``x``."""

    @abc.abstractmethod
    def block(self, node: CellNode, block: BlockNode, inputs: List[Any]):
        """``inputs``: the values of ``block.inputs``, in order."""

    @abc.abstractmethod
    def cell(self, node: CellNode, cell: int, outputs: List[Any]):
        """``outputs``: the values of the cell's blocks; ``cell`` counts every cell."""

    @abc.abstractmethod
    def head(self, node: CellNode, x, in_channels: int):
        """The head (pooling and logits), reading the last cell's output ``x``."""


def walk_plan(space: "CellSearchSpace", input_shape, visitor: PlanVisitor, arch: "CellArchitecture" = None,
              x=None):
    """The one walk over ``space.plan(input_shape)``, shared by the one-shot
    model (which builds its layers with it), the stand-alone model and the
    parameter / multiply-add counts.

    Without ``arch`` every node is visited and every block has all its
    candidate inputs and ops; with ``arch`` only the nodes its stand-alone
    model needs (``used_nodes``), each block with ``arch``'s inputs and ops.
    ``x`` is what the stem reads.  Returns the head's value.
    """
    nodes = space.plan(input_shape)
    used = space.used_nodes(arch, input_shape) if arch is not None else [True] * len(nodes)
    blocks = (arch or space.all_on()).blocks
    values: Dict[int, Any] = {}
    in_channels = int(input_shape[-1])
    cell = 0
    for idx, node in enumerate(nodes):
        chans = [nodes[d].channels for d in node.deps] or [in_channels]
        if node.kind == "cell":
            if used[idx]:
                fs = space.stage_filters(node.stage)
                cands = [values.get(d) for d in node.deps]
                cand_ch = tuple(chans) + (fs,) * space.num_blocks
                for i, b in enumerate(blocks):
                    k = space.num_candidate_inputs(i)
                    bn = BlockNode(i, f"s{node.stage}c{cell}b{i}", fs, cand_ch[:k], tuple(b.inputs), tuple(b.ops))
                    cands.append(visitor.block(node, bn, [cands[j] for j in b.inputs]))
                values[idx] = visitor.cell(node, cell, cands[2:])
            cell += 1
            continue
        if not used[idx]:
            continue
        src = values[node.deps[0]] if node.deps else x
        values[idx] = getattr(visitor, node.kind)(node, src, chans[0])
    return values[len(nodes) - 1]


class CellSearchSpace(SearchSpace):
    """Bender et al.'s space; see the module docstring for the network."""

    name = "cells"

    def __init__(self, num_cells: int = 6, num_stages: int = 3, filters: int = 16,
                 num_blocks: int = 4, ops: Sequence[str] = OPS, max_ops: int = 2):
        if num_cells < 1 or num_stages < 1 or num_stages > num_cells:
            raise ValueError(f"need 1 <= num_stages <= num_cells, got num_cells={num_cells}, "
                             f"num_stages={num_stages}")
        if filters < 1 or num_blocks < 1:
            raise ValueError(f"filters and num_blocks must be positive, got {filters}, {num_blocks}")
        unknown = [o for o in ops if o not in OPS]
        if unknown or len(set(ops)) != len(ops) or not ops:
            raise ValueError(f"ops must be distinct names from {OPS}, got {list(ops)}")
        if not 1 <= max_ops <= len(ops):
            raise ValueError(f"max_ops must be in [1, {len(ops)}], got {max_ops}")
        self.num_cells = int(num_cells)
        self.num_stages = int(num_stages)
        self.filters = int(filters)
        self.num_blocks = int(num_blocks)
        self.ops = tuple(ops)
        self.max_ops = int(max_ops)
        self.cells_per_stage = _split_cells(self.num_cells, self.num_stages)
        self._op_sets = [c for k in range(1, self.max_ops + 1)
                         for c in itertools.combinations(self.ops, k)]

    # -- definition --------------------------------------------------------
    def get_config(self) -> Dict[str, Any]:
        return {"name": self.name, "num_cells": self.num_cells, "num_stages": self.num_stages,
                "filters": self.filters, "num_blocks": self.num_blocks,
                "ops": list(self.ops), "max_ops": self.max_ops}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "CellSearchSpace":
        cfg = {k: v for k, v in dict(config).items() if k != "name"}
        return cls(**cfg)

    @property
    def max_inputs(self) -> int:
        """Candidate inputs of the last block (the padded input-mask width)."""
        return self.num_blocks + 1

    def num_candidate_inputs(self, block: int) -> int:
        return 2 + block

    def size(self) -> int:
        per_block_ops = len(self._op_sets)
        n = 1
        for i in range(self.num_blocks):
            n *= (2 ** self.num_candidate_inputs(i) - 1) * per_block_ops
        return n

    def stage_filters(self, stage: int) -> int:
        return self.filters * 2 ** stage

    # -- architectures -----------------------------------------------------
    def sample(self, rng: np.random.Generator) -> CellArchitecture:
        blocks = []
        for i in range(self.num_blocks):
            k = self.num_candidate_inputs(i)
            bits = int(rng.integers(1, 2 ** k))
            inputs = tuple(j for j in range(k) if bits >> j & 1)
            ops = self._op_sets[int(rng.integers(len(self._op_sets)))]
            blocks.append(Block(inputs, tuple(ops)))
        return CellArchitecture(tuple(blocks))

    def all_on(self) -> CellArchitecture:
        """Every input and every op on: the one-shot model itself.  Outside the
        space when ``max_ops < len(ops)``; build it with ``validate=False``."""
        return CellArchitecture(tuple(
            Block(tuple(range(self.num_candidate_inputs(i))), self.ops)
            for i in range(self.num_blocks)))

    def validate(self, arch: Any, *, allow_all_ops: bool = False) -> CellArchitecture:
        if not isinstance(arch, CellArchitecture):
            raise ArchitectureError(f"expected a CellArchitecture, got {type(arch).__name__}")
        if len(arch.blocks) != self.num_blocks:
            raise ArchitectureError(
                f"architecture has {len(arch.blocks)} blocks, the search space has "
                f"{self.num_blocks} choice blocks per cell")
        max_ops = len(self.ops) if allow_all_ops else self.max_ops
        for i, b in enumerate(arch.blocks):
            k = self.num_candidate_inputs(i)
            if not b.inputs:
                raise ArchitectureError(f"block {i}: no input chosen (choose 1 to {k} of inputs 0..{k - 1})")
            if len(b.inputs) > k:
                raise ArchitectureError(f"block {i}: {len(b.inputs)} inputs chosen, at most {k} allowed")
            for j in b.inputs:
                if isinstance(j, bool) or not isinstance(j, (int, np.integer)):
                    raise ArchitectureError(f"block {i}: input {j!r} is not an integer index")
                if not 0 <= j < k:
                    raise ArchitectureError(
                        f"block {i}: input {j} does not exist (block {i} reads inputs 0..{k - 1}: "
                        f"0 = cell k-2, 1 = cell k-1, 2+j = block j of the same cell)")
            if len(set(b.inputs)) != len(b.inputs):
                raise ArchitectureError(f"block {i}: input chosen twice in {list(b.inputs)}")
            if tuple(sorted(b.inputs)) != tuple(b.inputs):
                raise ArchitectureError(f"block {i}: inputs must be sorted, got {list(b.inputs)}")
            for op in b.ops:
                if op not in self.ops:
                    raise ArchitectureError(f"block {i}: unknown op {op!r} (choose from {', '.join(self.ops)})")
            if not b.ops:
                raise ArchitectureError(f"block {i}: no op chosen (choose 1 to {self.max_ops})")
            if len(set(b.ops)) != len(b.ops):
                raise ArchitectureError(f"block {i}: op chosen twice in {list(b.ops)}")
            if len(b.ops) > max_ops:
                raise ArchitectureError(f"block {i}: {len(b.ops)} ops chosen, at most {self.max_ops} allowed")
            if tuple(sorted(b.ops, key=self.ops.index)) != tuple(b.ops):
                raise ArchitectureError(f"block {i}: ops must be listed in the order {', '.join(self.ops)}")
        return arch

    def to_json(self, arch: CellArchitecture) -> Dict[str, Any]:
        return {"blocks": [{"inputs": list(map(int, b.inputs)), "ops": list(b.ops)} for b in arch.blocks]}

    def from_json(self, obj: Any) -> CellArchitecture:
        if isinstance(obj, (str, bytes)):
            try:
                obj = json.loads(obj)
            except json.JSONDecodeError as e:
                raise ArchitectureError(f"malformed architecture JSON: {e}") from None
        if not isinstance(obj, Mapping) or not isinstance(obj.get("blocks"), list):
            raise ArchitectureError('malformed architecture: expected an object {"blocks": [...]} '
                                    f"got {str(obj)[:80]}")
        blocks = []
        for i, b in enumerate(obj["blocks"]):
            if not isinstance(b, Mapping) or not isinstance(b.get("inputs"), list) \
                    or not isinstance(b.get("ops"), list):
                raise ArchitectureError(f'block {i}: malformed, expected {{"inputs": [...], "ops": [...]}}, got {b!r}')
            extra = set(b) - {"inputs", "ops"}
            if extra:
                raise ArchitectureError(f"block {i}: unknown keys {sorted(extra)}")
            for op in b["ops"]:
                if not isinstance(op, str):
                    raise ArchitectureError(f"block {i}: op {op!r} is not a name")
            ops = b["ops"]
            ordered = tuple(sorted(ops, key=lambda o: self.ops.index(o) if o in self.ops else len(self.ops)))
            inputs = b["inputs"]
            if all(isinstance(j, int) and not isinstance(j, bool) for j in inputs):
                inputs = sorted(inputs)
            blocks.append(Block(tuple(inputs), ordered))
        return self.validate(CellArchitecture(tuple(blocks)))

    def encode(self, arch: CellArchitecture) -> Dict[str, np.ndarray]:
        """``input_mask`` [num_blocks, num_blocks + 1] and ``op_mask`` [num_blocks, num_ops]."""
        inp = np.zeros((self.num_blocks, self.max_inputs), np.float32)
        ops = np.zeros((self.num_blocks, len(self.ops)), np.float32)
        for i, b in enumerate(arch.blocks):
            inp[i, list(b.inputs)] = 1.0
            ops[i, [self.ops.index(o) for o in b.ops]] = 1.0
        return {"input_mask": inp, "op_mask": ops}

    def decode(self, encoding: Mapping[str, np.ndarray]) -> CellArchitecture:
        inp, ops = np.asarray(encoding["input_mask"]), np.asarray(encoding["op_mask"])
        return CellArchitecture(tuple(
            Block(tuple(int(j) for j in np.flatnonzero(inp[i] > 0.5)),
                  tuple(self.ops[o] for o in np.flatnonzero(ops[i] > 0.5)))
            for i in range(self.num_blocks)))

    def valid_input_mask(self) -> np.ndarray:
        """1 where block i has candidate input j, else 0 (padding)."""
        m = np.zeros((self.num_blocks, self.max_inputs), np.float32)
        for i in range(self.num_blocks):
            m[i, : self.num_candidate_inputs(i)] = 1.0
        return m

    def fan_in(self) -> Tuple[np.ndarray, int]:
        """Fan-in k of every node that a path enters: the per-block input
        concatenation (``2 + i``) and the per-block op sum (``num_ops``)."""
        return (np.array([self.num_candidate_inputs(i) for i in range(self.num_blocks)], np.float32),
                len(self.ops))

    def describe(self, arch: CellArchitecture) -> str:
        names = ["c-2", "c-1"] + [f"b{j}" for j in range(self.num_blocks)]
        return "; ".join(f"b{i}({'+'.join(names[j] for j in b.inputs)})->{'+'.join(b.ops)}"
                         for i, b in enumerate(arch.blocks))

    def graph(self, arch: CellArchitecture) -> Dict[str, Any]:
        """The cell of ``arch`` as a DAG, node for node what the stand-alone
        model builds (``oneshot_tf.methods.oneshot.models.build_standalone_model``).

        Nodes, in topological order:

        * ``in0`` "cell k-2" and ``in1`` "cell k-1" (kind ``input``), each
          only if some block reads it (an unread input is not part of the
          stand-alone cell);
        * per block ``i``: ``b{i}_conv`` "b{i}: 1x1 conv" (kind ``conv``: the
          concatenation of the chosen inputs, then BN-ReLU-1x1 convolution),
          one ``b{i}_{op}`` node per chosen op labelled with the op name (kind
          ``op``), and, when two ops are chosen, ``b{i}_sum`` "+" (kind
          ``combine``); with a single op the op node is the block's output;
        * ``out`` "concat" (kind ``output``): the cell output, the
          concatenation of every block's output (all blocks, also those that
          other blocks read).

        Edges: chosen input -> ``b{i}_conv`` (input ``2 + j`` is block ``j``'s
        output node), ``b{i}_conv`` -> each op, each op -> ``b{i}_sum``, and
        every block output -> ``out``.
        """
        self.validate(arch)
        nodes: List[Dict[str, str]] = []
        edges: List[List[str]] = []
        read = {j for b in arch.blocks for j in b.inputs}
        sources = ["in0", "in1"]
        for j, label in enumerate(("cell k-2", "cell k-1")):
            if j in read:
                nodes.append({"id": sources[j], "label": label, "kind": "input"})
        for i, b in enumerate(arch.blocks):
            conv = f"b{i}_conv"
            nodes.append({"id": conv, "label": f"b{i}: 1x1 conv", "kind": "conv"})
            edges.extend([sources[j], conv] for j in b.inputs)
            op_ids = []
            for op in b.ops:
                op_ids.append(f"b{i}_{op}")
                nodes.append({"id": op_ids[-1], "label": op, "kind": "op"})
                edges.append([conv, op_ids[-1]])
            if len(op_ids) == 1:
                sources.append(op_ids[0])
            else:
                nodes.append({"id": f"b{i}_sum", "label": "+", "kind": "combine"})
                edges.extend([o, f"b{i}_sum"] for o in op_ids)
                sources.append(f"b{i}_sum")
        nodes.append({"id": "out", "label": "concat", "kind": "output"})
        edges.extend([s, "out"] for s in sources[2:])
        return {"nodes": nodes, "edges": edges}

    # -- keras-tuner ---------------------------------------------------------
    def _input_choices(self, i: int) -> List[str]:
        k = self.num_candidate_inputs(i)
        return [index_set(j for j in range(k) if bits >> j & 1) for bits in range(1, 2 ** k)]

    def _op_choices(self) -> List[str]:
        return ["+".join(ops) for ops in self._op_sets]

    def declare_hyperparameters(self, hp) -> None:
        """Per block ``i``: ``block{i}_inputs`` (a choice among the non-empty
        input subsets, e.g. ``"0+2"``) and ``block{i}_ops`` (a choice among the
        sets of one or two ops, e.g. ``"sep3x3+maxpool3x3"``).  Every value
        combination is a valid architecture."""
        for i in range(self.num_blocks):
            hp.Choice(f"block{i}_inputs", self._input_choices(i))
            hp.Choice(f"block{i}_ops", self._op_choices())

    def to_hyperparameters(self, arch: CellArchitecture) -> Dict[str, Any]:
        self.validate(arch)
        out = {}
        for i, b in enumerate(arch.blocks):
            out[f"block{i}_inputs"] = index_set(b.inputs)
            out[f"block{i}_ops"] = "+".join(b.ops)
        return out

    def from_hyperparameters(self, values: Mapping[str, Any]) -> CellArchitecture:
        blocks = []
        for i in range(self.num_blocks):
            inputs = parse_index_set(hyperparameter_value(values, f"block{i}_inputs", f"block {i}"), f"block {i}")
            ops = hyperparameter_value(values, f"block{i}_ops", f"block {i}")
            blocks.append(Block(inputs, tuple(str(ops).split("+"))))
        return self.validate(CellArchitecture(tuple(blocks)))

    # -- network plan ------------------------------------------------------
    def plan(self, input_shape) -> List[CellNode]:
        """State nodes in order: stem, per stage (reductions), cells, head."""
        h, w, _ = (int(d) for d in input_shape)
        nodes: List[CellNode] = [CellNode("stem", "stem", 0, (), h, w, self.filters)]
        states = [0, 0]
        cell_index = 0
        for s, n in enumerate(self.cells_per_stage):
            fs = self.stage_filters(s)
            if s > 0:
                h, w = math.ceil(h / 2), math.ceil(w / 2)
                new = []
                for r, dep in enumerate(states):
                    nodes.append(CellNode(f"s{s}_reduce{r}", "reduce", s, (dep,), h, w, 2 * fs))
                    new.append(len(nodes) - 1)
                states = new
            for _ in range(n):
                nodes.append(CellNode(f"s{s}c{cell_index}", "cell", s, tuple(states), h, w,
                                      self.num_blocks * fs))
                states = [states[1], len(nodes) - 1]
                cell_index += 1
        nodes.append(CellNode("head", "head", self.num_stages - 1, (states[1],), 1, 1, 0))
        return nodes

    def used_nodes(self, arch: CellArchitecture, input_shape) -> List[bool]:
        """Which plan nodes the stand-alone model of ``arch`` needs (a cell that
        no later block reads drops out of the stand-alone model)."""
        nodes = self.plan(input_shape)
        reads = sorted({j for b in arch.blocks for j in b.inputs if j < 2})
        used = [False] * len(nodes)
        used[-1] = True
        for idx in range(len(nodes) - 1, -1, -1):
            if used[idx]:
                # a cell reads the states its blocks choose; any other node, all it depends on
                deps = tuple(nodes[idx].deps[j] for j in reads) if nodes[idx].kind == "cell" else nodes[idx].deps
                for d in deps:
                    used[d] = True
        return used

    def _costs(self, arch: CellArchitecture, input_shape, num_classes: int) -> Tuple[int, int]:
        """(parameters, multiply-adds) of the stand-alone model, analytically."""
        counter = _CostCounter(self, num_classes)
        walk_plan(self, input_shape, counter, arch)
        return counter.params, counter.flops

    def count_params(self, arch, *, input_shape, num_classes: int) -> int:
        return self._costs(arch, input_shape, num_classes)[0]

    def count_flops(self, arch, *, input_shape, num_classes: int) -> int:
        return self._costs(arch, input_shape, num_classes)[1]

    def build_model(self, arch, *, input_shape, num_classes: int,
                    options: Optional[StandaloneOptions] = None, validate: bool = True):
        """The stand-alone model (``models.build_standalone_model``);
        ``validate=False`` builds architectures outside the space, such as
        ``all_on()``."""
        from oneshot_tf.methods.oneshot.models import build_standalone_model
        if validate:
            self.validate(arch)
        return build_standalone_model(self, arch, input_shape=input_shape, num_classes=num_classes,
                                      options=options)

    def widened(self, multiplier: float) -> "CellSearchSpace":
        """The space at ``F * multiplier`` filters (a whole number of at least 1)."""
        return type(self).from_config({**self.get_config(), "filters": widened_filters(self.filters, multiplier)})

    def width(self) -> int:
        """F, the filters per choice block of the first stage."""
        return self.filters


def _bn_params(c: int) -> int:
    return 4 * c  # gamma, beta, moving mean, moving variance


class _CostCounter(PlanVisitor):
    """Parameters and multiply-adds of the stand-alone model, node by node."""

    def __init__(self, space: CellSearchSpace, num_classes: int):
        self.space, self.num_classes = space, int(num_classes)
        self.params = self.flops = 0

    def _add(self, params: int, flops: int):
        self.params += params
        self.flops += flops

    def stem(self, node, x, in_channels):
        self._add(9 * in_channels * node.channels, node.height * node.width * 9 * in_channels * node.channels)

    def reduce(self, node, x, in_channels):  # BN-ReLU-avgpool 2x2/2-1x1 conv
        c = in_channels
        self._add(_bn_params(c) + c * node.channels, node.height * node.width * c * node.channels)

    def block(self, node, block, inputs):
        hw, fs = node.height * node.width, block.filters
        c = sum(block.candidates[j] for j in block.inputs)
        self._add(_bn_params(c) + c * fs, hw * c * fs)
        for op in block.ops:
            p, f = _op_cost(op, fs)
            self._add(p, hw * f)

    def cell(self, node, cell, outputs):
        pass

    def head(self, node, x, in_channels):
        c = in_channels
        self._add(_bn_params(c) + c * self.num_classes + self.num_classes, c * self.num_classes)


def _op_cost(op: str, f: int) -> Tuple[int, int]:
    """(params, multiply-adds per pixel) of one op on f channels."""
    spec = op_spec(op)
    params = madds = 0
    for kh, kw in spec.kernels:  # each [BN, ReLU, conv] unit
        conv = kh * kw * f + f * f if spec.separable else kh * kw * f * f
        params += _bn_params(f) + conv
        madds += conv
    return params, madds
