"""Everything ``tgw check-config`` checks, shared with ``twistd tgw`` start-up and reload.

A config passes only if the file parses, every core key is valid, every site's
plugin stack loads (names resolve, hook implementations are spelled right), every
plugin accepts its own section, and every endpoint string parses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet.endpoints import serverFromString

from gwcore.plugin_host import PluginLoadError, PluginStack
from gwcore.policy.config import ConfigError, ConfigProblem, GatewayConfig, load_config


@dataclass
class CheckedConfig:
    """The outcome of :func:`check_config`: usable only when ``problems`` is empty."""

    config: GatewayConfig | None
    stacks: dict[str, PluginStack] = field(default_factory=dict)
    problems: list[ConfigProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.config is not None and not self.problems


class _NoReactor:
    """Endpoint parsing stores the reactor without using it; nothing may listen here."""


def _check_endpoint(config: GatewayConfig, key: str, description: str) -> list[ConfigProblem]:
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
    if config.sample_service:
        result.problems += _check_endpoint(
            config, "sample_service.listen", config.sample_service.listen
        )
    for site in config.sites:
        result.problems += _check_endpoint(config, f"{site.prefix}.listen", site.listen)
        if site.role != "terminating":
            result.problems.append(
                ConfigProblem(
                    config.file, f"{site.prefix}.role", f"role {site.role!r} is not available yet"
                )
            )
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
        result.stacks[site.key] = stack
    return result
