"""keras-tuner integration: hyperparameters <-> architectures, the random
Oracle, the proxy-scoring Tuner, resume and the hypermodel."""

import json

import keras_tuner
import numpy as np
import pytest

from oneshot_tf.methods.oneshot.cell_space import CellSearchSpace
from oneshot_tf.methods.oneshot.proxy import OneShotProxy
from oneshot_tf.scoring import CandidateScorer, CandidateStore, ScoreConfig
from oneshot_tf.search_space import ArchitectureError
from oneshot_tf.tuner import (SEARCHES, ArchitectureHyperModel, EvolutionOracle, ProxyTuner,
                              RandomArchitectureOracle, RefinementOracle, make_oracle)

SPACE = CellSearchSpace(num_cells=2, num_stages=2, filters=4, num_blocks=2)
SHAPE = (8, 8, 1)


def test_hyperparameters_round_trip_and_declared_choices():
    hp = keras_tuner.HyperParameters()
    SPACE.declare_hyperparameters(hp)
    names = [h.name for h in hp.space]
    assert names == ["block0_inputs", "block0_ops", "block1_inputs", "block1_ops"]
    assert len(hp.space[0].values) == 2 ** 2 - 1 and len(hp.space[2].values) == 2 ** 3 - 1
    assert len(hp.space[1].values) == 28
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = SPACE.sample(rng)
        values = SPACE.to_hyperparameters(arch)
        assert SPACE.from_hyperparameters(values) == arch
    # every combination of declared values is a valid architecture
    for i in range(50):
        values = {h.name: h.random_sample(i) for h in hp.space}
        assert SPACE.to_hyperparameters(SPACE.from_hyperparameters(values)) == values


def test_bad_hyperparameters_are_refused():
    values = SPACE.to_hyperparameters(SPACE.sample(np.random.default_rng(1)))
    with pytest.raises(ArchitectureError, match="block 1: hyperparameter 'block1_ops' missing"):
        SPACE.from_hyperparameters({k: v for k, v in values.items() if k != "block1_ops"})
    with pytest.raises(ArchitectureError, match="block 0: input 2 does not exist"):
        SPACE.from_hyperparameters({**values, "block0_inputs": "0+2"})
    with pytest.raises(ArchitectureError, match="block 1: malformed inputs value 'a'"):
        SPACE.from_hyperparameters({**values, "block1_inputs": "a"})


@pytest.fixture(scope="module")
def scorer():
    proxy = OneShotProxy(SPACE, input_shape=SHAPE, num_classes=10, ghost_batch_size=8)
    proxy.build()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32,) + SHAPE).astype(np.uint8)
    y = rng.integers(0, 10, 32)
    return CandidateScorer(proxy, ScoreConfig(candidates_per_pass=1, group_size=8, kl_examples=16,
                                              verbose=False)).prepare(x, y, x)


def _tuner(scorer, directory, max_trials, seed=3, fail_at=None):
    class Tuner(ProxyTuner):
        def _score_trials(self, trials):
            if fail_at is not None and any(int(t.trial_id) == fail_at for t in trials):
                raise KeyboardInterrupt  # the process is killed mid-search
            return super()._score_trials(trials)

    return Tuner(RandomArchitectureOracle(SPACE, max_trials=max_trials, seed=seed),
                 ArchitectureHyperModel(SPACE, input_shape=SHAPE, num_classes=10),
                 scorer=scorer, method="oneshot", store=CandidateStore(str(directory / "candidates.jsonl")),
                 directory=str(directory), project_name="tuner", overwrite=False)


def _trial_values(tuner):
    trials = sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id)
    return [(t.status, dict(t.hyperparameters.values)) for t in trials]


