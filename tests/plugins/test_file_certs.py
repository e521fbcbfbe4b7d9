"""Tests for the file_certs plugin: PEM files on disk, watched, never replaced by bad ones."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pluggy
import pytest
from twisted.logger import formatEvent

from gwcore.contract import hookspecs, pki
from gwcore.contract.providers import CertificateProvider, LeafCertificate
from gwcore.plugins import file_certs
from gwcore.policy.config import SiteConfig, parse_config
from gwcore.policy.model import ServiceName
from gwcore.testing import FakeSite
from tests.net.test_client_trust import root_without_spiffe_uri

TD = "example.consul"
START = 1_800_000_000.0
BILLING = ServiceName("billing")


def site_config(tmp_path: Path, section: dict | None, **site: Any) -> SiteConfig:
    table: dict[str, Any] = {
        "listen": "tcp:8443",
        "name": "tgw",
        "trust_domain": TD,
        "plugins": [file_certs.NAME],
        "extra_trust_domains": [],
        **site,
    }
    if section is not None:
        table[file_certs.NAME] = section
    data = {"gateway": {"state_dir": "state", "plugin_paths": []}, "sites": {"main": table}}
    return parse_config(data, str(tmp_path / "tgw.toml"), tmp_path).site("main")


SECTION = {
    "roots": ["roots.pem"],
    "poll_interval": "1s",
    "leaves": {"billing": {"cert": "certs/billing.pem", "key": "certs/billing-key.pem"}},
}


class Pki:
    """A CA and helpers writing the files SECTION names."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ca, self.ca_key = pki.new_ca(TD, now=START)
        (base / "certs").mkdir(exist_ok=True)

    def leaf(self, service: str = "billing") -> LeafCertificate:
        return pki.service_leaf(self.ca, self.ca_key, ServiceName(service), "dc1", TD, now=START)

    def write_leaf(self, leaf: LeafCertificate, *, atomic: bool = False) -> None:
        chain, key = pki.leaf_pem(leaf)
        self.write("certs/billing.pem", chain, atomic=atomic)
        self.write("certs/billing-key.pem", key, atomic=atomic)

    def write(self, name: str, data: bytes, *, atomic: bool = False) -> None:
        path = self.base / name
        if atomic:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        else:
            with open(path, "r+b" if path.exists() else "wb") as f:  # same inode
                f.truncate(0)
                f.write(data)


@pytest.fixture
def files(tmp_path: Path) -> Pki:
    p = Pki(tmp_path)
    p.write("roots.pem", pki.certificate_pem(p.ca))
    p.write_leaf(p.leaf())
    return p


def make_site(tmp_path: Path, section: dict | None = SECTION) -> FakeSite:
    site = FakeSite(site_config(tmp_path, section), tmp_path / "state")
    site.reactor.advance(START)
    return site


def started(site: FakeSite) -> tuple[file_certs.FileCertificates, list[None]]:
    provider = file_certs.FileCertificates(site)
    calls: list[None] = []
    provider.start(lambda: calls.append(None))
    return provider, calls


def errors(site: FakeSite) -> float:
    return (
        site.metrics.registry.get_sample_value(
            "tgw_certificate_errors_total", {"site": "main", "provider": "file_certs"}
        )
        or 0.0
    )


def expiry(site: FakeSite, kind: str, name: str) -> float | None:
    return site.metrics.registry.get_sample_value(
        "tgw_certificate_expiry_timestamp_seconds", {"site": "main", "kind": kind, "name": name}
    )


def local_roots(provider: file_certs.FileCertificates) -> list[Any]:
    """The provider's roots, each checked to be the site's own trust domain's."""
    assert all(r.trust_domain == TD for r in provider.trust_roots())
    return [r.certificate for r in provider.trust_roots()]


# --- loading ---------------------------------------------------------------------


def test_loads_roots_and_leaves_at_construction(tmp_path: Path, files: Pki) -> None:
    site = make_site(tmp_path)
    provider = file_certs.FileCertificates(site)
    assert isinstance(provider, CertificateProvider)
    assert local_roots(provider) == [files.ca]
    leaf = provider.leaf(BILLING)
    assert leaf is not None
    assert pki.leaf_pem(leaf) == (
        (tmp_path / "certs/billing.pem").read_bytes(),
        (tmp_path / "certs/billing-key.pem").read_bytes(),
    )
    assert provider.leaf(ServiceName("unknown")) is None
    assert provider.health().ok
    assert expiry(site, "leaf", "billing") == leaf.not_after
    assert expiry(site, "root", "roots.pem") == files.ca.not_valid_after_utc.timestamp()


