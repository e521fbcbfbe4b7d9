"""Meta-tests for gwcore.contract.hookspecs (datasette style): every hook is classified, documented
in its docstring and in docs/hooks.md, and so is every event payload it passes."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from pathlib import Path

import pytest

from gwcore.contract import events, hookspecs

HOOKS_DOC = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"
CONFIG_HOOKS = ("tgw_validate_site_config", "tgw_secret_keys")


def _hooks() -> dict[str, typing.Callable[..., object]]:
    marker = f"{hookspecs.PROJECT}_spec"
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if inspect.isfunction(fn) and hasattr(fn, marker)
    }


HOOKS = _hooks()
CONNECTION_HOOKS = tuple(h for h in hookspecs.EVENT_HOOKS if h not in hookspecs.HTTP_HOOKS)


def _event_payload_classes() -> set[type]:
    """Each event hook's argument type and the gwcore.contract.events types in its payload."""
    found: set[type] = set()
    pending = [
        typing.get_type_hints(HOOKS[name], vars(events))["event"] for name in CONNECTION_HOOKS
    ]
    while pending:
        cls = pending.pop()
        if cls in found:
            continue
        found.add(cls)
        for hint in typing.get_type_hints(cls).values():
            for candidate in (hint, *typing.get_args(hint)):
                if inspect.isclass(candidate) and candidate.__module__ == events.__name__:
                    pending.append(candidate)
    return found


def _hooks_doc() -> str:
    assert HOOKS_DOC.is_file(), f"{HOOKS_DOC} is missing: every hook must be documented there"
    return HOOKS_DOC.read_text(encoding="utf-8")


def test_the_spec_module_defines_hooks() -> None:
    """Guards the discovery below: an empty result would make every other check vacuous."""
    assert len(HOOKS) == len(CONFIG_HOOKS) + len(hookspecs.EVENT_HOOKS) + len(
        hookspecs.PROVIDER_HOOKS
    )


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_is_an_event_provider_or_config_hook(name: str) -> None:
    """The host calls event and provider hooks differently; an unclassified hook is never
    called at all."""
    groups = [CONFIG_HOOKS, hookspecs.EVENT_HOOKS, hookspecs.PROVIDER_HOOKS]
    assert sum(name in group for group in groups) == 1


def test_hook_groups_name_only_real_hooks_without_duplicates() -> None:
    listed = [*hookspecs.EVENT_HOOKS, *hookspecs.PROVIDER_HOOKS]
    assert len(listed) == len(set(listed))
    assert set(listed) <= set(HOOKS)


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_carries_the_project_prefix_and_a_docstring(name: str) -> None:
    assert name.startswith(f"{hookspecs.PROJECT}_")
    doc = inspect.getdoc(HOOKS[name])
    assert doc and len(doc) > 20, f"{name} needs a docstring stating its contract"


@pytest.mark.parametrize("name", CONNECTION_HOOKS)
def test_event_hooks_take_one_payload_from_gwcore_events(name: str) -> None:
    """Addons receive exactly one typed payload, named ``event``."""
    assert list(inspect.signature(HOOKS[name]).parameters) == ["event"]
    payload = typing.get_type_hints(HOOKS[name], vars(events))["event"]
    assert dataclasses.is_dataclass(payload) and payload.__module__ == events.__name__


@pytest.mark.parametrize("name", hookspecs.HTTP_HOOKS)
def test_http_hooks_take_one_flow_named_flow(name: str) -> None:
    """The per-request hooks are event hooks (stack order, async refused) whose one
    argument is the mutable HttpFlow, named ``flow`` as in mitmproxy."""
    from gwcore.contract import http_flow

    assert name in hookspecs.EVENT_HOOKS
    assert list(inspect.signature(HOOKS[name]).parameters) == ["flow"]
    assert typing.get_type_hints(HOOKS[name], vars(http_flow))["flow"] is http_flow.HttpFlow


def test_http_hooks_are_listed_in_the_order_of_a_request() -> None:
    assert hookspecs.HTTP_HOOKS == (
        "tgw_http_requestheaders",
        "tgw_http_request",
        "tgw_http_responseheaders",
        "tgw_http_response",
        "tgw_http_error",
    )


@pytest.mark.parametrize("name", hookspecs.PROVIDER_HOOKS)
def test_provider_hooks_take_the_site_context(name: str) -> None:
    assert list(inspect.signature(HOOKS[name]).parameters) == ["site"]


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_is_documented_in_docs_hooks_md(name: str) -> None:
    assert re.search(rf"\b{name}\b", _hooks_doc())


@pytest.mark.parametrize("cls", sorted(_event_payload_classes(), key=lambda c: c.__name__))
def test_every_event_payload_class_is_documented_in_docs_hooks_md(cls: type) -> None:
    assert re.search(rf"\b{cls.__name__}\b", _hooks_doc())
