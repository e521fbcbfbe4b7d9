"""systemd integration: readiness notifications and socket-activation checks.

**sd_notify** (``sd_notify(3)``): when systemd starts tgw with ``Type=notify`` it sets
``NOTIFY_SOCKET``; the main process sends datagrams of ``KEY=VALUE`` lines there:

- ``READY=1`` once every site listens (and again when a reload is over),
- ``RELOADING=1`` with ``MONOTONIC_USEC`` when SIGHUP starts a reload,
- ``STOPPING=1`` when SIGTERM starts the drain,
- ``STATUS=...`` a one-line description shown by ``systemctl status``.

Without ``NOTIFY_SOCKET`` nothing is sent. Worker processes never notify (systemd
only listens to the main process): the supervisor removes the variable from their
environment.

**Socket activation**: a site may ``listen = "systemd:domain=INET6:name=tgw-main"``
(Twisted's ``systemd:`` endpoint, which adopts a descriptor systemd passed with
``LISTEN_FDS``/``LISTEN_PID``/``LISTEN_FDNAMES``). :func:`endpoint_problem` checks
such a string without needing the descriptors, so ``tgw check-config`` (run
outside the service, or as ``ExecStartPre``, which gets none) can validate it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

_DOMAINS = ("INET", "INET6", "UNIX")


def notify(*lines: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``lines`` (``"READY=1"``...) to systemd; ``False`` when not under systemd
    or the socket is gone (never raises: a notification is advice)."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError:
        return False
    return True


def reloading_lines() -> tuple[str, str]:
    """``RELOADING=1`` and the ``MONOTONIC_USEC`` systemd requires with it."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return "RELOADING=1", f"MONOTONIC_USEC={usec}"


def endpoint_problem(description: str) -> str | None:
    """What is wrong with a ``systemd:`` endpoint string, checked without descriptors;
    ``None`` when it is fine (or is not a ``systemd:`` endpoint)."""
    if not description.startswith("systemd:"):
        return None
    options: dict[str, str] = {}
    for part in description.split(":")[1:]:
        key, sep, value = part.partition("=")
        if not sep:
            return f"{part!r} is not KEY=VALUE"
        options[key] = value
    unknown = set(options) - {"domain", "index", "name"}
    if unknown:
        return f"unknown option(s) {', '.join(sorted(unknown))}"
    if options.get("domain") not in _DOMAINS:
        return f"domain must be one of {', '.join(_DOMAINS)}"
    if ("index" in options) == ("name" in options):
        return "give exactly one of index= or name="
    if "index" in options and not options["index"].isdigit():
        return "index must be a number"
    return None
