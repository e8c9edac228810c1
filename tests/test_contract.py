"""The method contract (``tests/contract.py``) over every registered method:
a method joins these tests by registering, with no test edits, and so do
the variants it registers (``Method.variants``, e.g. GHN's ``--space=cell``),
except for the whole-pipeline test, run once per method in the integration
tier."""

import pytest

from oneshot_tf import registry
from tests import contract
from tests.conftest import two_cpus


CASES = registry.contract_cases()
IDS = [m + "".join(f"[{k}={v}]" for k, v in o.items()) for m, o in CASES]


@pytest.mark.parametrize("check", contract.CHECKS, ids=lambda c: c.__name__[len("check_"):])
@pytest.mark.parametrize("method,overrides", CASES, ids=IDS)
def test_contract(method, overrides, check):
    check(method, **overrides)


# The whole pipeline once per method (a variant changes the space or the proxy, which the checks above
# cover; its pipeline is the method's), in CI's integration step: the unit suite's time (the one-shot binary
# of test_pipeline.py runs a whole pipeline in the unit suite, the toy method of test_plugin.py trains and scores).
@pytest.mark.integration
@pytest.mark.parametrize("method", [m for m, o in CASES if not o])
def test_pipeline_artifacts(method, tmp_path):
    contract.check_pipeline_artifacts(method, str(tmp_path / "run"))


# tf.distribute: every method and variant trains on two replicas as on one device (each replica computes its own
# groups' statistics and draws its share of a step's architectures, so a method that gets this wrong fails here).
@pytest.mark.integration
@pytest.mark.parametrize("method,overrides", CASES, ids=IDS)
def test_two_replicas_equal_one_device(method, overrides, tmp_path):
    contract.check_two_replicas_equal_one_device(method, str(tmp_path), two_cpus(), **overrides)
