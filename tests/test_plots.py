"""Tests for architecture graphs (SearchSpace.graph, CellSearchSpace.graph)
and the PNG plots of oneshot_tf.plots."""

import numpy as np
import pytest
import tensorflow as tf

from oneshot_tf.methods.oneshot.cell_space import Block, CellArchitecture, CellSearchSpace
from oneshot_tf.plots import architecture_png, candidates_png, space_architecture_png
from oneshot_tf.search_space import ArchitectureError, SearchSpace

SPACE = CellSearchSpace()  # 4 blocks, 7 ops, at most 2 ops per block

# block 0: inputs c-2, c-1; two ops  -> conv, 2 op nodes, sum
# block 1: inputs c-2, b0;  one op   -> conv, 1 op node (the block output)
# block 2: inputs b0, b1;   two ops  -> conv, 2 op nodes, sum
# block 3: inputs c-1, b2;  one op   -> conv, 1 op node
HAND = {"blocks": [
    {"inputs": [0, 1], "ops": ["sep3x3", "maxpool3x3"]},
    {"inputs": [0, 2], "ops": ["identity"]},
    {"inputs": [2, 3], "ops": ["sep5x5", "avgpool3x3"]},
    {"inputs": [1, 4], "ops": ["conv1x7_7x1"]},
]}

HAND_NODES = [
    ("in0", "cell k-2", "input"),
    ("in1", "cell k-1", "input"),
    ("b0_conv", "b0: 1x1 conv", "conv"),
    ("b0_sep3x3", "sep3x3", "op"),
    ("b0_maxpool3x3", "maxpool3x3", "op"),
    ("b0_sum", "+", "combine"),
    ("b1_conv", "b1: 1x1 conv", "conv"),
    ("b1_identity", "identity", "op"),
    ("b2_conv", "b2: 1x1 conv", "conv"),
    ("b2_sep5x5", "sep5x5", "op"),
    ("b2_avgpool3x3", "avgpool3x3", "op"),
    ("b2_sum", "+", "combine"),
    ("b3_conv", "b3: 1x1 conv", "conv"),
    ("b3_conv1x7_7x1", "conv1x7_7x1", "op"),
    ("out", "concat", "output"),
]

HAND_EDGES = {
    # block 0
    ("in0", "b0_conv"), ("in1", "b0_conv"),
    ("b0_conv", "b0_sep3x3"), ("b0_conv", "b0_maxpool3x3"),
    ("b0_sep3x3", "b0_sum"), ("b0_maxpool3x3", "b0_sum"),
    # block 1 reads "0+2": cell k-2 and block 0's sum
    ("in0", "b1_conv"), ("b0_sum", "b1_conv"),
    ("b1_conv", "b1_identity"),
    # block 2 reads blocks 0 and 1 (block 1's output is its single op)
    ("b0_sum", "b2_conv"), ("b1_identity", "b2_conv"),
    ("b2_conv", "b2_sep5x5"), ("b2_conv", "b2_avgpool3x3"),
    ("b2_sep5x5", "b2_sum"), ("b2_avgpool3x3", "b2_sum"),
    # block 3
    ("in1", "b3_conv"), ("b2_sum", "b3_conv"),
    ("b3_conv", "b3_conv1x7_7x1"),
    # the cell output concatenates every block's output
    ("b0_sum", "out"), ("b1_identity", "out"), ("b2_sum", "out"), ("b3_conv1x7_7x1", "out"),
}


def _edges(g):
    return {tuple(e) for e in g["edges"]}


def _assert_topological(g):
    position = {n["id"]: k for k, n in enumerate(g["nodes"])}
    assert len(position) == len(g["nodes"]), "node ids must be unique"
    for src, dst in g["edges"]:
        assert position[src] < position[dst], f"edge {src} -> {dst} goes backwards"


def _decode(png):
    img = tf.image.decode_png(png).numpy()
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img


