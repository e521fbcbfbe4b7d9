"""Drop-in addon: give requests to an external service a credential the callers never hold.

For each destination named in its section, every request the engines allowed gets a
header (``Authorization`` unless ``header`` says otherwise) whose value is ``prefix``
followed by the content of a file. A client-sent header of that name is replaced,
never forwarded. Enable it with this directory in ``[gateway] plugin_paths``::

    [sites.main]
    plugins = ["file_catalog", "builtin_ca", "intentions", "credential_injection"]

    [sites.main.credential_injection.billing]
    file = "secrets/billing.token"     # relative to the config file's directory
    prefix = "Bearer "                 # optional, before the file's content

    [sites.main.credential_injection.weather]
    file = "/run/secrets/weather-api-key"
    header = "X-Api-Key"

A destination is named as in the catalog (``billing``, or ``partition/namespace/name``
outside the default namespace). The file is checked on every request (one ``stat``)
and read again when it changed (inode, size, mtime or ctime), so a rotated secret is
used from the next request. Its content, without surrounding white space, must be
visible ASCII (at most 16 KiB).

**Fail closed.** A missing, unreadable, empty or invalid file answers the request
``500`` (``credential unavailable``; ``answered_by`` = ``credential_injection``): it is
never forwarded without its credential. Each failing request is counted in
``credential_injection_failures_total`` (labels ``site``, the four service labels and
``reason``: ``missing``, ``unreadable``, ``too_large``, ``empty``, ``invalid``); one
warning line is logged when a destination starts failing (or fails for another
reason) and one info line when it recovers. Neither the logs, the metrics,
``/config`` (the section holds paths only) nor any exception carries the secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from gwcore.contract.http_flow import header_name_problem, header_value_problem
from gwcore.contract.metrics import SERVICE_LABELS, service_labels
from gwcore.policy.config_reader import ConfigProblem, SectionReader

NAME = "credential_injection"
MAX_BYTES = 16 * 1024
FAILED_STATUS = 500
FAILED_BODY = b"credential unavailable\n"
REASONS = ("missing", "unreadable", "too_large", "empty", "invalid")


class CredentialUnavailableError(Exception):
    """The credential cannot be used; ``reason`` is one of :data:`REASONS`. The message
    names the file, never its content."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class CredentialSource:
    """One destination's configured credential (no secret in it: a path)."""

    destination: str
    path: Path
    header: str
    prefix: str


def read_sources(site: Any) -> tuple[dict[str, CredentialSource], list[ConfigProblem]]:
    """The section ``[sites.NAME.credential_injection]``: one table per destination."""
    section: Mapping[str, Any] = site.plugin_section(NAME)
    sources: dict[str, CredentialSource] = {}
    problems: list[ConfigProblem] = []
    for destination, table in section.items():
        if not isinstance(table, Mapping):
            problems.append(
                ConfigProblem(
                    site.file,
                    f"{site.prefix}.{NAME}.{destination}",
                    "must be a table: [sites.NAME.credential_injection.<destination>]",
                )
            )
            continue
        reader = SectionReader(site.file, f"{site.prefix}.{NAME}.{destination}", table)
        file = reader.string("file", required=True)
        header = reader.string("header", "Authorization") or "Authorization"
        prefix = reader.string("prefix", "") or ""
        problem = header_name_problem(header)
        if problem:
            reader.problem("header", problem)
        if prefix and header_value_problem(prefix + "x") is not None:
            reader.problem("prefix", "may hold visible ASCII and inner spaces only")
        problems += reader.finish()
        if file and not problem:
            path = Path(file) if Path(file).is_absolute() else site.base_dir / file
            sources[destination] = CredentialSource(destination, path, header.lower(), prefix)
    return sources, problems


class Credential:
    """A credential file, read again when it changes."""

    def __init__(self, source: CredentialSource) -> None:
        self.source = source
        self._stamp: tuple[int, ...] | None = None
        self._value: str | None = None
        self.failing: str | None = None
        """The reason of the last failure, ``None`` while the credential is usable."""

    def current(self) -> str:
        """The header value, or :class:`CredentialUnavailableError`."""
        path = self.source.path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise CredentialUnavailableError("missing", f"{path} does not exist") from None
        except OSError as e:
            raise CredentialUnavailableError("unreadable", f"{path}: {e.strerror}") from None
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if stamp != self._stamp or self._value is None:
            self._value = None
            self._value = self._read(path)
            self._stamp = stamp
        return self._value

    def _read(self, path: Path) -> str:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_BYTES + 1)
        except FileNotFoundError:
            raise CredentialUnavailableError("missing", f"{path} does not exist") from None
        except OSError as e:
            raise CredentialUnavailableError("unreadable", f"{path}: {e.strerror}") from None
        if len(data) > MAX_BYTES:
            raise CredentialUnavailableError("too_large", f"{path} is over {MAX_BYTES} bytes")
        secret = data.strip(b" \t\r\n")
        if not secret:
            raise CredentialUnavailableError("empty", f"{path} is empty")
        try:
            value = self.source.prefix + secret.decode("ascii")
        except UnicodeDecodeError:
            raise CredentialUnavailableError("invalid", f"{path} is not ASCII") from None
        if header_value_problem(value) is not None:
            raise CredentialUnavailableError("invalid", f"{path} holds a control character")
        return value


class CredentialInjection:
    name = NAME

    def __init__(self) -> None:
        self.credentials: dict[str, Credential] = {}

    def tgw_validate_site_config(self, site: Any) -> list[ConfigProblem]:
        return read_sources(site)[1]

    def load(self, ctx: Any) -> None:
        self.log = ctx.log
        self.site = ctx.site.name
        self.failures = ctx.family(
            Counter,
            "credential_injection_failures",
            "Requests answered 500 because a destination's credential file could not be used.",
            ["site", *SERVICE_LABELS, "reason"],
        )
        sources, _ = read_sources(ctx.site.config)
        self.credentials = {name: Credential(source) for name, source in sources.items()}
        for credential in self.credentials.values():
            self._check(credential)  # say at start which files are not usable yet

    def _check(self, credential: Credential) -> str | None:
        try:
            value = credential.current()
        except CredentialUnavailableError as e:
            if credential.failing != e.reason:
                self.log.warn(
                    "credential for {destination} unavailable ({reason}): {problem}; "
                    "its requests are answered {status}",
                    destination=credential.source.destination,
                    reason=e.reason,
                    problem=str(e),
                    status=FAILED_STATUS,
                )
            credential.failing = e.reason
            return None
        if credential.failing is not None:
            self.log.info(
                "credential for {destination} is usable again ({path})",
                destination=credential.source.destination,
                path=str(credential.source.path),
            )
            credential.failing = None
        return value

    def tgw_http_requestheaders(self, flow: Any) -> None:
        if flow.destination is None:
            return
        credential = self.credentials.get(str(flow.destination.service))
        if credential is None:
            return
        value = self._check(credential)
        if value is None:
            reason = credential.failing or "unreadable"
            self.failures.labels(
                site=self.site, **service_labels(flow.destination), reason=reason
            ).inc()
            flow.respond(FAILED_STATUS, FAILED_BODY, [("content-type", "text/plain")], addon=NAME)
            return
        flow.request.headers.set(credential.source.header, value)


addons = [CredentialInjection]
