"""Deprecated path: ``gwcore.workers`` is now ``gwcore.runtime.workers``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.runtime.workers")
