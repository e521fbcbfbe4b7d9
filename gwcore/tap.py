"""Deprecated path: ``gwcore.tap`` is now ``gwcore.runtime.tap``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.runtime.tap")
