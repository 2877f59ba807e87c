"""Cryptographic primitives as plain functions: bytes in, bytes out.

- identity: Ed25519 (sign and verify protocol messages and public keys)
- key agreement: X25519, then HKDF-SHA256 with a purpose- and pair-specific ``info``
- authenticated encryption of shares: AES-256-GCM with a random 96-bit nonce

Everything comes from ``cryptography`` (OpenSSL); randomness from ``os.urandom``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

DOMAIN = b"fedmed-secagg/v1/"
KEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 12


class KeyPair(NamedTuple):
    private: bytes
    public: bytes


class CryptoError(ValueError):
    """A key, signature or ciphertext does not verify; callers turn it into a protocol error.

    ``index`` is the position of the offending item in a batch call, if any.
    """

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


def u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def lp(data: bytes) -> bytes:
    """Length-prefixed bytes, so that concatenations are unambiguous."""
    return struct.pack(">I", len(data)) + data


def sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()


# -- identity (Ed25519) --------------------------------------------------------------------


def generate_identity() -> KeyPair:
    """A fresh Ed25519 identity key pair (raw 32-byte private and public keys)."""
    sk = Ed25519PrivateKey.generate()
    return KeyPair(sk.private_bytes_raw(), sk.public_key().public_bytes_raw())


def identity_public(private: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def sign(private: bytes, data: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(private).sign(data)


def verify(public: bytes, signature: bytes, data: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``data`` under ``public``."""
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


# -- key agreement (X25519 + HKDF-SHA256) ---------------------------------------------------


def generate_agreement_key() -> KeyPair:
    sk = X25519PrivateKey.generate()
    return KeyPair(sk.private_bytes_raw(), sk.public_key().public_bytes_raw())


def agreement_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def agree(private: bytes, peer_public: bytes, *, info: bytes) -> bytes:
    """X25519 with ``peer_public``, then HKDF-SHA256 to a 32-byte key bound to ``info``.

    Raises :class:`CryptoError` for malformed or small-order public keys (all-zero secret).
    """
    return agree_many(private, [(peer_public, info)])[0]


def agree_many(private: bytes, peers: list[tuple[bytes, bytes]]) -> list[bytes]:
    """:func:`agree` with each ``(peer_public, info)``, loading the private key once.

    Raises :class:`CryptoError` naming the position of the first unusable public key.
    """
    sk = X25519PrivateKey.from_private_bytes(private)
    out = []
    for i, (peer_public, info) in enumerate(peers):
        try:
            shared = sk.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:
            raise CryptoError(f"X25519 key agreement failed: {exc}", index=i) from exc
        out.append(HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=DOMAIN + info).derive(shared))
    return out


# -- authenticated encryption (AES-256-GCM) -------------------------------------------------


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM; returns nonce || ciphertext || tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`seal`; raises :class:`CryptoError` if the tag or AAD does not verify."""
    if len(sealed) < NONCE_BYTES + 16:
        raise CryptoError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except InvalidTag as exc:
        raise CryptoError("authentication tag does not verify") from exc
