"""Deprecated path: ``gwcore.site`` is now ``gwcore.runtime.site``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.runtime.site")
