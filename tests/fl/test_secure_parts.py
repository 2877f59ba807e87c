"""The parts of secure rounds without a federation: enrolment files, round settings, the error bound,
and what a site refuses before it masks anything."""

from __future__ import annotations

import math
import os
import stat
from types import SimpleNamespace

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ConfigRecord, Context, RecordDict

from fedmed.fl.enrolment import EnrolmentError, Roster, create_identity, enrol_sites, load_identity
from fedmed.fl.plan import ModelSpec
from fedmed.fl.protocol import SECAGG_KEY, SECAGG_ROUND, Instructions
from fedmed.fl.secure_client import SecureRoundRefused, handle_stage, secure_seal, stage_bytes, stage_record
from fedmed.fl.secure_config import mean_error_bound, round_config, secure_section
from fedmed.fl.site import SiteSettings
from secure_agg import ConfigError, ServerSession, pack_weighted, simulate_round, unpack_weighted

# -- enrolment ----------------------------------------------------------------------------------


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


# -- round settings and the error bound -----------------------------------------------------------


def test_a_plan_section_is_off_unless_enabled():
    assert secure_section({}) is None and secure_section({"enabled": False, "clip": 2.0}) is None
    section = secure_section({"enabled": True})
    assert section.clip == 1.0 and section.precision_bits == 16


@pytest.mark.parametrize("given, n, threshold, modulus", [
    ({}, 3, 2, 32), ({}, 10, 7, 32), ({"threshold": 2}, 5, 3, 32),  # raised to a strict majority
    ({"precision_bits": 24}, 200, 134, 64),  # 200 * 2^24 > 2^31: 64-bit words
])
def test_round_config_threshold_and_word_size(given, n, threshold, modulus):
    config = round_config(secure_section({"enabled": True, **given}), num_clients=n, vector_length=11)
    assert (config.threshold, config.modulus_bits, config.vector_length) == (threshold, modulus, 11)


def test_round_config_refuses_what_cannot_run():
    with pytest.raises(ConfigError, match="threshold 4 exceeds"):
        round_config(secure_section({"enabled": True, "threshold": 4}), num_clients=3, vector_length=5)
    with pytest.raises(ConfigError, match="could wrap"):
        round_config(secure_section({"enabled": True, "clip": 1e9, "precision_bits": 32}), num_clients=3,
                     vector_length=5)
    sparse = round_config(secure_section({"enabled": True, "graph": "sparse"}), num_clients=40, vector_length=5)
    assert sparse.graph == "sparse" and sparse.degree % 2 == 0 and 2 * sparse.threshold > sparse.degree + 1


def test_the_decoded_weighted_mean_is_within_the_documented_bound():
    config = round_config(secure_section({"enabled": True}), num_clients=3, vector_length=2001)
    weights = {1: 40, 2: 7, 3: 13}
    rng = np.random.default_rng(0)
    updates = {c: rng.normal(0, 0.01, 2000).astype(np.float32) for c in weights}
    packed = {c: pack_weighted(updates[c], w, max_weight=40, clip=config.clip) for c, w in weights.items()}
    total = simulate_round(config, packed).result.total
    mean, weight = unpack_weighted(total, max_weight=40, clip=config.clip)
    exact = sum(updates[c].astype(np.float64) * w for c, w in weights.items()) / sum(weights.values())
    bound = mean_error_bound(config, weight_fraction=weight / 40, max_abs_mean=float(np.abs(mean).max()))
    assert math.isclose(weight, 60, abs_tol=3 * 40 / 2**16)
    assert 0 < np.abs(mean - exact).max() <= bound < 4e-5  # 3 / (2^16 * 1.5), W = 60 / 40


# -- what a site refuses ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    keys, roster = enrol_sites(tmp_path_factory.mktemp("enrolment"), ["s0", "s1", "s2"])
    settings = [SiteSettings(identity=str(k), roster=str(roster)) for k in keys]
    return settings, Roster.load(roster)


def start(roster: Roster, round: int = 1, length: int = 5, digest: str | None = None):
    config = round_config(secure_section({"enabled": True}), num_clients=3, vector_length=length)
    server = ServerSession(config, round_id=f"test/{round}/{os.urandom(4).hex()}", roster=roster.ids,
                           participants=[1, 2, 3])
    setup = ConfigRecord({"round": round, "max-weight": 10.0, "roster": digest or roster.digest})
    return server, {c: RecordDict({SECAGG_KEY: stage_record(m.to_bytes()), SECAGG_ROUND: setup})
                    for c, m in server.start().items()}


