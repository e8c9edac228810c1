"""SMASH's memory-bank search space: architectures as data, the encoding
tensor c of appendix B, sampling, perturbation, the resulting network."""

import json

import keras
import keras_tuner
import numpy as np
import pytest

from hypernets.smash.models import pattern_output
from hypernets.smash.space import (PATTERN_PROBABILITIES, PATTERNS, BankArchitecture, BankBlock, BankOp, Conv,
                                   MemoryBankSpace)
from oneshot_tf.search_space import ArchitectureError
from oneshot_tf.tuner import ArchitectureHyperModel, RefinementOracle

# One block whose input fills 4 banks of 4 channels; every bank count is a
# whole column of c (depth_compression * base = 4); two ops fit the budget.
HAND = MemoryBankSpace(num_blocks=1, filters=16, base=4, max_units=8, variable_banks=False, depth_compression=1,
                       max_banks=5, depth=1, op_kind="single", kernel_sizes=(3,), max_dilation=3, max_extent=7,
                       groups=(1,), bottleneck=4)


def conv3(d=1):
    return Conv((3, 3), (d, d), 1)


# op 0 reads banks 0, 1 and 3 and writes banks 1 and 3 (the paper's example,
# 0-based); op 1 reads bank 2 and writes a new bank, 4
HAND_ARCH = BankArchitecture((BankBlock(4, (
    BankOp((0, 1, 3), (1, 3), 8, (conv3(2), None, None, None)),
    BankOp((2,), (4,), 4, (conv3(1), None, None, None)))),))

V2 = MemoryBankSpace.smash_v2(num_blocks=3, filters=32, max_banks=32, depth=3)
V1 = MemoryBankSpace.smash_v1(num_blocks=2, filters=36, max_units=24, max_banks=24, depth=2)


def test_encoding_of_a_hand_made_architecture():
    c = HAND.encode(HAND_ARCH)["c"]
    m = HAND.max_banks
    assert c.shape == (2, 8, 2 * m + 3) == HAND.encoding_shape   # H = 8 / 4, W = (1 + 1) * 16 / 4, 2M + d_max
    expected = np.zeros_like(c)
    # op 0: 8 units = rows 0..1, 12 read channels = columns 0..2
    expected[0:2, 0:3, [0, 1, 3]] = 1                      # reads
    expected[0:2, 0:3, [m + 1, m + 3]] = 1                 # writes
    expected[0:2, 0:3, 2 * m + 1] = 1                      # dilation 2
    # op 1: 4 units = row 0, 4 read channels = column 3
    expected[0, 3, 2] = 1
    expected[0, 3, m + 4] = 1
    expected[0, 3, 2 * m + 0] = 1                          # dilation 1
    np.testing.assert_array_equal(c, expected)
    lay = HAND.layout(HAND_ARCH)
    assert [(o.column, o.columns, o.n_in, o.n_bottle, o.row) for o in lay] == [(0, 3, 12, 8, 0), (3, 1, 4, 4, 12)]