# ---------------------------------------------------------------------------
# graph
# ---------------------------------------------------------------------------


def _minimal_space():
    class Minimal(SearchSpace):
        pass

    for name in list(Minimal.__abstractmethods__):
        setattr(Minimal, name, lambda *a, **k: None)
    Minimal.__abstractmethods__ = frozenset()
    return Minimal()


def test_base_class_graph_is_optional():
    with pytest.raises(NotImplementedError, match="Minimal"):
        _minimal_space().graph(object())


def test_space_architecture_png_draws_a_graph_and_skips_a_space_without_one():
    """A winner's drawing: the space's graph drawn as ``architecture_png``
    draws it, and nothing for a space without graphs (no error)."""
    arch = SPACE.from_json(HAND)
    assert space_architecture_png(_minimal_space(), arch, title="x") is None
    drawn = space_architecture_png(SPACE, arch, title="t")
    assert drawn == architecture_png(SPACE.graph(arch), title="t")
    with pytest.raises(ArchitectureError):   # an architecture outside the space is not drawn silently
        space_architecture_png(CellSearchSpace(num_blocks=5), arch)


def test_cell_graph_hand_computation():
    g = SPACE.graph(SPACE.from_json(HAND))
    assert set(g) == {"nodes", "edges"}
    assert len(g["nodes"]) == 15
    assert [(n["id"], n["label"], n["kind"]) for n in g["nodes"]] == HAND_NODES
    assert all(isinstance(v, str) for n in g["nodes"] for v in n.values())
    assert len(g["edges"]) == 22 == len(HAND_EDGES)
    assert _edges(g) == HAND_EDGES
    assert all(isinstance(e, list) and len(e) == 2 for e in g["edges"])
    _assert_topological(g)


def test_cell_graph_single_ops_and_unread_input():
    space = CellSearchSpace(num_blocks=2)
    # nobody reads cell k-2: it is not part of the cell; single ops have no sum
    g = space.graph(space.from_json({"blocks": [{"inputs": [1], "ops": ["identity"]},
                                                {"inputs": [1, 2], "ops": ["avgpool3x3"]}]}))
    assert [n["id"] for n in g["nodes"]] == ["in1", "b0_conv", "b0_identity",
                                            "b1_conv", "b1_avgpool3x3", "out"]
    assert not any(n["kind"] == "combine" for n in g["nodes"])
    assert _edges(g) == {("in1", "b0_conv"), ("b0_conv", "b0_identity"),
                         ("in1", "b1_conv"), ("b0_identity", "b1_conv"),
                         ("b1_conv", "b1_avgpool3x3"),
                         ("b0_identity", "out"), ("b1_avgpool3x3", "out")}


def test_cell_graph_counts_on_random_samples_are_topological():
    for i in range(20):
        arch = SPACE.sample(np.random.default_rng(i))
        g = SPACE.graph(arch)
        _assert_topological(g)
        kinds = [n["kind"] for n in g["nodes"]]
        read = {j for b in arch.blocks for j in b.inputs if j < 2}
        two = sum(len(b.ops) == 2 for b in arch.blocks)
        assert kinds.count("input") == len(read)
        assert kinds.count("conv") == SPACE.num_blocks
        assert kinds.count("op") == sum(len(b.ops) for b in arch.blocks)
        assert kinds.count("combine") == two
        assert kinds == sorted(kinds, key=lambda k: k == "output")  # output last
        assert kinds.count("output") == 1
        assert len(g["edges"]) == (sum(len(b.inputs) for b in arch.blocks)
                                   + sum(len(b.ops) for b in arch.blocks) + 2 * two
                                   + SPACE.num_blocks)
        # every node but the output feeds something; only inputs are sources
        srcs = {s for s, _ in g["edges"]}
        dsts = {d for _, d in g["edges"]}
        assert {n["id"] for n in g["nodes"]} - srcs == {"out"}
        assert {n["id"] for n in g["nodes"]} - dsts == {f"in{j}" for j in read}