def test_search_honours_max_trials_valid_unique_and_seeded(scorer, tmp_path):
    a = _tuner(scorer, tmp_path / "a", 7)
    a.search(verbose=0)
    trials = _trial_values(a)
    assert len(trials) == 7 and all(s == "COMPLETED" for s, _ in trials)
    archs = [SPACE.from_hyperparameters(v) for _, v in trials]  # valid, else raises
    assert len({SPACE.arch_id(x) for x in archs}) == 7
    b = _tuner(scorer, tmp_path / "b", 7)
    b.search(verbose=0)
    assert _trial_values(b) == trials
    c = _tuner(scorer, tmp_path / "c", 7, seed=4)
    c.search(verbose=0)
    assert [v for _, v in _trial_values(c)] != [v for _, v in trials]
    # seed 0 too (keras-tuner itself would replace it by a random seed)
    d0, e0 = _tuner(scorer, tmp_path / "d0", 4, seed=0), _tuner(scorer, tmp_path / "e0", 4, seed=0)
    d0.search(verbose=0)
    e0.search(verbose=0)
    assert _trial_values(d0) == _trial_values(e0)
    # scores come from the proxy: equal to scoring the architecture directly
    best = a.get_best_hyperparameters(1)[0]
    arch = SPACE.from_hyperparameters(best.values)
    direct = scorer.score_encodings([SPACE.encode(arch)])[0]
    recorded = [json.loads(l) for l in open(tmp_path / "a" / "candidates.jsonl")]
    assert max(r["score"] for r in recorded) == pytest.approx(direct["score"])
    assert a.best_architectures(1) == [arch]
    assert a.oracle.get_best_trials(1)[0].score == pytest.approx(direct["score"])


def test_interrupted_search_resumes_without_losing_or_repeating(scorer, tmp_path):
    whole = _tuner(scorer, tmp_path / "whole", 6)
    whole.search(verbose=0)
    broken = _tuner(scorer, tmp_path / "broken", 6, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        broken.search(verbose=0)
    resumed = _tuner(scorer, tmp_path / "broken", 6)
    resumed.search(verbose=0)
    assert _trial_values(resumed) == _trial_values(whole)
    lines = [json.loads(l) for l in open(tmp_path / "broken" / "candidates.jsonl")]
    expected = [json.loads(l) for l in open(tmp_path / "whole" / "candidates.jsonl")]
    assert len(lines) == 6 == len({r["id"] for r in lines})
    by_id = {r["id"]: r["score"] for r in expected}
    assert {r["id"]: r["score"] for r in lines} == by_id


def test_hypermodel_builds_a_trainable_standalone_model(scorer, tmp_path):
    tuner = _tuner(scorer, tmp_path / "t", 2)
    tuner.search(verbose=0)
    hp = tuner.get_best_hyperparameters(1)[0]
    model = tuner.hypermodel.build(hp)
    arch = SPACE.from_hyperparameters(hp.values)
    assert model.count_params() == SPACE.count_params(arch, input_shape=SHAPE, num_classes=10)
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (8,) + SHAPE).astype(np.uint8)
    y = rng.integers(0, 10, 8)
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0).history
    assert np.isfinite(history["loss"][0])
    assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    # the shared proxy survived the search and the model building
    assert scorer.score_encodings([SPACE.encode(arch)])[0]["score"] == pytest.approx(
        tuner.oracle.get_best_trials(1)[0].score)


# ---------------------------------------------------------------------------
# refinement and evolution against random search on a known optimum
# ---------------------------------------------------------------------------

BIG = CellSearchSpace(num_cells=2, num_stages=2, filters=4, num_blocks=4)
TARGET = BIG.to_hyperparameters(BIG.sample(np.random.default_rng(123)))


class SyntheticTuner(keras_tuner.Tuner):
    """Score = fraction of decisions equal to TARGET's (optimum 1.0 at TARGET)."""

    def run_trial(self, trial, *args, **kwargs):
        values = trial.hyperparameters.values
        BIG.from_hyperparameters(values)  # only valid architectures come out
        return {"score": sum(values[k] == v for k, v in TARGET.items()) / len(TARGET)}


def _synthetic_search(oracle, directory, name):
    tuner = SyntheticTuner(oracle, ArchitectureHyperModel(BIG, input_shape=SHAPE, num_classes=10),
                           directory=str(directory), project_name=name, overwrite=False)
    tuner.search(verbose=0)
    return tuner


# Sizes: 40 trials per search, 10 of them random (the refinement's random
# phase, the evolution's first population) and tournaments of 5, over 3 seeds
# (360 trials in all; 1350 before).  At 40 the correct oracles are ahead of
# random search by 3 (refinement) and 2 (evolution) matched decisions over
# the 3 seeds, while an oracle that does not exploit the scores (a perturbed
# or mutated parent picked at random, or the worst one: a flipped objective)
# ends exactly level with random search, the best of its shared random phase
# (measured); 25-30 trials still separate them by one decision only.
SYNTHETIC_TRIALS = 40


