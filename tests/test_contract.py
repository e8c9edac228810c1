"""The method contract (``tests/contract.py``) over every registered method:
a method joins these tests by registering, with no test edits."""

import pytest

from oneshot_tf import registry
from tests import contract


@pytest.mark.parametrize("check", contract.CHECKS, ids=lambda c: c.__name__[len("check_"):])
@pytest.mark.parametrize("method", registry.names())
def test_contract(method, check):
    check(method)


@pytest.mark.parametrize("method", registry.names())
def test_pipeline_artifacts(method, tmp_path):
    contract.check_pipeline_artifacts(method, str(tmp_path / "run"))
