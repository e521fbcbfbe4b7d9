"""Tests for gwcore.policy.config: the TOML file, its validation and SectionReader."""

from __future__ import annotations

import textwrap
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gwcore.policy.config import (
    ConfigError,
    ConfigProblem,
    GatewayConfig,
    SectionReader,
    load_config,
    parse_config,
    parse_duration,
)

MINIMAL_SITE = """
[sites.edge]
listen = "tcp:8443:interface=127.0.0.1"
name = "tgw"
trust_domain = "abcd.consul"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tgw.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> list[tuple[str, str]]:
    """(key, message) for every problem load_config reports; the file must be named."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert all(p.file == str(path) for p in info.value.problems)
    return [(p.key, p.message) for p in info.value.problems]


# --- parse_duration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param(5, 5.0, id="int"),
        pytest.param(0, 0.0, id="zero"),
        pytest.param(2.5, 2.5, id="float"),
        pytest.param("5s", 5.0, id="seconds"),
        pytest.param("500ms", 0.5, id="milliseconds"),
        pytest.param("1m30s", 90.0, id="minutes-seconds"),
        pytest.param("72h", 259200.0, id="hours"),
        pytest.param("1h2m3s4ms", 3723.004, id="all-units"),
        pytest.param("1.5m", 90.0, id="fractional"),
        pytest.param("0s", 0.0, id="zero-string"),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    """Numbers are seconds; strings are Go-style durations."""
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(True, id="bool"),
        pytest.param(-1, id="negative-int"),
        pytest.param(-0.5, id="negative-float"),
        pytest.param("", id="empty"),
        pytest.param("5", id="no-unit"),
        pytest.param("-5s", id="negative-string"),
        pytest.param("5 s", id="space"),
        pytest.param(" 5s", id="leading-space"),
        pytest.param("1m30", id="trailing-number"),
        pytest.param("5d", id="days"),
        pytest.param("s", id="unit-only"),
        pytest.param("5S", id="upper-case-unit"),
        pytest.param(None, id="none"),
        pytest.param([5], id="list"),
        pytest.param(float("nan"), id="nan"),
    ],
)
def test_parse_duration_rejects(value: object) -> None:
    """Anything that is not a non-negative number or duration string is None."""
    assert parse_duration(value) is None


