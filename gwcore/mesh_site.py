"""Deprecated path: ``gwcore.mesh_site`` is now ``gwcore.runtime.mesh_site``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.runtime.mesh_site")
