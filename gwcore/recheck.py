"""Deprecated path: ``gwcore.recheck`` is now ``gwcore.runtime.recheck``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.runtime.recheck")
