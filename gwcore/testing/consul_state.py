"""The Consul double's state store: catalog and config entries with Consul's indexes.

Rules, as ``agent/consul/state/catalog.go`` and ``config_entry.go`` apply them
(reference §10):

1. One raft-like counter numbers every write. Each table (``nodes``, ``services``,
   ``checks``, ``config:<kind>``) has its own index, and so does each service
   (``service.<name>``) and each node (``node.<name>``): a write moves only the indexes
   of what it changed, to the write's number.
2. A register that changes nothing (same node fields, same service, same checks) moves
   no index at all.
3. A node change (a new ``Address``, ``TaggedAddresses`` or ``Meta``) moves ``nodes``,
   ``node.<name>`` and, as ``updateAllServiceIndexesOfNode`` does, the index of every
   service on that node; it does not move ``services`` or ``checks``, so
   ``/v1/catalog/services`` and ``/v1/health/state/any`` do not return.
4. A check change moves ``checks`` and its service's index (every service of the node
   for a node check).
5. ``/v1/health/service/<name>`` answers with ``service.<name>``; for a service that
   does not exist, with the index of the last removal of a service's last instance
   (``service_last_extinction``), never the ``services`` table.
6. Config entries read back carry ``CreateIndex``, ``ModifyIndex`` and ``Hash`` (a
   uint64 of the content), and a ``service-intentions`` source without a namespace or
   partition inherits the destination's (``normalize()``).
7. A config entry's kind has one index (``config:<kind>``): any write or delete of an
   entry of that kind moves it, so ``/v1/config/<kind>`` answers; a write that changes
   nothing moves nothing (rule 2). ``proxy-defaults`` is always named ``global`` (an
   empty name becomes it, any other is refused with Consul's error) and ``mesh`` always
   ``mesh`` (``ProxyConfigEntry.Normalize``, ``MeshConfigEntry.GetName``).
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

_INDEX_FIELDS = ("CreateIndex", "ModifyIndex")
# Kinds whose one entry (per partition) has a fixed name.
_FIXED_NAMES = {"proxy-defaults": "global", "mesh": "mesh"}


DEFAULT = "default"


class ConfigEntryError(ValueError):
    """A config entry Consul refuses to write (answered with a 500 and this text)."""


def content_hash(entry: dict[str, Any]) -> int:
    """A stable uint64 of an entry's content (indexes and ``Hash`` itself excluded)."""
    body = {k: v for k, v in entry.items() if k not in (*_INDEX_FIELDS, "Hash")}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _same(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    if old is None:
        return False
    strip = lambda d: {k: v for k, v in d.items() if k not in _INDEX_FIELDS}  # noqa: E731
    return strip(old) == strip(new)


class Indexes:
    """The raft counter and the per-table / per-object indexes (rule 1)."""

    def __init__(self, start: int = 10) -> None:
        self.raft = start
        self.values: dict[str, int] = {}

    def next(self) -> int:
        self.raft += 1
        return self.raft

    def touch(self, index: int, *keys: str) -> None:
        for key in keys:
            self.values[key] = index

    def get(self, *keys: str) -> int:
        return max([self.values.get(k, 0) for k in keys] + [1])

    def known(self, key: str) -> bool:
        return key in self.values

    def lower_to(self, index: int) -> None:
        """A restore from an older snapshot: no index is above ``index``."""
        self.raft = index
        self.values = {k: min(v, index) for k, v in self.values.items()}


class CatalogStore:
    """Nodes, service instances, checks and config entries of one datacenter."""

    def __init__(self, datacenter: str, indexes: Indexes) -> None:
        self.datacenter = datacenter
        self.indexes = indexes
        self.nodes: dict[str, dict[str, Any]] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.checks: dict[tuple[str, str], dict[str, Any]] = {}
        self.config: dict[tuple[str, str], dict[str, Any]] = {}

    # --- catalog writes ---------------------------------------------------------

    def register(self, body: dict[str, Any]) -> int:
        """``PUT /v1/catalog/register`` (rules 1-4); returns the write's raft index."""
        index = self.indexes.next()
        name = body["Node"]
        old_node = self.nodes.get(name)
        node = {
            "ID": body.get("ID", ""),
            "Node": name,
            "Address": body.get("Address", ""),
            "Datacenter": self.datacenter,
            "TaggedAddresses": body.get("TaggedAddresses"),
            "Meta": body.get("NodeMeta") or {},
            "CreateIndex": old_node["CreateIndex"] if old_node else index,
            "ModifyIndex": index,
        }
        if not _same(old_node, node):
            self.nodes[name] = node
            self.indexes.touch(index, "nodes", f"node.{name}")
            self.indexes.touch(index, *(f"service.{s}" for s in self.services_on(name)))
        svc = body.get("Service")
        if svc:
            self._put_service(name, svc, index)
        checks = ([body["Check"]] if body.get("Check") else []) + list(body.get("Checks") or [])
        for check in checks:
            self._put_check(name, check, index)
        return index

    def _put_service(self, node: str, svc: dict[str, Any], index: int) -> None:
        sid = svc.get("ID") or svc["Service"]
        old = self.services.get((node, sid))
        record = {
            "ID": sid,
            "Service": svc["Service"],
            "Tags": svc.get("Tags") or [],
            "Address": svc.get("Address", ""),
            **({"TaggedAddresses": svc["TaggedAddresses"]} if svc.get("TaggedAddresses") else {}),
            "Port": svc.get("Port", 0),
            "Meta": svc.get("Meta") or {},
            "Weights": svc.get("Weights") or {"Passing": 1, "Warning": 1},
            "EnableTagOverride": False,
            "Kind": svc.get("Kind", ""),
            # Enterprise fields: present when the registration names them (CE omits them).
            **{k: svc[k] for k in ("Namespace", "Partition") if svc.get(k)},
            **({"Connect": svc["Connect"]} if svc.get("Connect") else {}),
            **({"Proxy": svc["Proxy"]} if svc.get("Proxy") else {}),
            "CreateIndex": old["CreateIndex"] if old else index,
            "ModifyIndex": index,
        }
        if _same(old, record):
            return
        self.services[(node, sid)] = record
        names = {svc["Service"]} | ({old["Service"]} if old else set())
        self.indexes.touch(index, "services", *(f"service.{n}" for n in names))

    def _put_check(self, node: str, check: dict[str, Any], index: int) -> None:
        cid = check.get("CheckID") or check.get("Name")
        sid = check.get("ServiceID", "")
        service = self.services.get((node, sid))
        old = self.checks.get((node, cid))
        record = {
            "Node": node,
            "CheckID": cid,
            "Name": check.get("Name", cid),
            "Status": check.get("Status", "critical"),
            "Notes": "",
            "Output": check.get("Output", ""),
            "ServiceID": sid,
            "ServiceName": service["Service"] if service else "",
            "ServiceTags": [],
            "Type": check.get("Type", "tcp" if check.get("TCP") else ""),
            "CreateIndex": old["CreateIndex"] if old else index,
            "ModifyIndex": index,
        }
        if _same(old, record):
            return
        self.checks[(node, cid)] = record
        self.indexes.touch(
            index, "checks", *(f"service.{n}" for n in self.check_services(node, sid))
        )

    def services_on(self, node: str) -> list[str]:
        return sorted({s["Service"] for (n, _), s in self.services.items() if n == node})

    def check_services(self, node: str, service_id: str) -> list[str]:
        if not service_id:
            return self.services_on(node)
        svc = self.services.get((node, service_id))
        return [svc["Service"]] if svc else []

    def deregister(self, node: str, service_id: str | None = None) -> int:
        """``PUT /v1/catalog/deregister``: a service instance, or the whole node."""
        index = self.indexes.next()
        if service_id is not None:
            svc = self.services.pop((node, service_id), None)
            names = [svc["Service"]] if svc else []
            gone = [
                k for k, c in self.checks.items() if k[0] == node and c["ServiceID"] == service_id
            ]
        else:
            names = self.services_on(node)
            gone = [k for k in self.checks if k[0] == node]
            if self.nodes.pop(node, None) is not None:
                self.indexes.touch(index, "nodes", f"node.{node}")
            for key in [k for k in self.services if k[0] == node]:
                del self.services[key]
        for key in gone:
            del self.checks[key]
        if gone:
            self.indexes.touch(index, "checks")
        if names:
            self.indexes.touch(index, "services", *(f"service.{n}" for n in names))
            existing = {s["Service"] for s in self.services.values()}
            if any(n not in existing for n in names):
                self.indexes.touch(index, "service_last_extinction")
        return index

    def set_check(self, node: str, check_id: str, status: str, output: str = "") -> None:
        check = self.checks[(node, check_id)]
        if check["Status"] == status:
            return
        index = self.indexes.next()
        check.update(Status=status, Output=output, ModifyIndex=index)
        names = self.check_services(node, check["ServiceID"])
        self.indexes.touch(index, "checks", *(f"service.{n}" for n in names))

    # --- catalog reads ----------------------------------------------------------

    def service_index(self, name: str) -> int:
        """Rule 5: the index ``/v1/health/service/<name>`` answers with."""
        if any(s["Service"] == name for s in self.services.values()):
            return self.indexes.get(f"service.{name}")
        return self.indexes.get("service_last_extinction")

    def health_service(
        self, name: str, passing: bool, namespace: str = DEFAULT, partition: str = DEFAULT
    ) -> list[dict[str, Any]]:
        out = []
        for (node, sid), svc in sorted(self.services.items()):
            where = (svc.get("Namespace") or DEFAULT, svc.get("Partition") or DEFAULT)
            if svc["Service"] != name or where != (namespace, partition):
                continue
            checks = [
                {k: v for k, v in c.items() if k not in _INDEX_FIELDS}
                for (n, _), c in sorted(self.checks.items())
                if n == node and c["ServiceID"] in ("", sid)
            ]
            if passing and any(c["Status"] != "passing" for c in checks):
                continue
            service = {k: v for k, v in svc.items() if k not in ("Connect", "Proxy")}
            out.append({"Node": self.nodes[node], "Service": service, "Checks": checks})
        return out

    def catalog_services(self) -> dict[str, list[str]]:
        out: dict[str, set[str]] = {}
        for svc in self.services.values():
            out.setdefault(svc["Service"], set()).update(svc["Tags"])
        return {name: sorted(tags) for name, tags in sorted(out.items())}

    def health_state(self, state: str) -> list[dict[str, Any]]:
        return [c for _, c in sorted(self.checks.items()) if state == "any" or c["Status"] == state]

    # --- config entries ---------------------------------------------------------

    def put_config(self, entry: dict[str, Any]) -> int:
        """``PUT /v1/config``: stored normalised, with indexes and ``Hash`` (rule 6)."""
        stored = _normalise(copy.deepcopy(entry))
        kind = stored["Kind"]
        name = scoped(stored["Name"], stored.get("Namespace"), stored.get("Partition"))
        old = self.config.get((kind, name))
        stored["Hash"] = content_hash(stored)
        if old is not None and old.get("Hash") == stored["Hash"]:
            return old["ModifyIndex"]
        index = self.indexes.next()
        stored["CreateIndex"] = old["CreateIndex"] if old else index
        stored["ModifyIndex"] = index
        self.config[(kind, name)] = stored
        self.indexes.touch(index, f"config:{kind}")
        return index

    def delete_config(
        self, kind: str, name: str, namespace: str = DEFAULT, partition: str = DEFAULT
    ) -> None:
        if self.config.pop((kind, scoped(name, namespace, partition)), None) is not None:
            self.indexes.touch(self.indexes.next(), f"config:{kind}")

    def entry(
        self, kind: str, name: str, namespace: str = DEFAULT, partition: str = DEFAULT
    ) -> dict[str, Any] | None:
        """``GET /v1/config/<kind>/<name>?ns=&partition=``: one entry, or None."""
        return self.config.get((kind, scoped(name, namespace, partition)))

    def entries(
        self, kind: str, namespace: str = DEFAULT, partition: str = DEFAULT
    ) -> list[dict[str, Any]]:
        """``GET /v1/config/<kind>?ns=&partition=``: the kind's entries of one namespace."""
        return [
            e
            for (k, _), e in sorted(self.config.items())
            if k == kind
            and (e.get("Namespace") or DEFAULT, e.get("Partition") or DEFAULT)
            == (namespace, partition)
        ]


def scoped(name: str, namespace: str | None, partition: str | None) -> str:
    """An entry's key: its name, prefixed by partition/namespace when not default."""
    ns, ap = namespace or DEFAULT, partition or DEFAULT
    return name if (ns, ap) == (DEFAULT, DEFAULT) else f"{ap}/{ns}/{name}"


def _normalise(entry: dict[str, Any]) -> dict[str, Any]:
    """Consul's ``normalize()`` for what the double stores (rule 6)."""
    entry.pop("Hash", None)
    fixed = _FIXED_NAMES.get(entry.get("Kind", ""))
    if fixed is not None:
        name = entry.get("Name") or ""
        if name not in ("", fixed):
            raise ConfigEntryError(f'invalid name ("{name}"), only "{fixed}" is supported')
        entry["Name"] = fixed
    for key in _INDEX_FIELDS:
        entry.pop(key, None)
    if entry.get("Kind") == "service-intentions":
        ns, partition = entry.get("Namespace"), entry.get("Partition")
        for source in entry.get("Sources") or []:
            if ns and not source.get("Namespace") and not source.get("Peer"):
                source["Namespace"] = ns
            if partition and not source.get("Partition") and not source.get("Peer"):
                source["Partition"] = partition
    return entry
