"""What one OPA decision costs, embedded, with and without the decision cache.

Run: ``.venv/bin/python -m bench.opa_eval`` (from the repo root). Prints microseconds per
``OpaEngine.authorize`` call (a FakeSite, so no network or reactor), split into the
parts that matter: building the input document, regopy's ``set_input``, and the
compiled query. Not a test: timings are machine-dependent, nothing is asserted.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

from gwcore.plugins import opa
from gwcore.policy.opa_input import build_input
from gwcore.testing import FakeSite, site_config
from tests.plugins.test_opa import ALLOW_LIST, ENTRY, authz_request

N = 5000


def per_call(fn, n: int = N) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "policy").mkdir()
        (base / "policy" / "authz.rego").write_text(ALLOW_LIST)
        results = {}
        for ttl in ("0s", "60s"):
            section = {"policies": ["policy"], "path": "tgw/authz/allow", "cache_ttl": ttl}
            site = FakeSite(site_config(base, [ENTRY], {ENTRY: section}), base / "state")
            engine = opa.tgw_authorization_engines(site=site)[0]
            engine.start(lambda: None)
            request = authz_request("web", meta={"team": "payments", "tier": "1"})
            engine.authorize(request)  # warm
            results[ttl] = per_call(lambda e=engine, r=request: e.authorize(r))
        # New connections differ at least in the client port, which is in the input
        # document and so in the cache key: each one misses.
        ports = iter(range(1024, 1024 + N))
        results["new"] = per_call(
            lambda e=engine, r=request: e.authorize(replace(r, client_port=next(ports)))
        )
        policy = engine._policy
        document = build_input(
            site="main",
            gateway_name="gw",
            datacenter="dc1",
            trust_domain="td",
            source=request.source,
            destination=request.destination,
            sni=request.sni,
            client_address="127.0.0.1",
            client_port=1,
            gateway_address="127.0.0.1",
            gateway_port=2,
        )
        interp, bundle = policy._interpreter, policy._bundle
        build_us = per_call(
            lambda: build_input(
                site="main",
                gateway_name="gw",
                datacenter="dc1",
                trust_domain="td",
                source=request.source,
                destination=request.destination,
                sni=request.sni,
                client_address="127.0.0.1",
                client_port=1,
                gateway_address="127.0.0.1",
                gateway_port=2,
            )
        )
        set_us = per_call(lambda: interp.set_input(document))
        query_us = per_call(lambda: interp.query_bundle_entrypoint(bundle, "tgw/authz/allow"))
        raw_query_us = per_call(lambda: interp.query("data.tgw.authz.allow"), 500)
    print(f"authorize, cache off (one evaluation): {results['0s']:8.1f} us")
    print(f"authorize, cache hit (same connection): {results['60s']:7.1f} us")
    print(f"authorize, cache on, new connections:  {results['new']:8.1f} us (all misses)")
    print(f"  build_input:                         {build_us:8.1f} us")
    print(f"  regopy set_input:                    {set_us:8.1f} us")
    print(f"  query_bundle_entrypoint (compiled):  {query_us:8.1f} us")
    print(f"  (Interpreter.query, recompiles:      {raw_query_us:8.1f} us)")


if __name__ == "__main__":
    main()
