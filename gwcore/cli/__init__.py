"""The ``tgw`` command line: ``run``/``check-config``/``explain``/``connect``.

``gwcore.cli:main`` is the console-script entry point.
"""

from gwcore.cli.commands import main

__all__ = ["main"]
