"""tgw: a terminating gateway for a Consul-style service mesh."""

from gwcore import _moved

__version__ = "0.1.0"

_moved.install()  # old module paths (gwcore.site, gwcore.hookspecs...) for one release
