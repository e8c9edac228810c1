"""SMASH's corrupted-encoding analysis (hypernets/smash/analysis.py,
experiments/smash_encoding.py): the corruptions change exactly the intended
channels of c, are seeded permutations and report no-ops; the analysis of a
tiny trained run writes its JSON and PNG; the binary refuses a directory
that is not a trained SMASH run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hypernets.smash import analysis
from hypernets.smash.space import BankArchitecture, BankBlock, BankOp, Conv, MemoryBankSpace
from oneshot_tf import config as config_lib

REPO = Path(__file__).resolve().parents[1]

# SMASHv1-like: one dilated 3x3 per op.  Op 0 reads banks 0, 1, 3 and writes
# 1, 3 with dilation 2; op 1 reads bank 2 and writes a new bank 4 with
# dilation 1 (tests/test_smash_space.py's hand-made architecture).
SINGLE = MemoryBankSpace(num_blocks=1, filters=16, base=4, max_units=8, variable_banks=False, depth_compression=1,
                         max_banks=5, depth=1, op_kind="single", kernel_sizes=(3,), max_dilation=3, max_extent=7,
                         groups=(1,), bottleneck=4)


def conv3(d=1):
    return Conv((3, 3), (d, d), 1)


SINGLE_ARCH = BankArchitecture((BankBlock(4, (
    BankOp((0, 1, 3), (1, 3), 8, (conv3(2), None, None, None)),
    BankOp((2,), (4,), 4, (conv3(1), None, None, None)))),))

# SMASHv2-like: Figure 2(a)'s slots, each with a dilation per axis.
TWO = MemoryBankSpace(num_blocks=1, filters=16, base=4, max_units=8, variable_banks=False, depth_compression=1,
                      max_banks=6, depth=2, op_kind="2x2", kernel_sizes=(3,), max_dilation=2, max_extent=5,
                      groups=(1, 2), bottleneck=2)
TWO_ARCH = TWO.from_json({"blocks": [{"bank_size": 4, "ops": [
    {"reads": [0, 1], "writes": [4], "units": 4,
     "convs": [{"kernel": [3, 3], "dilation": [1, 2], "groups": 1}, None,
               {"kernel": [3, 3], "dilation": [2, 2], "groups": 2}, None]},
    {"reads": [3, 4], "writes": [0, 5], "units": 8,
     "convs": [{"kernel": [3, 3], "dilation": [1, 1], "groups": 1},
               {"kernel": [3, 3], "dilation": [1, 2], "groups": 2}, None, None]}]}]})

TINY_SPACE = config_lib.resolve("tiny", {}, method="smash").settings.search_space()
QUICK_SPACE = config_lib.resolve("quick", {}, method="smash").settings.search_space()
V1 = MemoryBankSpace.smash_v1(num_blocks=2, filters=36, max_units=24, max_banks=24, depth=2)


def _rng(seed=0):
    return np.random.default_rng(seed)


def test_channel_map_tiles_the_encodings_channels():
    m = SINGLE.max_banks
    cmap = SINGLE.channel_map()
    assert (cmap.reads, cmap.writes, cmap.slots[0].dilation) == (slice(0, m), slice(m, 2 * m),
                                                                 slice(2 * m, 2 * m + 3))
    for space in (SINGLE, TWO, TINY_SPACE, QUICK_SPACE, V1):
        cmap = space.channel_map()
        assert len(cmap.slots) == (1 if space.op_kind == "single" else 4)
        covered = list(range(cmap.reads.start, cmap.writes.stop))
        for slot in cmap.slots:
            for field in (slot.dilation, slot.kernel, slot.groups):
                covered += [] if field is None else list(range(field.start, field.stop))
            covered += [] if slot.active is None else [slot.active]
        assert sorted(covered) == list(range(space.encoding_channels)) == list(range(cmap.channels))


def test_shuffle_dilations_of_a_hand_made_architecture():
    c = SINGLE.encode(SINGLE_ARCH)["c"]
    out = analysis.shuffle_dilations(SINGLE, SINGLE_ARCH, _rng())
    assert out.changed and out.fields == 2 and out.moved == 2
    d = 2 * SINGLE.max_banks
    expected = c.copy()
    expected[0:2, 0:3, d:d + 3] = [1, 0, 0]     # op 0 (rows 0..1, columns 0..2) now says dilation 1
    expected[0, 3, d:d + 3] = [0, 1, 0]         # op 1 (row 0, column 3) now says dilation 2
    np.testing.assert_array_equal(out.c, expected)
    assert not np.shares_memory(out.c, c)


def test_shuffle_reads_writes_of_a_hand_made_architecture():
    c = SINGLE.encode(SINGLE_ARCH)["c"]
    out = analysis.shuffle_reads_writes(SINGLE, SINGLE_ARCH, _rng())
    assert out.changed and out.fields == 2 and out.moved == 2
    m = SINGLE.max_banks
    expected = c.copy()
    expected[0:2, 0:3, :2 * m] = 0
    expected[0:2, 0:3, [2, m + 4]] = 1          # op 0 carries op 1's pattern: reads 2, writes 4
    expected[0, 3, :2 * m] = 0
    expected[0, 3, [0, 1, 3, m + 1, m + 3]] = 1  # op 1 carries op 0's: reads 0, 1, 3, writes 1, 3
    np.testing.assert_array_equal(out.c, expected)


def _fields(space, arch, c, which):
    """The field vectors of c: each active convolution's dilation field, or
    each op's bank pattern; and a mask of the channels they cover."""
    cmap = space.channel_map()
    mask, values = np.zeros(c.shape, bool), []
    for lay in space.layout(arch):
        rows, cols = analysis.op_cells(space, lay)
        op = arch.blocks[lay.block].ops[lay.op]
        if which == "dilations":
            chans = [slot.dilation for conv, slot in zip(op.convs, cmap.slots) if conv is not None]
        else:
            chans = [slice(cmap.reads.start, cmap.writes.stop)]
        for ch in chans:
            mask[rows, cols, ch] = True
            cell = c[rows, cols, ch]
            assert (cell == cell[0, 0]).all()      # the field is one vector over the op's cells
            values.append(tuple(cell[0, 0]))
    return values, mask


