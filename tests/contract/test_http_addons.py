"""gwcore/contract/http_addons.py: the five HTTP addon hooks called for one flow, through
the plugin author's harness (real plugin stacks loaded from drop-in files, no sockets):
stack order, mutations seen by later addons, respond() short-circuits, and the
fail-closed rule for an addon that raises."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from twisted.logger import formatEvent

from gwcore.contract.http_flow import Headers
from gwcore.contract.plugin_host import PluginLoadError
from gwcore.testing import LoadedStack, http_flow, http_response, load_stack

SECRET = "s3cr3t-value-never-logged"

# Two addons that note every call; "first" adds a header "second" reads back.
FIRST = """
calls = []


def tgw_http_requestheaders(flow):
    calls.append(("first", "requestheaders"))
    flow.request.headers.set("x-first", "1")


def tgw_http_request(flow):
    calls.append(("first", "request"))


def tgw_http_responseheaders(flow):
    calls.append(("first", "responseheaders"))
    flow.response.headers.set("x-first-response", "1")


def tgw_http_response(flow):
    calls.append(("first", "response"))


def tgw_http_error(flow):
    calls.append(("first", "error"))
"""

SECOND = """
calls = []


def tgw_http_requestheaders(flow):
    calls.append(("second", "requestheaders", flow.request.headers.get("x-first")))


def tgw_http_request(flow):
    calls.append(("second", "request"))


def tgw_http_responseheaders(flow):
    calls.append(("second", "responseheaders", flow.response.headers.get("x-first-response")))


def tgw_http_response(flow):
    calls.append(("second", "response"))


def tgw_http_error(flow):
    calls.append(("second", "error"))
"""


def _stack(tmp_path: Path, files: dict[str, str]) -> tuple[LoadedStack, dict[str, list]]:
    for name, source in files.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    loaded = load_stack(tmp_path, [f"{name}.py" for name in files])
    calls = {}
    for name in files:
        module = loaded.stack.pm.get_plugin(name)
        calls[name] = module.calls if hasattr(module, "calls") else []
    return loaded, calls


def _exchange(loaded: LoadedStack, flow, status: int = 200):
    """Drive the hooks as the L7 driver does for a request the upstream answers."""
    http = loaded.http
    http.request_headers(flow)
    http.request(flow)
    if flow.response is None:
        flow.response = http_response(status, [("content-type", "text/plain")])
        http.response_headers(flow)
    http.response(flow)
    return flow


def test_hooks_run_in_request_order_and_stack_order_with_mutations_visible(
    tmp_path: Path,
) -> None:
    """requestheaders, request, responseheaders, response; within each, the stack's
    order; a header the first addon set is seen by the second and stays on the request
    (and on the response) the driver forwards."""
    loaded, calls = _stack(tmp_path, {"first": FIRST, "second": SECOND})
    flow = _exchange(loaded, http_flow("GET", "/a"))
    assert calls["first"] == [
        ("first", "requestheaders"),
        ("first", "request"),
        ("first", "responseheaders"),
        ("first", "response"),
    ]
    assert calls["second"] == [
        ("second", "requestheaders", "1"),
        ("second", "request"),
        ("second", "responseheaders", "1"),
        ("second", "response"),
    ]
    assert flow.request.headers.get("x-first") == "1"
    assert flow.response.headers.get("X-First-Response") == "1"
    assert flow.answered_by is None and flow.addon_error is None


def test_error_hook_runs_for_every_addon_and_not_the_response_hook(tmp_path: Path) -> None:
    """An upstream failure calls tgw_http_error on each addon, in stack order."""
    loaded, calls = _stack(tmp_path, {"first": FIRST, "second": SECOND})
    flow = http_flow()
    loaded.http.request_headers(flow)
    flow.error = "connect_failed"
    loaded.http.error(flow)
    assert calls["first"][-1] == ("first", "error")
    assert calls["second"][-1] == ("second", "error")
    assert ("first", "response") not in calls["first"]


ANSWER = """
calls = []


def tgw_http_requestheaders(flow):
    calls.append("requestheaders")
    if flow.request.path.startswith("/cached"):
        flow.respond(200, b"from cache", [("content-type", "text/plain")])
    if flow.request.path.startswith("/named"):
        flow.respond(204, addon="my-cache")


