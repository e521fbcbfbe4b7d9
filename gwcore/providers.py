"""Deprecated path: ``gwcore.providers`` is now ``gwcore.contract.providers``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.contract.providers")
