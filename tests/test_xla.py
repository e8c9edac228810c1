"""Every method's training, scoring and retraining steps compile with XLA (static shapes
throughout).  A method joins this test by registering (``oneshot_tf.registry``):
the test runs over the registry, on each method's ``tiny`` preset."""

import numpy as np
import pytest

from oneshot_tf import config as config_lib
from oneshot_tf import pipeline, registry
from oneshot_tf.scoring import CandidateScorer

pytestmark = pytest.mark.integration  # XLA compiles: CI's integration step


@pytest.mark.parametrize("method", registry.names())
def test_training_and_scoring_steps_compile_with_xla(method, tmp_path, monkeypatch):
    overrides = dict(method=method, train_steps=2, num_candidates=4, candidates_per_pass=2, num_winners=1,
                     retrain_steps=2, retrain_batch_size=16)
    xla = pipeline.SearchRun(config_lib.resolve("tiny", {**overrides, "jit_compile": True}),
                             str(tmp_path / "run"), verbose=False)
    compiled = []
    original = CandidateScorer.__init__

    def spy(self, proxy, cfg, strategy=None):
        original(self, proxy, cfg, strategy)
        compiled.append(self._replica_forward)

    monkeypatch.setattr(CandidateScorer, "__init__", spy)
    metrics = xla.train_proxy()
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
    records = xla.score()
    assert len(records) == 4
    # the scoring step really was an XLA function
    assert compiled and compiled[0].__class__.__name__ == "Function" and compiled[0]._jit_compile

    # The stand-alone retraining step compiles too (and the winner exports).
    (winner,) = xla.retrain()
    assert 0.0 <= winner["test_accuracy"] <= 1.0
    assert (tmp_path / "run" / "winners" / "1" / "saved_model" / "saved_model.pb").exists()

    # The same trained proxy scored without XLA gives the same scores.
    plain = pipeline.SearchRun(config_lib.resolve("tiny", {**overrides, "jit_compile": False}),
                               str(tmp_path / "run"), verbose=False)
    plain.restore_proxy()
    scorer = plain.make_scorer()
    for r in records:
        arch = plain.space.from_json(r["architecture"])
        (again,) = scorer.score_encodings([plain.proxy.encode(arch)])
        assert again["score"] == pytest.approx(r["score"], abs=1.0 / 64 + 1e-6)
        if "kl" in r:
            assert again["kl"] == pytest.approx(r["kl"], rel=1e-2, abs=1e-4)
