"""The ranking-fidelity study end to end on the tiny preset: its outputs agree
with each other and with hand recomputation, its cache is hit on rerun, a
failing method is reported in its row, the stratified sample spans the
ranking, and a short stand-alone run is far above chance."""

import csv
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from oneshot_tf import io_utils, pipeline, registry
from oneshot_tf.fidelity import stats
from oneshot_tf.fidelity import study as study_lib
from oneshot_tf.fidelity.ground_truth import (CandidateTrainer, ResultCache, TruthTraining,
                                              recompute_batch_norm, train_candidate)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# Checks of the tiny study (~35 s), built once for them and the study binary's test: CI's integration step.
on_the_tiny_study = pytest.mark.integration


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("study"))
    study, cfgs = study_lib.resolve("tiny", {})
    result = study_lib.FidelityStudy(study, cfgs, d, verbose=False).run()
    return d, result


@on_the_tiny_study
def test_outputs_and_rows(study_dir):
    d, result = study_dir
    for name in ("study.json", "candidates.jsonl", "fidelity.csv", "fidelity.md", "fidelity_candidates.csv",
                 "fidelity.png", "kl.png"):
        assert os.path.getsize(os.path.join(d, name)) > 0, name
    assert tf.io.gfile.glob(os.path.join(d, "tb", "events.out.tfevents.*"))
    rows = {r["name"]: r for r in read_csv(os.path.join(d, "fidelity.csv"))}
    assert list(rows) == ["oneshot", "oneshot_kl", "params", "flops", "synflow", "naswot", "sgd_2",
                          "ceiling (seed vs seed)"]
    assert all(r["error"] == "" for r in rows.values())
    assert len(open(os.path.join(d, "candidates.jsonl")).read().splitlines()) == 8
    # every number of a row is recomputed from the per-candidate file
    cands = read_csv(os.path.join(d, "fidelity_candidates.csv"))
    assert len(cands) == 4
    truth = np.array([float(c["truth"]) for c in cands])
    seeds = np.array([[float(c["seed_1"]), float(c["seed_2"])] for c in cands])
    np.testing.assert_allclose(truth, seeds.mean(1))
    for name in ("oneshot", "params", "synflow", "naswot", "sgd_2"):
        s = np.array([float(c[name]) for c in cands])
        for key in ("pearson", "spearman", "kendall"):
            want = getattr(stats, key)(s, truth)
            got = rows[name][key]
            if np.isnan(want):
                assert got == "nan", (name, key)
            else:
                assert float(got) == pytest.approx(want), (name, key)
        assert float(rows[name]["precision_at_k"]) == pytest.approx(stats.precision_at_k(s, truth, 2))
        if name != "params":  # the Spearman at a fixed parameter count
            want = stats.partial_spearman(s, truth, [float(c["params"]) for c in cands])
            got = rows[name]["given_params"]
            assert got == "nan" if np.isnan(want) else float(got) == pytest.approx(want), name
        assert float(rows[name]["top1_accuracy"]) == pytest.approx(stats.top1_truth(s, truth))
    # the ceiling row on two seeds: seed 1 against seed 2, and Spearman-Brown of it
    ceiling = rows["ceiling (seed vs seed)"]
    r = stats.pearson(seeds[:, 0], seeds[:, 1])
    assert float(ceiling["pearson"]) == pytest.approx(r)
    assert float(ceiling["spearman_brown"]) == pytest.approx(stats.spearman_brown(r, 2))
    assert int(ceiling["seeds"]) == 2
    # parameter counts are the stand-alone models' own
    params = np.array([float(c["params"]) for c in cands])
    assert np.all(params > 0)
    md = open(os.path.join(d, "fidelity.md")).read()
    assert "| oneshot | 4 |" in md and "ceiling (seed vs seed)" in md and "Spearman-Brown" in md
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert table[0].split(" | ")[8:10] == ["vs params", "given params"]
    assert {line.count(" |") for line in table[2:]} == {table[0].count(" |")}  # every row has every column
    assert "KL analysis" in md
    # proxy against proxy, paired on the same candidates (here one-shot's accuracy and its KL)
    (pair,) = result["summary"]["pairs"]
    want = stats.spearman(np.array([float(c["oneshot"]) for c in cands]), truth) \
        - stats.spearman(np.array([float(c["oneshot_kl"]) for c in cands]), truth)
    assert (pair["a"], pair["b"]) == ("oneshot", "oneshot_kl")
    assert pair["difference"] == pytest.approx(want) and -2 <= pair["lo"] <= pair["hi"] <= 2
    assert f"- oneshot - oneshot_kl: {pair['difference']:.3f} [{pair['lo']:.2f}, {pair['hi']:.2f}]" in md


