"""opa-envoy-plugin's checks of an object decision, field by field (a table, no I/O)."""

from __future__ import annotations

import pytest

from gwcore.policy.opa_result import result_object_problem


@pytest.mark.parametrize(
    ("result", "allowed", "problem"),
    [
        ({"http_status": 403}, False, None),
        ({"http_status": 403.0}, False, "http_status 403.0 is not"),  # Int64() refuses
        ({"http_status": True}, False, "http_status must be a number, not boolean"),
        ({"http_status": 0}, False, "http_status 0 is not"),
        ({"http_status": 451}, False, "http_status 451 is not"),  # Go knows it, Envoy not
        ({"http_status": 511}, False, None),
        ({"body": ""}, False, None),
        ({"body": None}, False, "body must be a string, not null"),
        ({"headers": []}, True, None),
        ({"headers": [{"a": "1"}, "b"]}, True, "headers must be an object or an array"),
        ({"query_parameters_to_remove": ["a", 1]}, True, "must be an array of strings"),
        ({"dynamic_metadata": None}, True, "dynamic_metadata must be an object, not null"),
    ],
)
def test_fields_are_checked_as_the_plugin_checks_them(result, allowed, problem):
    found = result_object_problem({"allowed": allowed, **result}, allowed)
    assert (found is None) if problem is None else (found is not None and problem in found)
