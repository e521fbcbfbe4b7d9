"""Drop-in addon: add the TLS version and cipher of each connection to its access-log record.

Enable it by naming it in a site's stack (``plugins = [..., "tls_details"]``) with
this directory in ``[gateway] plugin_paths``.
"""


class TLSDetails:
    name = "tls_details"

    def tgw_handshake_done(self, event):
        event.conn.annotate("tls_version", event.tls_version)
        event.conn.annotate("cipher", event.cipher)


addons = [TLSDetails()]