@on_the_tiny_study
def test_ground_truth_is_the_stratified_sample(study_dir):
    d, result = study_dir
    scores = {}
    for line in open(tf.io.gfile.glob(os.path.join(d, "scores", "oneshot-*.jsonl"))[0]):
        rec = __import__("json").loads(line)
        scores[rec["id"]] = rec["score"]
    cands = [__import__("json").loads(line) for line in open(os.path.join(d, "candidates.jsonl"))]
    ids = [c["id"] for c in cands]
    picks = study_lib.stratified_sample([scores[i] for i in ids], 4, 0, ids)
    assert [c["id"] for c in result["truth_candidates"]] == [ids[i] for i in picks]


@on_the_tiny_study
def test_ground_truth_stratified_by_parameter_count(study_dir, monkeypatch):
    """--stratify_by=params: the ground truth sample is stratified over the
    parameter count, whatever the methods score (shared by study runs of
    other methods or settings)."""
    d, result = study_dir
    picked = []

    class Picked(Exception):
        pass

    def truth_jobs(self, truth_cands):
        picked.extend(truth_cands)
        raise Picked()

    monkeypatch.setattr(study_lib.FidelityStudy, "truth_jobs", truth_jobs)
    study, cfgs = study_lib.resolve("tiny", {"stratify_by": "params"})
    with pytest.raises(Picked):
        study_lib.FidelityStudy(study, cfgs, d, verbose=False).run()
    cands = [__import__("json").loads(line) for line in open(os.path.join(d, "candidates.jsonl"))]
    ids = [c["id"] for c in cands]
    picks = study_lib.stratified_sample([float(c["params"]) for c in cands], 4, 0, ids)
    assert [c["id"] for c in picked] == [ids[i] for i in picks]
    study, cfgs = study_lib.resolve("tiny", {"stratify_by": "flops"})
    with pytest.raises(ValueError, match=r"--stratify_by='flops' is neither params nor in --methods \(oneshot\)"):
        study_lib.FidelityStudy(study, cfgs, d, verbose=False)


@on_the_tiny_study
def test_rerun_trains_nothing(study_dir):
    d, result = study_dir
    before = {p: os.path.getmtime(p) for p in tf.io.gfile.glob(os.path.join(d, "truth", "*.json"))}
    assert len(before) == 4 * 2 + 4 + 4  # ground truth (M x S), sgd_2 (M), zero-cost (M)
    study, cfgs = study_lib.resolve("tiny", {})
    s = study_lib.FidelityStudy(study, cfgs, d, verbose=False)
    again = s.run()
    assert s.cache.misses == 0 and s.cache.hits == len(before)
    assert {p: os.path.getmtime(p) for p in before} == before
    assert not tf.io.gfile.exists(os.path.join(d, "truth", "work")) or not tf.io.gfile.listdir(
        os.path.join(d, "truth", "work"))
    np.testing.assert_array_equal(again["truth"], result["truth"])


