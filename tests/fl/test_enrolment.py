"""Enrolment: identity key files and the roster every party derives client ids from."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedmed.fl.enrolment import EnrolmentError, Roster, create_identity, enrol_sites, load_identity



def test_an_identity_file_is_private_never_overwritten_and_reads_back(tmp_path):
    public = create_identity(tmp_path / "a.key")
    assert stat.S_IMODE(os.stat(tmp_path / "a.key").st_mode) == 0o600
    assert load_identity(tmp_path / "a.key").public == public
    with pytest.raises(EnrolmentError, match="a.key: an identity key is already there"):
        create_identity(tmp_path / "a.key")
    other = X25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption())
    (tmp_path / "x.key").write_bytes(other)
    with pytest.raises(EnrolmentError, match="x.key: holds a .*X25519.*not an Ed25519 identity key"):
        load_identity(tmp_path / "x.key")
    with pytest.raises(EnrolmentError, match="missing.key: cannot read"):
        load_identity(tmp_path / "missing.key")


def test_roster_ids_follow_the_labels_and_bad_rosters_name_their_file(tmp_path):
    keys = {label: os.urandom(32).hex() for label in ("zeta", "alpha", "mid")}
    roster = Roster(sites=keys)
    assert [roster.label_of(i) for i in roster.ids] == ["alpha", "mid", "zeta"]
    assert roster.id_of(bytes.fromhex(keys["zeta"])) == 3 and roster.id_of(os.urandom(32)) is None
    assert Roster(sites={**keys, "zeta": os.urandom(32).hex()}).digest != roster.digest
    (tmp_path / "r.json").write_text('{"sites": {"a": "00", "b": "' + keys["mid"] + '", "c": "' + keys["mid"] + '"}}')
    with pytest.raises(EnrolmentError, match=r"r.json: not a valid roster: .*a: public key must be 64 hex digits.*"
                                             r"c and b share one public key"):
        Roster.load(tmp_path / "r.json")


def test_enrolling_again_keeps_the_keys(tmp_path):
    keys, roster = enrol_sites(tmp_path, ["s0", "s1"])
    first = Roster.load(roster)
    assert enrol_sites(tmp_path, ["s0", "s1"])[1] == roster and Roster.load(roster) == first
    assert first.id_of(load_identity(keys[1]).public) == 2