@pytest.mark.parametrize("space,arch", [(TWO, TWO_ARCH), (SINGLE, SINGLE_ARCH)] +
                         [(sp, sp.sample(_rng(s))) for sp in (QUICK_SPACE, V1) for s in range(4)],
                         ids=["2x2 hand", "single hand"] + [f"{n}{s}" for n in ("quick", "v1") for s in range(4)])
@pytest.mark.parametrize("name", ["shuffle_dilations", "shuffle_reads_writes"])
def test_corruptions_permute_exactly_their_fields(space, arch, name):
    c = space.encode(arch)["c"]
    out = analysis.CORRUPTIONS[name](space, arch, _rng(7))
    which = "dilations" if name == "shuffle_dilations" else "banks"
    before, mask = _fields(space, arch, c, which)
    after, _ = _fields(space, arch, out.c, which)
    np.testing.assert_array_equal(out.c[~mask], c[~mask])            # nothing else changes
    assert sorted(after) == sorted(before)                           # a permutation of the fields
    assert out.fields == len(before) and out.moved == sum(a != b for a, b in zip(after, before))
    assert out.changed == (out.moved > 0) == (not np.array_equal(out.c, c))
    if name == "shuffle_reads_writes":                               # only within a block
        lays = space.layout(arch)
        for b in range(space.num_blocks):
            idx = [t for t, lay in enumerate(lays) if lay.block == b]
            assert sorted(after[t] for t in idx) == sorted(before[t] for t in idx)
    again = analysis.CORRUPTIONS[name](space, arch, _rng(7))         # seeded
    np.testing.assert_array_equal(again.c, out.c)


def test_the_2x2_dilation_shuffle_keeps_kernels_groups_and_inactive_slots():
    c = TWO.encode(TWO_ARCH)["c"]
    seen = set()
    for s in range(20):
        out = analysis.shuffle_dilations(TWO, TWO_ARCH, _rng(s))
        assert out.changed and out.fields == 4
        cmap = TWO.channel_map()
        for slot in cmap.slots:
            for ch in (slot.kernel, slot.groups, slice(slot.active, slot.active + 1)):
                np.testing.assert_array_equal(out.c[..., ch], c[..., ch])
        # op 0's slots 1 and 3 and op 1's slots 2 and 3 are inactive: still empty
        assert not out.c[0, 0:2, cmap.slots[1].dilation].any() and not out.c[0, 0:2, cmap.slots[3].dilation].any()
        assert not out.c[0:2, 2:4, cmap.slots[2].dilation].any() and not out.c[0:2, 2:4, cmap.slots[3].dilation].any()
        seen.add(out.c.tobytes())
    assert len(seen) > 1                                              # different seeds, different shuffles


def test_no_op_corruptions_are_detected_and_reported():
    same = BankArchitecture((BankBlock(4, tuple(
        BankOp(o.reads, o.writes, o.units, (conv3(2), None, None, None)) for o in SINGLE_ARCH.blocks[0].ops)),))
    c = SINGLE.encode(same)["c"]
    out = analysis.shuffle_dilations(SINGLE, same, _rng())
    assert not out.changed and out.moved == 0 and "dilation [2, 2]" in out.note
    np.testing.assert_array_equal(out.c, c)
    one_op = BankArchitecture((BankBlock(4, SINGLE_ARCH.blocks[0].ops[:1]),))
    out = analysis.shuffle_reads_writes(SINGLE, one_op, _rng())
    assert not out.changed and "one op" in out.note
    out = analysis.shuffle_dilations(SINGLE, one_op, _rng())
    assert not out.changed and "one convolution" in out.note


