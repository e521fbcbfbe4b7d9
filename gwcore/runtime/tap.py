"""twistd wiring: ``twistd -n tgw [--config FILE]`` (``tgw run`` runs the same).

Imported lazily by ``twisted/plugins/tgw.py``, so listing twistd plugins never
installs a reactor or imports the gateway.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.python import usage

from gwcore import __version__
from gwcore.policy.config import GatewayConfig
from gwcore.runtime.config_check import check_config
from gwcore.runtime.config_discovery import ConfigNotFoundError, discover_config
from gwcore.runtime.logsetup import LEVELS


class Options(usage.Options):
    synopsis = "[--config FILE] [--log-level LEVEL]"
    longdesc = (
        "Run the tgw terminating gateway. The config file is --config, else $TGW_CONFIG, "
        "else etc/tgw.toml in the working directory. It is validated first (as by "
        "'tgw check-config'); any problem stops start-up with a message naming the file and key."
    )
    optParameters = [
        ["config", "c", None, "Path to the TOML configuration file."],
        ["log-level", None, None, "debug, info, warn, error or critical ([gateway] log_level)."],
    ]

    def postOptions(self) -> None:
        level = self["log-level"]
        if level is not None and level not in LEVELS:
            raise usage.UsageError(f"--log-level must be one of {', '.join(LEVELS)}, not {level!r}")
        try:
            self["config"] = discover_config(self["config"])
        except ConfigNotFoundError as e:
            raise usage.UsageError(str(e)) from None
        # Runs before twistd first imports the reactor: choose the gateway's own
        # (gwcore.net.reactor) unless `twistd --reactor NAME` already installed one.
        from gwcore.net.reactor import install_if_unset

        self["reactor"] = install_if_unset()


class _Root(MultiService):
    """The application's top service: when twistd attaches it, it also gives the
    application the gateway's log observer (level, format, no chatter; gwcore.runtime.logsetup),
    unless ``twistd --logger`` chose one."""

    def __init__(self, options: Options, config: GatewayConfig) -> None:
        super().__init__()
        self._options = options
        self._config = config

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        server = getattr(self._options, "parent", None)
        if server is None or server.get("logger") or not hasattr(parent, "setComponent"):
            return
        from twisted.logger import ILogObserver

        from gwcore.runtime.logsetup import gateway_observer

        level = self._options["log-level"] or self._config.log_level
        parent.setComponent(
            ILogObserver,
            gateway_observer(
                lambda: _text_observer(server),
                lambda: _log_stream(server),
                level,
                self._config.log_format,
            ),
        )


def _app_logger(server: Any) -> Any:
    try:
        from twisted.scripts._twistd_unix import UnixAppLogger as AppLogger
    except ImportError:  # pragma: no cover - not on POSIX
        from twisted.application.app import AppLogger  # type: ignore[assignment]
    return AppLogger(server)


def _text_observer(server: Any) -> Any:
    """twistd's observer, except that ``-n`` without ``--logfile`` writes to standard
    error: standard output is the access log's (``access_log = "-"``), and the two
    never share a stream unless asked to (``--logfile -``)."""
    if server.get("nodaemon") and not server.get("logfile"):
        from twisted.logger import textFileLogObserver

        return textFileLogObserver(_log_stream(server))
    return _app_logger(server)._getLogObserver()


def _log_stream(server: Any) -> Any:
    """Where the application log goes: standard error with ``-n`` (twistd would use
    standard output, which is the access log's), standard output for ``--logfile -``,
    else the ``--logfile`` (rotated as twistd rotates it)."""
    name = server.get("logfile") or ""
    if name == "-":
        return sys.stdout
    if server.get("nodaemon") and not name:
        return sys.stderr
    from twisted.python.logfile import LogFile

    return LogFile.fromFullPath(name or "twistd.log")


def makeService(options: Options) -> IService:
    from gwcore.runtime.service import GatewayService

    path = options["config"]
    checked = check_config(path)
    if not checked.ok:
        for problem in checked.problems:
            print(f"tgw: {problem}", file=sys.stderr)
        print(
            f"tgw: refusing to start: {len(checked.problems)} problem(s) in {path}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    assert checked.config is not None
    from gwcore.runtime.preflight import busy_ports

    busy = busy_ports(checked.config)
    if busy:
        for problem in busy:
            print(f"tgw: {problem}", file=sys.stderr)
        print(f"tgw: refusing to start: {len(busy)} port(s) in use ({path})", file=sys.stderr)
        raise SystemExit(1)
    _log_start(path, checked.config)
    _log_warnings(checked.warnings)
    _log_reactor(options.get("reactor", "kept"))
    root = _Root(options, checked.config)
    if checked.config.workers > 1:
        from gwcore.runtime.workers import WorkerSupervisor

        WorkerSupervisor(
            path, checked.config, log_level=options["log-level"] or ""
        ).setServiceParent(root)
    else:
        GatewayService(
            checked, config_path=path, exit_on_failure=True, freeze_heap=True
        ).setServiceParent(root)
    return root


def start_line(path: str, config: GatewayConfig) -> str:
    """The one line that says what is starting: version, config, sites and listeners."""
    from pathlib import Path

    sites = "; ".join(
        f"site {s.key} ({s.role} {s.name!r}, {s.datacenter}) listen {s.listen}"
        for s in config.sites
    )
    extra = f"; admin {config.admin}" if config.admin else ""
    workers = f"; {config.workers} workers" if config.workers > 1 else ""
    return f"tgw {__version__} starting from {Path(path).resolve()}: {sites}{extra}{workers}"


def _log_start(path: str, config: GatewayConfig) -> None:
    from twisted.logger import Logger

    Logger(namespace="tgw").info("{line}", line=start_line(path, config))


def _log_warnings(warnings: list[Any]) -> None:
    """check-config's cross-check warnings, once at start (they do not stop it)."""
    from twisted.logger import Logger

    for warning in warnings:
        Logger(namespace="tgw").warn("warning: {warning}", warning=str(warning))


def _log_reactor(choice: str) -> None:
    from twisted.internet import reactor
    from twisted.logger import Logger

    how = {
        "tgw": "the gateway's epoll reactor",
        "kept": "chosen by --reactor",
        "unavailable": "no epoll on this platform",
    }.get(choice, choice)
    Logger().info(
        "reactor: {cls} ({how})",
        cls=f"{type(reactor).__module__}.{type(reactor).__name__}",
        how=how,
    )
