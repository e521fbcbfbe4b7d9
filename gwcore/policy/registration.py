"""Where a Consul agent checks this instance: the admin endpoint's ``/ready`` URL and
the ``Check`` of an HTTP registration (``consul_catalog``'s ``check = "http"``).

Sans-IO: strings in, dicts out."""

from __future__ import annotations

from typing import Any


def ready_url(admin: str | None, bound: Any = None) -> str | None:
    """``http://host:port/ready`` of the admin endpoint: from its bound address
    (``bound``: an ``IAddress``) or, in a worker that did not bind it, from the
    ``[gateway] admin`` endpoint string (``tcp:PORT[:interface=HOST]``, port not 0)."""
    if bound is not None:
        if not hasattr(bound, "port"):
            return None  # a unix: admin endpoint: no URL an agent could GET
        host, port = bound.host, bound.port
    else:
        if not admin:
            return None
        parts = admin.split(":")
        if parts[0] not in ("tcp", "tcp6") or len(parts) < 2 or not parts[1].isdigit():
            return None
        options = dict(p.split("=", 1) for p in parts[2:] if "=" in p)
        host = options.get("interface", "::1" if parts[0] == "tcp6" else "127.0.0.1")
        port = int(parts[1])
        if port == 0:
            return None
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"  # a wildcard bind answers on loopback, where the agent runs
    elif host == "::":
        host = "::1"
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"http://{netloc}/ready"


def http_check(service_id: str, site: Any, settings: Any) -> dict[str, Any] | None:
    """The ``Check`` of an agent registration that GETs ``/ready`` (2xx passing, else
    critical), or ``None`` (logged) when no admin URL is known."""
    url = settings.check_http or getattr(site, "ready_url", None)
    if not url:
        site.log.warn(
            'consul_catalog check = "http": no admin endpoint URL known (set check_http); '
            "registering with a TCP check"
        )
        return None
    return {
        "CheckID": f"{service_id}:ready",
        "Name": "tgw /ready (HTTP)",
        "HTTP": url,
        "Method": "GET",
        "Interval": f"{int(settings.check_interval * 1000)}ms",
        "Timeout": "5s",
    }
