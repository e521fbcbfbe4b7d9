"""Built-in plugins, installed as ``gwcore.plugins``.

They register through the same door as third-party ones (see gwcore.contract.plugin_host).
"""
