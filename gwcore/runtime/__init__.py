"""The run time: a site and its per-connection steps, the mesh site, the live re-check,
the gateway service, worker processes and the twistd wiring (tap)."""
