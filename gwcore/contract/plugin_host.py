"""Loading a site's plugin stack and calling its hooks.

Every site gets its own :class:`PluginStack`: the essential plugins (which cannot be
disabled) plus the plugins its ``plugins`` list names, in that order. A name is
resolved, in this order, as

1. a built-in plugin (:data:`DEFAULT_PLUGINS`),
2. an installed plugin from the ``tgw`` entry-point group,
3. a drop-in file: a path ending in ``.py`` (relative to the config file), or
   ``<name>.py`` in one of ``[gateway] plugin_paths``,
4. an importable dotted module path.

Built-ins come through the same door as third-party plugins; nothing is imported
unless a stack names it. A drop-in module that defines ``addons = [...]`` has each
object registered (mitmproxy's convention); otherwise the module itself is the
plugin. Hook implementations may be marked with ``gwcore.contract.hookspecs.hookimpl`` or
simply be named ``tgw_<hook>``; a ``tgw_`` name that matches no hook is an error.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from gwcore.contract import hookspecs
from gwcore.policy.config import ConfigProblem, GatewayConfig, SiteConfig

if TYPE_CHECKING:
    from twisted.logger import Logger

    from gwcore.contract.metrics import GatewayMetrics

ENTRY_POINT_GROUP = "tgw"

DEFAULT_PLUGINS: dict[str, str] = {
    "file_catalog": "gwcore.plugins.file_catalog",
    "builtin_ca": "gwcore.plugins.builtin_ca",
    "file_certs": "gwcore.plugins.file_certs",
    "intentions": "gwcore.plugins.intentions",
    "opa": "gwcore.plugins.opa",
    "dns_catalog": "gwcore.plugins.dns_catalog",
    "consul_catalog": "gwcore.plugins.consul_catalog",
    "consul_certs": "gwcore.plugins.consul_certs",
    "consul_intentions": "gwcore.plugins.consul_intentions",
}
"""Built-in plugins a stack may name."""

ESSENTIAL_PLUGINS: dict[str, str] = {
    "mesh_hop": "gwcore.plugins.mesh_hop",
    "upstream_tls": "gwcore.plugins.upstream_tls",
    "plain_upstream": "gwcore.plugins.plain_upstream",
}
"""Always registered, after the stack: the mesh-gateway hop (first, so a destination in
another datacenter is never dialled directly), TLS/mTLS origination and plain TCP
upstreams. Their sections (``[sites.NAME.upstream_tls]``) may be present without
naming them."""

_UNMARKED_OPTS: dict[str, Any] = {
    "wrapper": False,
    "hookwrapper": False,
    "optionalhook": False,
    "tryfirst": False,
    "trylast": False,
    "specname": None,
}


class PluginLoadError(Exception):
    """A stack entry could not be resolved or imported."""


class _Manager(pluggy.PluginManager):
    """Accepts unmarked ``tgw_*`` callables, so drop-in addons need no imports."""

    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(f"{hookspecs.PROJECT}_"):
            attr = getattr(plugin, name, None)
            if callable(attr) and not isinstance(attr, type):
                return dict(_UNMARKED_OPTS)
        return opts


@dataclass(frozen=True, slots=True)
class _Impl:
    function: Any
    argnames: tuple[str, ...]
    plugin_name: str


def _load_dropin(path: Path) -> object:
    module_name = f"tgw_dropin_{abs(hash(str(path.resolve())))}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # a drop-in must not end check-config
        sys.modules.pop(module_name, None)
        raise PluginLoadError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    return module


def resolve_plugin(name: str, gateway: GatewayConfig) -> object:
    """Import the plugin a stack entry names (see the module docstring for the order)."""
    builtin = DEFAULT_PLUGINS.get(name) or ESSENTIAL_PLUGINS.get(name)
    if builtin:
        return importlib.import_module(builtin)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                return ep.load()
            except Exception as e:
                raise PluginLoadError(f"entry point {name!r} failed to load: {e}") from e
    if name.endswith(".py"):
        path = Path(name)
        path = path if path.is_absolute() else gateway.base_dir / path
        if not path.is_file():
            raise PluginLoadError(f"drop-in file {path} does not exist")
        return _load_dropin(path)
    for directory in gateway.plugin_paths:
        candidate = directory / f"{name}.py"
        if candidate.is_file():
            return _load_dropin(candidate)
    if "." in name:
        try:
            return importlib.import_module(name)
        except Exception as e:
            raise PluginLoadError(f"cannot import module {name!r}: {type(e).__name__}: {e}") from e
    if gateway.plugin_paths:
        dropin = f"no {name}.py in " + ", ".join(str(p) for p in gateway.plugin_paths)
    else:
        dropin = f"no {name}.py (no [gateway] plugin_paths configured)"
    raise PluginLoadError(
        f"unknown plugin {name!r}: not built-in ({', '.join(DEFAULT_PLUGINS)}), "
        f"not an installed '{ENTRY_POINT_GROUP}' entry point, {dropin}"
    )


def _plugin_objects(name: str, plugin: object) -> Iterator[tuple[str, object]]:
    addons = getattr(plugin, "addons", None)
    if isinstance(addons, list | tuple):
        for index, addon in enumerate(addons):
            label = getattr(addon, "name", None) or type(addon).__name__
            yield f"{name}[{index}:{label}]", addon
    else:
        yield name, plugin


class PluginStack:
    """A site's plugin manager, with hooks called in stack order.

    Construction imports and registers everything, and validates every hook
    implementation against :mod:`gwcore.contract.hookspecs`; it raises
    :class:`PluginLoadError` (with the stack entry named) when anything is wrong.
    """

    def __init__(self, site: SiteConfig, gateway: GatewayConfig) -> None:
        self.site = site
        self.pm = _Manager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._position: dict[str, int] = {}
        plugins = [(name, resolve_plugin(name, gateway)) for name in site.plugins]
        plugins += [
            (name, importlib.import_module(module))
            for name, module in ESSENTIAL_PLUGINS.items()
            if name not in site.plugins
        ]
        for index, (entry, plugin) in enumerate(plugins):
            for reg_name, obj in _plugin_objects(entry, plugin):
                try:
                    self.pm.register(obj, name=reg_name)
                except (ValueError, pluggy.PluginValidationError) as e:
                    raise PluginLoadError(f"plugin {entry!r}: {e}") from e
                self._position[reg_name] = index
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            raise PluginLoadError(f"{e} (misspelled hook name?)") from e
        self._events: dict[str, tuple[_Impl, ...]] = {
            hook: self._ordered(hook) for hook in hookspecs.EVENT_HOOKS
        }

    def _ordered(self, hook: str) -> tuple[_Impl, ...]:
        caller = getattr(self.pm.hook, hook)
        impls = sorted(
            caller.get_hookimpls(), key=lambda i: self._position.get(i.plugin_name, 1 << 30)
        )
        return tuple(_Impl(i.function, tuple(i.argnames), i.plugin_name) for i in impls)

    def validate(self) -> list[ConfigProblem]:
        """Ask every plugin to check its own config section; a raising one is a problem."""
        problems: list[ConfigProblem] = []
        for impl in self._ordered("tgw_validate_site_config"):
            try:
                result = impl.function(**{a: self.site for a in impl.argnames})
            except Exception as e:  # a validator bug must not hide other plugins' problems
                problems.append(
                    ConfigProblem(
                        self.site.file,
                        f"{self.site.prefix}.plugins",
                        f"plugin {impl.plugin_name!r} raised while validating: {e!r}",
                    )
                )
                continue
            problems.extend(result or ())
        return problems

    def secret_keys(self) -> dict[str, frozenset[str]]:
        """``{"sites.KEY.PLUGIN": keys}``: the keys each plugin declares secret
        (``tgw_secret_keys``) in its own section; a raising plugin declares nothing."""
        found: dict[str, frozenset[str]] = {}
        for impl in self._ordered("tgw_secret_keys"):
            try:
                keys = impl.function(**{a: self.site for a in impl.argnames})
            except Exception:
                continue
            section = impl.plugin_name.split("[", 1)[0]  # an addon list shares its entry's
            table = f"{self.site.prefix}.{section}"
            found[table] = found.get(table, frozenset()) | frozenset(keys or ())
        return found

    def collect(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call a provider hook in stack order and concatenate the returned sequences."""
        found: list[Any] = []
        for impl in self._ordered(hook):
            result = impl.function(**{a: kwargs[a] for a in impl.argnames})
            if result:
                found.extend(result)
        return found

    def listeners(self, hook: str) -> tuple[_Impl, ...]:
        """The implementations of an event hook; empty means dispatching costs nothing."""
        return self._events[hook]

    def dispatch(self, hook: str, event: Any, log: Logger, metrics: GatewayMetrics | None) -> None:
        """Call every implementation of an event hook; a raising addon is logged and skipped."""
        for impl in self._events[hook]:
            vetoed_before = getattr(event, "veto_reason", None)
            try:
                impl.function(**{a: event for a in impl.argnames})
            except Exception:
                log.failure("addon {addon} raised in {hook}", addon=impl.plugin_name, hook=hook)
                if metrics is not None:
                    metrics.addon_errors.labels(site=self.site.key, hook=hook).inc()
                # An addon that raised must not veto by accident half-way through.
                if vetoed_before is None and getattr(event, "veto_reason", None) is not None:
                    event.veto_reason = None
                    event.vetoed_by = None
                continue
            vetoed_now = vetoed_before is None and getattr(event, "veto_reason", None) is not None
            if vetoed_now and event.vetoed_by in (None, "addon"):
                event.vetoed_by = impl.plugin_name

    @property
    def plugin_names(self) -> Sequence[str]:
        return [name for name, _ in sorted(self._position.items(), key=lambda kv: kv[1])]
