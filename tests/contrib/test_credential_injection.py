"""contrib/addons/credential_injection.py through the plugin author's harness (the stack
loaded as the gateway loads it, real files, no sockets): the header is injected and a
client's copy replaced, the file is read again when it changes, an unusable file fails
the request closed, and the secret is in no log line, metric or repr."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from gwcore.contract.plugin_host import PluginLoadError
from gwcore.testing import LoadedStack, http_flow, load_stack

ADDON = str(Path(__file__).resolve().parents[2] / "contrib" / "addons" / "credential_injection.py")
SECRET = "tok-1f0c2b7e-never-in-logs"
ROTATED = "tok-9a8b7c6d-the-next-one!"
SERVICE = {
    "service": "billing",
    "namespace": "default",
    "partition": "default",
    "datacenter": "dc1",
}


@pytest.fixture(autouse=True)
def logged() -> list[dict]:
    """Every log event while the test runs (the addon logs in tgw.addon.*)."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _load(tmp_path: Path, **destinations: dict) -> LoadedStack:
    return load_stack(tmp_path, [ADDON], {"credential_injection": destinations})


def _request(loaded: LoadedStack, service: str = "billing", headers=()):
    flow = http_flow("GET", "/v1/charge", service=service, headers=headers)
    loaded.http.request_headers(flow)
    return flow


def _everything_logged(events: list[dict]) -> str:
    return "\n".join(formatEvent(e) + repr(e) + str(e.get("log_failure", "")) for e in events)


def _addon_lines(events: list[dict], level: str) -> list[str]:
    return [
        formatEvent(e)
        for e in events
        if e["log_level"].name == level and e.get("log_namespace", "").startswith("tgw.addon")
    ]


def _metrics_text(loaded: LoadedStack) -> str:
    from prometheus_client import generate_latest

    return generate_latest(loaded.site.metrics.registry).decode()


def test_the_header_is_injected_and_a_client_copy_replaced(tmp_path: Path) -> None:
    """The client's own Authorization (any case) never reaches the upstream: exactly one
    field, the gateway's, with the prefix before the file's content (its newline cut)."""
    (tmp_path / "billing.token").write_text(SECRET + "\n")
    loaded = _load(tmp_path, billing={"file": "billing.token", "prefix": "Bearer "})
    flow = _request(loaded, headers=[("authorization", "Bearer stolen"), ("AUTHORIZATION", "x")])
    assert flow.response is None and flow.answered_by is None
    assert flow.request.headers.get_all("Authorization") == [f"Bearer {SECRET}"]
    assert SECRET not in repr(flow)


def test_a_named_api_key_header_and_other_destinations_untouched(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(SECRET)
    loaded = _load(tmp_path, weather={"file": str(tmp_path / "key"), "header": "X-Api-Key"})
    flow = _request(loaded, service="weather", headers=[("x-api-key", "client-guess")])
    assert flow.request.headers.get_all("x-api-key") == [SECRET]
    other = _request(loaded, service="billing", headers=[("authorization", "Basic abc")])
    assert other.request.headers.get_all("authorization") == ["Basic abc"]
    assert "x-api-key" not in other.request.headers


def test_a_rotated_file_is_used_from_the_next_request(tmp_path: Path) -> None:
    """Written in place (another size) and replaced by rename (another inode), as
    secret managers do; each new content is used at once."""
    token = tmp_path / "billing.token"
    token.write_text(SECRET)
    loaded = _load(tmp_path, billing={"file": "billing.token"})
    assert _request(loaded).request.headers.get("authorization") == SECRET
    token.write_text(ROTATED)
    assert _request(loaded).request.headers.get("authorization") == ROTATED
    staged = tmp_path / "staged"
    staged.write_text(SECRET)
    os.replace(staged, token)
    assert _request(loaded).request.headers.get("authorization") == SECRET


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "missing"),
        (b"  \n", "empty"),
        (SECRET.encode() + b"\r\nX-Injected: 1", "invalid"),
        ("é".encode() + SECRET.encode(), "invalid"),
        (b"x" * (16 * 1024 + 1), "too_large"),
    ],
)
def test_an_unusable_file_fails_the_request_closed(
    tmp_path: Path, content: bytes | None, reason: str, logged: list[dict]
) -> None:
    """Never forwarded without its credential: answered 500 by the addon, counted by
    reason, one warning line (not one per request), and nothing of the file's content
    in the logs or the metrics."""
    if content is not None:
        (tmp_path / "billing.token").write_bytes(content)
    loaded = _load(tmp_path, billing={"file": "billing.token"})
    first, second = _request(loaded), _request(loaded, headers=[("authorization", "mine")])
    for flow in (first, second):
        assert flow.response.status == 500
        assert flow.response.body == b"credential unavailable\n"
        assert flow.answered_by == "credential_injection"
    labels = {**SERVICE, "reason": reason}
    assert loaded.metric("credential_injection_failures_total", **labels) == 2
    [warning] = _addon_lines(logged, "warn")
    assert f"({reason})" in warning and "billing.token" in warning
    assert SECRET not in _everything_logged(logged) + _metrics_text(loaded)


