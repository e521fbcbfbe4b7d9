"""Consul config entries written in HCL (``consul config write x.hcl``), read into the
same JSON value a ``.json`` catalog file holds (sans-IO).

Parsing is python-hcl2's (an HCL2 parser, the registry's maintained one), then, for
what HCL2 refuses, pyhcl's (HCL v1). Consul's ``consul config write`` uses HCL v1, which
also takes a block inside an object inside a list -- the form of Consul's own L7
intention examples (``Permissions = [{ Action = "allow" HTTP { PathPrefix = "/" } }]``).
python-hcl2 stays first because pyhcl flattens repeated top-level blocks
(``Services { ... } Services { ... }``) into pieces; a file neither takes is reported
with python-hcl2's error (file and line). Consul reads
HCL files with its own decoder (command/config/write: ``hcl.Decode`` then
``lib.TranslateKeys`` and ``PatchSliceOfMaps``); the result here is the same value:

- attributes (``Kind = "service-resolver"``) and objects (``Subsets = { v1 = {...} }``)
  map one to one;
- a block (``LoadBalancer { Policy = "maglev" }``) is the object it holds; a block
  repeated, or one of a list field (``Services``, ``Sources``, ``Permissions``,
  ``HashPolicies``, ``Targets``, ``Header``), is a list of objects — as Consul's
  ``PatchSliceOfMaps`` makes of HCL's list-of-maps;
- snake_case keys stay as written: the shape readers accept them, as Consul does.

A file holds one config entry, as ``consul config write`` takes it. A file that does
not parse is a problem naming the file and the line; an entry that parses is then
validated exactly as a JSON one, its problems naming the file and the key.
"""

from __future__ import annotations

import json
from typing import Any

from gwcore.policy.consul_decode import ShapeProblem

LIST_FIELDS = frozenset(
    {"services", "sources", "permissions", "hashpolicies", "targets", "header", "methods"}
)
_BLOCK = "__is_block__"


def _norm(key: str) -> str:
    return key.replace("_", "").lower()


def _plain(value: Any, key: str = "") -> Any:
    """python-hcl2's output made plain JSON: block markers gone, single blocks unwrapped."""
    if isinstance(value, dict):
        return {k: _plain(v, k) for k, v in value.items() if k != _BLOCK}
    if isinstance(value, list):
        items = [_plain(v) for v in value]
        blocks = bool(value) and all(isinstance(v, dict) and v.get(_BLOCK) for v in value)
        if blocks and len(items) == 1 and _norm(key) not in LIST_FIELDS:
            return items[0]
        return items
    return value


def _as_lists(value: Any, key: str = "") -> Any:
    """pyhcl's output with Consul's ``PatchSliceOfMaps``: a single block given for a
    list field (``HTTP { Header { ... } }``) is a list of one object."""
    if isinstance(value, dict):
        patched = {k: _as_lists(v, k) for k, v in value.items()}
        return [patched] if _norm(key) in LIST_FIELDS else patched
    if isinstance(value, list):
        return [_as_lists(v) for v in value]
    return value


def _hcl_v1(text: str) -> Any:
    """``text`` read by pyhcl (HCL v1, as ``consul config write``), or ``None``."""
    import hcl

    try:
        value = hcl.loads(text)
    except Exception:  # ply's ValueError and friends: python-hcl2's error is reported
        return None
    return _as_lists(value) if isinstance(value, dict) else None


def decode_hcl(origin: str, data: bytes) -> tuple[bytes | None, ShapeProblem | None]:
    """The JSON bytes of an HCL config entry, or ``None`` and why (naming file and line)."""
    import hcl2  # imported when an .hcl file is read: its grammar takes a while to build
    from hcl2 import SerializationOptions

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, ShapeProblem(origin, "(file)", f"not UTF-8 text ({e.reason} at {e.start})")
    options = SerializationOptions(
        with_comments=False, strip_string_quotes=True, preserve_heredocs=False
    )
    try:
        value = hcl2.loads(text, serialization_options=options)
    except Exception as e:  # lark's errors (UnexpectedToken, ...) carry line and column
        v1 = _hcl_v1(text)
        if v1 is not None:
            return json.dumps(v1).encode(), None
        line = getattr(e, "line", None)
        where = f"line {line}" if isinstance(line, int) and line > 0 else "(file)"
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, ShapeProblem(origin, where, f"not valid HCL: {first}")
    return json.dumps(_plain(value)).encode(), None
