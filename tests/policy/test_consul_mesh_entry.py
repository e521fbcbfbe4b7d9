"""The ``mesh`` config entry's HTTP options (``HTTP.Incoming.RequestNormalization``,
``HTTP.SanitizeXForwardedClientCert``) are read into ``MeshHttp`` as Consul validates
them; a bad value names the file and the key and the entry is left out (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gwcore.plugins.file_catalog import decode_catalog_file
from gwcore.policy.consul_mesh_entry import describe_mesh_http
from gwcore.policy.consul_shapes import build_mesh_http, parse_documents
from gwcore.policy.http_facts import DEFAULT_MESH_HTTP, MeshHttp, PathNormalization

DUMP = Path(__file__).resolve().parents[1] / "data" / "consul-config-read"
FULL = {
    "Kind": "mesh",
    "Name": "mesh",
    "TransparentProxy": {"MeshDestinationsOnly": True},
    "TLS": {"Incoming": {"TLSMinVersion": "TLSv1_2"}},
    "Peering": {"PeerThroughMeshGateways": True},
    "Meta": {"owner": "platform"},
    "HTTP": {
        "SanitizeXForwardedClientCert": True,
        "Incoming": {
            "RequestNormalization": {
                "InsecureDisablePathNormalization": False,
                "MergeSlashes": True,
                "PathWithEscapedSlashesAction": "REJECT_REQUEST",
                "HeadersWithUnderscoresAction": "DROP_HEADER",
            }
        },
    },
}


def _mesh(entry: Any, origin: str = "mesh.json") -> MeshHttp | None:
    docs, problems = parse_documents([(origin, entry)])
    assert problems == []
    return build_mesh_http(docs)


def test_every_http_option_is_read_and_other_mesh_keys_are_ignored():
    """The four request-normalisation options and the XFCC switch land in MeshHttp,
    with the file as origin; TLS, TransparentProxy, Peering and Meta are accepted."""
    assert _mesh(FULL) == MeshHttp(
        PathNormalization(
            insecure_disable_path_normalization=False,
            merge_slashes=True,
            path_with_escaped_slashes_action="REJECT_REQUEST",
            headers_with_underscores_action="DROP_HEADER",
        ),
        sanitize_x_forwarded_client_cert=True,
        origin="mesh.json",
    )


def test_snake_case_keys_and_weak_booleans_are_read_as_consul_reads_them():
    """HCL-style keys (``request_normalization``, ``merge_slashes``) and a weakly typed
    ``"true"`` are the same fields, as Consul's decoder reads config entries."""
    entry = {
        "kind": "mesh",
        "http": {
            "sanitize_x_forwarded_client_cert": "true",
            "incoming": {
                "request_normalization": {
                    "insecure_disable_path_normalization": "1",
                    "path_with_escaped_slashes_action": "UNESCAPE_AND_FORWARD",
                }
            },
        },
    }
    mesh = _mesh(entry)
    assert mesh is not None and mesh.sanitize_x_forwarded_client_cert
    assert mesh.normalization.insecure_disable_path_normalization
    assert mesh.normalization.path_with_escaped_slashes_action == "UNESCAPE_AND_FORWARD"
    assert not mesh.normalization.merge_slashes


def test_a_mesh_entry_without_http_gives_consuls_defaults():
    """The config-read dump (no request normalisation) gives the defaults; no mesh
    entry at all gives None (the source says nothing)."""
    dump = json.loads((DUMP / "mesh.json").read_text())
    assert _mesh(dump) == MeshHttp(origin="mesh.json")
    assert build_mesh_http(parse_documents([])[0]) is None


