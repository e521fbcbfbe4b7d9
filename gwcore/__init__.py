"""tgw: a terminating gateway for a Consul-style service mesh."""

__version__ = "0.1.0"
