"""A party's Ed25519 signing key: made on first use, kept private (0600), public half exportable.

The fingerprint of a public key is the SHA-256 (hex) of its 32 raw bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from audit.errors import KeyFileError

PublicKeyLike = Ed25519PublicKey | bytes | str | os.PathLike


def public_raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """SHA-256 (hex) of the raw public key bytes."""
    return hashlib.sha256(public_raw(public_key)).hexdigest()


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(source: PublicKeyLike) -> Ed25519PublicKey:
    """A public key from a key object, 32 raw bytes, 64 hex digits, or a PEM file's path."""
    if isinstance(source, Ed25519PublicKey):
        return source
    if isinstance(source, bytes) and len(source) == 32:
        return Ed25519PublicKey.from_public_bytes(source)
    if isinstance(source, str) and re.fullmatch(r"[0-9a-fA-F]{64}", source.strip()):
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(source.strip()))
    path = Path(os.fsdecode(source))
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read public key: {e.strerror}") from None
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        text = data.decode("ascii", "replace").strip()
        if re.fullmatch(r"[0-9a-fA-F]{64}", text):
            return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
        raise KeyFileError(f"{path}: not a PEM public key or 64 hex digits") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: a {type(key).__name__}, not an Ed25519 public key")
    return key


class PartyKey:
    """A party's private signing key, optionally tied to the file it lives in."""

    def __init__(self, private_key: Ed25519PrivateKey, path: Path | None = None) -> None:
        self._sk = private_key
        self.path = path
        self.public_key = private_key.public_key()
        self.public_bytes = public_raw(self.public_key)
        self.fingerprint = hashlib.sha256(self.public_bytes).hexdigest()

    @classmethod
    def generate(cls) -> PartyKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: str | os.PathLike) -> PartyKey:
        """Read a PEM (PKCS#8, unencrypted) Ed25519 key; refuse one readable by group or others."""
        path = Path(path)
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as e:
            raise KeyFileError(f"{path}: cannot read private key: {e.strerror}") from None
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{path}: private key is accessible to group/others "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
            )
        try:
            sk = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as e:
            raise KeyFileError(f"{path}: not an unencrypted PEM private key ({e})") from None
        if not isinstance(sk, Ed25519PrivateKey):
            raise KeyFileError(f"{path}: a {type(sk).__name__}, not an Ed25519 private key")
        return cls(sk, path)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike) -> PartyKey:
        """Load the key at `path`, or make one there (mode 0600, created atomically)."""
        path = Path(path)
        if path.exists():
            return cls.load(path)
        key = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = key._sk.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process made the key first: use theirs
        except FileExistsError:
            return cls.load(path)
        finally:
            tmp.unlink()
        key.path = path
        return key

    def sign(self, data: bytes) -> bytes:
        return self._sk.sign(data)

    def public_pem(self) -> bytes:
        return public_pem(self.public_key)

    def export_public(self, path: str | os.PathLike) -> Path:
        """Write the public key (PEM) to `path`, readable by all; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
        tmp.write_bytes(self.public_pem())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return path

    def __repr__(self) -> str:
        return f"PartyKey(fingerprint={self.fingerprint[:16]}…, path={self.path})"