def test_root_files_may_hold_several_certificates_and_duplicates_collapse(
    tmp_path: Path, files: Pki
) -> None:
    other, _ = pki.new_ca(TD, now=START, valid_for=86400)
    files.write("roots.pem", pki.certificate_pem(files.ca) + pki.certificate_pem(other))
    files.write("more.pem", pki.certificate_pem(files.ca))
    site = make_site(tmp_path, {**SECTION, "roots": ["roots.pem", "more.pem"]})
    provider = file_certs.FileCertificates(site)
    assert local_roots(provider) == [files.ca, other]
    assert expiry(site, "root", "roots.pem") == START + 86400, "earliest notAfter in the file"


def test_leaf_cert_file_may_hold_the_chain(tmp_path: Path, files: Pki) -> None:
    leaf = files.leaf()
    chain, key = pki.leaf_pem(leaf)
    files.write("certs/billing.pem", chain + pki.certificate_pem(files.ca))
    files.write("certs/billing-key.pem", key)
    provider = file_certs.FileCertificates(make_site(tmp_path))
    assert provider.leaf(BILLING).chain == (leaf.certificate, files.ca)


def test_namespaced_service_keys(tmp_path: Path, files: Pki) -> None:
    paths = {"cert": "certs/billing.pem", "key": "certs/billing-key.pem"}
    section = {"leaves": {"team/api": paths, "eu/team/db": paths}}
    provider = file_certs.FileCertificates(make_site(tmp_path, section))
    assert provider.leaf(ServiceName("api", "team")) is not None
    assert provider.leaf(ServiceName("db", "team", "eu")) is not None
    assert provider.leaf(ServiceName("api")) is None


# --- watching --------------------------------------------------------------------


@pytest.mark.parametrize("atomic", [False, True], ids=["in_place", "atomic_rename"])
def test_a_rewritten_leaf_is_picked_up(tmp_path: Path, files: Pki, atomic: bool) -> None:
    site = make_site(tmp_path)
    provider, calls = started(site)
    old = provider.leaf(BILLING)
    new = files.leaf()
    files.write_leaf(new, atomic=atomic)
    assert provider.leaf(BILLING) is old, "nothing changes before the next poll"
    site.reactor.advance(1)
    assert provider.leaf(BILLING).fingerprint == new.fingerprint != old.fingerprint
    assert calls == [None]
    provider.stop()


@pytest.mark.parametrize("atomic", [False, True], ids=["in_place", "atomic_rename"])
def test_rewritten_roots_are_picked_up(tmp_path: Path, files: Pki, atomic: bool) -> None:
    site = make_site(tmp_path)
    provider, calls = started(site)
    new_ca, _ = pki.new_ca(TD, now=START)
    files.write(
        "roots.pem", pki.certificate_pem(files.ca) + pki.certificate_pem(new_ca), atomic=atomic
    )
    site.reactor.advance(1)
    assert local_roots(provider) == [files.ca, new_ca]
    assert calls == [None]
    provider.stop()


def test_touching_a_file_without_changing_material_does_not_call_changed(
    tmp_path: Path, files: Pki
) -> None:
    site = make_site(tmp_path)
    provider, calls = started(site)
    files.write("roots.pem", pki.certificate_pem(files.ca), atomic=True)  # new inode, same certs
    site.reactor.advance(1)
    assert calls == []
    provider.stop()


