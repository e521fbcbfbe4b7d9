"""The TOML configuration: parsing and validation, with no I/O beyond reading the file.

Every problem is reported as a :class:`ConfigProblem` naming the file, the dotted
key and what is wrong; validation never stops at the first problem, so one run of
``tgw check-config`` lists them all. Plugins validate their own sections with a
:class:`SectionReader`, which applies the same rules and message style (both in
:mod:`gwcore.policy.config_reader`, re-exported here).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gwcore.policy.balancing import HEALTH_ORDERS, policy_name
from gwcore.policy.balancing import POLICIES as LB_POLICIES
from gwcore.policy.config_reader import (
    ConfigProblem,
    SectionReader,
    did_you_mean,
    parse_duration,
    read_stub_options,
)
from gwcore.policy.dns_records import DEFAULT_HOLD_NX, Family, parse_nameserver
from gwcore.policy.resolv import (
    DEFAULT_EDNS_PAYLOAD,
    SYSTEM_HOSTS,
)


class ConfigError(Exception):
    """A configuration that must not be used, with every problem found."""

    def __init__(
        self, problems: Iterable[ConfigProblem], partial: GatewayConfig | None = None
    ) -> None:
        self.problems = tuple(problems)
        # What could be read despite the problems (bad values replaced by defaults or
        # placeholders), so plugin sections can still be checked in the same run.
        self.partial = partial
        super().__init__("\n".join(str(p) for p in self.problems))


ROLES = ("terminating", "mesh")
ESSENTIAL_SECTIONS = frozenset({"mesh_hop", "upstream_tls", "plain_upstream"})
"""Sections of the always-registered plugins (``gwcore.contract.plugin_host.ESSENTIAL_PLUGINS``)."""
# "consul": the agent's default, decided by the consul_intentions plugin (docs/consul.md).
POLICIES = ("allow", "deny", "consul")
_CONSUL_INTENTIONS = ("consul_intentions", "gwcore.plugins.consul_intentions")
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
LOG_FORMATS = ("text", "json")

# Patterns given to ``string(pattern=...)`` must match the whole value (fullmatch):
# a "$" anchor would let a trailing newline through.
_NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_ENDPOINT_RE = re.compile(r"[a-zA-Z0-9]+:.*", re.DOTALL)


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """One ``[sites.NAME]`` table. Tables inside it are plugin sections."""

    key: str
    file: str
    base_dir: Path
    listen: str
    name: str
    datacenter: str
    trust_domain: str
    role: str = "terminating"
    default_policy: str = "deny"
    plugins: tuple[str, ...] = ()
    extra_trust_domains: tuple[str, ...] = ()
    handshake_timeout: float = 10.0
    session_lifetime: float = 3600.0
    connect_timeout: float = 5.0
    idle_timeout: float = 3600.0
    access_log_flush_interval: float = 0.0  # periodic records of open connections (0: off)
    access_log_no_data: bool = True  # records of bare TCP connects (health checks)
    authz_timeout: float = 5.0
    drain_timeout: float = 10.0
    proxy_protocol: bool = False  # PROXY v1/v2 header in, v2 to plain upstreams: net.proxied
    upstream_proxy_protocol: bool = False
    max_connections: int = 10000
    max_connect_attempts: int = 3
    max_request_headers_kb: int = 60  # L7: largest request head (Consul's MaxRequestHeadersKB)
    request_head_timeout: float = 60.0  # L7 HTTP/1.1: time to a complete request head
    http_max_upstream_connections: int = 64  # L7: per destination (gwcore.net.http_pool)
    # L7: idle connections kept per endpoint of a destination
    http_max_idle_upstream_connections: int = 16
    http_upstream_idle_timeout: float = 60.0
    http_max_pending_requests: int = 256  # L7: waiting for a pool connection; more: 503
    lb_policy: str = "round_robin"
    health_order: str = "weighted"  # or "passing_first"; see gwcore.policy.balancing
    outlier_consecutive_failures: int = 5
    outlier_base_ejection: float = 30.0
    outlier_max_ejection: float = 300.0
    dns_nameservers: tuple[str, ...] = ()
    dns_timeout: float = 5.0
    dns_min_ttl: float = 1.0
    dns_max_ttl: float = 300.0
    dns_max_stale: float = 3600.0
    dns_family: str = "prefer_ipv4"
    dns_hold_nx: float = DEFAULT_HOLD_NX
    dns_edns_payload: int = DEFAULT_EDNS_PAYLOAD
    dns_search: tuple[str, ...] | None = None  # None: resolv.conf's
    dns_ndots: int | None = None
    hosts_file: str = SYSTEM_HOSTS  # "": none
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return f"sites.{self.key}"

    @property
    def trusted_domains(self) -> frozenset[str]:
        return frozenset((self.trust_domain, *self.extra_trust_domains))

    def stack_name(self, name: str, module: str) -> str | None:
        """How this site's stack names a plugin: by ``name`` or by its ``module`` path
        (``None`` if not at all). The plugin's section carries the same name."""
        for entry in (name, module):
            if entry in self.plugins:
                return entry
        return None

    def plugin_section(self, plugin: str) -> Mapping[str, Any]:
        return self.sections.get(plugin, {})

    def reader(self, plugin: str) -> SectionReader:
        """A reader for ``[sites.KEY.<plugin>]``, for the plugin's own validation."""
        return SectionReader(self.file, f"{self.prefix}.{plugin}", self.plugin_section(plugin))


