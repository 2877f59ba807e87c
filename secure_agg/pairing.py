"""Keys shared by a pair of clients, and the framing of the shares one sends the other.

Both keys of a pair come from X25519 between one client's private key and the other's public
key, then HKDF-SHA256 with an ``info`` naming the purpose, the round and the unordered pair, so
no key is ever reused across purposes, rounds or pairs:

- ``share-encryption``: the AES-256-GCM key of the shares one sends the other
  (additional data: round, sender, recipient);
- ``pairwise-mask``: the seed of the mask that the lower id adds and the higher id subtracts.
"""

from __future__ import annotations

from collections.abc import Mapping

from . import crypto, shamir
from .crypto import DOMAIN, CryptoError, lp, u64
from .errors import ForgedMessageError

SHARE_PLAINTEXT_BYTES = 16 + 2 * shamir.SHARE_BYTES  # sender, recipient, seed share, key share


def pair_info(purpose: bytes, round_id: str, a: int, b: int) -> bytes:
    """HKDF ``info`` binding a pairwise key to its purpose, the round and the (unordered) pair."""
    return purpose + lp(round_id.encode()) + u64(min(a, b)) + u64(max(a, b))


def share_aad(round_id: str, sender: int, recipient: int) -> bytes:
    return DOMAIN + b"share" + lp(round_id.encode()) + u64(sender) + u64(recipient)


def pairwise_keys(private: bytes, me: int, peers: Mapping[int, bytes], purpose: bytes, round_id: str) -> dict[int, bytes]:
    """{peer: key agreed with its public key for ``purpose``}; a bad public key names its owner."""
    ids = sorted(peers)
    try:
        keys = crypto.agree_many(private, [(peers[v], pair_info(purpose, round_id, me, v)) for v in ids])
    except CryptoError as exc:
        raise ForgedMessageError(f"unusable public key for {purpose.decode()}: {exc}", client=ids[exc.index]) from exc
    return dict(zip(ids, keys))