@pytest.mark.parametrize(
    ("file", "data", "problem"),
    [
        ("certs/billing.pem", b"garbage", "no PEM certificate"),
        ("certs/billing-key.pem", b"garbage", "no PEM private key"),
        ("certs/billing-key.pem", None, "does not match the certificate"),
        ("roots.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "parse"),
    ],
    ids=["corrupt_cert", "corrupt_key", "mismatched_key", "corrupt_roots"],
)
def test_a_bad_file_keeps_the_previous_material_until_fixed(
    tmp_path: Path, files: Pki, file: str, data: bytes | None, problem: str
) -> None:
    site = make_site(tmp_path)
    provider, calls = started(site)
    old_leaf, old_roots = provider.leaf(BILLING), provider.trust_roots()
    if data is None:
        data = pki.key_pem(pki.new_key())
    files.write(file, data)
    site.reactor.advance(1)

    assert provider.leaf(BILLING) is old_leaf
    assert provider.trust_roots() == old_roots
    assert calls == []
    assert errors(site) == 1
    health = provider.health()
    assert not health.ok
    assert str(tmp_path / file) in health.last_error and problem in health.last_error
    warnings = [e for e in site.events if "log_failure" not in e]
    assert len(warnings) == 1 and len(site.events) == 1, "one line, no traceback"
    line = formatEvent(warnings[0])
    assert str(tmp_path / file) in line and problem in line and "\n" not in line

    site.reactor.advance(5)  # still broken, nothing rewritten: not reported again
    assert errors(site) == 1 and len(site.events) == 1

    new_leaf = files.leaf()
    files.write_leaf(new_leaf)
    files.write("roots.pem", pki.certificate_pem(files.ca))
    site.reactor.advance(1)
    assert provider.health().ok
    assert provider.health().last_error is None
    assert provider.health().last_success == site.reactor.seconds()
    if file == "roots.pem":
        assert provider.trust_roots() == old_roots
    assert provider.leaf(BILLING).fingerprint == new_leaf.fingerprint
    assert calls == [None]
    provider.stop()


def test_a_deleted_file_keeps_the_previous_material(tmp_path: Path, files: Pki) -> None:
    site = make_site(tmp_path)
    provider, _ = started(site)
    old = provider.leaf(BILLING)
    (tmp_path / "certs/billing.pem").unlink()
    site.reactor.advance(1)
    assert provider.leaf(BILLING) is old
    assert "cannot be read" in provider.health().last_error
    provider.stop()


@pytest.mark.parametrize("file", ["certs/billing.pem", "certs/billing-key.pem", "roots.pem"])
def test_a_half_written_file_keeps_the_previous_material(
    tmp_path: Path, files: Pki, file: str
) -> None:
    """A file caught half-written (a writer that does not rename into place): the
    provider keeps serving what it had, reports the file once, and takes the whole
    file when the write completes."""
    site = make_site(tmp_path)
    provider, calls = started(site)
    old_leaf, old_roots = provider.leaf(BILLING), provider.trust_roots()
    whole = (tmp_path / file).read_bytes()
    files.write(file, whole[: len(whole) // 2])
    site.reactor.advance(1)
    assert provider.leaf(BILLING) is old_leaf and provider.trust_roots() == old_roots
    assert not provider.health().ok and str(tmp_path / file) in provider.health().last_error
    assert errors(site) == 1 and calls == []
    files.write(file, whole)
    site.reactor.advance(1)
    assert provider.health().ok and provider.leaf(BILLING).fingerprint == old_leaf.fingerprint
    provider.stop()


def test_a_file_bad_at_start_is_reported_and_loaded_once_fixed(tmp_path: Path, files: Pki) -> None:
    files.write("certs/billing.pem", b"garbage")
    site = make_site(tmp_path)
    provider, calls = started(site)
    assert provider.leaf(BILLING) is None
    assert local_roots(provider) == [files.ca], "a bad leaf does not hold back the roots"
    assert errors(site) == 1
    assert provider.health().last_success is None
    files.write_leaf(files.leaf())
    site.reactor.advance(1)
    assert provider.leaf(BILLING) is not None
    assert calls == [None]
    provider.stop()


def test_stop_stops_polling(tmp_path: Path, files: Pki) -> None:
    site = make_site(tmp_path)
    provider, calls = started(site)
    assert site.reactor.getDelayedCalls()
    provider.stop()
    assert site.reactor.getDelayedCalls() == []
    files.write_leaf(files.leaf())
    site.reactor.advance(5)
    assert calls == []


def test_poll_interval_is_honoured(tmp_path: Path, files: Pki) -> None:
    site = make_site(tmp_path, {**SECTION, "poll_interval": "10s"})
    provider, calls = started(site)
    files.write_leaf(files.leaf())
    site.reactor.advance(9)
    assert calls == []
    site.reactor.advance(1)
    assert calls == [None]
    provider.stop()


# --- config and hooks ------------------------------------------------------------


def validate(tmp_path: Path, section: dict) -> list[tuple[str, str]]:
    problems = file_certs.tgw_validate_site_config(site=site_config(tmp_path, section))
    return [(p.key, p.message) for p in problems]


def test_validation_accepts_good_files(tmp_path: Path, files: Pki) -> None:
    assert validate(tmp_path, SECTION) == []
    assert validate(tmp_path, {}) == []
    assert file_certs.tgw_validate_site_config(site=site_config(tmp_path, None, plugins=[])) == []


def test_validation_reports_a_missing_cert_file_with_key_and_path(tmp_path: Path) -> None:
    Pki(tmp_path).write("roots.pem", pki.certificate_pem(pki.new_ca(TD)[0]))
    ((key, message),) = validate(tmp_path, SECTION)
    assert key == "sites.main.file_certs.leaves.billing.cert"
    assert str(tmp_path / "certs/billing.pem") in message and "cannot be read" in message


def test_validation_reports_a_mismatched_key_with_key_and_path(tmp_path: Path, files: Pki) -> None:
    files.write("certs/billing-key.pem", pki.key_pem(pki.new_key()))
    ((key, message),) = validate(tmp_path, SECTION)
    assert key == "sites.main.file_certs.leaves.billing.key"
    assert str(tmp_path / "certs/billing-key.pem") in message and "does not match" in message


def test_validation_reports_an_unparsable_root_file(tmp_path: Path, files: Pki) -> None:
    files.write("roots.pem", b"nothing here")
    ((key, message),) = validate(tmp_path, SECTION)
    assert key == "sites.main.file_certs.roots"
    assert str(tmp_path / "roots.pem") in message and "no PEM certificate" in message


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        ({"poll_interval": "often"}, "sites.main.file_certs.poll_interval", "duration"),
        ({"roots": [1]}, "sites.main.file_certs.roots", "list of strings"),
        (
            {"leaves": {"billing": {"cert": "c"}}},
            "sites.main.file_certs.leaves.billing.key",
            "required",
        ),
        (
            {"leaves": {"billing": {"cert": "c", "key": "k", "chain": "x"}}},
            "sites.main.file_certs.leaves.billing.chain",
            "unknown key",
        ),
        ({"leaves": {"a//b": {}}}, "sites.main.file_certs.leaves.a//b", "service name"),
        ({"leaves": []}, "sites.main.file_certs.leaves", "must be a table"),
        ({"leaf": {}}, "sites.main.file_certs.leaf", "unknown key"),
    ],
)
def test_validation_names_the_bad_key(tmp_path: Path, section, key, message) -> None:
    problems = validate(tmp_path, section)
    assert any(k == key and message in m for k, m in problems), problems


def test_hooks_register_through_pluggy_and_provide_only_when_stacked(
    tmp_path: Path, files: Pki
) -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(file_certs)
    pm.check_pending()
    (providers,) = pm.hook.tgw_certificate_providers(site=make_site(tmp_path))
    assert [p.name for p in providers] == ["file_certs"]
    unstacked = FakeSite(site_config(tmp_path, None, plugins=[]), tmp_path / "state")
    assert pm.hook.tgw_certificate_providers(site=unstacked) == [[]]


# --- trust bundles per trust domain (issue 16 §1) ----------------------------------

PEER = "peer.consul"


def bundle_section(**bundles: list[str]) -> dict:
    return {**SECTION, "trust_bundles": {PEER: bundles.get("peer", ["peer.pem"])}}


def test_trust_bundles_give_roots_for_the_trust_domain_they_are_listed_under(
    tmp_path: Path, files: Pki
) -> None:
    """``roots`` are the site's own trust domain's; a ``trust_bundles`` entry's roots
    are that peer domain's, whether they name it (spiffe://peer.consul) or nothing at
    all: the domain comes from the configuration, never from the root."""
    peer_ca, _ = pki.new_ca(PEER, now=START)
    bare = root_without_spiffe_uri()
    files.write("peer.pem", pki.certificate_pem(peer_ca) + pki.certificate_pem(bare))
    site = FakeSite(
        site_config(tmp_path, bundle_section(), extra_trust_domains=[PEER]), tmp_path / "state"
    )
    site.reactor.advance(START)
    provider = file_certs.FileCertificates(site)
    assert [(r.trust_domain, r.certificate) for r in provider.trust_roots()] == [
        (TD, files.ca),
        (PEER, peer_ca),
        (PEER, bare),
    ]


def test_validation_refuses_a_root_naming_another_trust_domain_with_file_and_key(
    tmp_path: Path, files: Pki
) -> None:
    """A peer's root listed in ``roots`` (it names peer.consul), and the local root
    listed as the peer's bundle (it names the local domain), are each refused naming
    the key and file: such a root would vouch for a domain it does not belong to."""
    peer_ca, _ = pki.new_ca(PEER, now=START)
    files.write("peer-in-roots.pem", pki.certificate_pem(peer_ca))
    files.write("local-as-peer.pem", pki.certificate_pem(files.ca))
    section = {
        **SECTION,
        "roots": ["roots.pem", "peer-in-roots.pem"],
        "trust_bundles": {PEER: ["local-as-peer.pem"]},
    }
    problems = [
        (p.key, p.message)
        for p in file_certs.tgw_validate_site_config(
            site=site_config(tmp_path, section, extra_trust_domains=[PEER])
        )
    ]
    assert [k for k, _ in problems] == [
        "sites.main.file_certs.roots",
        'sites.main.file_certs.trust_bundles."peer.consul"',
    ]
    assert str(tmp_path / "peer-in-roots.pem") in problems[0][1]
    assert f"names trust domain '{PEER}'" in problems[0][1]
    assert str(tmp_path / "local-as-peer.pem") in problems[1][1]
    assert f"names trust domain '{TD}'" in problems[1][1]


@pytest.mark.parametrize(
    ("domain", "message"),
    [(PEER, "not in extra_trust_domains"), (TD, "the site's own trust domain")],
)
def test_validation_refuses_a_bundle_for_an_untrusted_or_the_local_domain(
    tmp_path: Path, files: Pki, domain: str, message: str
) -> None:
    """A bundle only makes sense for a domain in ``extra_trust_domains``; the site's
    own domain's roots belong in ``roots`` (one place, one meaning)."""
    files.write("peer.pem", pki.certificate_pem(pki.new_ca(domain, now=START)[0]))
    problems = validate(tmp_path, {**SECTION, "trust_bundles": {domain: ["peer.pem"]}})
    assert problems == [(f'sites.main.file_certs.trust_bundles."{domain}"', problems[0][1])]
    assert message in problems[0][1]


def test_a_rotated_bundle_naming_another_domain_keeps_the_previous_bundle(
    tmp_path: Path, files: Pki
) -> None:
    """Reload: a peer bundle file rewritten with a root that names the local domain
    is refused (counted, one line naming key and file); the peer's previous root stays,
    still the peer's. A good rotation afterwards is picked up, per domain."""
    peer_ca, _ = pki.new_ca(PEER, now=START)
    files.write("peer.pem", pki.certificate_pem(peer_ca))
    site = FakeSite(
        site_config(tmp_path, bundle_section(), extra_trust_domains=[PEER]), tmp_path / "state"
    )
    site.reactor.advance(START)
    provider, calls = started(site)
    before = provider.trust_roots()
    files.write("peer.pem", pki.certificate_pem(files.ca))
    site.reactor.advance(1)
    assert provider.trust_roots() == before and calls == []
    assert errors(site) == 1
    (line,) = [formatEvent(e) for e in site.events]
    assert 'sites.main.file_certs.trust_bundles."peer.consul"' in line
    assert str(tmp_path / "peer.pem") in line and "\n" not in line
    rotated, _ = pki.new_ca(PEER, now=START)
    files.write("peer.pem", pki.certificate_pem(peer_ca) + pki.certificate_pem(rotated))
    site.reactor.advance(1)
    assert [(r.trust_domain, r.certificate) for r in provider.trust_roots()] == [
        (TD, files.ca),
        (PEER, peer_ca),
        (PEER, rotated),
    ]
    assert calls == [None]
    provider.stop()
