"""``tgw check-config`` cross-checks between the config, the catalog and the certificates.

Each finding is a warning naming the config file and the key whose files hold the
mistake (the catalog file or certificate path in the message); ``--strict`` turns
warnings into problems (exit 1) and ``--json`` prints the same for machines.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gwcore.cli import main
from gwcore.contract import pki
from gwcore.policy.model import ServiceName
from gwcore.testing import TRUST_DOMAIN
from tests.harness import DC, Gateway, gateway_entry, intentions, registration, write_json

CATALOG_KEY = "sites.main.file_catalog.paths"


def write(root: Path, docs: dict[str, object], **options: object) -> Path:
    """The harness config, with ``docs`` (file name -> JSON) as the catalog."""
    for name, value in docs.items():
        write_json(root / "catalog" / name, value)
    (root / "catalog").mkdir(parents=True, exist_ok=True)
    return Gateway(root, **options).write_config()  # type: ignore[arg-type]


def warnings_of(err: str, path: Path) -> list[tuple[str, str]]:
    """(key, message) of each ``FILE: KEY: warning: MESSAGE`` line for ``path``."""
    found = []
    for line in err.splitlines():
        prefix = f"{path}: "
        if line.startswith(prefix) and ": warning: " in line:
            key, _, message = line[len(prefix) :].partition(": warning: ")
            found.append((key, message))
    return found


def check(path: Path, capsys, *flags: str) -> tuple[int, str, str]:
    code = main(["check-config", *flags, str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_linked_service_without_instances_gets_the_closest_registered_name(
    tmp_path: Path, capsys
) -> None:
    """A typo in the gateway entry ("biling") passes validation but routes to nothing: a
    warning names the config key, the catalog file and the closest registered name."""
    path = write(
        tmp_path,
        {
            "gw.json": gateway_entry("biling"),
            "regs.json": [registration("billing", 9001)],
        },
    )
    code, out, err = check(path, capsys)
    assert code == 0
    assert out.startswith(f"{path}: OK (")
    found = warnings_of(err, path)
    gw_file = str((tmp_path / "catalog" / "gw.json").resolve())
    assert (
        CATALOG_KEY,
        f"{gw_file}: Services[0]: linked service 'biling' has no registered instance; "
        "did you mean 'billing'?",
    ) in found
    assert any(
        "registered service 'billing' is linked by no terminating gateway" in m for _, m in found
    )


def test_no_gateway_entry_for_the_site_name_is_a_warning(tmp_path: Path, capsys) -> None:
    """An entry for another gateway name routes nothing for this site."""
    path = write(tmp_path, {"gw.json": gateway_entry("billing", name="legacy-gwx")})
    _, _, err = check(path, capsys)
    (key, message), *_ = warnings_of(err, path)
    assert key == CATALOG_KEY
    assert "no terminating-gateway entry is named 'legacy-gw'" in message
    assert "did you mean 'legacy-gwx'?" in message


def test_intentions_for_an_unrouted_destination_and_an_unknown_source(
    tmp_path: Path, capsys
) -> None:
    """Intentions to a service the site does not route, and (when the catalog knows mesh
    services) from a source it does not know, are warnings naming the intentions file."""
    sidecar = registration("web-sidecar-proxy", 21000)
    sidecar["Service"].update({"Kind": "connect-proxy", "Proxy": {"DestinationServiceName": "web"}})
    path = write(
        tmp_path,
        {
            "gw.json": gateway_entry("billing"),
            "regs.json": [registration("billing", 9001), sidecar],
            "intentions.json": [
                intentions("billing", ("wbe", "allow")),
                intentions("ledger", ("web", "allow")),
            ],
        },
    )
    _, _, err = check(path, capsys)
    messages = [m for k, m in warnings_of(err, path) if k == CATALOG_KEY]
    origin = str((tmp_path / "catalog" / "intentions.json").resolve())
    assert f"{origin}: intentions for 'ledger', which this site does not route" in messages
    assert (
        f"{origin}: intention source 'wbe' (to 'billing') is not a registered service; "
        "did you mean 'web'?"
    ) in messages


def _tls_link(tmp_path: Path, **files: str) -> dict[str, str]:
    return {"Name": "billing", **{k: str(tmp_path / v) for k, v in files.items()}}


def test_unreadable_unparsable_and_mismatched_upstream_tls_files(tmp_path: Path, capsys) -> None:
    """CAFile/CertFile/KeyFile of a linked service that cannot be read or parsed, or a key
    that does not match its certificate, are reported (today only the first connection
    would fail)."""
    ca_cert, ca_key = pki.new_ca("upstream.test")
    leaf = pki.service_leaf(ca_cert, ca_key, ServiceName("x"), DC, "upstream.test")
    other = pki.service_leaf(ca_cert, ca_key, ServiceName("y"), DC, "upstream.test")
    (tmp_path / "ca.pem").write_text("not a certificate")
    (tmp_path / "cert.pem").write_bytes(pki.certificate_pem(leaf.certificate))
    (tmp_path / "key.pem").write_bytes(pki.key_pem(other.key))
    link = _tls_link(tmp_path, CAFile="ca.pem", CertFile="cert.pem", KeyFile="key.pem")
    path = write(
        tmp_path,
        {"gw.json": gateway_entry(link), "regs.json": [registration("billing", 9001)]},
    )
    _, _, err = check(path, capsys)
    messages = [m for k, m in warnings_of(err, path) if k == CATALOG_KEY]
    assert any(
        m.startswith(f"linked service 'billing': CAFile {tmp_path}/ca.pem: ") for m in messages
    )
    assert (
        f"linked service 'billing': KeyFile {tmp_path}/key.pem does not match CertFile "
        f"{tmp_path}/cert.pem"
    ) in messages
    (tmp_path / "key.pem").unlink()
    _, _, err = check(path, capsys)
    messages = [m for k, m in warnings_of(err, path) if k == CATALOG_KEY]
    assert (
        f"linked service 'billing': KeyFile {tmp_path}/key.pem: No such file or directory"
        in messages
    )


@pytest.mark.parametrize(
    ("service", "trust_domain", "expected"),
    [
        ("ledger", TRUST_DOMAIN, "the leaf's SPIFFE ID is not service 'billing'"),
        ("billing", "other.consul", f"the leaf is not in the site's trust domain {TRUST_DOMAIN}"),
    ],
    ids=["wrong-service", "wrong-trust-domain"],
)
def test_a_file_certs_leaf_for_another_identity_is_a_warning_on_its_key(
    tmp_path: Path, capsys, service: str, trust_domain: str, expected: str
) -> None:
    """A file_certs leaf configured for billing must carry billing's SPIFFE ID in the
    site's trust domain; otherwise the warning names leaves.billing.cert."""
    ca_cert, ca_key = pki.new_ca(trust_domain)
    leaf = pki.service_leaf(ca_cert, ca_key, ServiceName(service), DC, trust_domain)
    (tmp_path / "leaf.pem").write_bytes(pki.certificate_pem(leaf.certificate))
    (tmp_path / "leaf-key.pem").write_bytes(pki.key_pem(leaf.key))
    (tmp_path / "roots.pem").write_bytes(pki.certificate_pem(ca_cert))
    path = write(
        tmp_path,
        {"gw.json": gateway_entry("billing"), "regs.json": [registration("billing", 9001)]},
        plugins=["file_catalog", "file_certs", "intentions"],
        extra_site=(
            '[sites.main.file_certs]\nroots = ["roots.pem"]\n'
            '[sites.main.file_certs.leaves]\nbilling = { cert = "leaf.pem", key = "leaf-key.pem" }'
        ),
    )
    _, _, err = check(path, capsys)
    found = warnings_of(err, path)
    assert [k for k, _ in found] == ["sites.main.file_certs.leaves.billing.cert"]
    assert found[0][1].startswith(f"leaf.pem: {expected}")