def test_summary_statistics_and_verdicts():
    recs = [{"true_score": t, "corruptions": {"shuffle_dilations": {"changed": True, "score": b},
                                              "shuffle_reads_writes": {"changed": False, "score": None}}}
            for t, b in [(0.9, 0.5), (0.8, 0.6), (0.7, 0.7), (0.95, 0.5)]]
    s = analysis.summarize(recs, ["shuffle_dilations", "shuffle_reads_writes"], seed=0)
    d = s["shuffle_dilations"]
    assert d["architectures"] == 4 and d["skipped"] == 0
    assert d["mean_drop"] == pytest.approx(np.mean([0.4, 0.2, 0.0, 0.45])) == pytest.approx(d["mean_abs_drop"])
    assert d["frac_true_highest"] == 0.75 and d["frac_tied"] == 0.25 and d["frac_true_lower"] == 0
    assert 0 <= d["ci95"][0] <= d["mean_drop"] <= d["ci95"][1]
    assert d["verdict"].startswith("shuffle_dilations: the HyperNet reads c")
    rw = s["shuffle_reads_writes"]
    assert rw["architectures"] == 0 and rw["skipped"] == 4 and "not measured" in rw["verdict"]
    assert s["all"] == {"architectures": 4, "frac_true_highest": 0.75}
    flat = analysis.verdict("shuffle_reads_writes", 0.01, (-0.02, 0.04), 9)
    assert flat.startswith("shuffle_reads_writes: no evidence that the HyperNet reads the read/write bank patterns")


# -- a tiny trained run ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from oneshot_tf import pipeline
    model_dir = str(tmp_path_factory.mktemp("smash") / "run")
    pipeline.SearchRun(config_lib.resolve("tiny", {}, method="smash"), model_dir, verbose=False).train_proxy()
    return model_dir


def test_analysis_of_a_tiny_trained_run_writes_json_and_png(tiny_run, tmp_path):
    lines = []
    result = analysis.analyze_model_dir(tiny_run, num_architectures=6, seed=3, output_dir=str(tmp_path / "out"),
                                        log=lines.append)
    with open(tmp_path / "out" / analysis.JSON_NAME) as f:
        stored = json.load(f)
    with open(tmp_path / "out" / analysis.PNG_NAME, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert stored["settings"]["seed"] == 3 and stored["settings"]["num_architectures"] == 6
    assert stored["summary"] == json.loads(json.dumps(result["summary"]))
    assert len(stored["records"]) == 6 and lines
    assert [r["id"] for r in stored["records"]] == [TINY_SPACE.arch_id(a) for a in
                                                    analysis.sample_architectures(TINY_SPACE, 6, seed=3)]
    keys = {"part", "architectures", "skipped", "mean_true_score", "mean_corrupted_score", "mean_drop", "ci95",
            "mean_abs_drop",
            "frac_true_highest", "frac_tied", "frac_true_lower", "verdict"}
    for name in analysis.CORRUPTIONS:
        s = stored["summary"][name]
        assert set(s) == keys and s["architectures"] + s["skipped"] == 6
        for r in stored["records"]:
            cr = r["corruptions"][name]
            assert 0 <= r["true_score"] <= 1
            assert (cr["score"] is None) == (not cr["changed"]) == ("note" in cr)
    # the tiny space has one block of at most two ops of one column: its read/write shuffle is mostly a no-op,
    # while its dilations (1 or 2 per axis) are shuffled in most architectures
    assert stored["summary"]["shuffle_dilations"]["architectures"] >= 1


def test_untrained_or_missing_runs_are_refused(tmp_path):
    from oneshot_tf import pipeline
    untrained = str(tmp_path / "untrained")
    pipeline.SearchRun(config_lib.resolve("tiny", {"train_steps": 7}, method="smash"), untrained, verbose=False)
    with pytest.raises(pipeline.ProxyNotTrainedError, match="trained 0 of 7 steps"):
        analysis.open_model_dir(untrained)
    with pytest.raises(analysis.AnalysisError, match="no config.json"):
        analysis.open_model_dir(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(analysis.AnalysisError, match="is not a run's config"):
        analysis.open_model_dir(str(tmp_path))


def test_the_binary_refuses_a_run_that_is_not_smash(tmp_path):
    run = tmp_path / "oneshot"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"format": 3, "method": "oneshot", "flags": {"method": "oneshot"}}))
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "experiments.smash_encoding", f"--model_dir={run}"], cwd=str(REPO),
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (f"error: --model_dir={run} holds a 'oneshot' run, not a SMASH "
                                                    f"run (--method=smash)")
