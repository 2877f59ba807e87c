"""Credentials of a deployment: TLS certificates for the SuperLink, authentication keys of the sites.

- TLS: the SuperLink serves with a certificate signed by a CA the sites trust (`--root-certificates`).
  `Authority` is such a CA (EC P-384): `Authority.create(name)` makes one, `issue_server(hosts)`
  signs a server certificate whose subjectAltNames are `hosts` (IP addresses and DNS names: a site
  dialling any other name refuses the handshake). `make_tls(dir, hosts)` writes a fresh CA and
  server certificate in one folder (tests and trials); `fedmed provision` keeps the CA and issues
  from it (`fedmed.fl.launch.provision`).
- SuperNode authentication: each site holds an EC private key (P-384) and gives the coordinator
  its public key (both in OpenSSH format, as `ssh-keygen -t ecdsa -b 384 -N ""` writes them); the
  SuperLink lets in only SuperNodes whose key was registered. `make_site_key(path)` writes both.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA certificate sites trust, the SuperLink's certificate and private key."""

    ca: Path
    certificate: Path
    key: Path

    @classmethod
    def in_dir(cls, directory: str | Path) -> TlsFiles:
        directory = Path(directory)
        return cls(directory / "ca.pem", directory / "server.pem", directory / "server.key")

    def missing(self) -> list[Path]:
        return [path for path in (self.ca, self.certificate, self.key) if not path.is_file()]


def write_private(path: Path, data: bytes) -> None:
    """Write a private key file readable by its owner only (mode 0600 before any byte is written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)
    with os.fdopen(descriptor, "wb") as stream:
        stream.write(data)


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def host_names(hosts: tuple[str, ...] | list[str]) -> list[x509.GeneralName]:
    """subjectAltName entries: an IP address entry for an address, a DNS entry for a name."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def certificate_hosts(certificate: x509.Certificate) -> list[str]:
    """The IP addresses and DNS names a certificate is valid for (its subjectAltNames)."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] + names.get_values_for_type(x509.DNSName)


@dataclass(frozen=True)
class Authority:
    """A certificate authority: its private key and self-signed certificate."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, name: str = "fedmed federation CA", *, days: int = 30) -> Authority:
        key = ec.generate_private_key(ec.SECP384R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        certificate = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
        return cls(key, certificate)

    @classmethod
    def load(cls, key_path: Path, certificate_path: Path) -> Authority:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_path}: not an EC private key")
        return cls(key, x509.load_pem_x509_certificate(certificate_path.read_bytes()))

    def save(self, key_path: Path, certificate_path: Path) -> None:
        write_private(key_path, private_pem(self.key))
        certificate_path.write_bytes(self.certificate.public_bytes(_PEM))

    def issued(self, certificate: x509.Certificate) -> bool:
        """Whether `certificate` was signed by this authority."""
        try:
            certificate.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, x509.InvalidSignature):
            return False
        return True

    def issue_server(self, hosts: tuple[str, ...] | list[str], *, days: int = 30
                     ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        """A server key and a certificate for `hosts` (its subjectAltNames), signed by this authority."""
        if not hosts:
            raise ValueError("a server certificate needs at least one host name or address")
        key = ec.generate_private_key(ec.SECP384R1())
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(host_names(hosts)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256()))
        return key, certificate


def write_server_files(files: TlsFiles, authority: Authority, key: ec.EllipticCurvePrivateKey,
                       certificate: x509.Certificate) -> TlsFiles:
    """The CA certificate, the server certificate and its private key (0600) as `files` names them."""
    files.ca.parent.mkdir(parents=True, exist_ok=True)
    files.ca.write_bytes(authority.certificate.public_bytes(_PEM))
    files.certificate.write_bytes(certificate.public_bytes(_PEM))
    write_private(files.key, private_pem(key))
    return files


def make_tls(directory: str | Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"), *, days: int = 30) -> TlsFiles:
    """A fresh CA and a server certificate for `hosts` (IP addresses or DNS names) in `directory`."""
    authority = Authority.create(days=days)
    return write_server_files(TlsFiles.in_dir(directory), authority, *authority.issue_server(hosts, days=days))


def make_site_key(path: str | Path) -> tuple[Path, Path]:
    """A site's authentication key pair: `path` (private) and `path.pub` (public), OpenSSH format."""
    path = Path(path)
    key = ec.generate_private_key(ec.SECP384R1())
    write_private(path, key.private_bytes(_PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    public = path.with_name(path.name + ".pub")
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + b"\n")
    return path, public
