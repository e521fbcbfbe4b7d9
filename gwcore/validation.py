"""Deprecated path: ``gwcore.validation`` is now ``gwcore.runtime.config_check``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.runtime.config_check")