@given(st.integers(0, 100), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_parse_duration_sums_components(h: int, m: int, s: int, ms: int) -> None:
    """'<h>h<m>m<s>s<ms>ms' is the sum of its parts, and matches the number of seconds."""
    text = f"{h}h{m}m{s}s{ms}ms"
    expected = h * 3600 + m * 60 + s + ms / 1000
    assert parse_duration(text) == pytest.approx(expected)
    assert parse_duration(expected) == pytest.approx(expected)


# --- SectionReader -----------------------------------------------------------------------


def reader(table: dict[str, object], prefix: str = "sites.edge.files") -> SectionReader:
    return SectionReader("f.toml", prefix, table)


@pytest.mark.parametrize(
    ("table", "call", "expected_value", "expected_problems"),
    [
        pytest.param({"k": "v"}, lambda r: r.string("k"), "v", [], id="string"),
        pytest.param({}, lambda r: r.string("k", "d"), "d", [], id="string-default"),
        pytest.param(
            {}, lambda r: r.string("k", required=True), None, ["k: is required"], id="required"
        ),
        pytest.param(
            {"k": 3},
            lambda r: r.string("k", "d"),
            "d",
            ["k: must be a string, not an integer"],
            id="string-type",
        ),
        pytest.param(
            {"k": "x"},
            lambda r: r.string("k", "a", choices=("a", "b")),
            "a",
            ["k: must be one of a, b, not 'x'"],
            id="choices",
        ),
        pytest.param({"k": True}, lambda r: r.boolean("k", False), True, [], id="boolean"),
        pytest.param(
            {"k": "yes"},
            lambda r: r.boolean("k", False),
            False,
            ["k: must be true or false, not a string"],
            id="boolean-type",
        ),
        pytest.param({"k": 7}, lambda r: r.integer("k", 1), 7, [], id="integer"),
        pytest.param(
            {"k": True},
            lambda r: r.integer("k", 1),
            1,
            ["k: must be an integer, not a boolean"],
            id="integer-not-bool",
        ),
        pytest.param(
            {"k": 1.5},
            lambda r: r.integer("k", 1),
            1,
            ["k: must be an integer, not a number"],
            id="integer-not-float",
        ),
        pytest.param(
            {"k": 0},
            lambda r: r.integer("k", 1, minimum=1),
            1,
            ["k: must be at least 1, not 0"],
            id="integer-minimum",
        ),
        pytest.param(
            {"k": 101},
            lambda r: r.integer("k", 1, minimum=1, maximum=100),
            1,
            ["k: must be between 1 and 100, not 101"],
            id="integer-range",
        ),
        pytest.param({"k": 2}, lambda r: r.number("k", 1.0), 2.0, [], id="number-int"),
        pytest.param({"k": 0.5}, lambda r: r.number("k", 1.0), 0.5, [], id="number-float"),
        pytest.param({}, lambda r: r.number("k", 1.0), 1.0, [], id="number-default"),
        pytest.param(
            {"k": "2"},
            lambda r: r.number("k", 1.0),
            1.0,
            ["k: must be a number, not a string"],
            id="number-type",
        ),
        pytest.param(
            {"k": False},
            lambda r: r.number("k", 1.0),
            1.0,
            ["k: must be a number, not a boolean"],
            id="number-not-bool",
        ),
        pytest.param(
            {"k": 1.5},
            lambda r: r.number("k", 0.5, minimum=0, maximum=1),
            0.5,
            ["k: must be between 0 and 1, not 1.5"],
            id="number-range",
        ),
        pytest.param(
            {"k": -1},
            lambda r: r.number("k", 0.5, minimum=0),
            0.5,
            ["k: is out of range: -1"],
            id="number-minimum",
        ),
        pytest.param({"k": "1m30s"}, lambda r: r.duration("k", 1.0), 90.0, [], id="duration"),
        pytest.param({}, lambda r: r.duration("k", 5.0), 5.0, [], id="duration-default"),
        pytest.param(
            {"k": "soon"},
            lambda r: r.duration("k", 5.0),
            5.0,
            ["k: must be a duration (seconds, or a string like \"5s\"), not 'soon'"],
            id="duration-bad",
        ),
        pytest.param(
            {"k": "0s"},
            lambda r: r.duration("k", 5.0, minimum=0.001),
            5.0,
            ["k: must be at least 0.001s, not 0s"],
            id="duration-minimum",
        ),
        pytest.param({"k": ["a", "b"]}, lambda r: r.strings("k"), ("a", "b"), [], id="strings"),
        pytest.param({"k": "a"}, lambda r: r.strings("k"), ("a",), [], id="strings-single"),
        pytest.param(
            {"k": ["a", 1]},
            lambda r: r.strings("k"),
            (),
            ["k: must be a list of strings"],
            id="strings-mixed",
        ),
        pytest.param({"k": {"x": 1}}, lambda r: r.table_value("k"), {"x": 1}, [], id="table"),
        pytest.param(
            {"k": 1},
            lambda r: r.table_value("k"),
            {},
            ["k: must be a table, not an integer"],
            id="table-type",
        ),
    ],
)
def test_section_reader(
    table: dict[str, object],
    call: object,
    expected_value: object,
    expected_problems: list[str],
) -> None:
    """Each accessor returns the value or its default and records a prefixed problem."""
    r = reader(table)
    assert call(r) == expected_value  # type: ignore[operator]
    assert [str(p) for p in r.finish()] == [
        f"f.toml: sites.edge.files.{p}" for p in expected_problems
    ]


def test_section_reader_reports_unknown_keys() -> None:
    """Keys nobody read are unknown; tables are skipped only when allowed."""
    r = reader({"known": "x", "typo": 1, "sub": {"a": 1}})
    r.string("known")
    assert [(p.key, p.message) for p in r.finish()] == [
        ("sites.edge.files.typo", "unknown key"),
        ("sites.edge.files.sub", "unknown key"),
    ]
    r = reader({"known": "x", "sub": {"a": 1}})
    r.string("known")
    assert r.finish(allow_tables=True) == []


def test_section_reader_without_prefix_uses_bare_keys() -> None:
    """At the top level the dotted key is just the key."""
    r = reader({"oops": 1}, prefix="")
    assert r.finish() == [ConfigProblem("f.toml", "oops", "unknown key")]


# --- whole files --------------------------------------------------------------------------


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    """A file with one site and only the required keys gets the documented defaults."""
    config = load_config(write(tmp_path, MINIMAL_SITE))
    assert isinstance(config, GatewayConfig)
    assert config.file == str(tmp_path / "tgw.toml")
    assert config.base_dir == tmp_path.resolve()
    assert config.admin == "tcp:19000:interface=127.0.0.1"
    assert config.access_log == "-"
    assert config.state_dir == tmp_path.resolve() / "state"
    assert config.plugin_paths == ()
    assert config.sample_service is None
    site = config.site("edge")
    assert site.prefix == "sites.edge"
    assert (site.listen, site.name, site.datacenter) == (
        "tcp:8443:interface=127.0.0.1",
        "tgw",
        "dc1",
    )
    assert site.trust_domain == "abcd.consul"
    assert (site.role, site.default_policy, site.plugins) == ("terminating", "deny", ())
    assert site.handshake_timeout == 10.0
    assert site.connect_timeout == 5.0
    assert site.idle_timeout == 3600.0
    assert site.authz_timeout == 5.0
    assert site.drain_timeout == 10.0
    assert site.max_connections == 10000
    assert site.max_connect_attempts == 3
    assert site.max_request_headers_kb == 60  # Consul's and Envoy's default
    assert site.request_head_timeout == 60.0  # nginx's client_header_timeout
    assert (
        site.http_max_upstream_connections,
        site.http_max_idle_upstream_connections,
        site.http_upstream_idle_timeout,
        site.http_max_pending_requests,
    ) == (64, 16, 60.0, 256)
    assert site.trusted_domains == frozenset({"abcd.consul"})
    with pytest.raises(KeyError):
        config.site("missing")


def test_empty_admin_disables_the_admin_endpoint(tmp_path: Path) -> None:
    """admin = "" means no admin endpoint (GatewayConfig.admin is None)."""
    config = load_config(write(tmp_path, '[gateway]\nadmin = ""\n' + MINIMAL_SITE))
    assert config.admin is None


def test_full_file(tmp_path: Path) -> None:
    """Every key is read, durations in any form, trust domains lower-cased, sections kept."""
    config = load_config(
        write(
            tmp_path,
            """
            [gateway]
            admin = "tcp:9100"
            access_log = "/var/log/tgw.jsonl"
            state_dir = "/var/lib/tgw"
            plugin_paths = ["addons"]

            [sample_service]
            listen = "tcp:9000"
            body = "hi"

            [sites.edge]
            listen = "tcp:8443"
            name = "tgw-edge"
            datacenter = "dc2"
            trust_domain = "ABCD.Consul"
            extra_trust_domains = ["Peer.consul"]
            role = "mesh"
            default_policy = "allow"
            plugins = ["file_catalog", "intentions"]
            handshake_timeout = "500ms"
            connect_timeout = 2
            idle_timeout = "1m30s"
            authz_timeout = 0.25
            drain_timeout = "2s"
            max_connections = 50
            max_connect_attempts = 5

            [sites.edge.file_catalog]
            path = "catalog"
            """,
        )
    )
    assert config.admin == "tcp:9100"
    assert config.access_log == "/var/log/tgw.jsonl"
    assert config.state_dir == Path("/var/lib/tgw")
    assert config.plugin_paths == (tmp_path.resolve() / "addons",)
    assert config.sample_service is not None
    assert (config.sample_service.listen, config.sample_service.body) == ("tcp:9000", "hi")
    site = config.site("edge")
    assert site.trust_domain == "abcd.consul"
    assert site.extra_trust_domains == ("peer.consul",)
    assert site.trusted_domains == frozenset({"abcd.consul", "peer.consul"})
    assert (site.role, site.default_policy, site.datacenter) == ("mesh", "allow", "dc2")
    assert site.plugins == ("file_catalog", "intentions")
    assert site.handshake_timeout == 0.5
    assert site.connect_timeout == 2.0
    assert site.idle_timeout == 90.0
    assert site.authz_timeout == 0.25
    assert site.drain_timeout == 2.0
    assert (site.max_connections, site.max_connect_attempts) == (50, 5)
    assert site.plugin_section("file_catalog") == {"path": "catalog"}
    assert site.plugin_section("intentions") == {}
    r = site.reader("file_catalog")
    assert r.string("path") == "catalog"
    assert r.finish() == []
    r = site.reader("file_catalog")
    assert [p.key for p in r.finish()] == ["sites.edge.file_catalog.path"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", [("sites", "at least one [sites.NAME] table is required")], id="no-sites"),
        pytest.param(
            MINIMAL_SITE + "\n[gatway]\nadmin = 'tcp:1'\n",
            [("gatway", "unknown key; did you mean 'gateway'?")],
            id="unknown-top-level-table",
        ),
        pytest.param(
            MINIMAL_SITE + "\n[gateway]\nadmn = 'tcp:1'\n",
            [("gateway.admn", "unknown key; did you mean 'admin'?")],
            id="unknown-gateway-key",
        ),
        pytest.param(
            MINIMAL_SITE + "listn = 'tcp:1'\n",
            [("sites.edge.listn", "unknown key; did you mean 'listen'?")],
            id="unknown-site-key",
        ),
        pytest.param(
            MINIMAL_SITE + "\n[gateway]\nlog_level = 'verbose'\nlog_format = 'xml'\n",
            [
                (
                    "gateway.log_level",
                    "must be one of debug, info, warn, error, critical, not 'verbose'",
                ),
                ("gateway.log_format", "must be one of text, json, not 'xml'"),
            ],
            id="log-settings",
        ),
        pytest.param(
            "[sites.edge]\nname = 'tgw'\n",
            [("sites.edge.listen", "is required"), ("sites.edge.trust_domain", "is required")],
            id="missing-required",
        ),
        pytest.param(
            MINIMAL_SITE + "max_connections = 'many'\n",
            [("sites.edge.max_connections", "must be an integer, not a string")],
            id="wrong-type",
        ),
        pytest.param(
            MINIMAL_SITE + "connect_timeout = '5 seconds'\n",
            [
                (
                    "sites.edge.connect_timeout",
                    "must be a duration (seconds, or a string like \"5s\"), not '5 seconds'",
                )
            ],
            id="bad-duration",
        ),
        pytest.param(
            MINIMAL_SITE + "handshake_timeout = 0\n",
            [("sites.edge.handshake_timeout", "must be at least 0.001s, not 0s")],
            id="zero-handshake-timeout",
        ),
        pytest.param(
            MINIMAL_SITE + "role = 'ingress'\n",
            [("sites.edge.role", "must be one of terminating, mesh, not 'ingress'")],
            id="bad-role",
        ),
        pytest.param(
            MINIMAL_SITE + "default_policy = 'permit'\n",
            [("sites.edge.default_policy", "must be one of allow, deny, consul, not 'permit'")],
            id="bad-default-policy",
        ),
        pytest.param(
            MINIMAL_SITE + "default_policy = 'consul'\n",
            [("sites.edge.default_policy", '"consul" needs consul_intentions in plugins')],
            id="consul-default-policy-without-consul-intentions",
        ),
        pytest.param(
            MINIMAL_SITE.replace('"tgw"', '"TGW_1"'),
            [
                (
                    "sites.edge.name",
                    "'TGW_1' is not a service name (lower-case letters, digits, dashes)",
                )
            ],
            id="bad-name",
        ),
        pytest.param(
            MINIMAL_SITE.replace('"tcp:8443:interface=127.0.0.1"', '"8443"'),
            [
                (
                    "sites.edge.listen",
                    "'8443' is not an endpoint string like tcp:8443:interface=127.0.0.1",
                )
            ],
            id="listen-not-endpoint-string",
        ),
        pytest.param(
            MINIMAL_SITE.replace('"abcd.consul"', '"not a domain"'),
            [
                (
                    "sites.edge.trust_domain",
                    "'not a domain' is not a trust domain (a DNS-like name such as 1234.consul)",
                )
            ],
            id="bad-trust-domain",
        ),
        pytest.param(
            MINIMAL_SITE + "extra_trust_domains = ['ok.consul', 'bad/domain']\n",
            [("sites.edge.extra_trust_domains", "'bad/domain' is not a trust domain")],
            id="bad-extra-trust-domain",
        ),
        pytest.param(
            MINIMAL_SITE + "max_request_headers_kb = 0\nhttp_max_upstream_connections = 0\n",
            [
                ("sites.edge.max_request_headers_kb", "must be between 1 and 8192, not 0"),
                ("sites.edge.http_max_upstream_connections", "must be at least 1, not 0"),
            ],
            id="l7-limits-out-of-range",
        ),
        pytest.param(
            MINIMAL_SITE + "plugins = ['a', 'b', 'a']\n",
            [("sites.edge.plugins", "names a plugin more than once")],
            id="duplicate-plugin",
        ),
        pytest.param(
            MINIMAL_SITE + "plugins = ['intentions']\n[sites.edge.file_catalog]\npath = 'x'\n",
            [
                (
                    "sites.edge.file_catalog",
                    "is a plugin section, but the plugin is not in this site's plugins list",
                )
            ],
            id="section-for-plugin-not-in-stack",
        ),
        pytest.param(
            MINIMAL_SITE + MINIMAL_SITE.replace("sites.edge", "sites.other"),
            [("sites.other.listen", "same endpoint as sites.edge")],
            id="duplicate-listen",
        ),
        pytest.param(
            "sites = 3\n",
            [
                ("sites", "must be a table, not an integer"),
                ("sites", "at least one [sites.NAME] table is required"),
            ],
            id="sites-not-a-table",
        ),
        pytest.param(
            MINIMAL_SITE + "[sites]\nbroken = 1\n".replace("[sites]\n", ""),
            [("sites.edge.broken", "unknown key")],
            id="scalar-inside-site",
        ),
        pytest.param(
            "[sample_service]\nbody = 'x'\n" + MINIMAL_SITE,
            [("sample_service.listen", "is required")],
            id="sample-service-needs-listen",
        ),
        pytest.param(
            "[gateway]\nadmin = '19000'\n" + MINIMAL_SITE,
            [("gateway.admin", "'19000' is not an endpoint string")],
            id="admin-not-endpoint-string",
        ),
    ],
)
def test_problems(tmp_path: Path, text: str, expected: list[tuple[str, str]]) -> None:
    """Each mistake is reported with the file, the dotted key and a message."""
    assert problems_of(tmp_path, text) == expected


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    """Validation does not stop at the first problem: one run lists them all."""
    problems = problems_of(
        tmp_path,
        """
        [gateway]
        admin = "19000"
        bogus = 1

        [sites.a]
        listen = "tcp:1"
        name = "a"
        trust_domain = "x.consul"
        role = "ingress"
        connect_timeout = "never"

        [sites.b]
        name = "b"
        trust_domain = "x.consul"
        [sites.b.stray]
        """,
    )
    assert [key for key, _ in problems] == [
        "gateway.admin",
        "gateway.bogus",
        "sites.a.role",
        "sites.a.connect_timeout",
        "sites.b.listen",
        "sites.b.stray",
    ]