def tgw_http_request(flow):
    calls.append("request")


def tgw_http_responseheaders(flow):
    calls.append("responseheaders")


def tgw_http_response(flow):
    calls.append(("response", flow.response.status, flow.answered_by))
"""


def test_respond_short_circuits_later_addons_and_request_hooks(tmp_path: Path) -> None:
    """An answer in requestheaders: the addons after it never see the request, no
    request hook runs, responseheaders is skipped, every response hook sees the answer,
    and answered_by is the answering addon's registration name."""
    loaded, calls = _stack(tmp_path, {"answer": ANSWER, "second": SECOND})
    flow = _exchange(loaded, http_flow("GET", "/cached/x"))
    assert flow.response.status == 200 and flow.response.body == b"from cache"
    assert flow.answered_by == "answer"
    assert calls["answer"] == ["requestheaders", ("response", 200, "answer")]
    assert calls["second"] == [("second", "response")]


def test_respond_keeps_the_name_the_addon_gave(tmp_path: Path) -> None:
    loaded, _ = _stack(tmp_path, {"answer": ANSWER})
    flow = _exchange(loaded, http_flow("GET", "/named"))
    assert (flow.response.status, flow.answered_by) == (204, "my-cache")


def test_a_request_not_answered_goes_on(tmp_path: Path) -> None:
    """The control for the short-circuit: without an answer, every hook runs."""
    loaded, calls = _stack(tmp_path, {"answer": ANSWER})
    flow = _exchange(loaded, http_flow("GET", "/live"))
    assert flow.answered_by is None and flow.response.status == 200
    assert calls["answer"] == [
        "requestheaders",
        "request",
        "responseheaders",
        ("response", 200, None),
    ]


RAISES = f"""
import os

calls = []


def tgw_http_requestheaders(flow):
    calls.append("requestheaders")
    if os.environ.get("RAISE_IN") == "requestheaders":
        raise RuntimeError("{SECRET}")


def tgw_http_request(flow):
    calls.append("request")
    if os.environ.get("RAISE_IN") == "request":
        raise RuntimeError("{SECRET}")


def tgw_http_responseheaders(flow):
    calls.append("responseheaders")
    if os.environ.get("RAISE_IN") == "responseheaders":
        flow.response.headers.set("x-half-done", "{SECRET}")
        raise RuntimeError("{SECRET}")


def tgw_http_response(flow):
    calls.append("response")
    if os.environ.get("RAISE_IN") == "response":
        raise RuntimeError("{SECRET}")


def tgw_http_error(flow):
    calls.append("error")
    if os.environ.get("RAISE_IN") == "error":
        raise RuntimeError("{SECRET}")
"""


@pytest.mark.parametrize("hook", ["requestheaders", "request"])
def test_an_addon_raising_in_a_request_hook_fails_the_request_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: str
) -> None:
    """Envoy ext_proc's failure_mode_allow=false: the addon may have meant to block, so
    the gateway answers 500 itself, the later addons do not run, the upstream is never
    asked (no responseheaders), the failure is counted and logged in one warning line
    that does not carry the exception's text."""
    monkeypatch.setenv("RAISE_IN", hook)
    loaded, calls = _stack(tmp_path, {"raises": RAISES, "second": SECOND})
    flow = _exchange(loaded, http_flow("GET", "/x"))
    assert flow.response.status == 500
    assert flow.answered_by == "tgw"
    assert flow.addon_error == f"raises raised in tgw_http_{hook}"
    assert "responseheaders" not in calls["raises"]
    assert ("second", "request") not in calls["second"]
    assert loaded.metric("tgw_addon_errors_total", hook=f"tgw_http_{hook}") == 1
    warnings = [e for e in loaded.site.events if e["log_level"].name == "warn"]
    assert len(warnings) == 1
    assert "raises raised RuntimeError" in formatEvent(warnings[0])
    assert SECRET not in formatEvent(warnings[0])


