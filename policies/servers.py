"""Server identity: certificate fingerprints and the entries of a policy's server allowlist.

An allowlist entry is either
  - a certificate fingerprint, `sha256:` followed by 64 hex digits (colons and case ignored), or
  - an address pattern matched against `host:port`, case-insensitively, where `*` matches any run
    of characters and `?` one character; everything else is literal, brackets included, so IPv6
    reads naturally: `127.0.0.1:*`, `[::1]:*`, `*.consortium.example.org:9092`, `*` (any address).
A server is allowed when any entry matches its certificate fingerprint or its address.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

__all__ = [
    "FINGERPRINT_PREFIX",
    "normalize_fingerprint",
    "pem_fingerprint",
    "is_fingerprint_entry",
    "server_matches",
]

FINGERPRINT_PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.DOTALL)


def normalize_fingerprint(value: str) -> str:
    """`sha256:AB:CD:...` or `abcd...` -> 64 lowercase hex digits; `ValueError` if it is not a SHA-256."""
    text = value.strip().lower()
    if text.startswith(FINGERPRINT_PREFIX):
        text = text[len(FINGERPRINT_PREFIX) :]
    text = text.replace(":", "")
    if not _HEX64.fullmatch(text):
        raise ValueError(f"not a SHA-256 fingerprint (64 hex digits, optionally colon-separated): {value!r}")
    return text


def pem_fingerprint(pem: bytes | str) -> str:
    """SHA-256 over the DER bytes of the first certificate in a PEM text, as 64 lowercase hex digits.

    This is the fingerprint `openssl x509 -noout -fingerprint -sha256` prints (without colons).
    """
    data = pem.encode("ascii") if isinstance(pem, str) else pem
    found = _PEM_CERT.search(data)
    if found is None:
        raise ValueError("no '-----BEGIN CERTIFICATE-----' block found in the PEM text")
    try:
        der = base64.b64decode(b"".join(found.group(1).split()), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"the PEM certificate block is not valid base64: {exc}") from None
    return hashlib.sha256(der).hexdigest()


def is_fingerprint_entry(entry: str) -> bool:
    return entry.strip().lower().startswith(FINGERPRINT_PREFIX)


def server_matches(entry: str, *, address: str, certificate_sha256: str | None) -> bool:
    """Whether one allowlist entry admits a server with this address and certificate fingerprint."""
    if is_fingerprint_entry(entry):
        if certificate_sha256 is None:
            return False
        return normalize_fingerprint(entry) == normalize_fingerprint(certificate_sha256)
    return _address_regex(entry).fullmatch(address.strip().lower()) is not None


def _address_regex(pattern: str) -> re.Pattern[str]:
    parts = {"*": ".*", "?": "."}
    return re.compile("".join(parts.get(c) or re.escape(c) for c in pattern.strip().lower()), re.DOTALL)
