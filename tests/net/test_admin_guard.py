"""The admin endpoint leaks nothing and answers only the local operator: secrets are
redacted from /config, a foreign Host is refused (DNS rebinding), a bearer token can
be required, and it can listen on a Unix socket. Real HTTP over real sockets."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from gwcore.net.admin_guard import host_allowed, host_name
from gwcore.runtime.config_check import check_config
from tests.harness import gateway_entry, in_thread, registration, write_json

TOKEN = "s3cr3t-admin-token-0123456789"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.unix_path)


def fetch(
    where: int | str, path: str, host: str | None = "127.0.0.1", token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` from a TCP port or a Unix socket path, with exactly this Host header."""
    if isinstance(where, int):
        conn = http.client.HTTPConnection("127.0.0.1", where, timeout=10)
    else:
        conn = _UnixHTTPConnection(where)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        if token is not None:
            conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def minimal_catalog(gateway, port: int) -> None:
    write_json(gateway.catalog / "gw.json", gateway_entry("billing"))
    write_json(gateway.catalog / "regs.json", [registration("billing", port)])


VAULT_ADDON = """
def tgw_validate_site_config(site):
    return []


def tgw_secret_keys(site):
    return ["api_key"]
"""


@pytest_twisted.ensureDeferred
async def test_config_redacts_every_secret_and_logs_none(gateway, upstreams, tmp_path: Path):
    """/config shows secret keys (token, admin token, an addon-declared api_key), PEM key
    material and a token file's contents pasted elsewhere as <redacted>, keeps other
    values, and no log line of start-up or of a rejected reload holds a secret (even a
    rejection that quotes the bad value)."""
    file_token = "file-token-abcdef-987654"
    (tmp_path / "consul.token").write_text(file_token + "\n")
    (tmp_path / "addons").mkdir()
    (tmp_path / "addons" / "vault.py").write_text(VAULT_ADDON)
    pem = (
        "-----BEGIN PRIVATE KEY-----\n"
        "MIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA\n"
        "-----END PRIVATE KEY-----"
    )
    gateway.plugins = ["file_catalog", "builtin_ca", "intentions", "vault"]
    gateway.gateway_table = f'admin_token = "{TOKEN}"'
    gateway.extra_site = f"""
[sites.main.vault]
api_key = "addon-api-key-424242"
token = "inline-token-31337"
token_file = "consul.token"
url = "https://user:{file_token}@vault.example"
pem = '''{pem}'''
region = "eu-1"
"""
    up = upstreams()
    minimal_catalog(gateway, up.port)
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await gateway.start()
        status, _, body = await in_thread(fetch, gateway.admin_port, "/config", token=TOKEN)
        config = gateway.root / "tgw.toml"
        # A token pasted into the wrong key: the rejection would echo it.
        text = config.read_text().replace('"5s"', f'"{file_token}"', 1)
        config.write_text(text)
        await gateway.service.reload()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert status == 200
    shown = json.loads(body)
    vault = shown["sites"]["main"]["vault"]
    assert vault == {
        "api_key": "<redacted>",
        "token": "<redacted>",
        "token_file": "consul.token",
        "url": "https://user:<redacted>@vault.example",
        "pem": "<redacted>",
        "region": "eu-1",
    }
    assert shown["gateway"]["admin_token"] == "<redacted>"
    secrets = [TOKEN, file_token, "addon-api-key-424242", "inline-token-31337", "MIIBVQIBADAN"]
    for secret in secrets:
        assert secret not in body.decode()
    logged = "\n".join(formatEvent(e) for e in events)
    assert "reload rejected" in logged and "handshake_timeout" in logged
    assert "not '<redacted>'" in logged
    for secret in secrets:
        assert secret not in logged


@pytest_twisted.ensureDeferred
async def test_only_loopback_or_configured_host_headers_are_answered(gateway, upstreams):
    """A request whose Host names another machine (DNS rebinding from a browser page) is
    refused with 403 and counted; loopback names and addresses, with any port, and the
    names in admin_hosts are answered."""
    gateway.gateway_table = 'admin_hosts = ["tgw-admin.internal"]'
    up = upstreams()
    minimal_catalog(gateway, up.port)
    await gateway.start()
    port = gateway.admin_port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", None):
        status, _, body = await in_thread(fetch, port, "/config", host=host)
        assert status == 403, host
        assert b"legacy-gw" not in body
    for host in (f"127.0.0.1:{port}", "localhost", f"[::1]:{port}", "TGW-admin.internal:80"):
        status, _, _ = await in_thread(fetch, port, "/ready", host=host)
        assert status == 200, host
    refused = gateway.service.metrics.registry.get_sample_value(
        "tgw_admin_refused_total", {"reason": "host"}
    )
    assert refused == 4


@pytest_twisted.ensureDeferred
async def test_a_configured_bearer_token_is_required_on_every_endpoint(gateway, upstreams):
    """With admin_token set, a request without it, or with another one, gets 401 and a
    WWW-Authenticate challenge; with it, the endpoints answer."""
    gateway.gateway_table = f'admin_token = "{TOKEN}"'
    up = upstreams()
    minimal_catalog(gateway, up.port)
    await gateway.start()
    port = gateway.admin_port
    for path in ("/", "/metrics", "/config", "/explain?source=web&destination=billing"):
        for token in (None, TOKEN[:-1], TOKEN + "x"):
            status, headers, _ = await in_thread(fetch, port, path, token=token)
            assert status == 401, (path, token)
            assert headers["www-authenticate"].startswith("Bearer")
        status, _, _ = await in_thread(fetch, port, path, token=TOKEN)
        assert status == 200, path


