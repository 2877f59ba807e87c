"""Pieces of a deployment that need no SuperLink: the app bundle a site accepts, credentials."""

from __future__ import annotations

import hashlib
import io
import zipfile

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    load_ssh_private_key,
    load_ssh_public_key,
)
from flwr.cli.build import build_fab_from_disk

from fedmed.fl.launch.credentials import make_site_key, make_tls
from fedmed.fl.launch.deployment import (
    app_pyproject,
    TlsFailure,
    reach_server,
    split_address,
)
from fedmed.fl.site.runner import MAX_FAB_BYTES, MAX_FAB_ENTRIES, ForeignAppError, _pull_guard, check_fab
from flwr.supercore.inflatable.inflatable_utils import ObjectPullError


def bundle(tmp_path, pyproject: str | None = None, files: dict[str, str] | None = None) -> bytes:
    """A FAB as `flwr build` makes it from a folder with `pyproject` and `files`."""
    app = tmp_path / "app"
    app.mkdir(exist_ok=True)
    (app / "pyproject.toml").write_text(pyproject or app_pyproject())
    for name, text in (files or {}).items():
        path = app / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return build_fab_from_disk(app)


def test_the_bundle_fedmed_server_sends_is_accepted(tmp_path):
    project = check_fab(bundle(tmp_path))
    assert project["tool"]["flwr"]["app"]["components"]["clientapp"] == "fedmed.fl.site.client_app:app"


def test_a_bundle_with_code_is_refused(tmp_path):
    with pytest.raises(ForeignAppError, match="ships files of its own"):
        check_fab(bundle(tmp_path, files={"fedmed/fl/site/client_app.py": "app = None  # the server's code\n"}))


def test_a_bundle_naming_other_components_is_refused(tmp_path):
    other = app_pyproject().replace("fedmed.fl.site.client_app:app", "evil.client:app")
    with pytest.raises(ForeignAppError, match="names components"):
        check_fab(bundle(tmp_path, other))


def test_a_hand_made_archive_is_checked_too():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pyproject.toml", app_pyproject())
        archive.writestr("sitecustomize.py", "import os\n")
    with pytest.raises(ForeignAppError, match="sitecustomize.py"):
        check_fab(buffer.getvalue())
    with pytest.raises(ForeignAppError, match="unreadable"):
        check_fab(b"not a zip")


def test_a_bundle_that_would_unpack_to_much_more_is_refused_without_unpacking_it():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("pyproject.toml", app_pyproject() + " " * (100 << 20))  # 100 MiB of spaces, a ~100 kB zip
    assert len(buffer.getvalue()) < MAX_FAB_BYTES
    with pytest.raises(ForeignAppError, match="unpacks to more than"):
        check_fab(buffer.getvalue())
    many = io.BytesIO()
    with zipfile.ZipFile(many, "w") as archive:
        for _ in range(MAX_FAB_ENTRIES + 1):
            archive.writestr("pyproject.toml", app_pyproject())
    with pytest.raises(ForeignAppError, match="entries"):
        check_fab(many.getvalue())
    with pytest.raises(ForeignAppError, match="at most"):
        check_fab(b"x" * (MAX_FAB_BYTES + 1))


def test_a_message_past_the_sites_cap_is_not_pulled_on():
    guarded = _pull_guard(lambda object_id: b"x" * 600, stall_s=60, max_bytes=1000)
    guarded("a")
    with pytest.raises(ObjectPullError, match="exceeds this site's cap of 1000 bytes"):
        guarded("b")


def test_site_keys_are_openssh_ec_keys(tmp_path):
    private, public = make_site_key(tmp_path / "site-0")
    key = load_ssh_private_key(private.read_bytes(), None)
    assert key.curve.name == "secp384r1" and private.stat().st_mode & 0o077 == 0
    assert load_ssh_public_key(public.read_bytes()).public_numbers() == key.public_key().public_numbers()


def test_tls_files_and_the_fingerprint_a_site_sees(tmp_path, tls_server):
    files = make_tls(tmp_path, ("127.0.0.1", "localhost"))
    assert files.missing() == []
    certificate = x509.load_pem_x509_certificate(files.certificate.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    with tls_server(files) as address:
        digest = reach_server(address, files.ca, attempts=1)
    assert digest == hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


def test_an_untrusted_certificate_is_an_error(tmp_path, tls_server):
    files, other = make_tls(tmp_path / "a"), make_tls(tmp_path / "b")
    with tls_server(files) as address, pytest.raises(TlsFailure, match="TLS with .* failed: CERTIFICATE_VERIFY_FAILED"):
        reach_server(address, other.ca, attempts=1)


def test_addresses():
    assert split_address("127.0.0.1:9092") == ("127.0.0.1", 9092)
    assert split_address("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError):
        split_address("localhost")
