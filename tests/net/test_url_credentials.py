"""Issue 16 review F3: credentials in a URL-valued setting of a built-in plugin (the OPA
``url``, consul_catalog's ``check_http``, a Consul ``address`` with ``?token=``) are a
configuration problem naming the key, never echoing the value: not in check-config's
output, not in the log of a rejected reload, not in ``/config``.

Real gateway on loopback; the admin endpoint is fetched over real HTTP.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from gwcore.policy.url_secrets import url_credentials
from gwcore.runtime.config_check import check_config
from tests.harness import in_thread
from tests.net.test_admin_guard import TOKEN, fetch, minimal_catalog

SECRET = "pw-9f8e7d6c5b4a"

CASES = [
    pytest.param(
        "opa",
        f'url = "http://bob:{SECRET}@127.0.0.1:1/v1/data/tgw/allow"\ntimeout = "1s"',
        "url",
        id="opa-url-userinfo",
    ),
    pytest.param(
        "opa",
        f'url = "http://127.0.0.1:1/v1/data/tgw/allow?access_token={SECRET}"\ntimeout = "1s"',
        "url",
        id="opa-url-query-token",
    ),
    pytest.param(
        "consul_catalog",
        f'register = false\ncheck = "http"\ncheck_http = "http://carol:{SECRET}@127.0.0.1:9/ready"',
        "check_http",
        id="check-http-userinfo",
    ),
    pytest.param(
        "consul_catalog",
        f'register = false\ncheck = "http"\ncheck_http = "http://127.0.0.1:9/ready?token={SECRET}"',
        "check_http",
        id="check-http-query-token",
    ),
    pytest.param(
        "consul_catalog",
        f'address = "http://127.0.0.1:8500/?token={SECRET}"',
        "address",
        id="consul-address-query-token",
    ),
]


@pytest.mark.parametrize(("plugin", "section", "key"), CASES)
@pytest_twisted.ensureDeferred
async def test_credentials_in_a_url_setting_never_reach_config_logs_or_check_config(
    gateway, upstreams, plugin, section, key
):
    """A reload that adds the plugin with credentials in one of its URL settings is
    rejected with one line naming the key; the running site keeps its configuration,
    ``/config`` holds no credentials, and check-config refuses it without echoing them."""
    gateway.gateway_table = f'admin_token = "{TOKEN}"'
    up = upstreams()
    minimal_catalog(gateway, up.port)
    await gateway.start()
    gateway.plugins = [*gateway.plugins, plugin]
    gateway.extra_site = f"[sites.main.{plugin}]\n{section}\n"
    config = gateway.write_config()
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        await gateway.service.reload()
        status, _, body = await in_thread(fetch, gateway.admin_port, "/config", token=TOKEN)
    finally:
        globalLogPublisher.removeObserver(events.append)
    logged = "\n".join(formatEvent(e) for e in events)
    assert "reload rejected" in logged and f"sites.main.{plugin}.{key}" in logged
    assert status == 200 and plugin not in json.loads(body)["sites"]["main"]
    assert SECRET not in logged and SECRET not in body.decode()
    checked = check_config(config)
    assert not checked.ok
    keys = [p.key for p in checked.problems]
    assert f"sites.main.{plugin}.{key}" in keys, keys
    assert all(SECRET not in str(p) for p in checked.problems)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8500",
        "https://consul.internal:8501/",
        "http://127.0.0.1:9/ready?verbose=1",
        "http://127.0.0.1:9/ready#top",
    ],
)
def test_urls_without_credentials_pass(url: str) -> None:
    """A plain address, and a query without credential-like names, are not refused."""
    assert url_credentials(url) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://u:p@h",
        "http://u@h/x",
        "u:p@h:1",
        "http://h/x?Token=1",
        "http://h/x?X-Amz-Signature=1",
        "http://h/x?api_key=1",
        "http://h/x?password=",
    ],
)
def test_urls_with_credentials_are_refused(url: str) -> None:
    """User-info (with or without a scheme) and credential-like query names are
    refused, and the reason holds no part of the URL."""
    why = url_credentials(url)
    assert why is not None and url not in why and "h/x" not in why