def test_strict_turns_warnings_into_problems_and_json_reports_both(tmp_path: Path, capsys) -> None:
    """--strict: exit 1 and the count includes the warnings; --json: one document with
    problems, warnings (file, key, message) and each site's summary."""
    path = write(tmp_path, {"gw.json": gateway_entry("billing")})
    code, out, err = check(path, capsys, "--strict")
    assert code == 1
    assert out == ""
    assert err.splitlines()[-1] == f"{path}: 1 problem(s) (--strict: 1 warning(s) count)"
    code, out, _ = check(path, capsys, "--json")
    assert code == 0
    body = json.loads(out)
    assert body["ok"] is True and body["problems"] == []
    assert body["warnings"] == [
        {
            "file": str(path),
            "key": CATALOG_KEY,
            "message": f"{(tmp_path / 'catalog' / 'gw.json').resolve()}: Services[0]: linked "
            "service 'billing' has no registered instance",
        }
    ]
    (site,) = body["sites"]
    assert site["engines"] == ["intentions"]
    assert site["destinations"] == [
        {"name": "billing", "datacenter": DC, "endpoints": 0, "tls": "plain"}
    ]
    code, out, _ = check(path, capsys, "--json", "--strict")
    assert code == 1 and json.loads(out)["ok"] is False


