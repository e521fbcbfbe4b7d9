"""twistd wiring (placeholder until the site runtime lands)."""

from twisted.python import usage


class Options(usage.Options):
    optParameters = [["config", "c", "etc/tgw.toml", "Path to the TOML config file."]]