@on_the_tiny_study
def test_failing_method_is_reported_in_its_row(study_dir, tmp_path):
    from oneshot_tf.methods import oneshot

    def fail():
        raise RuntimeError("boom: cannot build")

    def build(cfg, dataset):  # one-shot's space and proxy, the proxy failing when training builds it
        space, proxy = oneshot.build(cfg, dataset)
        proxy.build = fail
        return space, proxy

    registry.register(dataclasses.replace(oneshot.METHOD, name="broken", default=False, build=build))
    try:
        d = study_dir[0]
        study, cfgs = study_lib.resolve("tiny", {"methods": "broken,oneshot"})
        out = study_lib.FidelityStudy(study, cfgs, d, verbose=False).run()
    finally:
        registry.unregister("broken")
    rows = {r["name"]: r for r in read_csv(os.path.join(d, "fidelity.csv"))}
    assert rows["broken"]["error"] == "RuntimeError: boom: cannot build"
    assert rows["oneshot"]["error"] == "" and rows["oneshot"]["spearman"] != ""
    assert out["summary"]["stratified_by"] == "oneshot"  # the first method that scored
    assert "| broken | error: RuntimeError: boom: cannot build" in open(os.path.join(d, "fidelity.md")).read()


@on_the_tiny_study
def test_reused_proxy_scores_as_the_trained_one_and_trains_nothing(study_dir):
    """--reuse=METHOD=DIR scores with a trained search directory's proxy:
    here the study's own trained proxy, so the same scores, the same
    stratified sample, every ground truth run cached, the directory untouched."""
    import json
    d, result = study_dir
    (proxy_dir,) = tf.io.gfile.glob(os.path.join(d, "proxies", "oneshot-*"))

    def files():  # every file under the reused directory, with its modification time
        return {os.path.join(r, f): os.path.getmtime(os.path.join(r, f)) for r, _, fs in os.walk(proxy_dir) for f in fs}

    before = files()
    assert any(p.endswith("config.json") for p in before) and any(".index" in p for p in before)
    study, cfgs = study_lib.resolve("tiny", {"reuse": f"oneshot={proxy_dir}"})
    s = study_lib.FidelityStudy(study, cfgs, d, verbose=False)
    again = s.run()
    assert s.cache.misses == 0
    assert files() == before

    def scores(pattern):
        (path,) = tf.io.gfile.glob(os.path.join(d, "scores", pattern))
        return {r["id"]: r["score"] for r in map(json.loads, open(path))}

    trained = scores("oneshot-[0-9a-f]*.jsonl")
    assert scores("oneshot-reused-*.jsonl") == trained and len(trained) == 8
    assert [c["id"] for c in again["truth_candidates"]] == [c["id"] for c in result["truth_candidates"]]
    np.testing.assert_array_equal(again["truth"], result["truth"])

    # a reused directory whose proxy has not finished training is reported, not trained further
    partial = os.path.join(d, "partial")
    tf.io.gfile.makedirs(partial)
    tf.io.gfile.copy(os.path.join(proxy_dir, "config.json"), os.path.join(partial, "config.json"))
    study, cfgs = study_lib.resolve("tiny", {"reuse": f"oneshot={partial}"})
    row = study_lib.FidelityStudy(study, cfgs, d, verbose=False).score_method(cfgs[0], [])
    assert row.error == (f"ProxyNotTrainedError: --reuse=oneshot={partial}: its proxy is not fully trained; "
                         f"finish it with experiments.train on that --model_dir")
    assert not tf.io.gfile.exists(os.path.join(partial, "proxy"))