def test_a_missing_file_certs_key_is_reported_with_the_other_problems(
    tmp_path: Path, capsys
) -> None:
    """A leaf's certificate present but its key missing is reported under
    leaves.SERVICE.key, in the same run as an unrelated core-key problem."""
    ca_cert, ca_key = pki.new_ca(TRUST_DOMAIN)
    leaf = pki.service_leaf(ca_cert, ca_key, ServiceName("billing"), DC, TRUST_DOMAIN)
    (tmp_path / "leaf.pem").write_bytes(pki.certificate_pem(leaf.certificate))
    (tmp_path / "roots.pem").write_bytes(pki.certificate_pem(ca_cert))
    path = write(
        tmp_path,
        {"gw.json": gateway_entry("billing"), "regs.json": [registration("billing", 9001)]},
        plugins=["file_catalog", "file_certs", "intentions"],
        site_options={"max_conections": 5},
        extra_site=(
            '[sites.main.file_certs]\nroots = ["roots.pem"]\n'
            '[sites.main.file_certs.leaves]\nbilling = { cert = "leaf.pem", key = "leaf-key.pem" }'
        ),
    )
    code, _, err = check(path, capsys)
    assert code == 1
    problems = [line for line in err.splitlines() if ": warning: " not in line]
    assert problems == [
        f"{path}: sites.main.max_conections: unknown key; did you mean 'max_connections'?",
        f"{path}: sites.main.file_certs.leaves.billing.key: {tmp_path}/leaf-key.pem: cannot be "
        "read: No such file or directory",
        f"{path}: 2 problem(s)",
    ]


def test_intentions_routed_by_another_site_are_not_a_warning(tmp_path: Path, capsys) -> None:
    """Two sites share a catalog: intentions for the other site's destination are fine; only a
    destination no site routes is reported (by each site that reads it)."""
    path = write(
        tmp_path,
        {
            "gw.json": [gateway_entry("billing"), gateway_entry("ledger", name="other-gw")],
            "regs.json": [registration("billing", 9001), registration("ledger", 9002)],
            "intentions.json": [
                intentions("ledger", ("web", "allow")),
                intentions("nowhere", ("web", "allow")),
            ],
        },
        extra_site=(
            '[sites.other]\nlisten = "tcp:0:interface=127.0.0.2"\nname = "other-gw"\n'
            f'trust_domain = "{TRUST_DOMAIN}"\nplugins = ["file_catalog", "builtin_ca"]\n'
            '[sites.other.file_catalog]\npaths = ["catalog"]'
        ),
    )
    _, _, err = check(path, capsys)
    found = warnings_of(err, path)
    unrouted = [(k, m) for k, m in found if "which this site does not route" in m]
    assert len(unrouted) == 2, found  # 'nowhere', from each site
    assert all("'nowhere'" in m for _, m in unrouted), unrouted
