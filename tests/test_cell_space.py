"""Tests for oneshot_tf.methods.oneshot.cell_space (the cell search space of Bender et al., ICML 2018)."""

import hashlib
import itertools
import json
import math
import re

import keras
import numpy as np
import pytest

from oneshot_tf import config as config_lib
from oneshot_tf.methods.oneshot.cell_space import OPS, Block, CellArchitecture, CellSearchSpace
from oneshot_tf.methods.oneshot.models import reduction_layers
from oneshot_tf.search_space import ArchitectureError

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _arch(*blocks):
    """CellArchitecture from (inputs, ops) pairs."""
    return CellArchitecture(tuple(Block(tuple(i), tuple(o)) for i, o in blocks))


def _valid_json(space):
    """A valid JSON architecture (block i reads input 0 and uses identity)."""
    return {"blocks": [{"inputs": [0], "ops": ["identity"]} for _ in range(space.num_blocks)]}


def _with_block(space, i, **changes):
    obj = _valid_json(space)
    obj["blocks"][i] = {**obj["blocks"][i], **changes}
    return obj


def _subsets(k):
    return [tuple(c) for n in range(1, k + 1) for c in itertools.combinations(range(k), n)]


# ---------------------------------------------------------------------------
# size
# ---------------------------------------------------------------------------


def test_default_space_size_matches_paper_count():
    space = CellSearchSpace()
    assert space.num_blocks == 4 and space.ops == OPS and space.max_ops == 2
    expected = (2**2 - 1) * (2**3 - 1) * (2**4 - 1) * (2**5 - 1) * 28**4
    assert space.size() == expected == 6_002_115_840


def test_small_space_size_hand_count():
    space = CellSearchSpace(num_blocks=2, ops=("identity", "sep3x3", "maxpool3x3"), max_ops=2)
    # op sets: 3 singles + 3 pairs = 6; block 0: 3 input subsets, block 1: 7.
    assert space.size() == (3 * 6) * (7 * 6) == 756
    one_op = CellSearchSpace(num_blocks=2, ops=("identity", "sep3x3", "maxpool3x3"), max_ops=1)
    assert one_op.size() == (3 * 3) * (7 * 3)
    three_blocks = CellSearchSpace(num_blocks=3, ops=("identity", "sep3x3"), max_ops=2)
    assert three_blocks.size() == (3 * 3) * (7 * 3) * (15 * 3)


def test_small_space_size_by_enumeration_and_sampling_covers_it():
    ops = ("identity", "sep3x3", "maxpool3x3")
    space = CellSearchSpace(num_blocks=2, ops=ops, max_ops=2)
    # Enumerate every (inputs, ops) combination, including invalid op counts,
    # and count those validate() accepts.
    op_subsets = [c for n in range(1, len(ops) + 1) for c in itertools.combinations(ops, n)]
    valid = 0
    for b0 in itertools.product(_subsets(2), op_subsets):
        for b1 in itertools.product(_subsets(3), op_subsets):
            try:
                space.validate(_arch(b0, b1))
                valid += 1
            except ArchitectureError:
                pass
    assert valid == space.size() == 756
    everything = space.sample_unique(756, seed=3)
    assert len({space.arch_id(a) for a in everything}) == 756
    with pytest.raises(ValueError, match="asked for 757 distinct architectures, the space has 756"):
        space.sample_unique(757, seed=3)


# ---------------------------------------------------------------------------
# JSON, ids, encodings
# ---------------------------------------------------------------------------


def test_json_round_trip_and_arch_ids():
    space = CellSearchSpace()
    rng = np.random.default_rng(11)
    archs = [space.sample(rng) for _ in range(300)]
    ids = {}
    for a in archs:
        text = json.dumps(space.to_json(a))
        back = space.from_json(text)
        assert back == a
        assert space.from_json(json.loads(text)) == a
        assert space.from_json(text.encode()) == a
        canon = json.dumps(space.to_json(a), sort_keys=True, separators=(",", ":"))
        aid = space.arch_id(a)
        assert aid == hashlib.sha1(canon.encode()).hexdigest()[:16]
        assert re.fullmatch(r"[0-9a-f]{16}", aid)
        assert space.arch_id(back) == aid
        ids.setdefault(canon, set()).add(aid)
    # same arch -> one id; different archs -> different ids
    assert all(len(v) == 1 for v in ids.values())
    assert len({next(iter(v)) for v in ids.values()}) == len(ids) > 250


