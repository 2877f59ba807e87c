"""1000 random single mutations of a valid log: every one is detected, at the right line.

Mutation kinds (round robin, random positions, seeded): a flipped byte, a deleted line, two
lines swapped, a line duplicated elsewhere, a line inserted (a forged entry signed with another
key, an entry of another log signed with the *same* key, or junk), a truncation at any byte,
and an entry altered and re-signed with another key (with every later entry re-chained).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import pytest
from audit_logs import write_site_log

from audit import PartyKey, canonical_json, verify
from audit.entries import SIG_DOMAIN, entry_hash

KINDS = ("flip", "delete", "swap", "duplicate", "insert", "truncate", "resign")
N_MUTATIONS = 1000


def _signed_line(obj: dict, key: PartyKey) -> bytes:
    obj = {k: v for k, v in obj.items() if k != "sig"}
    obj["sig"] = key.sign(SIG_DOMAIN + bytes.fromhex(entry_hash(obj))).hex()
    return canonical_json(obj)


def resign(lines: list[bytes], i: int, key: PartyKey) -> list[bytes]:
    """Alter entry i, sign it with `key`, and re-chain and re-sign every entry after it."""
    out, prev = list(lines), None
    for k in range(i, len(out)):
        obj = json.loads(out[k])
        if k == i:
            body = obj["body"]
            if obj["kind"] == "run_start":  # claim the attacker's key as the log's own
                body.update(public_key=key.public_bytes.hex(), key_fingerprint=key.fingerprint)
            elif "nbytes" in body:
                body["nbytes"] += 1
            else:
                obj["time"] = "2020-01-01T00:00:00.000000Z"
        if prev is not None:
            obj["prev_hash"] = prev
        out[k] = _signed_line(obj, key)
        prev = entry_hash(obj)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("mutations")
    log = write_site_log(base / "audit")
    # another log of the same party signed with the same key: its entries carry valid signatures
    other = write_site_log(base / "other", key_path=base / "audit" / "site-1.key")
    data = log.read_bytes()
    return dict(log=log, data=data, lines=data.split(b"\n")[:-1], other=other.read_bytes().split(b"\n")[:-1])


def mutate(kind: str, lines: list[bytes], data: bytes, other: list[bytes], rng: random.Random,
           attacker: PartyKey) -> tuple[bytes, tuple[int, int] | str]:
    """A mutated file, and where the verifier must report the first problem: a range of
    1-based lines (first bad entry or torn tail), or "open" (cut at a line boundary)."""
    n = len(lines)
    join = lambda ls: b"".join(x + b"\n" for x in ls)  # noqa: E731
    if kind == "flip":
        pos = rng.randrange(len(data))
        mutated = bytearray(data)
        mutated[pos] ^= rng.randrange(1, 256)
        line = data.count(b"\n", 0, pos) + 1
        return bytes(mutated), (line, line)
    if kind == "delete":
        i = rng.randrange(n)
        return join(lines[:i] + lines[i + 1:]), ("open" if i == n - 1 else (i + 1, i + 1))
    if kind == "swap":
        i, j = sorted(rng.sample(range(n), 2))
        ls = list(lines)
        ls[i], ls[j] = ls[j], ls[i]
        return join(ls), (i + 1, i + 1)
    if kind == "duplicate":
        i, j = rng.randrange(n), rng.randrange(n + 1)
        # a copy put just before its original stands in the right place: the original then fails
        return join(lines[:j] + [lines[i]] + lines[j:]), (j + 1, j + 1 + (i == j))
    if kind == "insert":
        j = rng.randrange(n + 1)
        how = rng.choice(("forged", "same-key", "junk"))
        if how == "forged":  # right seq, log id and prev_hash; signed with another key
            prev = entry_hash(json.loads(lines[j - 1])) if j else "0" * 64
            first = json.loads(lines[0])
            obj = dict(v=1, log_id=first["log_id"], seq=j, time=first["time"], party=first["party"],
                       kind="error", body=dict(round=None, error_type="X", message="forged"), prev_hash=prev)
            new = _signed_line(obj, attacker)
        elif how == "same-key":
            new = other[min(j, len(other) - 1)]
        else:
            new = rng.choice([b"{}", b"", b"garbage", json.dumps({"seq": j}).encode()])
        # another log's run_start at the top is a valid first entry; the original first line then fails
        return join(lines[:j] + [new] + lines[j:]), (j + 1, j + 2)
    if kind == "truncate":
        k = rng.randrange(len(data))
        at_boundary = k == 0 or data[k - 1:k] == b"\n"
        return data[:k], ("open" if at_boundary else (data.count(b"\n", 0, k) + 1,) * 2)
    if kind == "resign":
        i = rng.randrange(n)
        return join(resign(lines, i, attacker)), (i + 1, i + 1)
    raise ValueError(kind)


def test_every_single_mutation_is_detected(corpus: dict, tmp_path: Path) -> None:
    assert 25 <= len(corpus["lines"]) <= 40
    target = tmp_path / "site-1.jsonl"
    shutil.copy(corpus["log"].with_suffix(".pub"), tmp_path / "site-1.pub")
    target.write_bytes(corpus["data"])
    assert verify(target).ok

    rng, attacker = random.Random(20240611), PartyKey.generate()
    missed, counts = [], dict.fromkeys(KINDS, 0)
    t0 = time.perf_counter()
    for n in range(N_MUTATIONS):
        kind = KINDS[n % len(KINDS)]
        mutated, where = mutate(kind, corpus["lines"], corpus["data"], corpus["other"], rng, attacker)
        assert mutated != corpus["data"]
        target.unlink()  # a fresh file: rewriting one in place makes ext4 flush it on close
        target.write_bytes(mutated)
        rep = verify(target)
        counts[kind] += 1
        problem = rep.first_bad.line if rep.first_bad else rep.torn_tail.line if rep.torn_tail else None
        if rep.ok:
            missed.append(f"#{n} {kind}: NOT DETECTED")
        elif where == "open":
            if problem is not None or rep.closed:
                missed.append(f"#{n} {kind}: expected an open log, got {rep.summary()}")
        elif problem is None or not where[0] <= problem <= where[1]:
            missed.append(f"#{n} {kind}: expected the first problem at line {where}, got {rep.summary()}")
        elif rep.entries != problem - 1:
            missed.append(f"#{n} {kind}: entries before line {problem} should all verify, {rep.entries} did")
    elapsed = time.perf_counter() - t0
    assert not missed, "\n".join(missed[:20])
    assert min(counts.values()) >= N_MUTATIONS // len(KINDS)
    print(f"{N_MUTATIONS} mutations detected in {elapsed:.2f}s: {counts}")


def test_whole_log_resigned_passes_only_against_its_own_claimed_key(corpus: dict, tmp_path: Path) -> None:
    """Someone who rewrites every entry can declare their own key: only a published key catches it."""
    target = tmp_path / "site-1.jsonl"
    target.write_bytes(b"".join(x + b"\n" for x in resign(corpus["lines"], 0, PartyKey.generate())))
    embedded = verify(target)
    assert embedded.ok and embedded.trust_anchor == "embedded"
    explicit = verify(target, corpus["log"].with_suffix(".pub"))
    assert not explicit.ok and explicit.first_bad.line == 1 and explicit.first_bad.code == "key_mismatch"
