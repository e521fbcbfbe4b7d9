"""The fuzz targets (fuzz/targets.py) replayed over the corpus kept in the repository.

This runs without atheris: every seed and every input that once crashed a target
(``crash-*`` files) goes through its target again, so a regression shows up in the
ordinary test run and not only under ``make fuzz``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.targets import PENDING, TARGETS

CORPUS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus"

CASES = [
    pytest.param(name, path, id=f"{name}/{path.name[:16]}")
    for name in sorted(TARGETS)
    if TARGETS[name] is not None
    for path in sorted((CORPUS / name).iterdir())
]


@pytest.mark.parametrize(("name", "path"), CASES)
def test_corpus_input_runs_through_its_target_without_a_crash(name: str, path: Path) -> None:
    """Each corpus input gives a value or the documented rejection, nothing else."""
    target = TARGETS[name]
    assert target is not None
    target(path.read_bytes())


def test_every_available_target_has_a_seed_corpus_and_pending_ones_say_why() -> None:
    """A registered target is fuzzed from seeds; an unavailable one names its reason."""
    for name, target in TARGETS.items():
        if target is None:
            assert PENDING[name]
        else:
            assert any((CORPUS / name).iterdir()), name


def test_the_crash_inputs_found_by_fuzzing_are_kept() -> None:
    """The two certificates that crashed certificate_san stay in its corpus."""
    kept = {p.name for p in (CORPUS / "certificate_san").iterdir()}
    assert {"crash-invalid-version", "crash-duplicate-extension"} <= kept
