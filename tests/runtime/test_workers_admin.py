"""With ``workers = 2`` the admin endpoint answers for both workers (the real twistd):
each worker serves its own admin resource on a private socket and worker 0 asks them
all (gwcore.net.admin_workers)."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from gwcore.net.admin_workers import merge_config, merge_explain, merge_ready, merge_sites
from tests.harness import sni_for
from tests.integration.test_twistd import (
    Ports,
    Program,
    http_get,
    run,
    spawn,  # noqa: F401  (the fixture)
    start_gateway,
    wait_for,
    write_catalog,
    write_config,
)
from tests.runtime.test_workers import two_workers

pytestmark = pytest.mark.integration


def get_json(port: int, path: str) -> tuple[int, object]:
    answer = http_get(port, path)
    assert answer is not None, path
    return answer[0], json.loads(answer[1])


def test_admin_endpoints_answer_for_every_worker(
    tmp_path: Path,
    spawn: Callable[..., Program],  # noqa: F811  (the imported fixture)
) -> None:
    """/ready, /routes, /certs, /config, /explain and ``tgw explain`` carry both
    workers' answers; ?worker=1 is worker 1's own; a worker that stops answering
    makes /ready 503."""
    ports = Ports.pick()
    write_catalog(tmp_path, {"billing": ports.sample})
    config = write_config(tmp_path, ports)
    config.write_text(config.read_text().replace("[gateway]\n", "[gateway]\nworkers = 2\n", 1))
    twistd = start_gateway(spawn, config, ports)
    wait_for(lambda: "2 workers serving" in twistd.output(), "both workers serving", twistd)
    pids = wait_for(lambda: two_workers(twistd), "2 workers", twistd)

    code, ready = get_json(ports.admin, "/ready")
    assert code == 200 and ready["ready"] is True, ready
    assert set(ready["workers"]) == {"0", "1"}
    assert all(w["ready"] and "main" in w["sites"] for w in ready["workers"].values())
    code, routes = get_json(ports.admin, "/routes")
    assert code == 200 and sorted(s["worker"] for s in routes) == [0, 1]
    assert all(sni_for("billing") in {r["sni"] for r in s["routes"]} for s in routes)
    code, certs = get_json(ports.admin, "/certs")
    assert code == 200 and sorted(s["worker"] for s in certs) == [0, 1]
    code, conf = get_json(ports.admin, "/config")
    assert code == 200 and conf["gateway"]["workers"] == 2
    code, explained = get_json(ports.admin, "/explain?source=web&destination=billing")
    assert code == 200, explained
    assert {w["verdict"] for w in explained["workers"].values()} == {"allow"}
    assert set(explained["workers"]) == {"0", "1"}
    code, out, err = run(
        "tgw", "explain", "--config", str(config), "--source", "web", "--destination", "billing",
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 0 and "workers: 0: allow, 1: allow" in out, (out, err)
    code, own = get_json(ports.admin, "/ready?worker=1")
    assert code == 200 and "workers" not in own and own["ready"] is True
    assert get_json(ports.admin, "/ready?worker=7")[0] == 404

    os.kill(pids[1], signal.SIGSTOP)  # worker 1 stops answering
    try:
        code, ready = get_json(ports.admin, "/ready")
    finally:
        os.kill(pids[1], signal.SIGCONT)
    assert code == 503 and "did not answer" in ready["workers"]["1"]["error"], ready
    assert ready["workers"]["0"]["ready"] is True


def test_merges_say_which_worker_disagrees_or_is_missing():
    """Pure merge rules: /ready needs every worker; /config differing between workers
    is a 409 listing each; a missing worker is a 502 naming it."""
    ok = {"ready": True, "draining": False, "sites": {"main": {}}}
    code, body = merge_ready([(200, ok), (503, {**ok, "ready": False, "draining": True})])
    assert code == 503 and body["draining"] is True and body["sites"] == {"main": {}}
    assert merge_ready([(200, ok), (200, ok)])[0] == 200
    assert merge_config([(200, {"a": 1}), (200, {"a": 1})]) == (200, {"a": 1})
    code, body = merge_config([(200, {"a": 1}), (200, {"a": 2})])
    assert code == 409 and body["workers"] == {"0": {"a": 1}, "1": {"a": 2}}
    code, body = merge_sites([(200, [{"site": "main"}]), (0, "worker 1 did not answer")])
    assert code == 502 and body["workers"] == {"1": "worker 1 did not answer"}
    assert merge_explain([(400, {"error": "bad"}), (400, {"error": "bad"})]) == (
        400,
        {"error": "bad"},
    )
