"""docs/metrics.md matches the code: every metric family of ``GatewayMetrics`` is in the
reference table under its exported name, type and labels, and every name the table
documents is one the code exports."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram, Info
from prometheus_client.metrics import MetricWrapperBase

from gwcore.contract.metrics import SERVICE_LABELS, GatewayMetrics

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "metrics.md"
TYPES = {Counter: "counter", Gauge: "gauge", Histogram: "histogram", Info: "gauge"}


def reference_rows() -> dict[str, tuple[str, set[str]]]:
    """The "Reference" table: exported name -> (type cell, labels named in backticks)."""
    text = DOC.read_text()
    table = text.split("### Reference", 1)[1].split("\n### ", 1)[0]
    rows: dict[str, tuple[str, set[str]]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`tgw_"):
            continue
        labels = set(re.findall(r"`([a-z_]+)`", cells[2]))
        for name in re.findall(r"`(tgw_[a-z0-9_]+)`", cells[0]):
            rows[name] = (cells[1], labels)
    return rows


def exported(family: MetricWrapperBase) -> str:
    name = family._name
    if isinstance(family, Counter):
        return f"{name}_total"
    if isinstance(family, Info):
        return f"{name}_info"
    return name


def documented_labels(family: MetricWrapperBase) -> set[str]:
    """The labels as the table writes them: ``service`` stands for the four service
    labels (docs/metrics.md, Conventions)."""
    labels = set(family._labelnames)
    if set(SERVICE_LABELS) <= labels:
        labels = (labels - set(SERVICE_LABELS)) | {"service"}
    if isinstance(family, Info):
        labels = {"version"}  # the info's own key
    return labels


def test_every_family_is_documented_with_its_type_and_labels() -> None:
    """Each family a ``GatewayMetrics`` creates has a row with its exported name, its
    type and exactly its labels (a label added in code without the docs fails here)."""
    rows = reference_rows()
    families = [v for v in vars(GatewayMetrics()).values() if isinstance(v, MetricWrapperBase)]
    assert len(families) > 30
    for family in families:
        name = exported(family)
        assert name in rows, f"{name} is not in docs/metrics.md's reference table"
        kind, labels = rows[name]
        assert TYPES[type(family)] in kind, (name, kind)
        assert labels == documented_labels(family), (name, labels)


def test_per_service_families_all_carry_the_four_service_labels() -> None:
    """No family has a ``service`` label without ``namespace``, ``partition`` and
    ``datacenter``: two services of one name never share a series."""
    for family in vars(GatewayMetrics()).values():
        if isinstance(family, MetricWrapperBase) and "service" in family._labelnames:
            names = family._labelnames
            start = names.index("service")
            assert names[start : start + 4] == SERVICE_LABELS, family._name


def test_every_documented_name_is_exported_by_the_code() -> None:
    """A name in the reference table that no source file defines (renamed, removed) fails."""
    sources = "\n".join(
        p.read_text() for d in ("gwcore", "plugins") for p in (ROOT / d).rglob("*.py")
    )
    for name in reference_rows():
        base = re.sub(r"_(total|info)$", "", name)
        assert f'"{base}"' in sources or f'"{name}"' in sources, name


def table_values(heading: str) -> set[str]:
    """The backticked values in the first column of the table under ``heading`` (its
    header row, ``| `reason` | ...``, left out)."""
    section = DOC.read_text().split(heading, 1)[1].split("\n#", 1)[0]
    return {
        m.group(1)
        for line in section.splitlines()
        if (m := re.match(r"\|\s*`([a-z_]+)`\s*\|", line.strip()))
    } - {"reason"}


def test_the_reasons_created_at_zero_are_the_documented_reasons() -> None:
    """Every documented reason of ``tgw_downstream_rejected_total`` and
    ``tgw_tls_handshake_errors_total`` is pre-created at 0 with each site (so
    ``increase()`` sees its first event after a restart), and no undocumented one is."""
    from gwcore.contract.metrics import HANDSHAKE_REASONS, REJECTED_REASONS

    rejected = table_values("### `tgw_downstream_rejected_total` reasons")
    assert set(REJECTED_REASONS) == rejected
    handshake = table_values("### Handshake and identity rejection reasons")
    assert set(HANDSHAKE_REASONS) == handshake
