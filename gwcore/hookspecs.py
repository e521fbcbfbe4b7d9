"""Deprecated path: ``gwcore.hookspecs`` is now ``gwcore.contract.hookspecs``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.contract.hookspecs")