def test_v2_encoding_marks_each_convolution_slot():
    arch = V2.sample(np.random.default_rng(3))
    c = V2.encode(arch)["c"]
    per_slot = 2 * V2.max_dilation + 2 * len(V2.kernel_sizes) + len(V2.groups) + 1
    assert c.shape == (64 // 8, V2.width_columns, 2 * V2.max_banks + 4 * per_slot)
    op, lay = arch.blocks[0].ops[0], V2.layout(arch)[0]
    cell = c[0, lay.column]
    for slot, conv in enumerate(op.convs):
        at = 2 * V2.max_banks + slot * per_slot
        block = cell[at:at + per_slot]
        if conv is None:
            assert not block.any()
            continue
        dh, dw = conv.dilation
        kh, kw = conv.kernel
        assert block[dh - 1] == 1 and block[V2.max_dilation + dw - 1] == 1
        ks = 2 * V2.max_dilation
        assert block[ks + V2.kernel_sizes.index(kh)] == 1 and block[ks + 3 + V2.kernel_sizes.index(kw)] == 1
        assert block[ks + 6 + V2.groups.index(conv.groups)] == 1 and block[-1] == 1
        assert block.sum() == 6
    # rows beyond the op's units and columns beyond its reads are empty
    assert not c[op.units // 8:, lay.column:lay.column + lay.columns].any()


# banks as wide as a block's input: a budget below one bank's read once drew blocks with no op
WIDE = MemoryBankSpace.smash_v2(num_blocks=2, filters=16, max_units=32, max_banks=8, depth=2, depth_compression=2,
                                kernel_sizes=(3, 5), max_dilation=2, max_extent=5, groups=(1, 2, 4))


@pytest.mark.parametrize("space", [V1, V2, HAND, WIDE], ids=["v1", "v2", "hand", "wide banks"])
def test_samples_are_valid_round_trip_and_share_one_encoding_shape(space):
    seen = set()
    for s in range(200):
        arch = space.sample(np.random.default_rng(s))
        assert space.from_json(json.dumps(space.to_json(arch))) == arch
        assert space.from_hyperparameters(space.to_hyperparameters(arch)) == arch
        assert space.encode(arch)["c"].shape == space.encoding_shape
        seen.add(space.arch_id(arch))
        assert space.sample(np.random.default_rng(s)) == arch        # seeded
        for i, blk in enumerate(arch.blocks):
            reads = sum(len(o.reads) * blk.bank_size for o in blk.ops)
            assert reads <= space.max_columns(i) * space.read_unit   # the block's budget
            assert space.block_banks(i, blk) * blk.bank_size <= space.capacity
    assert len(seen) >= 190


def test_v2_patterns_follow_the_papers_prior_and_v1_is_one_dilated_3x3():
    counts = np.zeros(len(PATTERNS))
    for s in range(300):
        for blk in V2.sample(np.random.default_rng(s)).blocks:
            for op in blk.ops:
                counts[PATTERNS.index(op.pattern)] += 1
    freq = counts / counts.sum()
    assert counts.sum() > 1500
    np.testing.assert_allclose(freq, PATTERN_PROBABILITIES, atol=0.04)
    dilations = set()
    for s in range(30):
        for blk in V1.sample(np.random.default_rng(s)).blocks:
            assert blk.bank_size == 6
            for op in blk.ops:
                assert op.pattern == (1, 0, 0, 0) and op.convs[0].kernel == (3, 3) and op.convs[0].groups == 1
                assert len(op.reads) % 3 == 0 and op.units % 6 == 0 and op.units <= 24   # D = 3, N = 6
                dilations.add(op.convs[0].dilation)
    assert dilations == {(1, 1), (2, 2), (3, 3)}


def _op(reads, writes, units, convs=None):
    return BankOp(tuple(reads), tuple(writes), units, convs or (conv3(), None, None, None))


@pytest.mark.parametrize("arch, message", [
    (BankArchitecture(()), "expected 1 blocks, got 0"),
    (BankArchitecture((BankBlock(8, (_op([0], [0], 8),)),)), "block 0: bank size 8 is not one of [4]"),
    (BankArchitecture((BankBlock(4, ()),)), "block 0: has no ops"),
    (BankArchitecture((BankBlock(4, (_op([0, 4], [0], 4),)),)), "block 0, op 0: reads bank 4, but only banks 0..3"),
    (BankArchitecture((BankBlock(4, (_op([1, 0], [0], 4),)),)), "reads must be a non-empty increasing list"),
    (BankArchitecture((BankBlock(4, (_op([0], [0], 6),)),)), "units=6 must be a multiple of the bank size 4"),
    (BankArchitecture((BankBlock(4, (_op([0], [0], 8),)),)), "writes 1 banks but has 2 banks' worth of outputs"),
    (BankArchitecture((BankBlock(4, (_op([0], [5], 4),)),)), "writes new banks [5], but new banks are taken in "
                                                             "order from 4"),
    (BankArchitecture((BankBlock(4, (_op([0], [4], 4), _op([1], [5], 4))),)), "op 1: the block would hold 6 "
                                                                              "banks of 4, more than its capacity"),
    (BankArchitecture((BankBlock(4, (_op([0], [0], 4, (conv3(), conv3(), None, None)),)),)),
     "op 0: convolution pattern [1, 1, 0, 0] is not one of [[1, 0, 0, 0]]"),
    (BankArchitecture((BankBlock(4, (_op([0], [0], 4, (conv3(4), None, None, None)),)),)),
     "convolution 0: dilation 4 with kernel 3 (extent 9) is not allowed"),
    (BankArchitecture((BankBlock(4, (_op([0], [0], 4, (Conv((3, 3), (1, 1), 2), None, None, None)),)),)),
     "groups=2 must be one of [1]"),
    (BankArchitecture((BankBlock(4, (_op([0, 1, 2, 3], [0], 4), _op([0, 1, 2, 3], [0], 4),
                                     _op([0], [0], 4))),)), "block 0: its ops read 36 channels in all, more than "
                                                           "the block's budget of 32"),
])
def test_bad_architectures_name_the_problem(arch, message):
    with pytest.raises(ArchitectureError) as e:
        HAND.validate(arch)
    assert message in str(e.value)


def test_bad_json_and_v2_constraints_name_the_problem():
    with pytest.raises(ArchitectureError, match="not valid JSON"):
        HAND.from_json("{")
    with pytest.raises(ArchitectureError, match=r"block 0: malformed \(KeyError"):
        HAND.from_json({"blocks": [{"bank_size": 4}]})
    with pytest.raises(ArchitectureError, match="kernel and dilation have two values"):
        HAND.from_json({"blocks": [{"bank_size": 4, "ops": [{"reads": [0], "writes": [0], "units": 4, "convs": [
            {"kernel": [3], "dilation": [1, 1]}, None, None, None]}]}]})
    arch = V2.sample(np.random.default_rng(0))
    blk = arch.blocks[0]
    op = blk.ops[0]
    bad = BankOp(op.reads, op.writes, op.units, (Conv((7, 7), (2, 1), 1),) + op.convs[1:])
    with pytest.raises(ArchitectureError, match="convolution 0: dilation 2 with kernel 7 \\(extent 13\\)"):
        V2.validate(BankArchitecture((BankBlock(blk.bank_size, (bad,) + blk.ops[1:]),) + arch.blocks[1:]))
    arch = V1.sample(np.random.default_rng(0))   # banks of 6 channels, columns of D * N = 18
    blk = arch.blocks[0]
    odd = BankOp(blk.ops[0].reads[:1], blk.ops[0].writes, blk.ops[0].units, blk.ops[0].convs)
    with pytest.raises(ArchitectureError, match="block 0, op 0: reads 1 banks of 6 = 6 channels, not a multiple "
                                                "of depth_compression \\* base = 18"):
        V1.validate(BankArchitecture((BankBlock(6, (odd,) + blk.ops[1:]),) + arch.blocks[1:]))
    with pytest.raises(ValueError, match="block 0's input of 12 channels .* not a multiple of depth_compression "
                                         "\\* base = 18"):
        MemoryBankSpace.smash_v1(filters=12)


def test_params_and_flops_match_keras_and_a_hand_count():
    # stem 3x3x1x16; op 0: BN(12) + 1x1 12->8, BN(8) + 3x3 8->8; op 1: BN(4) + 1x1 4->4, BN(4) + 3x3 4->4;
    # head: BN(20) + dense 20->10 (5 banks of 4)
    params = 144 + (48 + 96 + 32 + 576) + (16 + 16 + 16 + 144) + (80 + 210)
    flops = 64 * (9 * 16 + 12 * 8 + 9 * 64 + 16 + 9 * 16) + 200
    assert HAND.count_params(HAND_ARCH, input_shape=(8, 8, 1), num_classes=10) == params
    assert HAND.count_flops(HAND_ARCH, input_shape=(8, 8, 1), num_classes=10) == flops
    for space, shape in ((HAND, (8, 8, 1)), (V1, (8, 8, 3)), (V2, (16, 16, 1))):
        for s in range(3):
            arch = HAND_ARCH if space is HAND and s == 0 else space.sample(np.random.default_rng(s))
            model = space.build_model(arch, input_shape=shape, num_classes=10)
            assert model.count_params() == space.count_params(arch, input_shape=shape, num_classes=10)
            out = model(np.zeros((2,) + shape, np.uint8))
            assert out.shape == (2, 10)


def test_pattern_output_follows_figure_2a():
    x = 1.0
    c = [lambda v: v + 1, lambda v: 10 * v, lambda v: v + 100, lambda v: -v]
    add = sum
    expected = {(1, 0, 0, 0): 2, (1, 0, 1, 0): 2 + 101, (1, 1, 0, 0): 20, (1, 1, 1, 0): 20 + 101,
                (1, 1, 1, 1): 20 - 101}
    for pattern, value in expected.items():
        convs = [f if on else None for f, on in zip(c, pattern)]
        assert pattern_output(x, convs, add) == value


def test_resulting_network_adds_writes_into_banks():
    """With every convolution zero except op 1's, which copies its 1x1's
    output, and the 1x1s identities, bank 4 ends as bank 2 after BN-ReLU
    twice: the head sees banks 0..3 unchanged except by op 0 (zero) and the
    new bank 4 = relu(bank 2)."""
    space = HAND
    model = space.build_model(HAND_ARCH, input_shape=(4, 4, 1), num_classes=3)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            k = np.zeros(layer.kernel.shape, np.float32)
            if layer.name == "stem_conv":
                k[1, 1, 0, :] = np.arange(1, 17) / 16.0           # channel c = image * (c + 1) / 16
            elif layer.name == "b0op1_1x1_conv":
                k[0, 0] = np.eye(4)
            elif layer.name == "b0op1_c0_conv":
                k[1, 1] = np.eye(4)
            layer.kernel.assign(k)
    feats = keras.Model(model.inputs, model.get_layer("head_bn").input)
    img = np.full((1, 4, 4, 1), 255, np.uint8)                      # standardized to 1
    out = np.asarray(feats([img], training=False))[0, 0, 0]
    stem = np.arange(1, 17) / 16.0
    bn = 1 / np.sqrt(1 + 1e-3)                                      # inference BN at initial statistics
    np.testing.assert_allclose(out[:16], stem, rtol=1e-5)          # op 0 adds zeros to banks 1 and 3
    np.testing.assert_allclose(out[16:], np.maximum(stem[8:12] * bn, 0) * bn, rtol=1e-5)   # new bank 4


def test_perturb_stays_in_the_space_and_changes_something():
    for space in (V1, V2):
        changed = 0
        for s in range(20):
            arch = space.sample(np.random.default_rng(s))
            for rate in (0.0, 0.05, 0.5):
                moved = space.perturb(arch, np.random.default_rng([s, int(rate * 100)]), rate)
                assert space.validate(moved) is moved
                assert [b.bank_size for b in moved.blocks] == [b.bank_size for b in arch.blocks]
                assert [len(b.ops) for b in moved.blocks] == [len(b.ops) for b in arch.blocks]
                assert moved == space.perturb(arch, np.random.default_rng([s, int(rate * 100)]), rate)
            assert space.perturb(arch, np.random.default_rng(s), 0.5) != arch
            changed += sum(space.perturb(arch, np.random.default_rng([s, k]), 0.0) != arch for k in range(10))
        # one element takes another value where it has one (an op reading every bank, or units with one
        # choice, has none): measured 191 (v1) and 175 (v2) of 200
        assert changed >= 170, changed


class _ParamsTuner(keras_tuner.Tuner):
    def run_trial(self, trial, *args, **kwargs):
        arch = V2.from_hyperparameters(trial.hyperparameters.values)
        return {"score": -float(V2.count_params(arch, input_shape=(16, 16, 1), num_classes=10))}


def test_refinement_search_perturbs_memory_bank_architectures(tmp_path):
    oracle = RefinementOracle(V2, max_trials=12, seed=1, random_trials=6, base_perturbations=3)
    tuner = _ParamsTuner(oracle, ArchitectureHyperModel(V2, input_shape=(16, 16, 1), num_classes=10),
                         directory=str(tmp_path), project_name="smash")
    tuner.search(verbose=0)
    trials = sorted(oracle.trials.values(), key=lambda t: int(t.trial_id))
    archs = [V2.from_hyperparameters(t.hyperparameters.values) for t in trials]
    assert len(trials) == 12 and len({V2.arch_id(a) for a in archs}) == 12
    base = int(np.argmax([t.score for t in trials[:6]]))
    for a in archs[6:9]:   # perturbations of the random phase's best keep its structure
        assert [len(b.ops) for b in a.blocks] == [len(b.ops) for b in archs[base].blocks]
        assert a != archs[base]
    assert max(t.score for t in trials) >= trials[base].score