def test_cell_graph_matches_built_model():
    space = CellSearchSpace(num_cells=1, num_stages=1, filters=4)
    arch = space.from_json(HAND)
    g = space.graph(arch)
    model = space.build_model(arch, input_shape=(8, 8, 3), num_classes=3)
    names = {layer.name for layer in model.layers}
    into = {}
    for src, dst in g["edges"]:
        into.setdefault(dst, []).append(src)
    for i, b in enumerate(arch.blocks):
        # the conv node concatenates (a Concatenate layer) only when fed twice or more
        assert (f"s0c0b{i}_concat" in names) == (len(into[f"b{i}_conv"]) > 1)
        assert f"s0c0b{i}_in_conv" in names
        assert (f"s0c0b{i}_sum" in names) == (f"b{i}_sum" in into)
    out = model.get_layer("s0c0_out")
    assert len(out.input) == len(into["out"]) == space.num_blocks


def test_cell_graph_rejects_invalid_architectures():
    bad_input = CellArchitecture((Block((0, 3), ("identity",)),) + tuple(
        Block((0,), ("identity",)) for _ in range(SPACE.num_blocks - 1)))
    with pytest.raises(ArchitectureError, match="block 0: input 3 does not exist"):
        SPACE.graph(bad_input)
    too_many_ops = CellArchitecture(tuple(
        Block((0,), ("identity", "sep3x3", "sep5x5")) for _ in range(SPACE.num_blocks)))
    with pytest.raises(ArchitectureError, match="3 ops chosen"):
        SPACE.graph(too_many_ops)
    with pytest.raises(ArchitectureError, match="blocks"):
        SPACE.graph(CellArchitecture((Block((0,), ("identity",)),)))


# ---------------------------------------------------------------------------
# PNGs
# ---------------------------------------------------------------------------


def test_architecture_png_decodes():
    arch = SPACE.from_json(HAND)
    img = _decode(architecture_png(SPACE.graph(arch), title=SPACE.describe(arch)))
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0  # not a blank canvas


def test_architecture_png_five_blocks_and_generic_kinds():
    space = CellSearchSpace(num_blocks=5)
    g = space.graph(space.sample(np.random.default_rng(1)))
    assert len(g["nodes"]) >= 18
    png = architecture_png(g)
    img = _decode(png)
    assert img.shape[0] > 100 and img.shape[1] > 100
    # any DAG with any kinds draws, whatever the node order given
    generic = {"nodes": [{"id": "c", "label": "C", "kind": "weird"},
                         {"id": "a", "label": "A", "kind": "input"},
                         {"id": "b", "label": "B", "kind": "other"}],
               "edges": [["a", "b"], ["b", "c"], ["a", "c"]]}
    assert _decode(architecture_png(generic, title="t")).shape[0] > 100


def test_architecture_png_rejects_non_dags():
    with pytest.raises(ValueError, match="cycle"):
        architecture_png({"nodes": [{"id": "a", "label": "A", "kind": "op"},
                                    {"id": "b", "label": "B", "kind": "op"}],
                          "edges": [["a", "b"], ["b", "a"]]})
    with pytest.raises(ValueError, match="unknown node"):
        architecture_png({"nodes": [{"id": "a", "label": "A", "kind": "op"}],
                          "edges": [["a", "z"]]})


def test_candidates_png_unaffected():
    rng = np.random.default_rng(0)
    records = [{"score": float(s), "params": int(p)}
               for s, p in zip(rng.random(40), rng.integers(1000, 5000, 40))]
    img = _decode(candidates_png(records, title="search"))
    assert img.shape[0] > 100 and img.shape[1] > 100
    with_kl = [dict(r, kl=float(k)) for r, k in zip(records, rng.random(40))]
    img_kl = _decode(candidates_png(with_kl))
    assert img_kl.shape[1] > img.shape[1]  # a third panel
