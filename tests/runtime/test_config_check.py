"""Tests for gwcore.runtime.config_check: ``tgw check-config`` reports every problem in one
run, each naming the file and the dotted key."""

from __future__ import annotations

import textwrap
from pathlib import Path

from gwcore.contract.plugin_host import ESSENTIAL_PLUGINS
from gwcore.runtime.config_check import check_config
from gwcore.testing import TRUST_DOMAIN

VALIDATOR_RAISES = """
def tgw_validate_site_config(site):
    raise KeyError("validator bug")
"""


def write_config(base: Path, text: str) -> Path:
    path = base / "tgw.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def site(key: str, port: int, plugins: list[str], extra: str = "") -> str:
    return f"""
    [sites.{key}]
    listen = "tcp:{port}:interface=127.0.0.1"
    name = "legacy-gw"
    trust_domain = "{TRUST_DOMAIN}"
    plugins = {plugins!r}
    {extra}
    """


def test_a_good_config_is_ok_and_has_a_loaded_stack_per_site(tmp_path: Path) -> None:
    (tmp_path / "catalog").mkdir()
    path = write_config(
        tmp_path,
        """
        [gateway]
        admin = "tcp:0:interface=127.0.0.1"
        access_log = ""
        [sample_service]
        listen = "tcp:0:interface=127.0.0.1"
        """
        + site("a", 8443, ["file_catalog", "builtin_ca", "intentions"])
        + """
        [sites.a.file_catalog]
        paths = ["catalog"]
        """
        + site("b", 8444, ["file_certs"])
        + """
        [sites.b.file_certs]
        """,
    )
    checked = check_config(path)
    assert checked.problems == []
    assert checked.ok
    assert checked.config is not None and checked.config.file == str(path)
    assert list(checked.stacks) == ["a", "b"]
    assert checked.stacks["a"].plugin_names == [
        "file_catalog",
        "builtin_ca",
        "intentions",
        *ESSENTIAL_PLUGINS,
    ]
    assert checked.stacks["b"].plugin_names == ["file_certs", *ESSENTIAL_PLUGINS]


def test_every_kind_of_problem_is_reported_in_one_run(tmp_path: Path) -> None:
    """Config keys, endpoints, roles, unknown plugins, plugin sections and broken
    validators, together: a bad core key does not hide the plugin problems behind it."""
    (tmp_path / "addons").mkdir()
    (tmp_path / "addons" / "raising_validator.py").write_text(VALIDATOR_RAISES)
    path = write_config(
        tmp_path,
        """
        [gateway]
        admin = "bogus:thing"
        access_log = ""
        plugin_paths = ["addons"]
        colour = "blue"
        [sample_service]
        listen = "nope:1"
        """
        + site("broken", 8443, ["file_catalog", "no_such_plugin"])
        + """
        [sites.broken.file_catalog]
        paths = ["catalog"]
        """
        + site("mesh", 8444, ["file_catalog"], 'role = "mesh"\ndefault_policy = "maybe"')
        + """
        [sites.mesh.file_catalog]
        paths = ["missing-dir"]
        """
        + site("buggy", 8445, ["raising_validator"])
        + site("badlisten", 0, []).replace('"tcp:0:interface=127.0.0.1"', '"tcp:notaport"'),
    )
    checked = check_config(path)
    assert not checked.ok and checked.config is None
    assert all(p.file == str(path) for p in checked.problems)
    found = [(p.key, p.message) for p in checked.problems]
    expected = [
        ("gateway.colour", "unknown key"),
        ("sites.mesh.default_policy", "must be one of allow, deny, consul, not 'maybe'"),
        ("gateway.admin", "'bogus:thing' is not a valid endpoint"),
        ("sample_service.listen", "'nope:1' is not a valid endpoint"),
        ("sites.broken.plugins", "unknown plugin 'no_such_plugin'"),
        ("sites.mesh.file_catalog.paths", "missing-dir"),
        ("sites.buggy.plugins", "raised while validating: KeyError('validator bug')"),
        ("sites.badlisten.listen", "'tcp:notaport' is not a valid endpoint"),
        ("sites.buggy.plugins", "needs a certificate provider"),
        ("sites.badlisten.plugins", "needs a certificate provider"),
    ]
    for key, fragment in expected:
        assert any(k == key and fragment in m for k, m in found), (key, fragment, found)
    assert len(found) == len(expected), found
    # The site whose stack did not load has no stack; the others do.
    assert set(checked.stacks) == {"mesh", "buggy", "badlisten"}


def test_toml_syntax_error_and_missing_file_are_problems(tmp_path: Path) -> None:
    """Nothing can be checked past a file that cannot be read or decoded."""
    broken = write_config(tmp_path, "[gateway\n")
    checked = check_config(broken)
    assert checked.config is None and checked.stacks == {}
    [syntax] = checked.problems
    assert syntax.key == "(syntax)" and syntax.file == str(broken)
    missing = tmp_path / "absent.toml"
    [unreadable] = check_config(missing).problems
    assert unreadable.key == "(file)" and unreadable.file == str(missing)


def test_a_mesh_site_is_valid_but_refuses_key_and_authorization_plugins(tmp_path: Path) -> None:
    """``role = "mesh"`` is available; a certificate provider or an authorization engine in
    its stack is a mistake (it would hold a key, or authorize identities it never sees)."""
    (tmp_path / "catalog").mkdir()
    catalog = '\n    [sites.{k}.file_catalog]\n    paths = ["catalog"]\n'
    good = write_config(
        tmp_path,
        site("edge", 8443, ["file_catalog"], 'role = "mesh"') + catalog.format(k="edge"),
    )
    assert check_config(good).problems == []
    bad = write_config(
        tmp_path,
        site("edge", 8443, ["file_catalog", "builtin_ca", "intentions"], 'role = "mesh"')
        + catalog.format(k="edge"),
    )
    found = [(p.key, p.message) for p in check_config(bad).problems]
    assert [k for k, _ in found] == ["sites.edge.plugins", "sites.edge.plugins"]
    assert "'builtin_ca' has nothing to do on a mesh site" in found[0][1]
    assert "'intentions' has nothing to do on a mesh site" in found[1][1]


def test_a_terminating_site_without_a_certificate_provider_is_a_problem(tmp_path: Path) -> None:
    """check-config catches what would otherwise fail only at start: no leaf source."""
    (tmp_path / "catalog").mkdir()
    path = write_config(
        tmp_path,
        '[gateway]\nadmin = ""\n'
        + site(
            "main",
            8443,
            ["file_catalog", "intentions"],
            '[sites.main.file_catalog]\npaths = ["catalog"]',
        ),
    )
    checked = check_config(path)
    assert [(p.key, p.message) for p in checked.problems] == [
        (
            "sites.main.plugins",
            "a terminating site needs a certificate provider "
            "(builtin_ca, file_certs or consul_certs)",
        )
    ]


def test_a_site_may_not_listen_on_the_admin_endpoint(tmp_path: Path) -> None:
    """Endpoint clashes between a site and [gateway] admin are caught before start."""
    path = write_config(
        tmp_path,
        '[gateway]\nadmin = "tcp:8443:interface=127.0.0.1"\n' + site("main", 8443, ["builtin_ca"]),
    )
    checked = check_config(path)
    assert [(p.key, p.message) for p in checked.problems] == [
        ("sites.main.listen", "same endpoint as gateway.admin")
    ]
