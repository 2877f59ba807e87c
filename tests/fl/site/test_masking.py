"""What a site refuses before it masks anything, stage by stage, without a federation."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from fedmed.config import FederationSection, ModelSpec, PrivacySection, SecureAggregationSection, TrainingSection
from fedmed.fl.enrolment import Roster, enrol_sites
from fedmed.fl.site.masking import SecureRelease, answer_stage
from fedmed.fl.site.runtime import SiteRuntime
from fedmed.fl.site.session import SiteSession
from fedmed.fl.site.settings import SiteSettings
from fedmed.fl.wire.instructions import Instructions
from fedmed.fl.wire.messages import SECAGG_KEY, SECAGG_ROUND, RoundRefused
from fedmed.fl.wire.secagg import SecureSetup, round_config, stage_bytes, stage_record
from secure_agg import ServerSession
from guard_helpers import policy_file


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    keys, roster = enrol_sites(tmp_path_factory.mktemp("enrolment"), ["s0", "s1", "s2"])
    settings = [SiteSettings(identity=str(k), roster=str(roster)) for k in keys]
    return settings, Roster.load(roster)


def session(settings: SiteSettings, context: Context | None, *, round: int | None = None,
            enabled: bool = True) -> SiteSession:
    """A message's session at a site with 4 training samples (the train message's when `round` is given)."""
    out = SiteSession(settings, SiteRuntime(settings), context, "train" if round else "secure aggregation")
    if round is not None:
        out.instructions = Instructions(
            round=round, num_classes=2, num_clients=3, federation=FederationSection(), model=ModelSpec(),
            training=TrainingSection(), secure_aggregation=SecureAggregationSection(enabled=enabled),
            privacy=PrivacySection(mode="none"))
        out.round, out.data = round, SimpleNamespace(train=[0] * 4, name="s0")
    return out


def start(roster: Roster, round: int = 1, length: int = 5, digest: str | None = None):
    config = round_config(SecureAggregationSection(), num_clients=3, vector_length=length)
    server = ServerSession(config, round_id=f"test/{round}/{os.urandom(4).hex()}", roster=roster.ids,
                           participants=[1, 2, 3])
    setup = SecureSetup(round=round, max_weight=10.0, roster=digest or roster.digest).record()
    return server, {c: RecordDict({SECAGG_KEY: stage_record(m.to_bytes()), SECAGG_ROUND: setup})
                    for c, m in server.start().items()}


def to_shares(server: ServerSession, settings, contexts, requests) -> dict[int, RecordDict]:
    """Run the two key stages; the SharesForward of each site, as its train message would carry it."""
    for _ in range(2):
        for c, content in requests.items():
            server.receive(stage_bytes(answer_stage(session(settings[c - 1], contexts[c]), content), "reply"))
        requests = {c: RecordDict({SECAGG_KEY: stage_record(m.to_bytes())}) for c, m in server.advance().items()}
    return requests


def fresh_contexts():
    return {c: Context(run_id=1, node_id=c, node_config={}, state=RecordDict(), run_config={}) for c in (1, 2, 3)}


def test_a_site_refuses_a_round_announced_secure_without_its_stage(federation):
    settings, _ = federation
    with pytest.raises(RoundRefused, match="carries no secure-aggregation stage; no plain update is sent"):
        SecureRelease.prepare(session(settings[0], fresh_contexts()[1], round=1), RecordDict({}))
    plain = session(settings[0], fresh_contexts()[1], round=1, enabled=False)
    assert SecureRelease.prepare(plain, RecordDict({})) is None


def test_a_site_refuses_another_roster_or_no_enrolment(federation):
    settings, roster = federation
    _, requests = start(roster, digest="0" * 64)
    with pytest.raises(RoundRefused, match="the server's roster differs from this site's"):
        answer_stage(session(settings[0], fresh_contexts()[1]), requests[1])
    _, requests = start(roster)
    with pytest.raises(RoundRefused, match="no identity key and roster"):
        answer_stage(session(SiteSettings(), fresh_contexts()[1]), requests[1])


def test_a_site_policy_sees_the_actual_config(federation, tmp_path):
    settings, roster = federation
    _, requests = start(roster)
    policy = policy_file(tmp_path, 'extends = "strict"\n[secure_aggregation]\nmin_threshold_fraction = 1.0\n')
    strict = session(SiteSettings(identity=settings[0].identity, roster=settings[0].roster, policy=policy),
                     fresh_contexts()[1])
    with pytest.raises(RoundRefused, match="threshold 2 is below this site's floor of 3"):
        answer_stage(strict, requests[1])
    assert [kind for kind, _ in strict.decisions] == ["policy_decision", "refusal"]


def test_a_site_masks_once_per_round_and_refuses_nan(federation):
    settings, roster = federation
    contexts = fresh_contexts()
    server, requests = start(roster)
    shares = to_shares(server, settings, contexts, requests)
    release = SecureRelease.prepare(session(settings[0], contexts[1], round=1), shares[1])
    with pytest.raises(RoundRefused, match="the update has 1 NaN/Inf values"):
        release.seal(np.array([0.1, np.nan, 0, 0], np.float32))
    _record, words = release.seal(np.full(4, 0.01, np.float32))
    assert words.dtype == np.dtype("<u4") and words.shape == (5,)
    with pytest.raises(RoundRefused, match="for round 1, the training for round 2"):
        SecureRelease.prepare(session(settings[0], contexts[1], round=2), shares[1])
    server, requests = start(roster)  # a second session for the same round: no second masked update
    shares = to_shares(server, settings, contexts, requests)
    with pytest.raises(RoundRefused, match="already sent a masked update for round 1"):
        SecureRelease.prepare(session(settings[0], contexts[1], round=1), shares[1])
