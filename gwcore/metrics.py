"""Deprecated path: ``gwcore.metrics`` is now ``gwcore.contract.metrics``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.contract.metrics")