def test_an_addon_raising_in_responseheaders_replaces_the_response_by_502(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A half-rewritten upstream response is not sent: the client gets 502 with none
    of the headers the failing addon set."""
    monkeypatch.setenv("RAISE_IN", "responseheaders")
    loaded, _ = _stack(tmp_path, {"raises": RAISES})
    flow = _exchange(loaded, http_flow())
    assert flow.response.status == 502
    assert "x-half-done" not in flow.response.headers
    assert flow.addon_error == "raises raised in tgw_http_responseheaders"
    assert loaded.metric("tgw_addon_errors_total", hook="tgw_http_responseheaders") == 1


@pytest.mark.parametrize("hook", ["response", "error"])
def test_an_addon_raising_after_the_head_was_sent_is_counted_and_the_others_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: str
) -> None:
    monkeypatch.setenv("RAISE_IN", hook)
    loaded, calls = _stack(tmp_path, {"raises": RAISES, "second": SECOND})
    flow = http_flow()
    loaded.http.request_headers(flow)
    flow.response = http_response(200)
    if hook == "error":
        flow.error = "upstream_reset"
        loaded.http.error(flow)
    else:
        loaded.http.response(flow)
    assert flow.response.status == 200
    assert ("second", hook) in calls["second"]
    assert loaded.metric("tgw_addon_errors_total", hook=f"tgw_http_{hook}") == 1


def test_an_async_http_hook_is_refused_when_the_stack_loads(tmp_path: Path) -> None:
    """Nobody would await its coroutine: the request would go on unchanged."""
    (tmp_path / "lazy.py").write_text("async def tgw_http_requestheaders(flow):\n    pass\n")
    with pytest.raises(PluginLoadError, match="tgw_http_requestheaders is 'async def'"):
        load_stack(tmp_path, ["lazy.py"])


def test_an_http_hook_with_another_argument_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "wrong.py").write_text("def tgw_http_request(event):\n    pass\n")
    with pytest.raises(PluginLoadError, match="event"):
        load_stack(tmp_path, ["wrong.py"])


def test_no_http_hook_means_nothing_to_call(tmp_path: Path) -> None:
    (tmp_path / "none.py").write_text("def tgw_client_connected(event):\n    pass\n")
    assert load_stack(tmp_path, ["none.py"]).http.active is False
    (tmp_path / "one.py").write_text("def tgw_http_response(flow):\n    pass\n")
    assert load_stack(tmp_path, ["one.py"]).http.active is True


def test_header_repr_never_shows_a_credential() -> None:
    """A flow that ends up in a log line or a traceback does not leak credentials."""
    headers = Headers(
        [("Authorization", SECRET), ("X-Api-Key", SECRET), ("cookie", SECRET), ("accept", "*/*")]
    )
    flow = http_flow(headers=headers.items())
    assert SECRET not in repr(headers) and SECRET not in repr(flow)
    assert "*/*" in repr(headers)


def test_the_stack_dispatch_the_site_uses_keeps_the_http_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``site.dispatch(hook, flow)`` goes through PluginStack.dispatch: an addon raising
    there fails the request closed too (not the connection events' log-and-go-on), and
    an answer given earlier is never replaced."""
    monkeypatch.setenv("RAISE_IN", "requestheaders")
    loaded, calls = _stack(tmp_path, {"raises": RAISES, "second": SECOND})
    flow = http_flow()
    loaded.stack.dispatch("tgw_http_requestheaders", flow, loaded.site.log, loaded.site.metrics)
    assert (flow.response.status, flow.answered_by) == (500, "tgw")
    assert calls["second"] == []
    loaded.stack.dispatch("tgw_http_request", flow, loaded.site.log, loaded.site.metrics)
    assert "request" not in calls["raises"]
    assert loaded.metric("tgw_addon_errors_total", hook="tgw_http_requestheaders") == 1


def test_a_response_set_directly_counts_as_that_addons_answer(tmp_path: Path) -> None:
    """mitmproxy addons write ``flow.response = ...``; that is an answer too: the chain
    stops and answered_by names the addon, so the access log says who answered."""
    (tmp_path / "direct.py").write_text(
        "from gwcore.contract.http_flow import HttpResponse\n\n"
        "def tgw_http_requestheaders(flow):\n"
        "    flow.response = HttpResponse(204)\n"
    )
    (tmp_path / "second.py").write_text(textwrap.dedent(SECOND))
    loaded = load_stack(tmp_path, ["direct.py", "second.py"])
    flow = http_flow()
    loaded.http.request_headers(flow)
    assert (flow.response.status, flow.answered_by) == (204, "direct")
    assert loaded.stack.pm.get_plugin("second").calls == []