def test_a_file_that_appears_later_is_used_and_its_recovery_logged(
    tmp_path: Path, logged: list[dict]
) -> None:
    loaded = _load(tmp_path, billing={"file": "billing.token"})
    assert _request(loaded).response.status == 500
    (tmp_path / "billing.token").write_text(SECRET)
    flow = _request(loaded)
    assert flow.response is None
    assert flow.request.headers.get("authorization") == SECRET
    assert any("usable again" in line for line in _addon_lines(logged, "info"))
    (tmp_path / "billing.token").unlink()
    assert _request(loaded).response.status == 500
    assert len(_addon_lines(logged, "warn")) == 2  # missing at start, missing again
    assert SECRET not in _everything_logged(logged) + _metrics_text(loaded)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"billing": {}}, "sites.main.credential_injection.billing.file: is required"),
        (
            {"billing": {"file": "t", "header": "Host"}},
            "sites.main.credential_injection.billing.header: 'Host' is managed by the gateway",
        ),
        (
            {"billing": {"file": "t", "header": "X Key"}},
            "billing.header: 'X Key' is not an HTTP field name",
        ),
        (
            {"billing": {"file": "t", "value": SECRET}},
            "sites.main.credential_injection.billing.value: unknown key",
        ),
        ({"billing": "t"}, "sites.main.credential_injection.billing: must be a table"),
        (
            {"billing": {"file": "t", "prefix": "Bearer\r\n"}},
            "billing.prefix: may hold visible ASCII",
        ),
    ],
)
def test_bad_config_is_refused_naming_file_and_key(
    tmp_path: Path, section: dict, message: str
) -> None:
    """An inline secret is not a key (secrets live in files), and no secret is quoted."""
    with pytest.raises(PluginLoadError) as raised:
        load_stack(tmp_path, [ADDON], {"credential_injection": section})
    assert message in str(raised.value)
    assert str(tmp_path / "tgw.toml") in str(raised.value)
    assert SECRET not in str(raised.value)


# --- through a real gateway ------------------------------------------------------------


def _admin(port: int, path: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        return answer.read().decode()


@pytest_twisted.ensureDeferred
async def test_through_the_gateway_the_service_gets_the_secret_and_nothing_else_does(
    gateway, upstreams, logged
):
    """A real HTTP service records the headers it got: exactly the file's credential
    (the caller's own Authorization replaced), the rotated one from the next request
    on, and none at all while the file is missing (the caller gets 500 and the service
    not one byte). The secrets appear in no output the gateway writes: the access log,
    the application log, /metrics, /config."""
    from tests.harness import gateway_entry, in_thread, intentions, registration, write_json
    from tests.runtime.l7_support import HttpService, get, mesh_http, service_defaults

    service = HttpService(upstreams)
    token = gateway.root / "secrets" / "billing.token"
    token.parent.mkdir()
    token.write_text(SECRET + "\n")
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", service.port)])
    write_json(gateway.catalog / "defaults.json", service_defaults("billing"))
    write_json(gateway.catalog / "ixn.json", intentions("billing", ("web", "allow")))
    gateway.plugin_paths = [str(Path(ADDON).parent)]
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "credential_injection"]
    gateway.extra_site = (
        "[sites.main.credential_injection.billing]\n"
        'file = "secrets/billing.token"\nprefix = "Bearer "\n'
    )
    await gateway.start()

    def call(path: str) -> tuple[int, bytes]:
        conn = mesh_http(gateway, "billing", "web")
        try:
            return get(conn, path, headers={"Authorization": "Bearer caller-own"})[:2]
        finally:
            conn.close()

    assert (await in_thread(call, "/first"))[0] == 200
    token.write_text(ROTATED)
    assert (await in_thread(call, "/second"))[0] == 200
    token.unlink()
    assert await in_thread(call, "/third") == (500, b"credential unavailable\n")

    assert [r.target for r in service.requests] == ["/first", "/second"]
    got = [[v for k, v in r.headers if k == "authorization"] for r in service.requests]
    assert got == [[f"Bearer {SECRET}"], [f"Bearer {ROTATED}"]]
    assert b"/third" not in bytes(service.raw)

    await gateway.wait_for(lambda: len(gateway.access_records()) >= 3)
    third = [r for r in gateway.access_records() if r.get("path") == "/third"]
    assert third and third[0]["answered_by"] == "credential_injection"
    labels = {**SERVICE, "reason": "missing"}
    assert gateway.metric("credential_injection_failures_total", **labels) == 1
    outputs = {
        "access log": (gateway.root / "access.log").read_text(),
        "application log": _everything_logged(logged),
        "/metrics": await in_thread(_admin, gateway.admin_port, "/metrics"),
        "/config": await in_thread(_admin, gateway.admin_port, "/config"),
    }
    assert "secrets/billing.token" in outputs["/config"]  # the path is shown, not its content
    for name, text in outputs.items():
        for secret in (SECRET, ROTATED):
            assert secret not in text, f"the secret is in the {name}"
