"""keras-tuner integration: architectures as hyperparameters, an Oracle that
proposes architectures of any search space, and a Tuner that scores each
trial with an already trained proxy (no model is trained per trial).

    hypermodel = ArchitectureHyperModel(space, input_shape=..., num_classes=...)
    oracle = make_oracle("refine", space, max_trials=100, seed=0)   # a name of SEARCHES
    tuner = ProxyTuner(oracle, hypermodel, scorer=scorer, method="oneshot", directory=DIR,
                       project_name="tuner")
    tuner.search()
    best = tuner.best_architectures(2)
    model = tuner.hypermodel.build(tuner.get_best_hyperparameters()[0])   # trainable stand-alone model

The tuner's state is keras-tuner's own project directory: a search restarted
on the same directory continues without losing or re-scoring a trial, and
keeps its phase sizes (``oracle.json``) even when ``max_trials`` grows.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import keras
import keras_tuner
import numpy as np

from oneshot_tf import io_utils
from oneshot_tf.scoring import CandidateScorer, CandidateStore, candidate_record
from oneshot_tf.search_space import SearchSpace, StandaloneOptions


class ArchitectureHyperModel(keras_tuner.HyperModel):
    """Builds the compiled stand-alone Keras model of a trial's architecture."""

    def __init__(self, space: SearchSpace, *, input_shape: Sequence[int], num_classes: int,
                 options: Optional[StandaloneOptions] = None, learning_rate: float = 0.05):
        super().__init__(name="architecture")
        self.space = space
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)
        self.options = options or StandaloneOptions()
        self.learning_rate = float(learning_rate)

    def declare_hyperparameters(self, hp):
        self.space.declare_hyperparameters(hp)

    def architecture(self, hp) -> Any:
        return self.space.from_hyperparameters(hp.values)

    def build(self, hp) -> keras.Model:
        self.declare_hyperparameters(hp)
        model = self.space.build_model(self.architecture(hp), input_shape=self.input_shape,
                                       num_classes=self.num_classes, options=self.options)
        model.compile(optimizer=keras.optimizers.SGD(self.learning_rate, momentum=0.9, nesterov=True),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        return model


class RandomArchitectureOracle(keras_tuner.Oracle):
    """Random search over a search space (the papers' method).

    Trial ``t`` is ``space.sample_at(seed, t, attempt)`` for the first
    ``attempt`` that is not a repeat, so the sequence depends only on the seed,
    resumes identically and equals ``space.sample_unique(n, seed)``.
    """

    def __init__(self, space: SearchSpace, *, objective="score", max_trials: int = 10, seed: int = 0,
                 **kwargs):
        if isinstance(objective, str):
            objective = keras_tuner.Objective(objective, direction="max")
        super().__init__(objective=objective, max_trials=max_trials, seed=seed, **kwargs)
        # keras-tuner replaces a seed of 0 by a random one; ours is kept as given.
        self.arch_seed = int(seed)
        self._defer_depth = 0
        self._save_pending = False
        self.space = space
        hp = keras_tuner.HyperParameters()
        space.declare_hyperparameters(hp)
        self.update_space(hp)

    def populate_space(self, trial_id):
        index = len(self.trials)
        if index >= self.space.size():
            return {"status": keras_tuner.engine.trial.TrialStatus.STOPPED, "values": None}
        attempt = 0
        while True:  # terminates: the space still holds an untried architecture
            values = self.space.to_hyperparameters(self.space.sample_at(self.arch_seed, index, attempt))
            if not self._duplicate(values):
                return {"status": keras_tuner.engine.trial.TrialStatus.RUNNING, "values": values}
            attempt += 1

    #: Attributes that shape the search's phases.  They are kept in
    #: ``oracle.json``: on reload the stored values win over the constructor's
    #: (which a caller may derive from a grown ``max_trials``), so a resumed
    #: search keeps its phases; only ``max_trials`` itself follows the caller.
    KEPT_SETTINGS: Tuple[str, ...] = ()

    def get_state(self):
        state = super().get_state()
        state["architecture_search"] = {key: getattr(self, key) for key in self.KEPT_SETTINGS}
        return state

    def set_state(self, state):
        super().set_state(state)
        for key, value in state.get("architecture_search", {}).items():
            if key in self.KEPT_SETTINGS:
                setattr(self, key, value)

    # -- state on disk: atomic writes, one oracle save per batch, repair on reload
    def save(self):
        if self._defer_depth:
            self._save_pending = True
            return
        io_utils.write_json(self._get_oracle_fname(), self.get_state())

    def _save_trial(self, trial):
        io_utils.write_json(io_utils.join(self._get_trial_dir(trial.trial_id), "trial.json"),
                            trial.get_state())

    @contextlib.contextmanager
    def deferred_save(self):
        """Inside, ``oracle.json`` is written once, at the end (trial files
        are still written per trial).  What a kill inside loses is repaired
        by ``reload`` from the trial files."""
        self._defer_depth += 1
        try:
            yield
        finally:
            self._defer_depth -= 1
            if not self._defer_depth and self._save_pending:
                self._save_pending = False
                self.save()

    def reload(self):
        super().reload()
        # Trials written after the last oracle.json (a batch cut short by a
        # kill): unfinished ones are retried; the duplicate index and the
        # orders are rebuilt from the trial files.
        status = keras_tuner.engine.trial.TrialStatus
        for trial_id in sorted(self.trials, key=int):
            trial = self.trials[trial_id]
            h = self._compute_values_hash(trial.hyperparameters.values)
            self._tried_so_far.add(h)
            self._id_to_hash[trial_id] = h
            if trial_id not in self.start_order:
                self.start_order.append(trial_id)
            if trial.status == status.COMPLETED and trial_id not in self.end_order:
                self.end_order.append(trial_id)
            if trial.status == status.RUNNING and trial_id not in self._retry_queue:
                self._retry_queue.append(trial_id)
        # Retries are popped from the end: oldest last in, first out.
        self._retry_queue.sort(key=int, reverse=True)


class _ArchitectureOracle(RandomArchitectureOracle):
    """Shared helpers: completed trials in order, and mutation of values."""

    def _completed(self):
        """Completed trials, oldest first.  Trial ids are compared as numbers:
        their zero padding follows ``max_trials`` ("9" is older than "10",
        and than "09" after ``max_trials`` grew past 9)."""
        done = [t for t in self.trials.values()
                if t.status == keras_tuner.engine.trial.TrialStatus.COMPLETED and t.score is not None]
        return sorted(done, key=lambda t: int(t.trial_id))

    def _better(self, a, b) -> bool:
        return a > b if self.objective.direction == "max" else a < b

    def _best(self, trials):
        best = None
        for t in trials:
            if best is None or self._better(t.score, best.score):
                best = t
        return best

    def _mutate(self, values, rng: np.random.Generator, rate: float):
        """Resample each decision with probability ``rate`` (at least one):
        ``space.perturb`` where the space perturbs its own architectures,
        else hyperparameter by hyperparameter."""
        moved = self.space.perturb(self.space.from_hyperparameters(values), rng, rate)
        if moved is not None:
            return self.space.to_hyperparameters(moved)
        space = [hp for hp in self.hyperparameters.space]
        out = dict(values)
        chosen = [hp for hp in space if rng.random() < rate] or [space[int(rng.integers(len(space)))]]
        for hp in chosen:
            others = [v for v in hp.values if v != out[hp.name]]
            if others:
                out[hp.name] = others[int(rng.integers(len(others)))]
        return out

    def _propose(self, base_values, rate: float, index: int):
        for attempt in range(1000):
            rng = np.random.default_rng([self.arch_seed, index, attempt])
            values = self._mutate(base_values, rng, rate)
            self.space.from_hyperparameters(values)  # stays inside the space
            if not self._duplicate(values):
                return {"status": keras_tuner.engine.trial.TrialStatus.RUNNING, "values": values}
        return super().populate_space(str(index))


class RefinementOracle(_ArchitectureOracle):
    """SMASH's refinement (Brock et al. 2018, Appendix C).

    ``random_trials`` random architectures; then ``base_perturbations``
    perturbations of the best of them (each decision resampled with
    probability ``resample_probability``, 5% by default, at least one); then a
    Markov chain: each trial perturbs the current architecture, and a move is
    accepted (becomes the current architecture) only if it scores better.
    The phase sizes and the probability are kept in ``oracle.json``.
    """

    KEPT_SETTINGS = ("random_trials", "base_perturbations", "resample_probability")

    def __init__(self, space: SearchSpace, *, random_trials: int = 500, base_perturbations: int = 100,
                 resample_probability: float = 0.05, **kwargs):
        super().__init__(space, **kwargs)
        self.random_trials = int(random_trials)
        self.base_perturbations = int(base_perturbations)
        self.resample_probability = float(resample_probability)

    def populate_space(self, trial_id):
        index = len(self.trials)
        done = self._completed()
        if index < self.random_trials or not done:
            return super().populate_space(trial_id)
        random_phase = [t for t in done if int(t.trial_id) < self.random_trials]
        base = self._best(random_phase) or self._best(done)
        if index < self.random_trials + self.base_perturbations:
            return self._propose(base.hyperparameters.values, self.resample_probability, index)
        # The chain: a move is accepted only if it beats the current
        # architecture, so the current one is the best of the base and every
        # perturbation so far.
        current = self._best([base] + [t for t in done if int(t.trial_id) >= self.random_trials])
        return self._propose(current.hyperparameters.values, self.resample_probability, index)


class EvolutionOracle(_ArchitectureOracle):
    """Regularized evolution (Real et al. 2019): tournament selection with
    ageing.  The population is the ``population_size`` most recent completed
    trials (the oldest dies); each new trial mutates one decision of the best
    of ``sample_size`` population members drawn at random.  The first
    ``population_size`` trials are random.  Both sizes are kept in
    ``oracle.json``."""

    KEPT_SETTINGS = ("population_size", "sample_size")

    def __init__(self, space: SearchSpace, *, population_size: int = 20, sample_size: int = 5, **kwargs):
        super().__init__(space, **kwargs)
        if not 1 <= sample_size <= population_size:
            raise ValueError(f"need 1 <= sample_size <= population_size, got {sample_size}, {population_size}")
        self.population_size = int(population_size)
        self.sample_size = int(sample_size)

    def populate_space(self, trial_id):
        index = len(self.trials)
        done = self._completed()
        if len(done) < self.population_size:
            return super().populate_space(trial_id)
        population = done[-self.population_size:]
        rng = np.random.default_rng([self.arch_seed, index, 10 ** 6])
        picks = rng.choice(len(population), size=self.sample_size, replace=False)
        parent = self._best([population[i] for i in picks])
        return self._propose(parent.hyperparameters.values, 0.0, index)


# ---------------------------------------------------------------------------
# the searches: one registry, name -> factory(space, max_trials=, seed=)
# ---------------------------------------------------------------------------

def random_search(space: SearchSpace, *, max_trials: int, seed: int) -> RandomArchitectureOracle:
    """random: the papers' method.  ``max_trials`` distinct random
    architectures, the sequence of ``space.sample_unique(max_trials, seed)``."""
    return RandomArchitectureOracle(space, max_trials=max_trials, seed=seed)


def refine_search(space: SearchSpace, *, max_trials: int, seed: int) -> RefinementOracle:
    """refine: SMASH's refinement in SMASH's proportions (500 random, 100
    perturbations of their best, 100 chain steps): 5/7 of ``max_trials``
    random, 1/7 perturbations of their best, the rest a chain of accepted
    improvements (``RefinementOracle``)."""
    n = int(max_trials)
    return RefinementOracle(space, max_trials=n, seed=seed, random_trials=max(1, 5 * n // 7),
                            base_perturbations=max(1, n // 7))


def evolution_search(space: SearchSpace, *, max_trials: int, seed: int) -> EvolutionOracle:
    """evolution: regularized evolution with a population of ``max_trials / 5``
    (2 to 50) and tournaments of a quarter of it (``EvolutionOracle``)."""
    population = max(2, min(50, int(max_trials) // 5))
    return EvolutionOracle(space, max_trials=max_trials, seed=seed, population_size=population,
                           sample_size=max(1, population // 4))


#: The searches ``--search`` names, in the order flag help lists them
#: (``', '.join(SEARCHES)``): name -> factory(space, *, max_trials, seed) -> Oracle.
#: A resumed search keeps the phase sizes of its first run (``oracle.json``).
SEARCHES: Dict[str, Callable[..., keras_tuner.Oracle]] = {
    "random": random_search,
    "refine": refine_search,
    "evolution": evolution_search,
}


def check_search(search: str) -> None:
    """``ValueError`` naming ``--search`` and the choices unless ``search`` is
    a name of ``SEARCHES`` (for checks made before a search space exists)."""
    if search not in SEARCHES:
        raise ValueError(f"unknown --search={search!r}; choose from {', '.join(SEARCHES)}")


def make_oracle(search: str, space: SearchSpace, *, max_trials: int, seed: int) -> keras_tuner.Oracle:
    """The oracle of the search named ``search`` (a key of ``SEARCHES``)
    proposing ``max_trials`` architectures of ``space``; its sequence depends
    only on ``seed``."""
    check_search(search)
    return SEARCHES[search](space, max_trials=int(max_trials), seed=int(seed))


class ProxyTuner(keras_tuner.Tuner):
    """Scores each trial's architecture with a trained proxy's scorer.

    ``run_trial`` builds no model (so keras-tuner's per-build
    ``clear_session`` never runs and the shared proxy survives); it returns
    the proxy's metrics (``score``, ``accuracy``, ``kl``) and, with a
    ``store``, appends the candidate record to candidates.jsonl (its
    ``method`` field is ``method``, the name of the proxy's method).
    Architectures reach the scorer through the proxy's own encoding
    (``scorer.proxy.encode``).
    """

    def __init__(self, oracle: keras_tuner.Oracle, hypermodel: ArchitectureHyperModel, *,
                 scorer: CandidateScorer, method: str, store: Optional[CandidateStore] = None,
                 summary_dir: Optional[str] = None, **kwargs):
        super().__init__(oracle=oracle, hypermodel=hypermodel, **kwargs)
        self.space = hypermodel.space
        self.scorer = scorer
        self.store = store
        self.method = method
        self.summary_dir = summary_dir
        self._scored_this_search = 0  # trials scored since on_search_begin

    def save(self):
        """The tuner's state file, written atomically (a kill never leaves
        half a JSON document for the next run to trip over)."""
        io_utils.write_json(self._get_tuner_fname(), self.get_state())

    def _write_summaries(self, trials, scores):
        """TensorBoard: each trial's metrics at step = trial index (scalars),
        its decisions for the hparams plugin (one run per trial), and a
        histogram of all scores so far."""
        if not self.summary_dir:
            return
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hparams_api

        for trial, sc in zip(trials, scores):
            step = int(trial.trial_id)
            writer = tf.summary.create_file_writer(f"{self.summary_dir}/trial_{trial.trial_id}")
            with writer.as_default(step=step):
                hparams_api.hparams({k: str(v) for k, v in trial.hyperparameters.values.items()},
                                    trial_id=trial.trial_id)
                for key, value in sc.items():
                    tf.summary.scalar(f"trial/{key}", value)
            writer.close()
        done = [t.score for t in self.oracle.trials.values() if t.score is not None]
        done += [sc["score"] for sc in scores]
        writer = tf.summary.create_file_writer(f"{self.summary_dir}/search")
        with writer.as_default(step=len(done)):
            tf.summary.histogram("trials/score", np.array(done, np.float32))
            tf.summary.scalar("trials/best_score", max(done) if self.oracle.objective.direction == "max"
                              else min(done))
        writer.close()

    def _write_search_images(self):
        """TensorBoard images at step = completed trials: a drawing of the best
        architecture's cell and score against parameter count."""
        if not self.summary_dir:
            return
        import tensorflow as tf
        from oneshot_tf import plots

        best = self.oracle.get_best_trials(1)
        if not best:
            return
        status = keras_tuner.engine.trial.TrialStatus
        done = sorted((t for t in self.oracle.trials.values()
                       if t.status == status.COMPLETED and t.score is not None), key=lambda t: int(t.trial_id))
        hm = self.hypermodel
        archs = [self.space.from_hyperparameters(t.hyperparameters.values) for t in done]
        params = [self.space.count_params(a, input_shape=hm.input_shape, num_classes=hm.num_classes)
                  for a in archs]
        best_arch = self.space.from_hyperparameters(best[0].hyperparameters.values)
        images = {"trials/score_vs_params": plots.scatter_png(
            params, [t.score for t in done], xlabel="stand-alone parameters", ylabel="proxy score",
            title=f"{len(done)} trials", highlight=[t.trial_id for t in done].index(best[0].trial_id))}
        drawing = plots.space_architecture_png(self.space, best_arch,
                                               title=f"trial {best[0].trial_id}: score {best[0].score:.4f}")
        if drawing is not None:
            images["trials/best_architecture"] = drawing
        writer = tf.summary.create_file_writer(f"{self.summary_dir}/search")
        with writer.as_default(step=len(done)):
            for tag, png in images.items():
                tf.summary.image(tag, tf.image.decode_png(png)[None])
        writer.close()

    def on_search_begin(self):
        self._scored_this_search = 0
        super().on_search_begin()

    def on_search_end(self):
        if self._scored_this_search:  # a finished search resumed has nothing new to draw
            self._write_search_images()
        super().on_search_end()

    def run_trial(self, trial, *args, **kwargs) -> Dict[str, float]:
        return self._score_trials([trial])[0]

    def _score_trials(self, trials) -> List[Dict[str, float]]:
        archs = [self.space.from_hyperparameters(t.hyperparameters.values) for t in trials]
        scores = self.scorer.score_encodings([self.scorer.proxy.encode(a) for a in archs])
        if self.store is not None:
            hm = self.hypermodel
            self.store.append([candidate_record(self.space, a, sc, index=int(t.trial_id), method=self.method,
                                                input_shape=hm.input_shape, num_classes=hm.num_classes,
                                                trial_id=t.trial_id)
                               for t, a, sc in zip(trials, archs, scores)])
        self._write_summaries(trials, scores)
        self._scored_this_search += len(trials)
        return scores

    def search(self, *args, verbose: int = 1, **kwargs):
        """Like ``keras_tuner.Tuner.search``, but ``K`` trials at a time
        (``K`` = the scorer's candidates per pass) are scored in one forward
        pass, as ``K`` tuners working in parallel would (each has its own
        tuner id, so an interrupted batch is retried after a restart).
        ``oracle.json`` is written once per batch; progress is a bar over
        ``max_trials`` with the best score so far."""
        del args, kwargs  # nothing is fitted: no data or callbacks to pass
        self.oracle.verbose = 0  # one progress bar instead of a table per trial
        k = self.scorer.cfg.candidates_per_pass
        status = keras_tuner.engine.trial.TrialStatus
        defer = getattr(self.oracle, "deferred_save", contextlib.nullcontext)
        total = self.oracle.max_trials
        bar = keras.utils.Progbar(total, verbose=verbose, unit_name="trial") if total else None
        self.on_search_begin()
        stopped = False
        while not stopped:
            with defer():
                batch = []
                for slot in range(k):
                    trial = self.oracle.create_trial(f"{self.tuner_id}-{slot}")
                    if trial.status == status.STOPPED:
                        stopped = True
                        break
                    batch.append(trial)
                if not batch:
                    break
                for trial in batch:
                    self.on_trial_begin(trial)
                for trial, scores in zip(batch, self._score_trials(batch)):
                    self.oracle.update_trial(trial.trial_id, scores)
                    trial.status = status.COMPLETED
                    self.on_trial_end(trial)
            if bar is not None:
                done = [t for t in self.oracle.trials.values() if t.status == status.COMPLETED]
                best = self.oracle.get_best_trials(1)
                bar.update(len(done), [("best", best[0].score)] if best else None)
        self.on_search_end()

    def best_architectures(self, num: int = 1) -> List[Any]:
        return [self.space.from_hyperparameters(hp.values) for hp in self.get_best_hyperparameters(num)]
