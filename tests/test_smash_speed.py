"""``benchmarks.smash_speed`` end to end at the smallest sizes: the ratios
it documents come out finite and positive, and ``--json`` writes them."""

import json
import math

import pytest

from benchmarks import smash_speed

pytestmark = pytest.mark.integration  # a benchmark's whole run: CI's integration step

# one block of at most two ops, one (kernel, dilation) combination, a HyperNet of one dense block of one layer
TINY = ["--image_size=8", "--num_blocks=1", "--filters=8", "--base=4", "--max_units=8", "--max_banks=4",
        "--depth=1", "--kernel_sizes=3", "--max_dilation=1", "--max_extent=3", "--groups=1,2",
        "--hypernet_blocks=1", "--growth=4", "--group_size=16", "--batch_size=16", "--candidates=2",
        "--candidates_per_pass=2", "--eval_examples=32", "--baseline_candidates=1", "--train_steps=1",
        "--train_candidates=1", "--repeats=1",
        "--intra_op_threads=0"]  # the test session's threads are set already (conftest)

RATIOS = ("b_ratio", "b_ratio_prebuilt_over_build", "b_ratio_smash_over_prebuilt", "c_ratio",
          "c_ratio_smash_over_padded_fixed", "c_ratio_padded_fixed_over_standalone")


def test_smash_speed_runs_and_writes_json(tmp_path):
    path = tmp_path / "smash_speed.json"
    results = smash_speed.main(TINY + [f"--json={path}"])
    for key in RATIOS + ("b_candidates_per_s_smash_2_per_pass", "b_candidates_per_s_standalone_build",
                         "b_candidates_per_s_standalone_prebuilt", "c_seconds_per_step_smash",
                         "c_seconds_per_step_padded_fixed", "c_seconds_per_step_standalone"):
        assert math.isfinite(results[key]) and results[key] > 0, key
    # the decompositions multiply to the ratios
    assert math.isclose(results["b_ratio"], results["b_ratio_prebuilt_over_build"]
                        * results["b_ratio_smash_over_prebuilt"], rel_tol=1e-9)
    assert math.isclose(results["c_ratio"], results["c_ratio_smash_over_padded_fixed"]
                        * results["c_ratio_padded_fixed_over_standalone"], rel_tol=1e-9)
    assert results["b_scorer_traces"] == 1 and results["c_smash_step_traces"] == 1
    written = json.loads(path.read_text())
    assert {k: written[k] for k in RATIOS} == {k: results[k] for k in RATIOS}
    assert written["config"]["candidates"] == 2
