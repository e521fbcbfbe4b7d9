"""The twistd service: sites, the admin endpoint, the sample service, reload.

``SIGHUP`` re-reads the config file. A config with any problem is rejected and the
running one stays (each problem is logged, ``tgw_config_reloads_total{result=
"rejected"}`` rises). A good one is applied site by site: an unchanged site is
left alone; a changed site's replacement is started and the old one stops
accepting and drains its connections in the background. A live connection is
cut by a reload only when the new config denies it (``gwcore.runtime.recheck``: changed
default policy, engines, routes or trust roots; a removed site); changes that
cannot deny (listener tuning, timeouts) let it drain. The access log is reopened
(for log rotation). A replacement on the same endpoint adopts the old site's
listening socket before the old site stops accepting, so no client arriving during
a reload is refused or reset.
"""

from __future__ import annotations

import gc
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from gwcore.contract.metrics import GatewayMetrics
from gwcore.net.accesslog import AccessLog
from gwcore.net.admin import AdminResource
from gwcore.net.admin_guard import AdminGuard, admin_token, config_secrets
from gwcore.net.admin_workers import fan_out, listen_private
from gwcore.net.sample import QuietSite, sample_site
from gwcore.net.systemd import notify, reloading_lines
from gwcore.policy.admission import Admission
from gwcore.policy.config import SiteConfig
from gwcore.policy.redact import redact
from gwcore.policy.registration import ready_url
from gwcore.runtime.config_check import CheckedConfig, check_config
from gwcore.runtime.drain import drain_sites
from gwcore.runtime.mesh_site import MeshSite
from gwcore.runtime.reload_diff import describe_changes
from gwcore.runtime.saturation import SaturationSampler
from gwcore.runtime.site import Site
from gwcore.runtime.worker_role import WorkerRole

log = Logger(namespace="tgw")


def site_class(config: SiteConfig) -> type[Site]:
    """The runtime class for a site's role: ``mesh`` sites pass bytes through untouched."""
    return MeshSite if config.role == "mesh" else Site