def _best_synthetic(oracle_cls, directory, seed, **kwargs):
    oracle = oracle_cls(BIG, max_trials=SYNTHETIC_TRIALS, seed=seed, **kwargs)
    _synthetic_search(oracle, directory, f"{oracle_cls.__name__}{seed}")
    values = [dict(t.hyperparameters.values) for t in oracle.trials.values()]
    assert len(values) == SYNTHETIC_TRIALS
    assert len({json.dumps(v, sort_keys=True) for v in values}) == SYNTHETIC_TRIALS  # repeats are skipped
    return oracle.get_best_trials(1)[0].score


def test_refinement_and_evolution_beat_random_search(tmp_path):
    seeds = (0, 1, 2)
    random = [_best_synthetic(RandomArchitectureOracle, tmp_path, s) for s in seeds]
    refine = [_best_synthetic(RefinementOracle, tmp_path, s, random_trials=10, base_perturbations=10,
                              resample_probability=0.05) for s in seeds]
    evolve = [_best_synthetic(EvolutionOracle, tmp_path, s, population_size=10, sample_size=5) for s in seeds]
    # one more matched decision on one seed is 1/24 of the mean: ask for two
    assert np.mean(refine) > np.mean(random) + 0.05, (refine, random)
    assert np.mean(evolve) > np.mean(random) + 0.05, (evolve, random)


def test_refinement_phases_and_acceptance(tmp_path):
    """Random phase, then perturbations (5% resampling, at least one change)
    of the random phase's best, then a chain that always perturbs the best
    architecture accepted so far."""
    oracle = RefinementOracle(BIG, max_trials=40, seed=5, random_trials=10, base_perturbations=10)
    tuner = SyntheticTuner(oracle, ArchitectureHyperModel(BIG, input_shape=SHAPE, num_classes=10),
                           directory=str(tmp_path), project_name="refine_phases")
    tuner.search(verbose=0)
    trials = sorted(oracle.trials.values(), key=lambda t: int(t.trial_id))
    values = [dict(t.hyperparameters.values) for t in trials]
    scores = [t.score for t in trials]

    def distance(a, b):
        return sum(a[k] != b[k] for k in a)

    base = int(np.argmax(scores[:10]))
    for i in range(10, 20):
        assert 1 <= distance(values[i], values[base]) <= 3
    for i in range(20, 40):
        candidates = [base] + list(range(10, i))
        current = max(candidates, key=lambda j: (scores[j], -candidates.index(j)))
        assert 1 <= distance(values[i], values[current]) <= 3, i


def test_searches_registry_and_phase_sizes(tmp_path):
    """One list of searches: the names --search accepts, each a factory of
    the oracle with its phase sizes derived from the number of trials."""
    assert list(SEARCHES) == ["random", "refine", "evolution"]
    assert type(make_oracle("random", BIG, max_trials=5, seed=1)) is RandomArchitectureOracle
    refine = make_oracle("refine", BIG, max_trials=700, seed=1)   # SMASH's 500 + 100 + 100
    assert isinstance(refine, RefinementOracle) and (refine.random_trials, refine.base_perturbations) == (500, 100)
    assert refine.max_trials == 700 and refine.arch_seed == 1
    small = make_oracle("refine", BIG, max_trials=3, seed=1)
    assert (small.random_trials, small.base_perturbations) == (2, 1)
    for n, population, sample in ((100, 20, 5), (1000, 50, 12), (3, 2, 1)):
        evolve = make_oracle("evolution", BIG, max_trials=n, seed=0)
        assert isinstance(evolve, EvolutionOracle)
        assert (evolve.population_size, evolve.sample_size) == (population, sample), n
    with pytest.raises(ValueError, match=r"unknown --search='x'; choose from random, refine, evolution"):
        make_oracle("x", BIG, max_trials=5, seed=0)
    # random search proposes space.sample_unique's sequence
    oracle = make_oracle("random", BIG, max_trials=6, seed=4)
    _synthetic_search(oracle, tmp_path, "random")
    trials = sorted(oracle.trials.values(), key=lambda t: int(t.trial_id))
    assert [t.hyperparameters.values for t in trials] == [BIG.to_hyperparameters(a)
                                                          for a in BIG.sample_unique(6, 4)]


def _distance(a, b):
    return sum(a[k] != b[k] for k in a)


