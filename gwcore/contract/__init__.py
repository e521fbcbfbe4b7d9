"""The plugin contract: hook specifications, provider interfaces, event payloads, the plugin
host, metric helpers and certificate (PKI) helpers that plugins and the net layer share.

Sits just above ``gwcore.policy``; imports nothing from net, plugins, runtime or cli.
"""
