"""Where the config file is: ``--config``, else ``TGW_CONFIG``, else ``etc/tgw.toml``.

Every subcommand (``tgw run``, ``check-config``, ``connect``, ``explain``) and
``twistd tgw`` find the config the same way. The default is relative to the working
directory, so a missing file gets a hint naming both ways to point at another one.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CONFIG = "etc/tgw.toml"
ENV_VAR = "TGW_CONFIG"


class ConfigNotFoundError(Exception):
    """No config file where the discovery rules looked (the message says where and why)."""


def discover_config(explicit: str | None, environ: dict[str, str] | None = None) -> str:
    """The config path to use: ``explicit`` if given, else ``$TGW_CONFIG``, else the default.

    An explicit path is returned as is (its own reading reports a missing file, naming
    it). A path found through the environment or the default must exist; if not,
    :class:`ConfigNotFoundError` says which rule chose it and how to choose another.
    """
    if explicit:
        return explicit
    env = os.environ if environ is None else environ
    chosen = env.get(ENV_VAR, "")
    if chosen:
        if not Path(chosen).is_file():
            raise ConfigNotFoundError(
                f"{ENV_VAR}={chosen}: no such file; pass --config FILE or fix {ENV_VAR}"
            )
        return chosen
    if not Path(DEFAULT_CONFIG).is_file():
        raise ConfigNotFoundError(
            f"no config file given and {DEFAULT_CONFIG} does not exist in {Path.cwd()}; "
            f"pass --config FILE or set {ENV_VAR}=FILE"
        )
    return DEFAULT_CONFIG