@pytest.mark.parametrize(
    ("patch", "where", "words"),
    [
        (
            {"PathWithEscapedSlashesAction": "reject_request"},  # Consul's values are exact
            "HTTP.Incoming.RequestNormalization.PathWithEscapedSlashesAction",
            "no matching PathWithEscapedSlashesAction value found for reject_request",
        ),
        (
            {"HeadersWithUnderscoresAction": "DROP"},
            "HTTP.Incoming.RequestNormalization.HeadersWithUnderscoresAction",
            "please specify one of [ALLOW, REJECT_REQUEST, DROP_HEADER]",
        ),
        (
            {"MergeSlashes": "sometimes"},
            "HTTP.Incoming.RequestNormalization.MergeSlashes",
            "must be true or false",
        ),
        (
            {"MergeSlash": True},  # a typo must not silently leave slashes unmerged
            "HTTP.Incoming.RequestNormalization.MergeSlash",
            "unknown field",
        ),
    ],
)
def test_a_bad_value_names_the_file_and_key_and_leaves_the_entry_out(
    patch: dict[str, Any], where: str, words: str
):
    """A bad option is a problem naming the file and the key path; the entry is left
    out whole (nothing of it applies)."""
    entry = json.loads(json.dumps(FULL))
    entry["HTTP"]["Incoming"]["RequestNormalization"].update(patch)
    docs, problems = parse_documents([("mesh.json", entry)])
    assert [(p.origin, p.where) for p in problems] == [("mesh.json", where)]
    assert words in problems[0].message
    assert docs.mesh == () and build_mesh_http(docs) is None


def test_an_unknown_key_in_http_is_a_problem_and_a_wrong_name_too():
    """Inside HTTP unknown keys are typos; the entry's name is always ``mesh``."""
    _, problems = parse_documents([("m.json", {"Kind": "mesh", "HTTP": {"Incomin": {}}})])
    assert [p.where for p in problems] == ["HTTP.Incomin"]
    _, problems = parse_documents([("m.json", {"Kind": "mesh", "Name": "other"})])
    assert [p.where for p in problems] == ["Name"]


def test_two_mesh_entries_conflict_and_the_first_wins_and_partitions_are_apart():
    """One mesh entry per partition: a second one is reported and left out; the entry
    of another partition is not the default partition's."""
    other = {**FULL, "Partition": "ap1"}
    docs, problems = parse_documents(
        [("a.json", FULL), ("b.json", {"Kind": "mesh"}), ("c.json", other)]
    )
    assert [p.origin for p in problems] == ["b.json"]
    assert build_mesh_http(docs) == _mesh(FULL, "a.json")
    assert build_mesh_http(docs, "ap1") == _mesh(FULL, "c.json")


def test_a_mesh_entry_written_in_hcl(tmp_path: Path):
    """Consul's HCL form (nested blocks) reads like the JSON one."""
    text = """
Kind = "mesh"
HTTP {
  SanitizeXForwardedClientCert = true
  Incoming {
    RequestNormalization {
      MergeSlashes = true
      HeadersWithUnderscoresAction = "REJECT_REQUEST"
    }
  }
}
"""
    docs, _, problems = decode_catalog_file(tmp_path / "mesh.hcl", text.encode())
    assert problems == []
    mesh = build_mesh_http(docs)
    assert mesh is not None and mesh.sanitize_x_forwarded_client_cert
    assert mesh.normalization.merge_slashes
    assert mesh.normalization.headers_with_underscores_action == "REJECT_REQUEST"


def test_describe_shows_the_effective_options_with_consuls_defaults():
    """/routes shows Consul's effective values, the empty defaults spelled out."""
    described = describe_mesh_http(DEFAULT_MESH_HTTP)
    assert described["RequestNormalization"] == {
        "InsecureDisablePathNormalization": False,
        "MergeSlashes": False,
        "PathWithEscapedSlashesAction": "IMPLEMENTATION_SPECIFIC_DEFAULT",
        "HeadersWithUnderscoresAction": "ALLOW",
    }
    assert described["SanitizeXForwardedClientCert"] is False
    assert describe_mesh_http(_mesh(FULL) or DEFAULT_MESH_HTTP)["origin"] == "mesh.json"
