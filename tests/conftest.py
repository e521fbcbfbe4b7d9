"""Fixtures shared by every test module (the harness itself lives in tests/harness.py)."""

from tests.harness import gateway, upstreams

__all__ = ["gateway", "upstreams"]
