"""Deprecated path: ``gwcore.service`` is now ``gwcore.runtime.service``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.runtime.service")
