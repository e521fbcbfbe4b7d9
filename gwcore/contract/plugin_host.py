"""Loading a site's plugin stack and calling its hooks.

Every site gets its own :class:`PluginStack`: the plugins its ``plugins`` list names,
in that order, then the essential plugins it does not name (they cannot be disabled;
naming one moves it). A name is resolved, in this order, as

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
from gwcore.contract.addon_lifecycle import AddonContext, lifecycle_objects
from gwcore.contract.http_addons import dispatch_http
from gwcore.contract.plugin_checks import ProviderShapeError, check_event_impl, check_providers
from gwcore.contract.plugin_names import closest_name, dropin_names, entry_point_names
from gwcore.policy.config import ConfigProblem, GatewayConfig, SiteConfig, section_name

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
    installed = [*DEFAULT_PLUGINS, *entry_point_names(), *dropin_names(gateway.plugin_paths)]
    guess = closest_name(name, installed)
    hint = f"; did you mean {guess!r}?" if guess else ""
    raise PluginLoadError(
        f"unknown plugin {name!r}: not built-in ({', '.join(DEFAULT_PLUGINS)}), "
        f"not an installed '{ENTRY_POINT_GROUP}' entry point, {dropin}{hint}"
    )


def _plugin_objects(entry: str, plugin: object) -> Iterator[tuple[str, object]]:
    # A drop-in path or a module path is known by its last component (its section).
    name = section_name(entry)
    addons = getattr(plugin, "addons", None)
    if isinstance(addons, list | tuple):
        for index, addon in enumerate(addons):
            if isinstance(addon, type):  # a class: one instance per stack (site and load)
                addon = addon()
            label = getattr(addon, "name", None) or type(addon).__name__
            yield f"{name}[{index}:{label}]", addon
    else:
        yield name, plugin


def plugin_label(entry: str, plugin: object) -> str:
    """A plugin's own name: its ``name`` attribute, else the stack entry without a
    directory, ``.py`` or package path (``contrib/x.py`` and ``pkg.x`` are both ``x``)."""
    own = getattr(plugin, "name", None)
    if isinstance(own, str) and own:
        return own
    return section_name(entry)


def _refuse_duplicates(plugins: Sequence[tuple[str, object]]) -> None:
    """Two stack entries that are one plugin (an entry point and its drop-in copy, a
    module listed twice) would both run and double-count: refuse the second."""
    seen: dict[str, tuple[int, str]] = {}
    for position, (entry, plugin) in enumerate(plugins):
        labels = [plugin_label(entry, plugin)]
        addons = getattr(plugin, "addons", None)
        if isinstance(addons, list | tuple):
            labels = [
                plugin_label(a.__name__ if isinstance(a, type) else type(a).__name__, a)
                for a in addons
            ]
        for label in labels:
            first_position, first = seen.setdefault(label, (position, entry))
            if first_position != position:
                raise PluginLoadError(
                    f"plugin {label!r} is loaded twice: by stack entry {first!r} and by "
                    f"{entry!r}; keep one of them"
                )


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
        self._registered: list[tuple[str, object]] = []
        plugins = [(name, resolve_plugin(name, gateway)) for name in site.plugins]
        plugins += [
            (name, importlib.import_module(module))
            for name, module in ESSENTIAL_PLUGINS.items()
            if name not in site.plugins
        ]
        _refuse_duplicates(plugins)
        for index, (entry, plugin) in enumerate(plugins):
            for reg_name, obj in _plugin_objects(entry, plugin):
                try:
                    self.pm.register(obj, name=reg_name)
                except (ValueError, pluggy.PluginValidationError) as e:
                    raise PluginLoadError(f"plugin {entry!r}: {e}") from e
                self._position[reg_name] = index
                self._registered.append((reg_name, obj))
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            raise PluginLoadError(f"{e} (misspelled hook name?)") from e
        self._events: dict[str, tuple[_Impl, ...]] = {
            hook: self._ordered(hook) for hook in hookspecs.EVENT_HOOKS
        }
        for hook, impls in self._events.items():
            for impl in impls:
                try:
                    check_event_impl(impl.plugin_name, hook, impl.function)
                except ProviderShapeError as e:
                    raise PluginLoadError(str(e)) from e

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
            # an addon list shares its entry's section; a path's section is its stem
            section = section_name(impl.plugin_name.split("[", 1)[0])
            table = f"{self.site.prefix}.{section}"
            found[table] = found.get(table, frozenset()) | frozenset(keys or ())
        return found

    def collect(self, hook: str, **kwargs: Any) -> list[Any]:
        """Call a provider hook in stack order and concatenate the returned sequences.

        Each plugin's result is checked against the hook's protocol
        (:func:`gwcore.contract.plugin_checks.check_providers`); a wrong shape raises
        :class:`PluginLoadError` naming the plugin and the member, so the site does
        not start.
        """
        found: list[Any] = []
        for impl in self._ordered(hook):
            result = impl.function(**{a: kwargs[a] for a in impl.argnames})
            try:
                found.extend(check_providers(hook, impl.plugin_name, result))
            except ProviderShapeError as e:
                raise PluginLoadError(str(e)) from e
        return found

    def listeners(self, hook: str) -> tuple[_Impl, ...]:
        """The implementations of an event hook; empty means dispatching costs nothing."""
        return self._events[hook]

    def dispatch(self, hook: str, event: Any, log: Logger, metrics: GatewayMetrics | None) -> None:
        """Call every implementation of an event hook; a raising addon is logged and skipped.
        The HTTP hooks follow their own rules (answers, fail closed):
        :func:`gwcore.contract.http_addons.dispatch_http`."""
        if hook in hookspecs.HTTP_HOOKS:
            dispatch_http(hook, event, self._events[hook], log, metrics, self.site.key)
            return
        conn = getattr(event, "conn", None)
        for impl in self._events[hook]:
            vetoed_before = getattr(event, "veto_reason", None)
            rerouted_before = getattr(event, "rerouted_to", None)
            if conn is not None:
                conn.writer = impl.plugin_name  # annotation keys belong to their writer
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
                if rerouted_before is None and getattr(event, "rerouted_to", None) is not None:
                    event.rerouted_to = event.rerouted_by = None  # nor reroute
                continue
            vetoed_now = vetoed_before is None and getattr(event, "veto_reason", None) is not None
            if vetoed_now and event.vetoed_by in (None, "addon"):
                event.vetoed_by = impl.plugin_name
            if getattr(event, "rerouted_by", None) == "addon":
                event.rerouted_by = impl.plugin_name
            if getattr(event, "chosen_by", None) == "addon":
                event.chosen_by = impl.plugin_name
        if conn is not None:
            conn.writer = None

    def load_addons(self, site: Any) -> None:
        """``load(ctx)`` then ``configure(updated)`` on every addon that defines them, in
        stack order (:mod:`gwcore.contract.addon_lifecycle`); raising refuses the start by name."""
        from twisted.logger import Logger

        for reg_name, obj in lifecycle_objects(self._registered):
            section = section_name(reg_name.split("[", 1)[0])
            table = self.site.plugin_section(section)
            log = Logger(namespace=f"tgw.addon.{section}")
            ctx = AddonContext(reg_name, section, site, table, log)
            try:
                if callable(getattr(obj, "load", None)):
                    obj.load(ctx)  # type: ignore[attr-defined]
                if callable(getattr(obj, "configure", None)):
                    obj.configure(frozenset(table))  # type: ignore[attr-defined]
            except Exception as e:
                raise PluginLoadError(
                    f"addon {reg_name!r} raised in load/configure: {type(e).__name__}: {e}"
                ) from e

    def addons_done(self, log: Logger) -> None:
        """``done()`` on every addon that defines it, in reverse stack order; a raising
        one is logged and the others still run."""
        for reg_name, obj in reversed(lifecycle_objects(self._registered)):
            if callable(getattr(obj, "done", None)):
                try:
                    obj.done()  # type: ignore[attr-defined]
                except Exception:
                    log.failure("addon {addon} raised in done()", addon=reg_name)

    @property
    def plugin_names(self) -> Sequence[str]:
        return [name for name, _ in sorted(self._position.items(), key=lambda kv: kv[1])]