@pytest_twisted.ensureDeferred
async def test_the_admin_endpoint_listens_on_a_unix_socket(gateway, upstreams, tmp_path: Path):
    """admin = "unix:PATH" starts (the start-up log line has no host or port to print)
    and serves HTTP on the socket, with a token file."""
    sock = tmp_path / "admin.sock"
    (tmp_path / "admin.token").write_text(TOKEN + "\n")
    gateway.gateway_table = 'admin_token_file = "admin.token"'
    up = upstreams()
    minimal_catalog(gateway, up.port)
    config = gateway.root / "tgw.toml"
    original = gateway.write_config

    def write_unix_config() -> Path:
        path = original()
        text = path.read_text().replace(
            'admin = "tcp:0:interface=127.0.0.1"', f'admin = "unix:{sock}"'
        )
        path.write_text(text)
        return path

    gateway.write_config = write_unix_config  # type: ignore[method-assign]
    await gateway.start()
    assert f"unix:{sock}" in config.read_text()
    status, _, body = await in_thread(fetch, str(sock), "/ready", host="localhost", token=TOKEN)
    assert status == 200 and json.loads(body)["ready"] is True
    status, _, _ = await in_thread(fetch, str(sock), "/ready", host="localhost")
    assert status == 401


@pytest.mark.parametrize(
    ("gateway_keys", "key", "message"),
    [
        ('admin_token = "short"', "gateway.admin_token", "at least 16"),
        (
            f'admin_token = "{TOKEN}"\nadmin_token_file = "t"',
            "gateway.admin_token_file",
            "not both",
        ),
        ('admin_token_file = "missing.token"', "gateway.admin_token_file", "cannot be read"),
        ('admin_hosts = ["evil.example:80"]', "gateway.admin_hosts", "not a host name"),
    ],
)
def test_bad_admin_settings_are_problems_naming_file_and_key(
    tmp_path: Path, gateway_keys: str, key: str, message: str
) -> None:
    """Admin token and host settings are validated like every key: file, key, why."""
    config = tmp_path / "tgw.toml"
    config.write_text(
        f"""
[gateway]
admin = "tcp:0:interface=127.0.0.1"
{gateway_keys}

[sites.main]
listen = "tcp:0:interface=127.0.0.1"
name = "gw"
trust_domain = "example.consul"
plugins = ["builtin_ca"]
"""
    )
    problems = [str(p) for p in check_config(config).problems]
    assert any(p.startswith(f"{config}: {key}:") and message in p for p in problems), problems


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (b"127.0.0.1", True),
        (b"127.3.4.5:8080", True),
        (b"localhost:19000", True),
        (b"[::1]:19000", True),
        (b"[::1]", True),
        (b"admin.internal", True),
        (b"evil.example", False),
        (b"localhost.evil.example", False),
        (b"10.0.0.1", False),
        (b"[::1]x", False),
        (b"::1", False),
        (b"localhost:80:80", False),
        (b"\xff", False),
        (b"", False),
        (None, False),
    ],
)
def test_host_header_parsing(header: bytes | None, allowed: bool) -> None:
    """Loopback (any port) and configured names pass; anything else, or malformed, fails."""
    assert host_allowed(host_name(header), {"admin.internal"}) is allowed


def test_consul_settings_never_print_the_acl_token() -> None:
    """A ConsulSettings in a log line or an exception message shows no token."""
    from gwcore.net.consul import ConsulSettings

    settings = ConsulSettings(token="consul-acl-secret-1234")
    assert "consul-acl-secret-1234" not in repr(settings)
    assert settings.token == "consul-acl-secret-1234"


@pytest_twisted.ensureDeferred
async def test_consul_credentials_in_the_address_never_reach_config_or_logs(gateway, upstreams):
    """Issue 16 (low): a reload whose ``consul_catalog.address`` holds
    ``user:password@`` is rejected with one line naming the key and ``token`` (not
    the password), the running site keeps serving, and ``/config`` (the running
    configuration) holds no credentials either; check-config refuses it the same way."""
    password = "consul-pw-0f1e2d3c4b5a"
    gateway.gateway_table = f'admin_token = "{TOKEN}"'
    up = upstreams()
    minimal_catalog(gateway, up.port)
    await gateway.start()
    config = gateway.root / "tgw.toml"
    gateway.plugins = [*gateway.plugins, "consul_catalog"]
    gateway.extra_site = (
        f'[sites.main.consul_catalog]\naddress = "http://tgw:{password}@127.0.0.1:1"\n'
    )
    gateway.write_config()
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await gateway.service.reload()
        status, _, body = await in_thread(fetch, gateway.admin_port, "/config", token=TOKEN)
    finally:
        globalLogPublisher.removeObserver(events.append)
    logged = "\n".join(formatEvent(e) for e in events)
    assert "reload rejected" in logged and "sites.main.consul_catalog.address" in logged
    assert "token_file" in logged
    assert status == 200 and "consul_catalog" not in json.loads(body)["sites"]["main"]
    assert password not in logged and password not in body.decode()
    checked = check_config(config)
    assert not checked.ok and all(password not in str(p) for p in checked.problems)
