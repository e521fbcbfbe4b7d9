"""Deprecated path: ``gwcore.testing_consul`` is now ``gwcore.testing.consul``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.testing.consul")
