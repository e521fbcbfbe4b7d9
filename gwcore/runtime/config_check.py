"""Everything ``tgw check-config`` checks, shared with ``twistd tgw`` start-up and reload.

A config passes only if the file parses, every core key is valid, every site's
plugin stack loads (names resolve, hook implementations are spelled right), every
plugin accepts its own section, and every endpoint string parses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from twisted.internet.endpoints import serverFromString

from gwcore.contract.plugin_host import ESSENTIAL_PLUGINS, PluginLoadError, PluginStack
from gwcore.net.admin_guard import admin_token, config_secrets
from gwcore.net.fasttcp import parse_tcp
from gwcore.net.systemd import endpoint_problem
from gwcore.policy.config import ConfigError, ConfigProblem, GatewayConfig, SiteConfig, load_config
from gwcore.policy.redact import declared_values, scrub
from gwcore.runtime.crosscheck import SiteFindings, check_site, unrouted_warnings


@dataclass
class CheckedConfig:
    """The outcome of :func:`check_config`: usable only when ``problems`` is empty."""

    config: GatewayConfig | None
    stacks: dict[str, PluginStack] = field(default_factory=dict)
    problems: list[ConfigProblem] = field(default_factory=list)
    warnings: list[ConfigProblem] = field(default_factory=list)
    """Cross-checks between config, catalog and certificates (gwcore.runtime.crosscheck): they do
    not stop a start; ``tgw check-config --strict`` counts them as problems."""
    findings: dict[str, SiteFindings] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.config is not None and not self.problems


class _NoReactor:
    """Endpoint parsing stores the reactor without using it; nothing may listen here."""


def _check_endpoint(config: GatewayConfig, key: str, description: str) -> list[ConfigProblem]:
    if description.startswith("systemd:"):
        # Twisted looks the descriptor up while parsing; only the service has it.
        problem = endpoint_problem(description)
        if problem is None:
            return []
        return [ConfigProblem(config.file, key, f"{description!r} is not valid: {problem}")]
    try:
        serverFromString(_NoReactor(), description)
    except Exception as e:  # Twisted raises ValueError, KeyError, TypeError...
        return [ConfigProblem(config.file, key, f"{description!r} is not a valid endpoint: {e}")]
    return []


def check_config(path: str | Path) -> CheckedConfig:
    """Load ``path`` and run every check; never raises for bad input."""
    try:
        config = load_config(path)
        result = CheckedConfig(config)
    except ConfigError as e:
        if e.partial is None:
            return CheckedConfig(None, {}, list(e.problems))
        # Keep going on what could be read, so one run reports plugin problems too.
        config = e.partial
        result = CheckedConfig(None, {}, list(e.problems))
    if config.admin:
        result.problems += _check_endpoint(config, "gateway.admin", config.admin)
    try:
        admin_token(config)
    except ValueError as e:
        key, _, message = str(e).partition(": ")
        result.problems.append(ConfigProblem(config.file, key, message))
    if config.sample_service:
        result.problems += _check_endpoint(
            config, "sample_service.listen", config.sample_service.listen
        )
    for site in config.sites:
        result.problems += _check_endpoint(config, f"{site.prefix}.listen", site.listen)
        try:
            stack = PluginStack(site, config)
        except PluginLoadError as e:
            result.problems.append(ConfigProblem(config.file, f"{site.prefix}.plugins", str(e)))
            continue
        try:
            result.problems += stack.validate()
        except Exception as e:  # a plugin's validator must not take check-config down
            result.problems.append(
                ConfigProblem(
                    config.file, f"{site.prefix}.plugins", f"a plugin's validation raised {e!r}"
                )
            )
        if site.role == "mesh":
            result.problems += _mesh_problems(config, site, stack)
        elif not _implements(stack, "tgw_certificate_providers"):
            result.problems.append(
                ConfigProblem(
                    config.file,
                    f"{site.prefix}.plugins",
                    "a terminating site needs a certificate provider "
                    "(builtin_ca, file_certs or consul_certs)",
                )
            )
        result.stacks[site.key] = stack
        try:
            findings = check_site(site)
        except Exception as e:  # a cross-check must never take check-config down
            findings = SiteFindings(
                [ConfigProblem(config.file, site.prefix, f"cross-checks failed: {e!r}")]
            )
        result.findings[site.key] = findings
        result.warnings += findings.warnings
    result.warnings += unrouted_warnings(result.findings.values())
    result.problems += _shared_endpoints(config)
    # A message may quote a bad value, and a bad value may be a pasted secret.
    secrets: set[str] = set()
    if result.problems or result.warnings:
        secrets = config_secrets(config)
        for stack in result.stacks.values():
            secrets |= declared_values(config.raw, stack.secret_keys())
    if secrets:
        result.problems = [replace(p, message=scrub(p.message, secrets)) for p in result.problems]
        result.warnings = [replace(p, message=scrub(p.message, secrets)) for p in result.warnings]
    return result


def _implements(stack: PluginStack, hook: str) -> set[str]:
    """Names of the stack's own (non-essential) plugins implementing ``hook``."""
    impls = getattr(stack.pm.hook, hook).get_hookimpls()
    return {i.plugin_name for i in impls} - set(ESSENTIAL_PLUGINS)


def _shared_endpoints(config: GatewayConfig) -> list[ConfigProblem]:
    """A site may not listen where the admin endpoint or the sample service does."""
    others = {"gateway.admin": config.admin}
    if config.sample_service:
        others["sample_service.listen"] = config.sample_service.listen
    problems = []
    for site in config.sites:
        if (parse_tcp(site.listen) or (None,))[0] == 0:
            continue  # port 0: the kernel picks a free port, nothing to clash with
        for key, endpoint in others.items():
            if endpoint and endpoint == site.listen:
                problems.append(
                    ConfigProblem(config.file, f"{site.prefix}.listen", f"same endpoint as {key}")
                )
    return problems


_NOT_FOR_MESH = {
    "tgw_certificate_providers": "holds no key and presents no certificate",
    "tgw_authorization_engines": "never sees a client identity, so authorizes nothing",
}


def _mesh_problems(
    config: GatewayConfig, site: SiteConfig, stack: PluginStack
) -> list[ConfigProblem]:
    """A mesh site forwards TLS untouched: certificate and authorization plugins are mistakes."""
    problems = []
    for hook, why in _NOT_FOR_MESH.items():
        for name in sorted(_implements(stack, hook)):
            problems.append(
                ConfigProblem(
                    config.file,
                    f"{site.prefix}.plugins",
                    f"{name!r} has nothing to do on a mesh site: a mesh site {why}",
                )
            )
    return problems
