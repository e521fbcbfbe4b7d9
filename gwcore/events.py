"""Deprecated path: ``gwcore.events`` is now ``gwcore.contract.events``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.contract.events")