def test_from_json_normalises_order_and_arch_id_is_fixed():
    space = CellSearchSpace(num_blocks=2)
    a = space.from_json({"blocks": [{"ops": ["avgpool3x3", "sep3x3"], "inputs": [1, 0]},
                                    {"inputs": [2], "ops": ["conv1x7_7x1"]}]})
    assert a == _arch(((0, 1), ("sep3x3", "avgpool3x3")), ((2,), ("conv1x7_7x1",)))
    text = ('{"blocks":[{"inputs":[0,1],"ops":["sep3x3","avgpool3x3"]},'
            '{"inputs":[2],"ops":["conv1x7_7x1"]}]}')
    assert space.arch_id(a) == hashlib.sha1(text.encode()).hexdigest()[:16]
    assert space.describe(a) == "b0(c-2+c-1)->sep3x3+avgpool3x3; b1(b0)->conv1x7_7x1"


def test_encode_decode_round_trip_shapes_and_padding():
    for nb in (1, 3, 4):
        space = CellSearchSpace(num_blocks=nb)
        rng = np.random.default_rng(nb)
        for _ in range(50):
            a = space.sample(rng)
            enc = space.encode(a)
            assert set(enc) == {"input_mask", "op_mask"}
            assert enc["input_mask"].shape == (nb, nb + 1)
            assert enc["op_mask"].shape == (nb, 7)
            assert enc["input_mask"].dtype == np.float32 and enc["op_mask"].dtype == np.float32
            for i, b in enumerate(a.blocks):
                assert np.all(enc["input_mask"][i, 2 + i:] == 0)  # padding columns
                assert sorted(np.flatnonzero(enc["input_mask"][i])) == list(b.inputs)
                assert [OPS[o] for o in np.flatnonzero(enc["op_mask"][i])] == list(b.ops)
            assert space.decode(enc) == a
    hand = CellSearchSpace(num_blocks=2).encode(_arch(((1,), ("sep3x3",)), ((0, 2), ("identity", "avgpool3x3"))))
    np.testing.assert_array_equal(hand["input_mask"], [[0, 1, 0], [1, 0, 1]])
    np.testing.assert_array_equal(hand["op_mask"], [[0, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(CellSearchSpace(num_blocks=3).valid_input_mask(),
                                  [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])


def test_config_round_trip():
    space = CellSearchSpace(num_cells=5, num_stages=2, filters=8, num_blocks=3,
                            ops=("identity", "sep5x5"), max_ops=1)
    cfg = json.loads(json.dumps(space.get_config()))
    again = CellSearchSpace.from_config(cfg)
    assert again.get_config() == space.get_config()
    assert again.cells_per_stage == [3, 2] and again.size() == space.size() == 3 * 2 * 7 * 2 * 15 * 2


# ---------------------------------------------------------------------------
# invalid architectures
# ---------------------------------------------------------------------------

SPACE3 = CellSearchSpace(num_blocks=3)


@pytest.mark.parametrize("obj, message", [
    (_with_block(SPACE3, 1, ops=["sep9x9"]),
     "block 1: unknown op 'sep9x9' (choose from identity, sep3x3"),
    (_with_block(SPACE3, 2, ops=["identity", "nope"]), "block 2: unknown op 'nope'"),
    (_with_block(SPACE3, 0, inputs=[]), "block 0: no input chosen (choose 1 to 2 of inputs 0..1)"),
    (_with_block(SPACE3, 2, inputs=[]), "block 2: no input chosen (choose 1 to 4 of inputs 0..3)"),
    (_with_block(SPACE3, 0, inputs=[0, 1, 1]), "block 0: 3 inputs chosen, at most 2 allowed"),
    (_with_block(SPACE3, 1, inputs=[0, 1, 2, 2]), "block 1: 4 inputs chosen, at most 3 allowed"),
    (_with_block(SPACE3, 1, inputs=[0, 3]), "block 1: input 3 does not exist (block 1 reads inputs 0..2"),
    (_with_block(SPACE3, 0, inputs=[2]), "block 0: input 2 does not exist (block 0 reads inputs 0..1"),
    (_with_block(SPACE3, 2, inputs=[-1]), "block 2: input -1 does not exist"),
    (_with_block(SPACE3, 1, inputs=[0, 0]), "block 1: input chosen twice in [0, 0]"),
    (_with_block(SPACE3, 2, ops=["identity", "sep3x3", "sep5x5"]), "block 2: 3 ops chosen, at most 2 allowed"),
    (_with_block(SPACE3, 0, ops=["sep3x3", "sep3x3"]), "block 0: op chosen twice in ['sep3x3', 'sep3x3']"),
    (_with_block(SPACE3, 1, ops=[]), "block 1: no op chosen (choose 1 to 2)"),
    (_with_block(SPACE3, 1, ops=[3]), "block 1: op 3 is not a name"),
    (_with_block(SPACE3, 1, inputs=[0, 1.5]), "block 1: input 1.5 is not an integer index"),
    (_with_block(SPACE3, 0, inputs=["1"]), "block 0: input '1' is not an integer index"),
    (_with_block(SPACE3, 2, inputs=[True]), "block 2: input True is not an integer index"),
    (_with_block(SPACE3, 1, extra=1), "block 1: unknown keys ['extra']"),
    ({"blocks": [{"inputs": [0], "ops": ["identity"]}] * 2},
     "architecture has 2 blocks, the search space has 3 choice blocks per cell"),
    ({"blocks": [{"inputs": [0], "ops": ["identity"]}] * 4},
     "architecture has 4 blocks, the search space has 3 choice blocks per cell"),
    ({"blocks": [{"inputs": [0], "ops": ["identity"]}, {"inputs": [0]}, {"inputs": [0], "ops": ["identity"]}]},
     'block 1: malformed, expected {"inputs": [...], "ops": [...]}'),
    ({"blocks": [{"ops": ["identity"]}] * 3}, 'block 0: malformed, expected {"inputs": [...], "ops": [...]}'),
    ({"blocks": [[0], [0], [0]]}, "block 0: malformed"),
    ({"cells": []}, 'malformed architecture: expected an object {"blocks": [...]}'),
    ([1, 2], 'malformed architecture: expected an object {"blocks": [...]}'),
    ('{"blocks": [', "malformed architecture JSON: "),
    ("not json", "malformed architecture JSON: "),
])
def test_invalid_architectures_raise_with_block_and_problem(obj, message):
    with pytest.raises(ArchitectureError, match=re.escape(message)):
        SPACE3.from_json(obj)
    # the text form gives the same error
    if not isinstance(obj, str):
        with pytest.raises(ArchitectureError, match=re.escape(message)):
            SPACE3.from_json(json.dumps(obj))


def test_validate_errors_on_architecture_values():
    assert issubclass(ArchitectureError, ValueError)
    ok = ((0,), ("identity",))
    with pytest.raises(ArchitectureError, match="expected a CellArchitecture, got dict"):
        SPACE3.validate({"blocks": []})
    with pytest.raises(ArchitectureError, match=re.escape("block 1: inputs must be sorted, got [1, 0]")):
        SPACE3.validate(_arch(ok, ((1, 0), ("identity",)), ok))
    with pytest.raises(ArchitectureError, match="block 2: ops must be listed in the order identity, sep3x3"):
        SPACE3.validate(_arch(ok, ok, ((0,), ("sep3x3", "identity"))))
    with pytest.raises(ArchitectureError, match="block 0: 3 inputs chosen, at most 2 allowed"):
        SPACE3.validate(_arch(((0, 1, 2), ("identity",)), ok, ok))
    with pytest.raises(ArchitectureError, match="block 2: input 4 does not exist"):
        SPACE3.validate(_arch(ok, ok, ((0, 4), ("identity",))))
    # numpy integers are integer indices
    assert SPACE3.validate(_arch(((np.int64(1),), ("identity",)), ok, ok))
    # all-on (7 ops) is outside the space unless allowed explicitly
    with pytest.raises(ArchitectureError, match="block 0: 7 ops chosen, at most 2 allowed"):
        SPACE3.validate(SPACE3.all_on())
    assert SPACE3.validate(SPACE3.all_on(), allow_all_ops=True) == SPACE3.all_on()


def test_constructor_rejects_bad_spaces():
    with pytest.raises(ValueError, match="need 1 <= num_stages <= num_cells"):
        CellSearchSpace(num_cells=2, num_stages=3)
    with pytest.raises(ValueError, match="filters and num_blocks must be positive"):
        CellSearchSpace(num_blocks=0)
    with pytest.raises(ValueError, match="ops must be distinct names"):
        CellSearchSpace(ops=("identity", "identity"))
    with pytest.raises(ValueError, match="ops must be distinct names"):
        CellSearchSpace(ops=("conv3x3",))
    with pytest.raises(ValueError, match=re.escape("max_ops must be in [1, 2], got 3")):
        CellSearchSpace(ops=("identity", "sep3x3"), max_ops=3)


# ---------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------


def _chi2(counts, n):
    counts = np.asarray(counts, float)
    e = n / len(counts)
    return float(((counts - e) ** 2 / e).sum())


def test_sampling_is_seeded():
    space = CellSearchSpace()
    a = [space.sample(np.random.default_rng(5)) for _ in range(1)]
    r1, r2, r3 = (np.random.default_rng(s) for s in (5, 5, 6))
    s1 = [space.sample(r1) for _ in range(30)]
    s2 = [space.sample(r2) for _ in range(30)]
    s3 = [space.sample(r3) for _ in range(30)]
    assert s1 == s2 and s1[0] == a[0]
    assert s1 != s3
    assert sum(x == y for x, y in zip(s1, s3)) < 3
    assert space.sample_unique(20, seed=1) == space.sample_unique(20, seed=1)
    assert space.sample_unique(20, seed=1) != space.sample_unique(20, seed=2)


def test_sampling_is_uniform():
    space = CellSearchSpace()
    rng = np.random.default_rng(2018)
    n = 4000
    archs = [space.sample(rng) for _ in range(n)]
    for a in archs[:50]:
        space.validate(a)
    # block 0: {0}, {1}, {0,1} each 1/3
    subsets0 = [a.blocks[0].inputs for a in archs]
    counts0 = [subsets0.count(s) for s in [(0,), (1,), (0, 1)]]
    assert sum(counts0) == n
    for c in counts0:
        assert abs(c / n - 1 / 3) < 4 * math.sqrt((1 / 3) * (2 / 3) / n)
    assert _chi2(counts0, n) < 13.8  # chi2(df=2) 0.999 quantile
    # every block's input subsets: 2^(2+i)-1 equally likely subsets
    crit = {2: 13.8, 6: 22.5, 14: 36.1, 30: 59.7}  # chi2 0.999 quantiles
    for i in range(space.num_blocks):
        subs = _subsets(2 + i)
        seen = [a.blocks[i].inputs for a in archs]
        counts = [seen.count(s) for s in subs]
        assert sum(counts) == n, f"block {i}: a sampled subset is not a valid subset"
        assert _chi2(counts, n) < crit[len(subs) - 1], (i, counts)
    # op sets: 28 sets of one or two ops, each 1/28, in every block
    op_sets = [c for k in (1, 2) for c in itertools.combinations(OPS, k)]
    assert len(op_sets) == 28
    for i in range(space.num_blocks):
        seen = [a.blocks[i].ops for a in archs]
        counts = [seen.count(s) for s in op_sets]
        assert sum(counts) == n
        assert min(counts) > 0
        assert _chi2(counts, n) < 55.5, (i, counts)  # chi2(df=27) 0.999 quantile
        for c in counts:
            assert abs(c / n - 1 / 28) < 4.5 * math.sqrt((1 / 28) * (27 / 28) / n)
    # single ops are 7/28 of the draws, pairs 21/28
    singles = sum(len(a.blocks[0].ops) == 1 for a in archs)
    assert abs(singles / n - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)


def test_sample_unique_returns_distinct_archs():
    space = CellSearchSpace(num_blocks=2, ops=("identity", "sep3x3"), max_ops=1)
    assert space.size() == 3 * 2 * 7 * 2
    archs = space.sample_unique(80, seed=4)
    assert len(archs) == 80
    assert len({space.arch_id(a) for a in archs}) == 80
    assert len(set(archs)) == 80
    for a in archs:
        space.validate(a)


# ---------------------------------------------------------------------------
# parameter and FLOP counts vs the built stand-alone models
# ---------------------------------------------------------------------------

SPACE_A = CellSearchSpace(num_cells=2, num_stages=2, filters=4, num_blocks=2)
SHAPE_A = (8, 8, 3)
SPACE_B = CellSearchSpace(num_cells=3, num_stages=2, filters=3, num_blocks=3)
SHAPE_B = (7, 9, 1)


def _count_cases():
    cases = []
    rng = np.random.default_rng(7)
    for a in (SPACE_A.sample(rng) for _ in range(3)):
        cases.append(("A", a))
    # no block reads input 1 (cell k-1): s0c0 drops out of the stand-alone model
    cases.append(("A", _arch(((0,), ("sep3x3",)), ((0, 2), ("conv1x7_7x1", "maxpool3x3")))))
    # no block reads input 0 (cell k-2)
    cases.append(("A", _arch(((1,), ("identity", "sep7x7")), ((2,), ("sep5x5",)))))
    rng = np.random.default_rng(8)
    for a in (SPACE_B.sample(rng) for _ in range(2)):
        cases.append(("B", a))
    cases.append(("B", _arch(((0,), ("sep5x5",)), ((0, 2), ("identity",)), ((2, 3), ("sep3x3", "avgpool3x3")))))
    cases.append(("B", _arch(((1,), ("conv1x7_7x1",)), ((1, 2), ("sep7x7",)), ((1, 3), ("identity", "sep3x3")))))
    return cases


def _walked_flops(model):
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.SeparableConv2D):
            _, oh, ow, cout = layer.output.shape
            kh, kw, cin, mult = layer.depthwise_kernel.shape
            assert mult == 1
            assert tuple(layer.pointwise_kernel.shape) == (1, 1, cin, cout)
            total += oh * ow * (kh * kw * cin + cin * cout)
        elif isinstance(layer, keras.layers.Conv2D):
            _, oh, ow, cout = layer.output.shape
            kh, kw, cin, _ = layer.kernel.shape
            total += oh * ow * kh * kw * cin * cout
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            total += cin * cout
    return int(total)


@pytest.mark.parametrize("which, arch", _count_cases())
def test_counts_match_built_model(which, arch):
    space, shape, classes = (SPACE_A, SHAPE_A, 5) if which == "A" else (SPACE_B, SHAPE_B, 4)
    model = space.build_model(arch, input_shape=shape, num_classes=classes)
    assert model.output.shape[-1] == classes
    assert space.count_params(arch, input_shape=shape, num_classes=classes) == model.count_params()
    assert space.count_flops(arch, input_shape=shape, num_classes=classes) == _walked_flops(model)
    names = {l.name for l in model.layers}
    reads = {j for b in arch.blocks for j in b.inputs}
    if which == "A" and 1 not in reads:
        # cell 0 is only ever "cell k-1" of cell 1: it is not part of the model
        assert not any(n.startswith("s0c0") for n in names)
        assert "s1_reduce1_conv" not in names and "s1_reduce0_conv" in names
    if which == "A" and 0 not in reads:
        assert "s1_reduce0_conv" not in names and "s1_reduce1_conv" in names
        assert any(n.startswith("s0c0") for n in names)
    used = space.used_nodes(arch, shape)
    plan = space.plan(shape)
    for node, u in zip(plan, used):
        if node.kind in ("cell", "reduce"):
            present = any(n.startswith(node.name + ("_" if node.kind == "reduce" else "b")) for n in names)
            assert present == u, node.name


def test_plan_shapes_hand_count():
    nodes = SPACE_B.plan(SHAPE_B)
    got = [(n.name, n.kind, n.deps, n.height, n.width, n.channels) for n in nodes]
    assert got == [
        ("stem", "stem", (), 7, 9, 3),
        ("s0c0", "cell", (0, 0), 7, 9, 9),
        ("s0c1", "cell", (0, 1), 7, 9, 9),
        ("s1_reduce0", "reduce", (1,), 4, 5, 12),
        ("s1_reduce1", "reduce", (2,), 4, 5, 12),
        ("s1c2", "cell", (3, 4), 4, 5, 18),
        ("head", "head", (5,), 1, 1, 0),
    ]


def test_param_count_hand_computation():
    # SPACE_A, arch: block0 reads {1} with identity; block1 reads {2} with sep3x3.
    arch = _arch(((1,), ("identity",)), ((2,), ("sep3x3",)))
    stem = 9 * 3 * 4
    # stage 0 (F=4): block0 in: bn(4)+4*4 ; block1 in: bn(4)+4*4, sep3x3: 2*(4*4 + 9*4 + 4*4)
    cell0 = (16 + 16) + (16 + 16) + 2 * (16 + 36 + 16)
    # stage 1 (F=8): reduce1 of cell0 (8 channels) -> 16 channels (BN, 1x1 conv); reduce0 unused
    red = 4 * 8 + 8 * 16
    cell1 = (4 * 16 + 16 * 8) + (4 * 8 + 8 * 8) + 2 * (4 * 8 + 9 * 8 + 8 * 8)
    head = 4 * 16 + 16 * 5 + 5
    assert SPACE_A.count_params(arch, input_shape=SHAPE_A, num_classes=5) == stem + cell0 + red + cell1 + head
    flops = (64 * 9 * 3 * 4 + 64 * (16 + 16 + 2 * (36 + 16)) + 16 * 8 * 16
             + 16 * (16 * 8 + 8 * 8 + 2 * (72 + 64)) + 16 * 5)
    assert SPACE_A.count_flops(arch, input_shape=SHAPE_A, num_classes=5) == flops


def test_reduction_layers_hand_computation():
    # BN-ReLU, 2x2 average pooling with stride 2 ("same": 5 -> 3, the last
    # row/column windows average their valid pixels only), 1x1 convolution.
    rng = np.random.default_rng(0)
    c, filters = 3, 4
    layers = reduction_layers("r", filters, lambda n: keras.layers.BatchNormalization(epsilon=1e-3, name=n))
    assert [type(l).__name__ for l in layers] == ["BatchNormalization", "ReLU", "AveragePooling2D", "Conv2D"]
    assert [l.name for l in layers] == ["r_bn", "r_relu", "r_pool", "r_conv"]
    x = rng.normal(size=(2, 5, 5, c)).astype(np.float32)
    layers[0].build(x.shape)
    layers[3].build((2, 3, 3, c))
    gamma, beta = rng.normal(size=c), rng.normal(size=c)
    layers[0].gamma.assign(gamma.astype(np.float32))
    layers[0].beta.assign(beta.astype(np.float32))
    kernel = np.asarray(layers[3].kernel)
    assert kernel.shape == (1, 1, c, filters)
    y = x
    for layer in layers:
        y = layer(y)  # BN in inference mode: moving mean 0, variance 1
    a = np.maximum(x / np.sqrt(1 + 1e-3) * gamma + beta, 0.0)
    pooled = np.zeros((2, 3, 3, c))
    for i in range(3):
        for j in range(3):
            pooled[:, i, j] = a[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(y), pooled @ kernel[0, 0], rtol=1e-4, atol=1e-5)


# Table 1 of the paper (CIFAR-10), millions of parameters: All On, and Random
# as the mean and standard deviation of ten sampled models, printed to one decimal.
TABLE_1 = {16: (1.3, 0.5, 0.2), 32: (4.8, 1.7, 0.7), 64: (18.5, 6.7, 2.6), 128: (72.7, 26.4, 10.5)}


def _printed(value):
    """The interval of the numbers Table 1 prints as ``value`` (one decimal)."""
    return value - 0.05, value + 0.05


def test_paper_preset_counts_match_table_1():
    cfg = config_lib.resolve("paper", {})
    kw = dict(input_shape=(32, 32, 3), num_classes=10)
    s = cfg.settings
    base = CellSearchSpace(num_cells=s.num_cells, num_stages=s.num_stages, filters=s.filters,
                           num_blocks=s.num_blocks)
    assert (base.num_cells, base.num_stages, base.filters, base.num_blocks) == (6, 3, 16, 4)
    rng = np.random.default_rng(2018)
    archs = [base.sample(rng) for _ in range(4000)]  # the same architectures at every F, as in Table 1
    for f, (all_on, mean, std) in TABLE_1.items():
        space = CellSearchSpace(num_cells=6, num_stages=3, filters=f, num_blocks=4)
        got = space.count_params(space.all_on(), **kw) / 1e6
        assert got == pytest.approx(all_on, rel=0.10), (f, "all on", got)
        p = np.array([space.count_params(a, **kw) for a in archs]) / 1e6
        assert p.mean() == pytest.approx(mean, rel=0.10), (f, "random mean", p.mean())
        # The paper's std is that of ten models: a noisy estimate (about 24%
        # relative standard error), so it is compared with the spread of the
        # std of ten random models here (5th..95th percentile of 400 draws of
        # ten), and so is the spread relative to the mean (std / mean).
        ten = p.reshape(-1, 10)
        sd10 = ten.std(axis=1, ddof=1)
        lo, hi = np.percentile(sd10, [5, 95])
        s_lo, s_hi = _printed(std)
        assert s_lo <= hi and lo <= s_hi, (f, "random std", std, (lo, hi), p.std())
        cv_lo, cv_hi = np.percentile(sd10 / ten.mean(axis=1), [5, 95])
        m_lo, m_hi = _printed(mean)
        assert s_lo / m_hi <= cv_hi and cv_lo <= s_hi / m_lo, (f, "random std / mean", (cv_lo, cv_hi))
        # the population std is below the paper's ten-model value, but not by half
        assert 0.6 * std < p.std() < 1.1 * std, (f, p.std())