def to_shares(server: ServerSession, settings, contexts, requests) -> dict[int, RecordDict]:
    """Run the two key stages; the SharesForward of each site, as its train message would carry it."""
    for _ in range(2):
        for c, content in requests.items():
            server.receive(stage_bytes(handle_stage(settings[c - 1], lambda *_: None, content, contexts[c]), "reply"))
        requests = {c: RecordDict({SECAGG_KEY: stage_record(m.to_bytes())}) for c, m in server.advance().items()}
    return requests


def instructions(round: int = 1, enabled: bool = True) -> Instructions:
    return Instructions(round=round, model=ModelSpec(), secure_aggregation={"enabled": enabled})


def fresh_contexts():
    return {c: Context(run_id=1, node_id=c, node_config={}, state=RecordDict(), run_config={}) for c in (1, 2, 3)}


def test_a_site_refuses_a_round_announced_secure_without_its_stage(federation):
    settings, _ = federation
    with pytest.raises(SecureRoundRefused, match="carries no secure-aggregation stage; no plain update is sent"):
        secure_seal(settings[0], RecordDict({}), fresh_contexts()[1], instructions())
    assert secure_seal(settings[0], RecordDict({}), fresh_contexts()[1], instructions(enabled=False)) is None


def test_a_site_refuses_another_roster_or_no_enrolment(federation):
    settings, roster = federation
    _, requests = start(roster, digest="0" * 64)
    with pytest.raises(SecureRoundRefused, match="the server's roster differs from this site's"):
        handle_stage(settings[0], lambda *_: None, requests[1], fresh_contexts()[1])
    _, requests = start(roster)
    with pytest.raises(SecureRoundRefused, match="no identity key and roster"):
        handle_stage(SiteSettings(), lambda *_: None, requests[1], fresh_contexts()[1])


def test_a_site_policy_sees_the_actual_config(federation):
    settings, roster = federation
    _, requests = start(roster)

    def policy(site, config):
        raise ValueError(f"threshold {config.threshold} is below this site's minimum 3")

    with pytest.raises(SecureRoundRefused, match="threshold 2 is below this site's minimum 3"):
        handle_stage(settings[0], policy, requests[1], fresh_contexts()[1])


def test_a_site_masks_once_per_round_and_refuses_nan(federation):
    settings, roster = federation
    contexts = fresh_contexts()
    server, requests = start(roster)
    shares = to_shares(server, settings, contexts, requests)
    site = SimpleNamespace(data=SimpleNamespace(train=[0] * 4, name="s0"))
    seal = secure_seal(settings[0], shares[1], contexts[1], instructions())
    with pytest.raises(SecureRoundRefused, match="the update has 1 NaN/Inf values"):
        seal(site, instructions(), np.array([0.1, np.nan, 0, 0], np.float32))
    key, payload, words = seal(site, instructions(), np.full(4, 0.01, np.float32))
    assert key == SECAGG_KEY and words.dtype == np.dtype("<u4") and words.shape == (5,)
    with pytest.raises(SecureRoundRefused, match="for round 1, the training for round 2"):
        secure_seal(settings[0], shares[1], contexts[1], instructions(round=2))
    server, requests = start(roster)  # a second session for the same round: no second masked update
    shares = to_shares(server, settings, contexts, requests)
    with pytest.raises(SecureRoundRefused, match="already sent a masked update for round 1"):
        secure_seal(settings[0], shares[1], contexts[1], instructions())


def test_a_simulation_enrols_its_sites_or_runs_plain(tmp_path):
    from fedmed.fl.enrolment import secure_simulation
    from fedmed.fl.plan import RunPlan

    plan = RunPlan(out=str(tmp_path), secure_aggregation={"precision_bits": 20})
    secure, sites = secure_simulation(plan, [SiteSettings(partition=k) for k in range(3)], enabled=True)
    assert secure.secure_aggregation["enabled"] and secure.secure_aggregation["precision_bits"] == 20
    roster = Roster.load(secure.roster)
    assert [roster.id_of(load_identity(s.identity).public) for s in sites] == [1, 2, 3]
    assert all(s.roster == secure.roster for s in sites)
    plain, _ = secure_simulation(plan, sites, enabled=False)
    assert plain.roster is None and secure_section(plain.secure_aggregation) is None
