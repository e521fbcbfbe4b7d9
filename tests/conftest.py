"""Fixtures shared by every test module (the harness itself lives in tests/harness.py).

Also the suite-wide settings that make a test's verdict depend on the code and not on
the machine: explicit hypothesis deadlines (a profile, below), the longer per-test
limit for the few slow tests (``tests.harness.SLOW_TIMEOUT``; the default is in pyproject.toml),
and the rule that an upstream handler that raised fails the test that drove it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings

from tests import harness
from tests.harness import gateway, upstreams

__all__ = ["gateway", "upstreams"]

# Property tests: a deadline generous enough for 8 parallel jobs on 2 cores, yet a
# pathological example (seconds for one input) still fails. "ci" is the same, with no
# example database (a clean clone has none to read).
settings.register_profile(
    "tgw",
    deadline=timedelta(milliseconds=2000),
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("ci", parent=settings.get_profile("tgw"), database=None)
settings.load_profile(os.environ.get("TGW_HYPOTHESIS_PROFILE", "tgw"))


@pytest.fixture(autouse=True)
def _upstream_handler_errors_fail_the_test() -> Iterator[None]:
    """Any :class:`tests.harness.Upstream` made during a test whose handler raised fails
    that test (at teardown, after the servers have closed)."""
    before = len(harness.CREATED)
    yield
    made = harness.CREATED[before:]
    del harness.CREATED[before:]
    harness.raise_handler_errors(made)
