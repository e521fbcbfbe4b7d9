"""Whether a linked service's ``CAFile``/``CertFile``/``KeyFile`` load, for check-config and /ready.

The upstream TLS strategy only loads them at a destination's first connection, so a
missing file or a key that does not match its certificate would otherwise show only
as failed connections. Both ``tgw check-config`` (a warning) and ``/ready`` (per
destination, in ``upstream_tls_files``) use :func:`tls_file_problems`. Results are
cached by the files' (size, mtime), so ``/ready`` reads and parses a file again only
when it changed.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

from gwcore.contract import pki
from gwcore.policy.model import Destination, UpstreamTLS

_CACHE_SIZE = 256
_cache: OrderedDict[tuple[object, ...], tuple[str, ...]] = OrderedDict()


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _why(e: Exception) -> str:
    return (e.strerror or str(e)) if isinstance(e, OSError) else str(e)


def _check(ca: Path | None, cert: Path | None, key: Path | None) -> tuple[str, ...]:
    problems: list[str] = []
    chain = None
    for name, path in (("CAFile", ca), ("CertFile", cert)):
        if path is None:
            continue
        try:
            loaded = pki.load_certificates(path.read_bytes())
        except (OSError, ValueError) as e:
            problems.append(f"{name} {path}: {_why(e)}")
            continue
        if name == "CertFile":
            chain = loaded
    if key is not None:
        try:
            private = pki.load_private_key(key.read_bytes())
        except (OSError, ValueError) as e:
            problems.append(f"KeyFile {key}: {_why(e)}")
        else:
            if chain is not None:
                try:
                    pki.leaf_from_parts(chain, private)
                except ValueError:
                    problems.append(f"KeyFile {key} does not match CertFile {cert}")
    return tuple(problems)


def tls_file_problems(tls: UpstreamTLS, base_dir: Path) -> tuple[str, ...]:
    """What is wrong with the files ``tls`` names (relative paths from ``base_dir``)."""

    def path(name: str) -> Path | None:
        return (base_dir / name) if name else None  # an absolute name stays absolute

    ca, cert, key = path(tls.ca_file), path(tls.cert_file), path(tls.key_file)
    files = (ca, cert, key)
    signature = tuple((str(p), _stat(p)) if p is not None else None for p in files)
    cached = _cache.get(signature)
    if cached is None:
        cached = _check(*files)
        _cache[signature] = cached
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(signature)
    return cached


def destination_file_problems(
    destinations: Iterable[Destination], base_dir: Path
) -> dict[str, list[str]]:
    """``{destination: [problems]}`` for destinations whose TLS files do not load."""
    report: dict[str, list[str]] = {}
    for dest in destinations:
        if dest.tls.ca_file or dest.tls.cert_file or dest.tls.key_file:
            problems = tls_file_problems(dest.tls, base_dir)
            if problems:
                report[str(dest.service)] = list(problems)
    return report
