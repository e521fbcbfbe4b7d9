"""Deprecated path: ``gwcore.plugin_host`` is now ``gwcore.contract.plugin_host``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.contract.plugin_host")
