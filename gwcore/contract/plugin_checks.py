"""Checking what plugins hand to the core, so a misbehaving plugin fails by name.

Two moments:

- **When a stack loads** (:func:`check_event_impl`) and **when a site collects its
  providers** (:func:`check_providers`): an event hook written as ``async def`` is
  refused (its coroutine would never run), a provider hook must return a list or a
  tuple, and every provider must have the members its protocol
  (:mod:`gwcore.providers`) requires. The error names the plugin and the member, and
  the site refuses to start (or the reload is rejected).
- **Per connection** (:func:`engine_answer`): an engine's answer that is not a
  :class:`Decision` (``None``, another type, a Deferred firing ``None``) becomes
  :class:`EngineAnswerError`, which the site treats like an engine exception: a deny
  (fail closed), counted in ``tgw_authz_errors_total{reason}``.

No I/O; Twisted only for recognising a ``Deferred`` (imported at module level: it is
on the per-connection path, and importing it installs no reactor).
"""

from __future__ import annotations

import inspect
from typing import Any

# Deferred and its TimeoutError only (no reactor is installed by importing them).
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeoutError

from gwcore.policy.model import Decision

# What each provider hook's objects must have: (protocol, attributes, methods).
PROVIDER_MEMBERS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "tgw_catalog_sources": ("CatalogSource", ("name",), ("start", "stop", "health")),
    "tgw_certificate_providers": (
        "CertificateProvider",
        ("name",),
        ("start", "stop", "prepare", "leaf", "trust_roots", "health"),
    ),
    "tgw_authorization_engines": (
        "AuthorizationEngine",
        ("name", "policy_version"),
        ("start", "stop", "authorize"),
    ),
    "tgw_upstream_strategies": ("UpstreamStrategy", ("name",), ("applies_to", "connect")),
}
"""Required members per provider hook, after the protocols of :mod:`gwcore.providers`."""

ENGINE_ERROR_REASONS: tuple[str, ...] = ("exception", "timeout", "none", "wrong_type")
"""The ``reason`` label values of ``tgw_authz_errors_total``."""


class ProviderShapeError(Exception):
    """A provider hook returned something that does not meet its protocol."""


class EngineAnswerError(Exception):
    """A plugin answered something its contract does not allow (not an exception of its own)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_event_impl(plugin_name: str, hook: str, function: Any) -> None:
    """Refuse an ``async def`` (or async generator) event hook: nobody would await it."""
    if inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function):
        raise ProviderShapeError(
            f"plugin {plugin_name!r}: {hook} is 'async def'; event hooks are called "
            "synchronously on the reactor thread and a coroutine would never run "
            "(write a plain def and start async work with Deferred.fromCoroutine)"
        )


def check_providers(hook: str, plugin_name: str, result: Any) -> list[Any]:
    """The providers ``plugin_name`` returned from ``hook``, or :class:`ProviderShapeError`."""
    if result is None:
        return []  # "nothing for this site" written as a bare return
    protocol, attributes, methods = PROVIDER_MEMBERS[hook]
    if inspect.iscoroutine(result):
        result.close()
        raise ProviderShapeError(
            f"plugin {plugin_name!r}: {hook} is 'async def'; provider hooks are synchronous "
            f"and return a list of {protocol} objects"
        )
    if not isinstance(result, list | tuple):
        raise ProviderShapeError(
            f"plugin {plugin_name!r}: {hook} returned {type(result).__name__}, "
            f"not a list of {protocol} objects (wrap a single provider in [...])"
        )
    for index, provider in enumerate(result):
        what = f"plugin {plugin_name!r}: {hook}()[{index}] ({type(provider).__name__})"
        for attribute in attributes:
            if not hasattr(provider, attribute):
                raise ProviderShapeError(f"{what} has no {attribute!r}, required by {protocol}")
        for method in methods:
            member = getattr(provider, method, None)
            if member is None:
                raise ProviderShapeError(f"{what} has no {method}(), required by {protocol}")
            if not callable(member):
                raise ProviderShapeError(f"{what}.{method} is not callable ({protocol})")
    return list(result)


def _decision(answer: Any, engine_name: str) -> Decision:
    if isinstance(answer, Decision):
        return answer
    if answer is None:
        raise EngineAnswerError("none", f"engine {engine_name!r} answered None, not a Decision")
    raise EngineAnswerError(
        "wrong_type",
        f"engine {engine_name!r} answered {type(answer).__name__}, not a Decision",
    )


def engine_answer(engine: Any, request: Any) -> Decision | Any:
    """Ask ``engine`` to authorize ``request``: a :class:`Decision`, or a Deferred firing
    one (a coroutine is run as a Deferred). Anything else raises (or fails the Deferred
    with) :class:`EngineAnswerError`, so the caller's fail-closed path sees it."""
    answer = engine.authorize(request)
    if inspect.iscoroutine(answer):
        answer = Deferred.fromCoroutine(answer)
    if isinstance(answer, Deferred):
        return answer.addCallback(_decision, engine.name)
    return _decision(answer, engine.name)


def engine_error_reason(error: BaseException) -> str:
    """The ``reason`` label for an engine failure (one of :data:`ENGINE_ERROR_REASONS`)."""
    if isinstance(error, EngineAnswerError):
        return error.reason
    if isinstance(error, DeferredTimeoutError):
        return "timeout"
    return "exception"