@pytest.mark.integration  # a study binary subprocess: CI's integration step
def test_cli_prints_the_table_and_refuses_bad_flags(study_dir):
    d = study_dir[0]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run([sys.executable, "-m", "experiments.correlate", f"--model_dir={d}", "--preset=tiny",
                          "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| oneshot | 4 |" in run.stdout and "ceiling (seed vs seed)" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "experiments.correlate", f"--model_dir={d}", "--preset=tiny",
                          "--num_truth=3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == "error: --num_truth=3 is out of range: it must be >= 4"


def test_resolve_refuses_bad_settings(tmp_path):
    with pytest.raises(ValueError, match=r"unknown settings \['nonsense'\] for a study of oneshot"):
        study_lib.resolve("tiny", {"nonsense": 1})
    with pytest.raises(ValueError, match="^--methods='nope': unknown method 'nope'; available: ghn, oneshot, smash$"):
        study_lib.resolve("tiny", {"methods": "nope"})
    with pytest.raises(ValueError, match="names a method twice"):
        study_lib.resolve("tiny", {"methods": "oneshot,oneshot"})
    with pytest.raises(ValueError, match=r"--sgd_steps='10,5' must be increasing"):
        study_lib.parse_steps("10,5")
    with pytest.raises(ValueError, match="--baselines: unknown flop; choose from"):
        study_lib.parse_baselines("params,flop")
    study, cfgs = study_lib.resolve("tiny", {"num_truth": 9})
    with pytest.raises(ValueError, match="--num_truth=9 exceeds --num_candidates=8"):
        study_lib.FidelityStudy(study, cfgs, "/nonexistent/never/written", verbose=False)
    # methods on different spaces: the two kinds, or the settings that differ
    study, cfgs = study_lib.resolve("tiny", {"methods": "oneshot,ghn"})
    with pytest.raises(ValueError, match=r"^methods oneshot and ghn search different spaces \(CellSearchSpace and "
                                         r"DagSearchSpace\); a study compares methods on one space"):
        study_lib.FidelityStudy(study, cfgs, "/nonexistent/never/written", verbose=False)
    study, cfgs = study_lib.resolve("tiny", {"methods": "oneshot,ghn", "space": "cell"})
    wider = dataclasses.replace(cfgs[1], settings=dataclasses.replace(cfgs[1].settings, filters=6))
    with pytest.raises(ValueError, match=r"search different spaces \(\{'filters': 4\} and \{'filters': 6\}\)"):
        study_lib.FidelityStudy(study, [cfgs[0], wider], "/nonexistent/never/written", verbose=False)
    # --reuse of a directory that holds no search, or another method's, is refused before anything trains
    study, cfgs = study_lib.resolve("tiny", {"reuse": f"oneshot={tmp_path / 'none'}"})
    with pytest.raises(ValueError, match=rf"^--reuse=oneshot={tmp_path / 'none'}: no config.json there; name a "
                                         rf"model directory that experiments.run or experiments.train wrote$"):
        study_lib.FidelityStudy(study, cfgs, str(tmp_path / "study"), verbose=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"flags": {"method": "ghn"}}')
    study, cfgs = study_lib.resolve("tiny", {"reuse": f"oneshot={tmp_path / 'other'}"})
    with pytest.raises(ValueError, match=r"other: that directory holds a ghn search, not oneshot$"):
        study_lib.FidelityStudy(study, cfgs, str(tmp_path / "study"), verbose=False)
    assert not (tmp_path / "study").exists()
    # a method setting and a generic one reach the method's config; study settings the study
    study, cfgs = study_lib.resolve("tiny", {"filters": 6, "train_steps": 3, "truth_seeds": 3})
    assert cfgs[0].settings.filters == 6 and cfgs[0].train_steps == 3 and study.truth_seeds == 3


def test_stratified_sample_spans_the_ranking():
    rng = np.random.default_rng(0)
    scores = rng.permutation(20).astype(float)  # distinct: rank of item i is 19 - scores[i]
    picks = study_lib.stratified_sample(scores, 5, seed=3)
    ranks = [19 - int(scores[i]) for i in picks]
    assert [r // 4 for r in ranks] == [0, 1, 2, 3, 4]  # one from each stratum of 4 ranks, best first
    assert picks == study_lib.stratified_sample(scores, 5, seed=3)
    assert sorted(study_lib.stratified_sample(scores, 20, seed=1)) == list(range(20))
    # uneven strata: 7 items in 3 strata of ranks [0, 2), [2, 4), [4, 7)
    picks = study_lib.stratified_sample([7, 6, 5, 4, 3, 2, 1], 3, seed=0)
    assert picks[0] in (0, 1) and picks[1] in (2, 3) and picks[2] in (4, 5, 6)
    with pytest.raises(ValueError, match="stratified sample of 8 from 7"):
        study_lib.stratified_sample(range(7), 8, seed=0)


def _tiny_space(filters=8):
    from oneshot_tf import config as config_lib
    cfg = config_lib.resolve("tiny", {"filters": filters})
    ds = pipeline.load_data(cfg)
    space, _ = registry.get("oneshot").build(cfg, ds)
    return space, ds


@pytest.mark.integration  # a stand-alone training to accuracy: CI's integration step
def test_short_run_is_far_above_chance(tmp_path):
    """130 steps at Keras's default BN momentum 0.99: with the moving
    averages as trained, test accuracy is at chance (0.1); with the
    statistics recomputed after training it is far above."""
    space, ds = _tiny_space()
    arch = space.sample_at(0, 0)
    accuracy = {}
    for examples in (0, 512):
        training = TruthTraining(batch_size=32, learning_rate=0.1, augment=False, bn_momentum=0.99,
                                 bn_examples=examples)
        result = train_candidate(space, arch, ds, steps=130, seed=1, training=training,
                                 work_dir=str(tmp_path / str(examples)))
        accuracy[examples] = result["test_accuracy"]
    assert accuracy[512] > 0.6 and accuracy[0] < 0.3, accuracy


def test_recompute_batch_norm_sets_the_batch_statistics():
    import keras
    x = np.arange(24, dtype=np.float32).reshape(6, 4) ** 1.5
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.BatchNormalization(momentum=0.99)(keras.layers.Dense(3)(inp)))
    h = x @ model.layers[1].kernel.numpy() + model.layers[1].bias.numpy()
    assert recompute_batch_norm(model, x) == 1
    bn = model.layers[2]
    np.testing.assert_allclose(bn.moving_mean.numpy(), h.mean(0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), h.var(0), rtol=1e-4)
    assert bn.momentum == 0.99  # restored


@pytest.mark.integration  # three stand-alone trainings (~11 s): CI's integration step
def test_runs_of_one_candidate_share_one_trace_and_equal_fresh_runs(tmp_path):
    space, ds = _tiny_space(filters=4)
    arch = space.sample_at(0, 1)
    training = TruthTraining(batch_size=32, augment=True, bn_examples=256)
    trainer = CandidateTrainer(space, arch, ds, training)
    first = trainer.run(steps=8, seed=3, work_dir=str(tmp_path / "a"))
    second = trainer.run(steps=5, seed=4, work_dir=str(tmp_path / "b"))
    assert trainer.task._compiled.train_step.experimental_get_tracing_count() == 1
    weights = [w.copy() for w in trainer.model.get_weights()]
    fresh = CandidateTrainer(space, arch, ds, training)
    again = fresh.run(steps=5, seed=4, work_dir=str(tmp_path / "c"))
    for k in ("validation_accuracy", "test_accuracy", "train_accuracy_last_step"):
        assert again[k] == second[k], k
    for a, b in zip(weights, fresh.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert first["params"] == second["params"]


def test_cache_refuses_a_file_of_another_job(tmp_path):
    cache = ResultCache(str(tmp_path))
    cache.put({"a": 1}, {"x": 2})
    assert cache.get({"a": 1}) == {"x": 2} and cache.get({"a": 2}) is None
    io_utils.write_json(cache.path({"a": 3}), {"job": {"a": 4}, "result": {}})
    with pytest.raises(RuntimeError, match="holds another job's result"):
        cache.get({"a": 3})


def test_paired_difference_against_a_baseline():
    y = np.array([0.1, 0.4, 0.2, 0.9, 0.5, 0.7])
    d, lo, hi = study_lib.paired_difference(y, y, y, bootstrap=200, seed=0)
    assert (d, lo, hi) == (0.0, 0.0, 0.0)  # a score against itself: every resample differs by 0
    d, lo, hi = study_lib.paired_difference(y, -y, y, bootstrap=200, seed=0)
    assert d == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    noisy = y + np.array([0.3, -0.2, 0.25, -0.3, 0.1, -0.1])
    d, lo, hi = study_lib.paired_difference(y, noisy, y, bootstrap=200, seed=0)
    assert d == pytest.approx(1.0 - stats.spearman(noisy, y)) and lo <= d <= hi
    # a non-finite score leaves its candidate out of both
    a = y.copy()
    a[0] = np.nan
    assert study_lib.paired_difference(a, y, y, bootstrap=0, seed=0)[0] == pytest.approx(0.0)
