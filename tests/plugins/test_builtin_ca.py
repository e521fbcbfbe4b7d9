"""Tests for the builtin_ca plugin: the CA on disk, leaves per service, rotation, config."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pluggy
import pytest

from gwcore.contract import hookspecs, pki
from gwcore.contract.providers import CertificateProvider
from gwcore.plugins import builtin_ca
from gwcore.policy.config import SiteConfig, parse_config
from gwcore.policy.model import ServiceName, SpiffeID
from gwcore.testing import FakeSite

TD = "example.consul"
START = 1_800_000_000.0  # the fake clock's epoch time; certificates are dated from it


def site_config(tmp_path: Path, section: dict | None = None, **site: Any) -> SiteConfig:
    table: dict[str, Any] = {
        "listen": "tcp:8443",
        "name": "tgw",
        "datacenter": "dc1",
        "trust_domain": TD,
        "plugins": [builtin_ca.NAME],
        "extra_trust_domains": [],
        **site,
    }
    if section is not None:
        table[builtin_ca.NAME] = section
    data = {"gateway": {"state_dir": "state", "plugin_paths": []}, "sites": {"main": table}}
    return parse_config(data, str(tmp_path / "tgw.toml"), tmp_path).site("main")


def make_site(tmp_path: Path, section: dict | None = None, **site: Any) -> FakeSite:
    fake = FakeSite(site_config(tmp_path, section, **site), tmp_path / "state")
    fake.reactor.advance(START)
    return fake


def expiry(site: FakeSite, kind: str, name: str) -> float | None:
    return site.metrics.registry.get_sample_value(
        "tgw_certificate_expiry_timestamp_seconds", {"site": "main", "kind": kind, "name": name}
    )


BILLING = ServiceName("billing")
WEB = ServiceName("web")


# --- the CA on disk --------------------------------------------------------------


def test_ca_is_created_once_with_restrictive_modes_and_reused(tmp_path: Path) -> None:
    ca_dir = tmp_path / "deep" / "ca"
    cert, key = builtin_ca.load_or_create_ca(ca_dir, TD)
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca_dir / "ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((ca_dir / "ca.pem").stat().st_mode) == 0o644
    assert pki.trust_domain_of(cert) == TD
    assert sorted(p.name for p in ca_dir.iterdir() if not p.name.startswith(".lock")) == [
        "ca-key.pem",
        "ca.pem",
    ], "no temporary files are left behind"
    again, again_key = builtin_ca.load_or_create_ca(ca_dir, TD)
    assert pki.fingerprint_hex(again) == pki.fingerprint_hex(cert)
    assert pki.key_pem(again_key) == pki.key_pem(key)


def test_ca_of_another_trust_domain_is_refused_naming_the_file(tmp_path: Path) -> None:
    builtin_ca.load_or_create_ca(tmp_path, "one.consul")
    with pytest.raises(ValueError, match=r"ca\.pem.*'one\.consul', not 'two\.consul'"):
        builtin_ca.load_or_create_ca(tmp_path, "two.consul")


def test_ca_with_a_foreign_key_is_refused_naming_the_key_file(tmp_path: Path) -> None:
    builtin_ca.load_or_create_ca(tmp_path, TD)
    (tmp_path / "ca-key.pem").write_bytes(pki.key_pem(pki.new_key()))
    with pytest.raises(ValueError, match=r"ca-key\.pem.*does not match"):
        builtin_ca.load_or_create_ca(tmp_path, TD)


def test_half_a_ca_is_refused_rather_than_overwritten(tmp_path: Path) -> None:
    builtin_ca.load_or_create_ca(tmp_path, TD)
    (tmp_path / "ca.pem").unlink()
    with pytest.raises(ValueError, match=r"ca\.pem is missing"):
        builtin_ca.load_or_create_ca(tmp_path, TD)
    assert (tmp_path / "ca-key.pem").exists()


def test_default_ca_dir_is_per_trust_domain_under_the_state_dir(tmp_path: Path) -> None:
    assert builtin_ca.default_ca_dir(tmp_path, TD) == tmp_path / "ca" / TD


def test_providers_share_the_ca_in_the_state_dir(tmp_path: Path) -> None:
    first = builtin_ca.BuiltinCA(make_site(tmp_path))
    second = builtin_ca.BuiltinCA(make_site(tmp_path))
    assert (tmp_path / "state" / "ca" / TD / "ca.pem").exists()
    assert pki.fingerprint_hex(first.trust_roots()[0].certificate) == pki.fingerprint_hex(
        second.trust_roots()[0].certificate
    )


def test_provider_uses_a_configured_ca_dir_relative_to_the_config(tmp_path: Path) -> None:
    provider = builtin_ca.BuiltinCA(make_site(tmp_path, {"ca_dir": "my-ca"}))
    assert provider.ca_dir == tmp_path / "my-ca"
    assert (tmp_path / "my-ca" / "ca.pem").exists()


def test_provider_refuses_a_ca_dir_of_another_trust_domain(tmp_path: Path) -> None:
    builtin_ca.load_or_create_ca(tmp_path / "state" / "ca" / TD, "other.consul")
    with pytest.raises(ValueError, match=r"ca\.pem.*other\.consul"):
        builtin_ca.BuiltinCA(make_site(tmp_path))


# --- leaves ----------------------------------------------------------------------


def test_prepare_issues_a_leaf_per_service_with_its_spiffe_id(tmp_path: Path) -> None:
    site = make_site(tmp_path, datacenter="dc7")
    provider = builtin_ca.BuiltinCA(site)
    assert isinstance(provider, CertificateProvider)
    provider.start(lambda: None)
    provider.prepare([BILLING, ServiceName("api", "team", "eu")])
    billing = provider.leaf(BILLING)
    api = provider.leaf(ServiceName("api", "team", "eu"))
    assert pki.uri_sans(billing.certificate) == [SpiffeID(TD, "default", "dc7", "billing").uri]
    assert pki.uri_sans(api.certificate) == [f"spiffe://{TD}/ap/eu/ns/team/dc/dc7/svc/api"]
    root = provider.trust_roots()[0].certificate
    assert provider.trust_roots()[0].trust_domain == TD
    billing.certificate.verify_directly_issued_by(root)
    assert billing.not_after == START + 72 * 3600  # validity comes from the site's clock
    assert expiry(site, "leaf", "billing") == billing.not_after
    assert expiry(site, "leaf", "eu/team/api") == api.not_after
    assert expiry(site, "root", "builtin_ca") == root.not_valid_after_utc.timestamp()
    provider.stop()


def test_prepare_keeps_existing_leaves(tmp_path: Path) -> None:
    provider = builtin_ca.BuiltinCA(make_site(tmp_path))
    provider.prepare([BILLING])
    first = provider.leaf(BILLING)
    provider.prepare([BILLING, WEB])
    assert provider.leaf(BILLING) is first


def test_leaf_is_issued_lazily_for_a_service_never_prepared(tmp_path: Path) -> None:
    provider = builtin_ca.BuiltinCA(make_site(tmp_path))
    leaf = provider.leaf(WEB)
    assert pki.uri_sans(leaf.certificate) == [SpiffeID(TD, "default", "dc1", "web").uri]
    assert provider.leaf(WEB) is leaf


def test_health_reports_the_time_of_the_last_issuance(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    provider = builtin_ca.BuiltinCA(site)
    assert provider.health().ok
    site.reactor.advance(30)
    provider.prepare([BILLING])
    assert provider.health().last_success == START + 30
    assert provider.health().last_error is None


# --- rotation --------------------------------------------------------------------


def test_rotation_reissues_at_the_rotate_fraction_and_calls_changed_once(tmp_path: Path) -> None:
    site = make_site(tmp_path, {"leaf_ttl": "1h", "rotate_fraction": 0.5})
    provider = builtin_ca.BuiltinCA(site)
    calls: list[None] = []
    provider.start(lambda: calls.append(None))
    provider.prepare([BILLING, WEB])
    old_billing, old_web = provider.leaf(BILLING), provider.leaf(WEB)

    site.reactor.advance(1799)
    assert calls == []
    assert provider.leaf(BILLING) is old_billing

    site.reactor.advance(1)
    assert len(calls) == 1, "one changed() for all leaves rotated together"
    new_billing = provider.leaf(BILLING)
    assert new_billing.fingerprint != old_billing.fingerprint
    assert provider.leaf(WEB).fingerprint != old_web.fingerprint
    assert new_billing.not_after == START + 1800 + 3600
    assert old_billing.not_after > site.reactor.seconds(), "rotated before the old one expired"
    assert expiry(site, "leaf", "billing") == new_billing.not_after

    site.reactor.advance(1800)
    assert len(calls) == 2, "the timer re-armed itself for the next rotate point"
    provider.stop()


def test_rotation_only_reissues_leaves_that_are_due(tmp_path: Path) -> None:
    site = make_site(tmp_path, {"leaf_ttl": "1h", "rotate_fraction": 0.5})
    provider = builtin_ca.BuiltinCA(site)
    calls: list[None] = []
    provider.start(lambda: calls.append(None))
    provider.prepare([BILLING])
    site.reactor.advance(600)
    provider.prepare([WEB])
    web = provider.leaf(WEB)
    site.reactor.advance(1200)  # billing due at +1800, web at +2400
    assert len(calls) == 1
    assert provider.leaf(WEB) is web
    site.reactor.advance(600)
    assert len(calls) == 2
    assert provider.leaf(WEB) is not web


def test_rotation_timer_is_at_least_one_second_away(tmp_path: Path) -> None:
    site = make_site(tmp_path, {"leaf_ttl": "60s", "rotate_fraction": 0.1})
    provider = builtin_ca.BuiltinCA(site)
    provider.start(lambda: None)
    provider.prepare([BILLING])
    (timer,) = site.reactor.getDelayedCalls()
    assert timer.getTime() - site.reactor.seconds() == pytest.approx(6)
    provider.stop()
    # a leaf whose rotate point already passed (e.g. the reactor stalled) is retried in >= 1s
    provider._issued[BILLING] = builtin_ca._Issued(provider.leaf(BILLING), START - 100)
    provider.start(lambda: None)
    (timer,) = site.reactor.getDelayedCalls()
    assert timer.getTime() - site.reactor.seconds() == pytest.approx(1)
    provider.stop()


def test_no_timer_before_start_and_none_after_stop(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    provider = builtin_ca.BuiltinCA(site)
    provider.prepare([BILLING])
    assert site.reactor.getDelayedCalls() == []
    provider.start(lambda: None)
    assert len(site.reactor.getDelayedCalls()) == 1
    provider.stop()
    assert site.reactor.getDelayedCalls() == []


def test_an_expired_leaf_is_replaced_on_demand(tmp_path: Path) -> None:
    """Even with no timer running, leaf() never hands out an expired certificate."""
    site = make_site(tmp_path, {"leaf_ttl": "60s"})
    provider = builtin_ca.BuiltinCA(site)
    old = provider.leaf(BILLING)
    site.reactor.advance(61)
    new = provider.leaf(BILLING)
    assert new is not old
    assert new.not_after == START + 61 + 60


# --- config and hooks ------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        ({"leaf_ttl": "30s"}, "leaf_ttl", "at least 60s"),
        ({"leaf_ttl": "soon"}, "leaf_ttl", "must be a duration"),
        ({"rotate_fraction": 0.95}, "rotate_fraction", "between 0.1 and 0.9"),
        ({"rotate_fraction": 0.05}, "rotate_fraction", "between 0.1 and 0.9"),
        ({"rotate_fraction": "half"}, "rotate_fraction", "must be a number"),
        ({"rotate_fraction": True}, "rotate_fraction", "must be a number"),
        ({"ca_dir": 3}, "ca_dir", "must be a string"),
        ({"ca_dir": ""}, "ca_dir", "must not be empty"),
        ({"ttl": "1h"}, "ttl", "unknown key"),
    ],
)
def test_validation_names_the_bad_key(tmp_path: Path, section, key, message) -> None:
    problems = builtin_ca.tgw_validate_site_config(site=site_config(tmp_path, section))
    assert [(p.key, message in p.message) for p in problems] == [
        (f"sites.main.builtin_ca.{key}", True)
    ]
    assert problems[0].file == str(tmp_path / "tgw.toml")


def test_validation_accepts_good_and_empty_sections(tmp_path: Path) -> None:
    good = {"leaf_ttl": "24h", "rotate_fraction": 0.8, "ca_dir": "ca"}
    assert builtin_ca.tgw_validate_site_config(site=site_config(tmp_path, good)) == []
    assert builtin_ca.tgw_validate_site_config(site=site_config(tmp_path)) == []
    assert builtin_ca.tgw_validate_site_config(site=site_config(tmp_path, plugins=[])) == []


def test_validation_reports_a_configured_ca_dir_of_another_trust_domain(tmp_path: Path) -> None:
    builtin_ca.load_or_create_ca(tmp_path / "ca", "other.consul")
    (problem,) = builtin_ca.tgw_validate_site_config(site=site_config(tmp_path, {"ca_dir": "ca"}))
    assert problem.key == "sites.main.builtin_ca.ca_dir"
    assert str(tmp_path / "ca" / "ca.pem") in problem.message
    assert "other.consul" in problem.message


def test_settings_are_read_from_the_section(tmp_path: Path) -> None:
    provider = builtin_ca.BuiltinCA(
        make_site(tmp_path, {"leaf_ttl": "2h", "rotate_fraction": 0.25})
    )
    assert (provider.leaf_ttl, provider.rotate_fraction) == (7200.0, 0.25)


def test_hooks_register_through_pluggy_and_provide_only_when_stacked(tmp_path: Path) -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtin_ca)
    pm.check_pending()
    (providers,) = pm.hook.tgw_certificate_providers(site=make_site(tmp_path))
    assert [p.name for p in providers] == ["builtin_ca"]
    unstacked = make_site(tmp_path / "other", plugins=[])
    assert pm.hook.tgw_certificate_providers(site=unstacked) == [[]]
    assert not (tmp_path / "other" / "state").exists(), "no CA is created for unstacked sites"
