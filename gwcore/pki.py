"""Deprecated path: ``gwcore.pki`` is now ``gwcore.contract.pki``.

Kept one release; importing it warns (see gwcore/_moved.py).
"""

from gwcore._moved import alias

alias(__name__, "gwcore.contract.pki")
