"""The ``opa`` engine's embedded evaluator: Rego compiled in-process by regopy (rego-cpp).

- Every ``*.rego`` file named is compiled together; a compile error is reported as
  ``file:line:column: message``.
- A policy that calls a built-in rego-cpp lacks, or implements unlike OPA, is
  **refused** like a compile error, naming the built-in and ``file:line:column``
  (:mod:`gwcore.policy.rego_builtins`): rego-cpp would make such a call undefined and
  let the policy go on, so ``allow if not blocked`` would allow.
- A regopy ``Interpreter`` holds the input as state (``set_input`` then ``query``) and
  its calls release the GIL: one compiled policy is used by the reactor thread only.

regopy's ``save_bundle`` is deliberately not used (to read the compiled plan): it
writes every module back to ``<dir>/<module name>`` (the policy file itself for an
absolute name) and aborted the process with heap corruption in our tests.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gwcore.net.filewatch import expand
from gwcore.policy.opa_input import (
    Evaluation,
    PolicyProblem,
    interpret,
    parse_compile_errors,
    rule_name,
)
from gwcore.policy.rego_builtins import unsupported_calls

PATTERN = "*.rego"


class PolicyRejectedError(Exception):
    """A policy set that cannot be used, with every problem found."""

    def __init__(self, problems: Sequence[PolicyProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


def read_sources(paths: Sequence[Path]) -> dict[str, str]:
    """``{file name: text}`` for every policy file; :class:`PolicyRejectedError` if any
    cannot be read or none exists."""
    sources: dict[str, str] = {}
    problems: list[PolicyProblem] = []
    for path in expand(paths, PATTERN):
        try:
            sources[str(path)] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            problems.append(PolicyProblem(str(path), 0, 0, f"cannot be read: {e}"))
    if not sources and not problems:
        shown = ", ".join(str(p) for p in paths)
        problems.append(PolicyProblem(shown, 0, 0, f"no {PATTERN} files found"))
    if problems:
        raise PolicyRejectedError(problems)
    return sources


def policy_version(sources: Mapping[str, str], path: str) -> str:
    digest = hashlib.sha256(path.encode())
    for name in sorted(sources):
        digest.update(b"\0" + name.encode() + b"\0" + sources[name].encode())
    return digest.hexdigest()[:16]


class RegoPolicy:
    """A compiled policy set and the rule to evaluate (reactor thread only, see above)."""

    def __init__(self, sources: Mapping[str, str], path: str) -> None:
        """Compile ``sources``; raise :class:`PolicyRejectedError` with file:line problems."""
        from regopy import Interpreter, LogLevel

        self.path = path
        self.version = policy_version(sources, path)
        self.files = tuple(sorted(sources))
        interpreter = Interpreter()
        interpreter.log_level = LogLevel.NONE  # errors come back to us, not on stdout
        problems: list[PolicyProblem] = []
        for name in self.files:
            try:
                interpreter.add_module(name, sources[name])
            except Exception as e:  # regopy.RegoError
                problems += parse_compile_errors(str(e), sources)
        problems += unsupported_calls(sources, interpreter.is_builtin)
        if problems:
            raise PolicyRejectedError(problems)
        try:
            self._bundle = interpreter.build(None, [path])
        except Exception as e:
            raise PolicyRejectedError(parse_compile_errors(str(e), sources)) from e
        self._interpreter = interpreter

    def evaluate(self, document: Mapping[str, Any]) -> Evaluation:
        rule = rule_name(self.path)
        try:
            self._interpreter.set_input(document)
            output = self._interpreter.query_bundle_entrypoint(self._bundle, self.path)
        except Exception as e:
            # RegoError, or a JSONDecodeError when rego-cpp returns an error document
            # (a built-in that is not available, for instance).
            detail = _rego_message(str(e)) if type(e).__name__ == "RegoError" else ""
            return Evaluation.error(
                "evaluation", f"{rule}: evaluation failed: {detail or type(e).__name__}"
            )
        if not output.ok():
            return Evaluation.error(
                "evaluation",
                f"{rule}: evaluation failed (conflicting rule values or a failing built-in)",
            )
        results = output.results
        if not results or not results[0].expressions:
            return interpret(self.path, False, None)
        return interpret(self.path, True, results[0].expressions[0])


def _rego_message(text: str) -> str:
    found = re.findall(r"\(errormsg \d+:([^)\n]*)", text)
    return "; ".join(found)


# --- the decision cache --------------------------------------------------------------


class DecisionCache:
    """Evaluations by key for ``ttl`` seconds, at most ``size`` of them (oldest dropped)."""

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[Hashable, tuple[float, Evaluation]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, now: float) -> Evaluation | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: Hashable, evaluation: Evaluation, now: float) -> None:
        if self.ttl <= 0:
            return
        self._entries[key] = (now + self.ttl, evaluation)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()