def test_duplicate_listen_across_three_sites_names_the_first(tmp_path: Path) -> None:
    """Every later site on a used endpoint points at the first site that used it."""
    text = (
        MINIMAL_SITE
        + MINIMAL_SITE.replace("sites.edge", "sites.b")
        + MINIMAL_SITE.replace("sites.edge", "sites.c")
    )
    assert problems_of(tmp_path, text) == [
        ("sites.b.listen", "same endpoint as sites.edge"),
        ("sites.c.listen", "same endpoint as sites.edge"),
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    """A missing file is one problem on the pseudo-key (file)."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    [problem] = info.value.problems
    assert (problem.file, problem.key) == (str(missing), "(file)")
    assert problem.message.startswith("cannot be read")


def test_a_file_that_is_not_utf8_is_one_problem_not_a_traceback(tmp_path: Path) -> None:
    """A config with a non-UTF-8 byte is one (file) problem naming the byte offset.

    Found by fuzzing (fuzz/targets.py: config_check): UnicodeDecodeError escaped
    load_config, so check-config and a SIGHUP reload died with a traceback.
    """
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[gateway]\naccess_log = "caf\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert (problem.file, problem.key) == (str(path), "(file)")
    assert problem.message.startswith("is not UTF-8 text (byte 27)")


def test_syntax_error(tmp_path: Path) -> None:
    """A TOML syntax error is one problem on the pseudo-key (syntax)."""
    path = write(tmp_path, "[sites.edge\nlisten = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [problem] = info.value.problems
    assert (problem.file, problem.key) == (str(path), "(syntax)")


def test_config_error_message_lists_every_problem() -> None:
    """str(ConfigError) is one 'file: key: message' line per problem."""
    error = ConfigError([ConfigProblem("f", "a.b", "is bad"), ConfigProblem("f", "c", "too")])
    assert str(error) == "f: a.b: is bad\nf: c: too"


def test_parse_config_takes_parsed_data() -> None:
    """parse_config validates an already parsed mapping, with paths from base_dir."""
    data = {
        "gateway": {"plugin_paths": "drop-ins"},
        "sites": {"s": {"listen": "tcp:1", "name": "s", "trust_domain": "t.consul"}},
    }
    config = parse_config(data, "inline", Path("/etc/tgw"))
    assert config.plugin_paths == (Path("/etc/tgw/drop-ins"),)
    assert config.raw is data


@pytest.mark.parametrize(
    ("base_dir", "environ", "expected"),
    [
        ("/etc/tgw", {}, "/var/lib/tgw"),
        ("/etc", {}, "/var/lib/tgw"),
        ("/etc/tgw", {"STATE_DIRECTORY": "/var/lib/tgw-a:/var/lib/other"}, "/var/lib/tgw-a"),
        ("/home/me/tgw/etc", {}, "/home/me/tgw/etc/state"),
        ("/etcetera", {}, "/etcetera/state"),
    ],
    ids=["under-etc", "etc-itself", "systemd-state-directory", "checkout", "not-etc"],
)
def test_default_state_dir_never_puts_keys_beside_a_config_in_etc(
    base_dir: str, environ: dict[str, str], expected: str
) -> None:
    """Without ``state_dir`` the CA's keys go to systemd's $STATE_DIRECTORY, else
    /var/lib/tgw for a config under /etc, else state/ beside the config."""
    from gwcore.policy.config import default_state_dir

    assert default_state_dir(Path(base_dir), environ) == Path(expected)


def test_an_explicit_state_dir_is_relative_to_the_config(tmp_path: Path) -> None:
    """``state_dir = "../var"`` (the embedded default's) resolves beside the config's directory."""
    from gwcore.policy.config import parse_config

    data = tomllib.loads(MINIMAL_SITE + '\n[gateway]\nstate_dir = "../var"\n')
    assert parse_config(data, "f.toml", tmp_path).state_dir == tmp_path / "../var"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("trust_domain", "abcd.consul\\n"),
        ("extra_trust_domains", ["peer.consul\\n"]),
        ("name", "tgw\\n"),
        ("datacenter", "dc1\\n"),
    ],
)
def test_names_with_a_trailing_newline_are_refused(tmp_path: Path, key: str, value) -> None:
    """A "$"-anchored pattern accepted "dc1\\n"; every name must match as a whole."""
    rendered = f'["{value[0]}"]' if isinstance(value, list) else f'"{value}"'
    lines = [line for line in MINIMAL_SITE.splitlines() if not line.startswith(f"{key} =")]
    text = "\n".join([*lines, f"{key} = {rendered}"]) + "\n"
    problems = problems_of(tmp_path, text)
    assert [k for k, _ in problems] == [f"sites.edge.{key}"]
