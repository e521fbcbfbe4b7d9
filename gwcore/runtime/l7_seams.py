"""The L7 policy functions the exchange calls, behind one seam.

Path normalisation (``gwcore.policy.http_path``) and the hop-by-hop rules
(``gwcore.policy.http_headers``) are their own sans-IO modules; until they are in the
tree this seam supplies a conservative stand-in: it normalises nothing and *refuses*
every path a normalisation would have to change (dot segments, percent-encoded
characters that decode to unreserved ones or to ``/``, backslashes, a target that is
not origin-form), so no spelling of a path can reach the upstream that a normalised
match would have judged differently.
"""

from __future__ import annotations

from collections.abc import Iterable

try:  # the real modules, once present
    from gwcore.policy.http_path import PathRejected, normalize_path
except ImportError:  # pragma: no cover - replaced when gwcore.policy.http_path lands
    from gwcore.policy.http_facts import PathNormalization

    class PathRejected(ValueError):  # type: ignore[no-redef]  # noqa: N818 (l7pol names it)
        """A request target that cannot be normalised safely."""

        def __init__(self, reason: str) -> None:
            super().__init__(reason)
            self.reason = reason

    def normalize_path(target: str, options: PathNormalization) -> str:  # type: ignore[misc]
        if not target.startswith("/"):
            raise PathRejected("not an origin-form target")
        path, _, _ = target.partition("?")
        if "\\" in path or "%" in path:
            raise PathRejected("percent-encoded or backslash in the path")
        segments = path.split("/")
        if any(s in (".", "..") for s in segments):
            raise PathRejected("dot segment in the path")
        if options.merge_slashes and "//" in path:
            raise PathRejected("empty segment in the path")
        return target


HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""RFC 9110 §7.6.1 (and the legacy ``Keep-Alive``/``Proxy-Connection``): never forwarded."""


def hop_by_hop(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    """Lower-case names of a message's hop-by-hop fields: the fixed set and every name
    its ``Connection`` field lists (RFC 9110 §7.6.1)."""
    names = set(HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == "connection":
            names.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(names)


__all__ = ["HOP_BY_HOP", "PathRejected", "hop_by_hop", "normalize_path"]