class GatewayService(Service):
    """Owns every site of one process (see the module docstring for reload)."""

    def __init__(
        self,
        checked: CheckedConfig,
        config_path: str | Path,
        reactor: Any = None,
        exit_on_failure: bool = False,
        worker: WorkerRole | None = None,
        freeze_heap: bool = False,
    ) -> None:
        assert checked.config is not None
        self.worker = worker
        self.checked = checked
        self.config = checked.config
        self.config_path = Path(config_path)
        self._reactor = reactor
        self.metrics = GatewayMetrics()
        # Process-wide limits; [gateway] changes need a restart, so this lives as long.
        self.admission = Admission(self.config.max_connections, self.config.max_handshakes)
        self.access_log: AccessLog | None = None
        self.sites: dict[str, Site] = {}
        self._ports: list[Any] = []
        self.started: Deferred[None] | None = None
        self._reloading = False
        self._exit_on_failure = exit_on_failure
        self._retiring: set[Site] = set()
        self.failure: Any = None
        self.draining = False
        self.ready_url = ready_url(checked.config.admin)
        """The admin endpoint's ``/ready`` (an HTTP health check's target), if known."""
        """Set on stop: ``/ready`` answers 503 while the sites drain (gwcore.runtime.drain)."""
        # The process's own service (twistd, a worker) exempts what start-up built from
        # the cyclic garbage collector: a full collection otherwise walks every module
        # and route object (~15 ms) in the middle of the data path.
        self._freeze_heap = freeze_heap

    @property
    def reactor(self) -> Any:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def startService(self) -> None:
        super().startService()
        self.started = Deferred.fromCoroutine(self._start())
        self.started.addErrback(self._start_failed)

    async def _start(self) -> None:
        config = self.config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.access_log = AccessLog(
            config.access_log, config.base_dir, self.metrics.access_log_dropped.inc
        )
        self.saturation = SaturationSampler(self.metrics, self.reactor)
        self.saturation.start()
        shared = self.worker is None or self.worker.index == 0  # one admin, one sample
        if self.worker is not None and self.worker.count > 1:
            await self._listen_worker_admin(self.worker)
        if config.admin and shared:
            guard = AdminGuard(admin_token(config), config.admin_hosts, self.metrics)
            resource = AdminResource(self.metrics, lambda: list(self.sites.values()), self, guard)
            if self.worker is not None and self.worker.count > 1:
                fan_out(resource, self.reactor, self.worker.count, self.worker.admin_socket)
            port = await serverFromString(self.reactor, config.admin).listen(QuietSite(resource))
            self._ports.append(port)
            host = port.getHost()
            self.ready_url = ready_url(config.admin, host)
            where = f"http://{host.host}:{host.port}/" if hasattr(host, "port") else host.name
            log.info(
                "admin endpoint on {where}{auth}",
                where=where if isinstance(where, str) else where.decode(errors="replace"),
                auth=" (bearer token required)" if guard.requires_token else "",
            )
        if config.sample_service and shared:
            port = await serverFromString(self.reactor, config.sample_service.listen).listen(
                sample_site(config.sample_service.body)
            )
            self._ports.append(port)
            log.info(
                "sample service on {host}:{port}",
                host=port.getHost().host,
                port=port.getHost().port,
            )
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(self.reload))
        started: dict[str, Site] = {}
        for site_config in config.sites:
            site = site_class(site_config)(
                site_config,
                config,
                self.reactor,
                self.metrics,
                self.access_log,
                self.checked.stacks[site_config.key],
                admission=self.admission,
            )
            site.ready_url = self.ready_url
            if self.worker is not None:
                site.inherited_listener = self.worker.listener_for(site.config.listen)
                site.acceptor.shared_listener = self.worker.shares(site.config.listen)
            await site.start()
            started[site_config.key] = site
        # Only now do the sites count for /ready (and for reload): all or nothing.
        self.sites = started
        self._freeze()
        if self.worker is None:  # the supervisor speaks for workers (gwcore.runtime.workers)
            notify("READY=1", f"STATUS=serving {len(started)} site(s)")

    async def _listen_worker_admin(self, worker: WorkerRole) -> None:
        """This worker's own admin resource on its private socket (for worker 0's
        admin endpoint, which answers for every worker: gwcore.net.admin_workers)."""
        # No guard: the socket is in the supervisor's 0700 directory, reached by worker 0 only.
        own = AdminResource(self.metrics, lambda: list(self.sites.values()), self)
        path = worker.admin_socket(worker.index)
        self._ports.append(await listen_private(self.reactor, own, path))

    def _freeze(self) -> None:
        """``gc.freeze()`` what is alive now, unless retiring sites are still draining
        (they would never be collected once they end)."""
        if not self._freeze_heap or self._retiring:
            return
        gc.collect()
        gc.freeze()
        log.info("heap frozen: {n} start-up objects exempt from cyclic GC", n=gc.get_freeze_count())

    def _retired(self, site: Site) -> None:
        self._retiring.discard(site)
        self._freeze()

    @property
    def raw(self) -> Any:
        """The config as loaded, every secret redacted (served at ``/config``)."""
        declared: dict[str, frozenset[str]] = {}
        for stack in self.checked.stacks.values():
            declared.update(stack.secret_keys())
        return redact(self.config.raw, declared, config_secrets(self.config))

    def _start_failed(self, failure: Any) -> None:
        self.failure = failure
        message = f"{type(failure.value).__name__}: {failure.getErrorMessage()}"
        log.failure("tgw could not start: {message}", failure, message=message)
        if not self._exit_on_failure:
            return
        # twistd has redirected sys.stderr into its log; the operator's terminal is fd 2.
        os.write(2, f"tgw: could not start: {message}\n".encode())

        def leave() -> None:
            sys.stderr.flush()
            os._exit(1)

        self.reactor.addSystemEventTrigger("after", "shutdown", leave)
        self.reactor.callLater(0, self.reactor.stop)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if getattr(self, "saturation", None) is not None:
            self.saturation.stop()
        if self.worker is None:
            notify("STOPPING=1", "STATUS=draining")
        # Withdraw, keep accepting for drain_delay, drain; the admin endpoint (/ready
        # answering 503) closes last (gwcore.runtime.drain).
        await drain_sites(self)
        for port in self._ports:
            await maybeDeferred(port.stopListening)
        if self.access_log is not None:
            self.access_log.close()
        log.info("tgw stopped")

    async def _drain(self, site: Site) -> None:
        """Stop one site, saying how many connections it drains and how that ended."""
        open_now = len(site.active)
        if not open_now:
            await site.stop()
            return
        timeout = site.config.drain_timeout
        log.info(
            "site {site}: draining {n} connection(s) (up to {timeout:g} s)",
            site=site.config.key,
            n=open_now,
            timeout=timeout,
        )
        began = self.reactor.seconds()
        await site.stop()
        log.info(
            "site {site}: drained in {elapsed:.1f} s",
            site=site.config.key,
            elapsed=self.reactor.seconds() - began,
        )

    # --- reload -------------------------------------------------------------------

    def reload(self) -> Deferred[None]:
        """Re-read the config file and apply it if valid (see the module docstring)."""
        if self.worker is None:
            notify(*reloading_lines())  # systemd: reloading until READY=1 again
        d = Deferred.fromCoroutine(self._reload())
        d.addErrback(lambda f: log.failure("reload failed; the running config stays", f))
        if self.worker is None:
            d.addBoth(lambda r: (notify("READY=1", "STATUS=serving"), r)[1])
        return d

    async def _roll_back(
        self, fresh: dict[str, Site], paused: list[Site], error: Exception
    ) -> None:
        """A replacement site failed to start: undo the reload, keep serving the old config."""
        log.error(
            "reload failed, the running config stays: {error}",
            error=f"{type(error).__name__}: {error}",
        )
        for site in fresh.values():
            try:
                await site.stop(drain_timeout=0)
            except Exception:
                log.failure("stopping a half-started site failed")
        for site in paused:
            try:
                await site.resume_listening()
            except Exception:
                log.failure("site {site} could not listen again", site=site.name)
        self.metrics.reloads.labels(result="failed").inc()

    async def _reload(self) -> None:
        if self.started is None or not self.started.called:
            log.warn("reload ignored: still starting")
            return
        if self._reloading:
            log.warn("reload already in progress; ignoring this one")
            return
        self._reloading = True
        try:
            checked = check_config(self.config_path)
            if not checked.ok or checked.config is None:
                for problem in checked.problems:
                    log.error("reload rejected: {problem}", problem=str(problem))
                self.metrics.reloads.labels(result="rejected").inc()
                return
            new = checked.config
            restart_only = (
                *("admin", "admin_token", "admin_token_file", "admin_hosts"),
                *("sample_service", "access_log", "state_dir", "log_level", "log_format"),
            )
            if any(getattr(new, k) != getattr(self.config, k) for k in restart_only):
                log.warn(
                    "[gateway] and [sample_service] changes need a restart; applying sites only"
                )
            old_sites = dict(self.sites)
            wanted = {s.key: s for s in new.sites}
            paused = []
            handover: dict[str, Site] = {}
            for key, site in old_sites.items():
                if _hands_over(site, wanted.get(key), self.worker is None):
                    # Same endpoint: the replacement adopts this very listening socket
                    # (same accept queue) before this site stops accepting, so no
                    # client is refused or reset during the reload.
                    handover[key] = site
                    continue
                if (key not in wanted or wanted[key] != site.config) and site.port is not None:
                    # Free the endpoint for the replacement; connections stay.
                    await maybeDeferred(site.port.stopListening)
                    site.listening = False
                    paused.append(site)
            fresh: dict[str, Site] = {}
            try:
                for key, site_config in wanted.items():
                    old = old_sites.get(key)
                    if old is not None and old.config == site_config:
                        continue
                    site = site_class(site_config)(
                        site_config,
                        new,
                        self.reactor,
                        self.metrics,
                        self.access_log,
                        checked.stacks[key],
                        admission=self.admission,
                    )
                    site.ready_url = self.ready_url
                    if self.worker is not None:
                        site.inherited_listener = self.worker.listener_for(site.config.listen)
                        site.acceptor.shared_listener = self.worker.shares(site.config.listen)
                    elif key in handover:
                        site.inherited_listener = handover[key].port.hand_over()
                    fresh[key] = site
                    await site.start()
                    if key in handover:  # the old descriptor closes with the old site
                        site.inherited_listener = None
            except Exception as e:
                await self._roll_back(fresh, paused, e)
                return
            for key, site in fresh.items():
                self.sites[key] = site
                log.info("site {site} reloaded", site=key)
            for key, old in old_sites.items():
                # (A removed site is still in self.sites: it was never replaced.)
                if self.sites.get(key) is not old or key not in wanted:
                    # Policy that tightened closes what it now denies (gwcore.runtime.recheck) ...
                    if key in wanted:
                        self.sites[key].recheck.adopt(old)
                    else:
                        old.recheck.retire("its site was removed by a reload")
                    # ... and the rest is retired without a deadline.
                    self._retiring.add(old)
                    retired = Deferred.fromCoroutine(old.stop(drain_timeout=math.inf))
                    retired.addBoth(lambda _, site=old: self._retired(site))
                    if key not in wanted:
                        del self.sites[key]
            for change in describe_changes(self.checked, checked):
                log.info("reload: {change}", change=change)
            for warning in checked.warnings:
                log.warn("reload: warning: {warning}", warning=str(warning))
            self.config = new
            self.checked = checked
            if self.access_log is not None:
                self.access_log.reopen()
            self.metrics.reloads.labels(result="applied").inc()
            log.info("configuration reloaded from {path}", path=str(self.config_path))
            if self._freeze_heap:
                gc.unfreeze()  # the old sites' objects must be collectable once they end
                self._freeze()
        finally:
            self._reloading = False


def _hands_over(site: Site, replacement: SiteConfig | None, single_process: bool) -> bool:
    """Whether ``site``'s replacement takes over its listening socket (a reload)."""
    return (
        single_process
        and replacement is not None
        and replacement != site.config
        and replacement.listen == site.config.listen
        and hasattr(site.port, "hand_over")
    )