def test_resumed_search_keeps_its_phases_when_max_trials_grows(tmp_path):
    """A finished search resumed with more trials (a larger --num_candidates)
    continues with the phase sizes of its first run, kept in oracle.json,
    instead of those the new size would give.  The first run has fewer than
    10 trials and the second more: trial ids are zero-padded to the width of
    max_trials ("6", then "07" ... "13"), and their order must stay numeric."""
    def trials_of(oracle):
        return sorted(oracle.trials.values(), key=lambda t: int(t.trial_id))

    # Refinement: 7 trials are 5 random, 1 perturbation, 1 chain step; 14
    # would be 10 random and 2 perturbations (trials 7-9 random).
    first = make_oracle("refine", BIG, max_trials=7, seed=5)
    _synthetic_search(first, tmp_path, "refine")
    assert (first.random_trials, first.base_perturbations) == (5, 1)
    resumed = make_oracle("refine", BIG, max_trials=14, seed=5)
    assert (resumed.random_trials, resumed.base_perturbations) == (10, 2)
    _synthetic_search(resumed, tmp_path, "refine")
    assert (resumed.random_trials, resumed.base_perturbations, resumed.max_trials) == (5, 1, 14)
    stored = json.load(open(tmp_path / "refine" / "oracle.json"))["architecture_search"]
    assert (stored["random_trials"], stored["base_perturbations"]) == (5, 1)
    trials = trials_of(resumed)
    assert len(trials) == 14 and all(t.status == "COMPLETED" for t in trials)
    values = [dict(t.hyperparameters.values) for t in trials]
    scores = [t.score for t in trials]
    assert values[:7] == [dict(t.hyperparameters.values) for t in trials_of(first)]
    base = int(np.argmax(scores[:5]))
    for i in range(6, 14):  # chain steps from the best accepted so far
        candidates = [base] + list(range(5, i))
        current = max(candidates, key=lambda j: (scores[j], -candidates.index(j)))
        assert 1 <= _distance(values[i], values[current]) <= 3, i

    # Evolution: 6 trials have a population of 2 (tournaments of 1); 40
    # would have 8, so trials 6 and 7 would be random.
    first = make_oracle("evolution", BIG, max_trials=6, seed=2)
    _synthetic_search(first, tmp_path, "evolution")
    assert (first.population_size, first.sample_size) == (2, 1)
    resumed = make_oracle("evolution", BIG, max_trials=40, seed=2)
    assert (resumed.population_size, resumed.sample_size) == (8, 2)
    _synthetic_search(resumed, tmp_path, "evolution")
    assert (resumed.population_size, resumed.sample_size, resumed.max_trials) == (2, 1, 40)
    stored = json.load(open(tmp_path / "evolution" / "oracle.json"))["architecture_search"]
    assert (stored["population_size"], stored["sample_size"]) == (2, 1)
    trials = trials_of(resumed)
    assert len(trials) == 40 and all(t.status == "COMPLETED" for t in trials)
    values = [dict(t.hyperparameters.values) for t in trials]
    assert values[:6] == [dict(t.hyperparameters.values) for t in trials_of(first)]
    for i in range(6, 40):  # one decision of one of the 2 most recent trials mutated
        assert min(_distance(values[i], values[j]) for j in (i - 2, i - 1)) == 1, i


def test_tuner_scores_through_the_proxy_encoding(scorer, tmp_path, monkeypatch):
    """Architectures reach the scorer as the proxy encodes them (a proxy may
    encode its own way), not through space.encode."""
    encoded = []
    space_encode = type(SPACE).encode  # the proxy's own encoding, here the space's

    def encode(arch):
        encoded.append(SPACE.arch_id(arch))
        return space_encode(SPACE, arch)

    monkeypatch.setattr(scorer.proxy, "encode", encode)
    monkeypatch.setattr(SPACE, "encode", lambda arch: pytest.fail("space.encode called by the tuner"))
    tuner = _tuner(scorer, tmp_path, 2)
    tuner.search(verbose=0)
    monkeypatch.undo()
    trials = sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id))
    assert encoded == [SPACE.arch_id(SPACE.from_hyperparameters(t.hyperparameters.values)) for t in trials]
    with pytest.raises(TypeError, match="method"):  # the method's name is not implied
        ProxyTuner(RandomArchitectureOracle(SPACE, max_trials=1), tuner.hypermodel, scorer=scorer,
                   directory=str(tmp_path), project_name="no_method")


