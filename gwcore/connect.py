"""Deprecated path: ``gwcore.connect`` is now ``gwcore.cli.connect``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.cli.connect")
