"""docs/certificates.md's openssl recipe produces material file_certs accepts.

The recipe's shell block is run as written with bash and the real openssl, in a
temporary directory; its TOML section, completed with the harness's site, must pass
``tgw check-config`` with no warning: the files load, the key matches, and the leaf
carries billing's SPIFFE ID in the site's trust domain.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gwcore.contract import pki
from gwcore.runtime.config_check import check_config
from tests.harness import Gateway

DOC = Path(__file__).resolve().parents[1] / "docs" / "certificates.md"
TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"  # the recipe's and the harness's


def _section(heading: str) -> str:
    text = DOC.read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_openssl_recipe_gives_a_leaf_file_certs_accepts_without_warning(
    tmp_path: Path,
) -> None:
    """Run the recipe; the leaf is CA:FALSE with billing's SPIFFE ID, and check-config with
    the documented section is OK with no warning."""
    section = _section("## Leaves from your own CA, with openssl")
    script, toml = re.findall(r"^```(?:sh|toml)\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    leaf = pki.load_leaf(
        (tmp_path / "certs" / "billing.pem").read_bytes(),
        (tmp_path / "certs" / "billing-key.pem").read_bytes(),
    )
    assert pki.uri_sans(leaf.certificate) == [
        f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/billing"
    ]
    from cryptography import x509

    constraints = leaf.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca is False
    (tmp_path / "catalog").mkdir()
    plugins_line, _, sections = toml.partition("\n\n")
    plugins = re.search(r"plugins = (\[.*\])", plugins_line)
    assert plugins is not None
    path = Gateway(
        tmp_path,
        plugins=json.loads(plugins.group(1)),
        extra_site=sections,
    ).write_config()
    checked = check_config(path)
    assert checked.ok, [str(p) for p in checked.problems]
    assert [str(w) for w in checked.warnings if "file_certs" in w.key] == []
