"""Which HTTP/1.1 upgrades are forwarded, stripped or refused (Envoy under Consul)."""

from __future__ import annotations

import pytest

from gwcore.policy.http_upgrade import (
    PLAIN,
    REFUSE,
    STRIP_H2C,
    WEBSOCKET,
    classify,
    upgrade_fields,
    without_h2c,
)


@pytest.mark.parametrize(
    ("headers", "protocol", "expected"),
    [
        ([], "http", PLAIN),
        ([("Upgrade", "websocket")], "http", PLAIN),  # no Connection: upgrade
        ([("Connection", "keep-alive")], "http", PLAIN),
        ([("Connection", "Upgrade"), ("Upgrade", "websocket")], "http", WEBSOCKET),
        ([("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")], "http", WEBSOCKET),
        ([("Connection", "upgrade"), ("Upgrade", "websocket")], "http2", REFUSE),
        ([("Connection", "upgrade"), ("Upgrade", "websocket")], "grpc", REFUSE),
        ([("Connection", "upgrade"), ("Upgrade", "h2c")], "http", STRIP_H2C),
        ([("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "H2C")], "http2", STRIP_H2C),
        ([("Connection", "upgrade"), ("Upgrade", "foo")], "http", REFUSE),
        ([("Connection", "upgrade"), ("Upgrade", "websocket, foo")], "http", REFUSE),
        ([("Connection", "upgrade"), ("Upgrade", "websocket"), ("Upgrade", "x")], "http", REFUSE),
    ],
)
def test_classify(headers, protocol, expected):
    """Envoy's ``isUpgrade`` (an Upgrade field and the ``upgrade`` token in Connection),
    its h2c stripping, Consul's one ``upgrade_configs`` entry (websocket, compared
    without case) and tgw's HTTP/1.1-only upstream side decide the rule."""
    assert classify(headers, protocol) == expected


def test_without_h2c_removes_exactly_the_h2c_fields():
    """Upgrade, HTTP2-Settings and the two Connection tokens go; other tokens and
    fields stay; a Connection left empty goes."""
    headers = [
        ("Host", "billing"),
        ("Connection", "keep-alive, Upgrade, HTTP2-Settings"),
        ("Upgrade", "h2c"),
        ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
        ("Accept", "*/*"),
    ]
    assert without_h2c(headers) == [
        ("Host", "billing"),
        ("Connection", "keep-alive"),
        ("Accept", "*/*"),
    ]
    assert without_h2c([("Connection", "Upgrade"), ("Upgrade", "h2c")]) == []


def test_upgrade_fields_keep_the_clients_token():
    """What the service gets back after hop-by-hop removal: ``connection: upgrade`` and
    the Upgrade value as sent."""
    assert upgrade_fields([("Connection", "keep-alive, Upgrade"), ("Upgrade", "WebSocket")]) == [
        ("connection", "upgrade"),
        ("upgrade", "WebSocket"),
    ]
    assert upgrade_fields([("Host", "x")]) == []