MAX_WORKERS = 64
LISTENERS = ("shared", "reuseport")
MIN_ADMIN_TOKEN = 16
_HOST_RE = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?|\[[0-9a-f:.]+\]|[0-9a-f:.]+")


@dataclass(frozen=True, slots=True)
class SampleServiceConfig:
    """The demo external service started beside the gateway (``[sample_service]``)."""

    listen: str
    body: str


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The whole file: ``[gateway]``, an optional ``[sample_service]``, and the sites."""

    file: str
    base_dir: Path
    admin: str | None
    access_log: str
    state_dir: Path
    plugin_paths: tuple[Path, ...]
    sites: tuple[SiteConfig, ...]
    sample_service: SampleServiceConfig | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)
    workers: int = 1
    """Processes serving the same listening sockets (``gwcore.runtime.workers``)."""
    log_level: str = "info"
    log_format: str = "text"
    worker_listeners: str = "shared"  # or "reuseport": a socket per worker (runtime.workers)
    drain_delay: float = 0.0  # accepting on after withdrawing, before draining (runtime.drain)
    admin_token: str = field(default="", repr=False)
    admin_token_file: Path | None = None
    admin_hosts: tuple[str, ...] = ()
    """Host header values the admin endpoint accepts besides loopback ones."""
    max_connections: int = 0  # per process, every site together; 0: no limit
    max_handshakes: int = 4096  # TLS handshakes in progress per process; 0: no limit

    def site(self, key: str) -> SiteConfig:
        for site in self.sites:
            if site.key == key:
                return site
        raise KeyError(key)


SYSTEM_STATE_DIR = Path("/var/lib/tgw")


def default_state_dir(base_dir: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Where the built-in CA keeps its keys when ``state_dir`` is not set.

    Never next to a config in ``/etc``: systemd's ``$STATE_DIRECTORY`` (set by
    ``StateDirectory=tgw``) if present, else ``/var/lib/tgw`` for a config under
    ``/etc``, else ``state/`` beside the config (a development checkout).
    """
    env = os.environ if environ is None else environ
    systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
    if systemd:
        return Path(systemd)
    if base_dir == Path("/etc") or Path("/etc") in base_dir.parents:
        return SYSTEM_STATE_DIR
    return base_dir / "state"


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate a config file; raise :class:`ConfigError` listing every problem."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(
            [ConfigProblem(file, "(file)", f"cannot be read: {e.strerror or e}")]
        ) from e
    except UnicodeDecodeError as e:  # found by fuzzing: it escaped as a traceback
        raise ConfigError(
            [ConfigProblem(file, "(file)", f"is not UTF-8 text (byte {e.start}): {e.reason}")]
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([ConfigProblem(file, "(syntax)", str(e))]) from e
    return parse_config(data, file, path.resolve().parent)


def section_name(entry: str) -> str:
    """The config section (and stack name) of a stack entry: the entry itself, or, for a
    drop-in path or a dotted module path, its last component (``addons/rate.py`` and
    ``mycompany.rate`` are both configured in ``[sites.NAME.rate]``)."""
    if entry.endswith(".py"):
        return Path(entry).stem
    return entry.rsplit(".", 1)[-1]


def parse_config(data: Mapping[str, Any], file: str, base_dir: Path) -> GatewayConfig:
    """Validate parsed TOML. Plugin sections are left to the plugins."""
    problems: list[ConfigProblem] = []
    top = SectionReader(file, "", data)
    gw = SectionReader(file, "gateway", top.table_value("gateway"))
    if gw.table.get("admin") == "":  # an empty string turns the admin endpoint off
        gw.string("admin")
        admin: str | None = None
    else:
        admin = gw.string(
            "admin",
            "tcp:19000:interface=127.0.0.1",
            pattern=_ENDPOINT_RE,
            what="an endpoint string",
        )
    access_log = gw.string("access_log", "-") or ""
    state = gw.string("state_dir")
    state_dir = base_dir / state if state else default_state_dir(base_dir)
    plugin_paths = tuple(base_dir / p for p in gw.strings("plugin_paths"))
    workers = gw.integer("workers", 1, minimum=1, maximum=MAX_WORKERS)
    log_level = gw.string("log_level", "info", choices=LOG_LEVELS) or "info"
    log_format = gw.string("log_format", "text", choices=LOG_FORMATS) or "text"
    drain_delay = gw.duration("drain_delay", 0.0)
    worker_listeners = gw.string("worker_listeners", "shared", choices=LISTENERS) or "shared"
    admin_token = gw.string("admin_token", "") or ""
    token_file = gw.string("admin_token_file", "") or ""
    if admin_token and token_file:
        gw.problem("admin_token_file", "set admin_token or admin_token_file, not both")
    elif admin_token and len(admin_token) < MIN_ADMIN_TOKEN:
        gw.problem("admin_token", f"must be at least {MIN_ADMIN_TOKEN} characters")
    admin_hosts = tuple(h.lower() for h in gw.strings("admin_hosts"))
    for host in admin_hosts:
        if not _HOST_RE.fullmatch(host):
            gw.problem("admin_hosts", f"{host!r} is not a host name or IP address (no port)")
    max_connections = gw.integer("max_connections", 0, minimum=0)
    max_handshakes = gw.integer("max_handshakes", 4096, minimum=0)
    problems += gw.finish()

    sample = None
    if "sample_service" in data:
        sr = SectionReader(file, "sample_service", top.table_value("sample_service"))
        listen = sr.string("listen", required=True, pattern=_ENDPOINT_RE, what="an endpoint string")
        body = sr.string("body", "hello from the sample service\n") or ""
        problems += sr.finish()
        if listen:
            sample = SampleServiceConfig(listen, body)

    sites_table = top.table_value("sites")
    sites: list[SiteConfig] = []
    if not sites_table:
        top.problem("sites", "at least one [sites.NAME] table is required")
    for key, table in sites_table.items():
        if not isinstance(table, Mapping):
            top.problem(f"sites.{key}", "must be a table")
            continue
        site, site_problems = _parse_site(file, base_dir, key, table)
        problems += site_problems
        sites.append(site)
    listens: dict[str, str] = {}
    for site in sites:
        if site.listen == "tcp:0":
            continue  # a placeholder for a missing or bad listen, already reported
        if site.listen in listens:
            problems.append(
                ConfigProblem(
                    file, f"{site.prefix}.listen", f"same endpoint as sites.{listens[site.listen]}"
                )
            )
        listens.setdefault(site.listen, site.key)
    problems += top.finish()
    config = GatewayConfig(
        file=file,
        base_dir=base_dir,
        admin=admin,
        access_log=access_log,
        state_dir=state_dir,
        plugin_paths=plugin_paths,
        sites=tuple(sites),
        sample_service=sample,
        raw=data,
        workers=workers,
        log_level=log_level,
        log_format=log_format,
        drain_delay=drain_delay,
        worker_listeners=worker_listeners,
        admin_token=admin_token,
        admin_token_file=base_dir / token_file if token_file else None,
        admin_hosts=admin_hosts,
        max_connections=max_connections,
        max_handshakes=max_handshakes,
    )
    if problems:
        raise ConfigError(problems, partial=config)
    return config


def _parse_site(
    file: str, base_dir: Path, key: str, table: Mapping[str, Any]
) -> tuple[SiteConfig, list[ConfigProblem]]:
    r = SectionReader(file, f"sites.{key}", table)
    listen = r.string(
        "listen",
        required=True,
        pattern=_ENDPOINT_RE,
        what="an endpoint string like tcp:8443:interface=127.0.0.1",
    )
    name = r.string(
        "name",
        required=True,
        pattern=_NAME_RE,
        what="a service name (lower-case letters, digits, dashes)",
    )
    datacenter = r.string("datacenter", "dc1", pattern=_NAME_RE, what="a datacenter name")
    trust_domain = r.string("trust_domain", required=True)
    if trust_domain is not None and not _valid_trust_domain(trust_domain):
        r.problem(
            "trust_domain",
            f"{trust_domain!r} is not a trust domain (a DNS-like name such as 1234.consul)",
        )
        trust_domain = None
    extra = r.strings("extra_trust_domains")
    for td in extra:
        if not _valid_trust_domain(td):
            r.problem("extra_trust_domains", f"{td!r} is not a trust domain")
    role = r.string("role", "terminating", choices=ROLES) or "terminating"
    default_policy = r.string("default_policy", "deny", choices=POLICIES) or "deny"
    plugins = r.strings("plugins")
    if default_policy == "consul" and not any(p in _CONSUL_INTENTIONS for p in plugins):
        r.problem("default_policy", '"consul" needs consul_intentions in plugins')
    if len(set(plugins)) != len(plugins):
        r.problem("plugins", "names a plugin more than once")
    values = {
        "handshake_timeout": r.duration("handshake_timeout", 10.0, minimum=0.001),
        "session_lifetime": r.duration("session_lifetime", 3600.0, minimum=1.0),
        "connect_timeout": r.duration("connect_timeout", 5.0, minimum=0.001),
        "idle_timeout": r.duration("idle_timeout", 3600.0),
        "access_log_flush_interval": r.duration("access_log_flush_interval", 0.0),
        "authz_timeout": r.duration("authz_timeout", 5.0, minimum=0.001),
        "drain_timeout": r.duration("drain_timeout", 10.0),
        "proxy_protocol": r.boolean("proxy_protocol", False),
        "access_log_no_data": r.boolean("access_log_no_data", True),
        "upstream_proxy_protocol": r.boolean("upstream_proxy_protocol", False),
        "max_connections": r.integer("max_connections", 10000, minimum=1),
        "max_connect_attempts": r.integer("max_connect_attempts", 3, minimum=1, maximum=100),
        "max_request_headers_kb": r.integer("max_request_headers_kb", 60, minimum=1, maximum=8192),
        "request_head_timeout": r.duration("request_head_timeout", 60.0),
        "http_max_upstream_connections": r.integer("http_max_upstream_connections", 64, minimum=1),
        "http_max_idle_upstream_connections": r.integer(
            "http_max_idle_upstream_connections", 16, minimum=0
        ),
        "http_upstream_idle_timeout": r.duration("http_upstream_idle_timeout", 60.0, minimum=0.001),
        "http_max_pending_requests": r.integer("http_max_pending_requests", 256, minimum=0),
        "outlier_consecutive_failures": r.integer("outlier_consecutive_failures", 5, minimum=1),
        "outlier_base_ejection": r.duration("outlier_base_ejection", 30.0, minimum=0.001),
        "outlier_max_ejection": r.duration("outlier_max_ejection", 300.0, minimum=0.001),
    }
    for option in ("proxy_protocol", "upstream_proxy_protocol"):
        if role == "mesh" and values[option]:
            r.problem(option, "is supported on terminating sites only")
    nameservers = r.strings("dns_nameservers")
    for text in nameservers:
        try:
            parse_nameserver(text)
        except ValueError as e:
            r.problem("dns_nameservers", str(e))
    values["dns_nameservers"] = nameservers
    values["dns_timeout"] = r.duration("dns_timeout", 5.0, minimum=0.05)
    values["dns_min_ttl"] = r.duration("dns_min_ttl", 1.0, minimum=0.05)
    values["dns_max_ttl"] = r.duration("dns_max_ttl", 300.0, minimum=0.05)
    if values["dns_max_ttl"] < values["dns_min_ttl"]:
        r.problem("dns_max_ttl", "must not be below dns_min_ttl")
        values["dns_max_ttl"] = values["dns_min_ttl"]
    values["dns_max_stale"] = r.duration("dns_max_stale", 3600.0)
    values["dns_hold_nx"] = r.duration("dns_hold_nx", DEFAULT_HOLD_NX)
    stub = read_stub_options(r, "dns_")
    values["dns_edns_payload"], values["dns_search"], values["dns_ndots"] = stub
    hosts = r.string("hosts_file", SYSTEM_HOSTS)
    values["hosts_file"] = str(base_dir / hosts) if hosts else ""
    families = tuple(f.value for f in Family)
    values["dns_family"] = r.string("dns_family", "prefer_ipv4", choices=families) or "prefer_ipv4"
    choices = (*LB_POLICIES, "least_connections")
    lb_policy = r.string("lb_policy", "round_robin", choices=choices) or "round_robin"
    values["lb_policy"] = policy_name(lb_policy) or "round_robin"
    order = r.string("health_order", "weighted", choices=HEALTH_ORDERS)
    values["health_order"] = order or "weighted"
    sections = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    own_sections = {section_name(p) for p in plugins} | set(plugins)
    for section in sections:
        if section not in own_sections and section not in ESSENTIAL_SECTIONS:
            r.problem(
                section, "is a plugin section, but the plugin is not in this site's plugins list"
            )
    problems = r.finish(allow_tables=True)
    # On problems the caller refuses the whole file; the site is still returned, with
    # placeholders, so that its plugin sections can be checked in the same run.
    return (
        SiteConfig(
            key=key,
            file=file,
            base_dir=base_dir,
            listen=listen or "tcp:0",
            name=name or "invalid",
            datacenter=datacenter or "dc1",
            trust_domain=(trust_domain or "invalid.invalid").lower(),
            role=role,
            default_policy=default_policy,
            plugins=plugins,
            extra_trust_domains=tuple(td.lower() for td in extra),
            sections=sections,
            **values,
        ),
        problems,
    )


_TD_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def _valid_trust_domain(value: str) -> bool:
    return len(value) <= 255 and bool(_TD_RE.fullmatch(value.lower()))


__all__ = [
    "ESSENTIAL_SECTIONS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_WORKERS",
    "MIN_ADMIN_TOKEN",
    "POLICIES",
    "ROLES",
    "SYSTEM_STATE_DIR",
    "ConfigError",
    "ConfigProblem",
    "GatewayConfig",
    "SampleServiceConfig",
    "SectionReader",
    "SiteConfig",
    "default_state_dir",
    "did_you_mean",
    "load_config",
    "parse_config",
    "parse_duration",
    "read_stub_options",
]
