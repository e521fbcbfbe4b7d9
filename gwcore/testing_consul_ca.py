"""Deprecated path: ``gwcore.testing_consul_ca`` is now ``gwcore.testing.consul_ca``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.testing.consul_ca")