def test_batched_search_scores_several_trials_per_pass_and_resumes(scorer, tmp_path):
    """With K candidates per pass, the tuner scores K trials per forward pass;
    results equal one-at-a-time scoring, and an interrupted search resumes."""
    # The shared proxy and data; the fixture's scorer is the one-at-a-time one.
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32,) + SHAPE).astype(np.uint8)
    y = rng.integers(0, 10, 32)
    batched = CandidateScorer(scorer.proxy, ScoreConfig(candidates_per_pass=4, group_size=8, kl_examples=16,
                                                        verbose=False)).prepare(x, y, x)
    single = scorer
    calls = []
    original = batched.score_encodings

    def counting(encodings):
        calls.append(len(encodings))
        if len(calls) == 2 and fail[0]:
            raise KeyboardInterrupt
        return original(encodings)

    batched.score_encodings = counting
    fail = [True]

    def tuner(scorer, name):
        return ProxyTuner(RandomArchitectureOracle(SPACE, max_trials=10, seed=7),
                          ArchitectureHyperModel(SPACE, input_shape=SHAPE, num_classes=10), scorer=scorer,
                          method="oneshot", store=CandidateStore(str(tmp_path / f"{name}.jsonl")),
                          directory=str(tmp_path), project_name=name, overwrite=False)

    with pytest.raises(KeyboardInterrupt):
        tuner(batched, "batched").search(verbose=0)
    fail[0] = False
    resumed = tuner(batched, "batched")
    resumed.search(verbose=0)
    reference = tuner(single, "single")
    reference.search(verbose=0)
    assert calls[0] == 4 and max(calls) == 4          # 4 trials per pass
    got = {r["id"]: (r["score"], r["kl"]) for r in map(json.loads, open(tmp_path / "batched.jsonl"))}
    want = {r["id"]: (r["score"], r["kl"]) for r in map(json.loads, open(tmp_path / "single.jsonl"))}
    assert len(got) == 10 and got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-5)
    assert _trial_values(resumed) == _trial_values(reference)


def test_tensorboard_summaries_of_trials(scorer, tmp_path):
    import glob

    import tensorflow as tf

    tuner = ProxyTuner(RandomArchitectureOracle(SPACE, max_trials=3, seed=1),
                       ArchitectureHyperModel(SPACE, input_shape=SHAPE, num_classes=10), scorer=scorer,
                       method="oneshot", directory=str(tmp_path), project_name="tb",
                       summary_dir=str(tmp_path / "tb_logs"))
    tuner.search(verbose=0)

    def tags(pattern):
        found = {}
        for path in glob.glob(str(tmp_path / "tb_logs" / pattern / "events.*")):
            for event in tf.compat.v1.train.summary_iterator(path):
                for v in event.summary.value:
                    found.setdefault(v.tag, []).append((event.step, v))
        return found

    trials = sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id)
    for trial in trials:
        found = tags(f"trial_{trial.trial_id}")
        assert "_hparams_/session_start_info" in found
        (step, value), = found["trial/score"]
        assert step == int(trial.trial_id)
        assert tf.make_ndarray(value.tensor) == pytest.approx(trial.score)
    search = tags("search")
    assert "trials/score" in search
    last_step, last = max(search["trials/best_score"], key=lambda sv: sv[0])
    assert last_step == len(trials)
    assert tf.make_ndarray(last.tensor) == pytest.approx(max(t.score for t in trials))
    # Images at the end of the search: the best architecture's cell and the
    # score-vs-parameters scatter, at step = completed trials.
    for tag in ("trials/best_architecture", "trials/score_vs_params"):
        (step, value), = search[tag]
        assert step == len(trials)
        assert value.metadata.plugin_data.plugin_name == "images"
        width, height = (int(v) for v in tf.make_ndarray(value.tensor)[:2])  # stored width first
        image = tf.image.decode_png(tf.make_ndarray(value.tensor)[2])
        assert image.shape[:2] == (height, width) and height > 100 and width > 100
    best = SPACE.from_hyperparameters(tuner.get_best_hyperparameters(1)[0].values)
    from oneshot_tf import plots
    drawn = tf.image.decode_png(tf.make_ndarray(search["trials/best_architecture"][0][1].tensor)[2])
    expected = tf.image.decode_png(plots.architecture_png(
        SPACE.graph(best), title=f"trial {tuner.oracle.get_best_trials(1)[0].trial_id}: "
                                 f"score {max(t.score for t in trials):.4f}"))
    assert drawn.shape == expected.shape  # the drawing of the best architecture's graph
