"""The ``tgw`` command line: ``run``/``check-config``/``explain``/``connect``.

``gwcore.cli:main`` is the console-script entry point; ``main`` and ``build_parser`` keep
the import path they had when the command line was one module.
"""

from gwcore.cli.commands import build_parser, main

__all__ = ["build_parser", "main"]
