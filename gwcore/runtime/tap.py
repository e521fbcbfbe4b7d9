"""twistd wiring: ``twistd -n tgw --config FILE``.

Imported lazily by ``twisted/plugins/tgw.py``, so listing twistd plugins never
installs a reactor or imports the gateway.
"""

from __future__ import annotations

import sys

from twisted.application.service import IService
from twisted.python import usage

from gwcore.runtime.config_check import check_config


class Options(usage.Options):
    synopsis = "[--config FILE]"
    longdesc = (
        "Run the tgw terminating gateway. The config file is validated first (as by "
        "'tgw check-config'); any problem stops start-up with a message naming the file and key."
    )
    optParameters = [["config", "c", "etc/tgw.toml", "Path to the TOML configuration file."]]

    def postOptions(self) -> None:
        # Runs before twistd first imports the reactor: choose the gateway's own
        # (gwcore.net.reactor) unless `twistd --reactor NAME` already installed one.
        from gwcore.net.reactor import install_if_unset

        self["reactor"] = install_if_unset()


def makeService(options: Options) -> IService:
    from gwcore.runtime.service import GatewayService

    checked = check_config(options["config"])
    if not checked.ok:
        for problem in checked.problems:
            print(f"tgw: {problem}", file=sys.stderr)
        print(
            f"tgw: refusing to start: {len(checked.problems)} problem(s) in {options['config']}",
            file=sys.stderr,
        )
        raise SystemExit(1)
    assert checked.config is not None
    _log_reactor(options.get("reactor", "kept"))
    if checked.config.workers > 1:
        from gwcore.runtime.workers import WorkerSupervisor

        return WorkerSupervisor(options["config"], checked.config)
    return GatewayService(
        checked, config_path=options["config"], exit_on_failure=True, freeze_heap=True
    )


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
