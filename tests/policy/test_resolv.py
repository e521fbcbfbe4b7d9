"""The sans-IO stub-resolver rules: resolv.conf, the search list, the hosts file and
RFC 6761's localhost."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gwcore.policy.resolv import (
    ResolvConf,
    is_localhost,
    localhost_addresses,
    parse_hosts,
    parse_resolv_conf,
    search_names,
)


def test_resolv_conf_as_glibc_reads_it():
    """Nameservers in order (scope ids dropped, junk ignored), the last of search/domain
    wins, ndots capped at 15, comments with # and ;."""
    conf = parse_resolv_conf(
        "# generated\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver bogus\n"
        "domain corp.test\nsearch ns1.svc.cluster.local svc.cluster.local. ; old\n"
        "options ndots:5 timeout:2 attempts:3\n"
    )
    assert conf.nameservers == (("10.0.0.2", 53), ("fe80::1", 53))
    assert conf.search == ("ns1.svc.cluster.local", "svc.cluster.local")
    assert conf.ndots == 5
    assert parse_resolv_conf("search a.test\ndomain b.test\n").search == ("b.test",)
    assert parse_resolv_conf("options ndots:99").ndots == 15
    assert parse_resolv_conf("") == ResolvConf()  # glibc: 127.0.0.1, no search, ndots 1


@pytest.mark.parametrize(
    ("name", "ndots", "expected"),
    [
        ("db", 1, ("db.a.test", "db.b.test", "db")),
        ("db.prod", 1, ("db.prod", "db.prod.a.test", "db.prod.b.test")),
        ("db.prod", 5, ("db.prod.a.test", "db.prod.b.test", "db.prod")),
        ("db.prod.", 5, ("db.prod",)),
        ("DB", 0, ("db", "db.a.test", "db.b.test")),
    ],
)
def test_search_names_follow_ndots(name, ndots, expected):
    assert search_names(name, ("a.test", "b.test"), ndots) == expected


@given(
    st.from_regex(r"[a-z]{1,5}(\.[a-z]{1,5}){0,4}", fullmatch=True),
    st.lists(st.from_regex(r"[a-z]{1,5}\.test", fullmatch=True), max_size=3, unique=True),
    st.integers(0, 15),
)
def test_search_names_ask_the_name_once_and_each_domain_once(name, search, ndots):
    """Every candidate is asked once: the name itself and one per search domain."""
    names = search_names(name, search, ndots)
    assert sorted(names) == sorted([name, *(f"{name}.{d}" for d in search)])
    assert names.index(name) == (0 if name.count(".") >= ndots else len(search))


def test_hosts_file_lines_aliases_and_comments():
    """Every address of every line naming a host, in file order, without duplicates;
    names are case-insensitive; lines without an IP address are ignored."""
    hosts = parse_hosts(
        "127.0.0.1 localhost\n10.0.0.5 db.internal.test db # primary\n"
        "not-an-ip db.internal.test\n::5 DB.internal.test\n10.0.0.5 db.internal.test\n"
    )
    assert hosts.addresses("db.internal.test.") == ("10.0.0.5", "::5")
    assert hosts.addresses("DB") == ("10.0.0.5",)
    assert hosts.addresses("web.internal.test") == ()


@pytest.mark.parametrize(
    ("name", "local"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("api.localhost", True),
        ("localhost.example.test", False),
        ("notlocalhost", False),
    ],
)
def test_rfc6761_localhost_names(name, local):
    assert is_localhost(name) is local
    assert localhost_addresses(name) == (("127.0.0.1", "::1") if local else None)
