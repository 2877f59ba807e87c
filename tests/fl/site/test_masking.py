"""What a site refuses in a secure round before it masks or reveals anything, message by message:
the round transcript against the setup, its policy and its memory, the train message against the
transcript, and NaN updates. (Whole attacks by a scripted server are in tests/adversarial.)"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from fedmed.config import SecureAggregationSection
from fedmed.fl.enrolment import Roster, enrol_sites
from fedmed.fl.server.rounds import round_instructions
from fedmed.fl.site.masking import SecureRelease, answer_stage
from fedmed.fl.site.runtime import SiteRuntime
from fedmed.fl.site.session import SiteSession
from fedmed.fl.site.settings import SiteSettings
from fedmed.fl.wire.instructions import Instructions
from fedmed.fl.wire.layout import Layout
from fedmed.fl.wire.messages import SECAGG_KEY, SECAGG_ROUND, RoundRefused
from fedmed.fl.wire.secagg import round_config, stage_bytes, stage_record
from fedmed.fl.wire.transcript import RoundTranscript, Weighting, vector_sha256
from fedmed.models import build_model, trainable_state
from fl_helpers import small_plan
from secure_agg import ServerSession


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """Three enrolled sites, each with its own state, and the round's global vector."""
    folder = tmp_path_factory.mktemp("federation")
    keys, roster = enrol_sites(folder / "enrolment", ["s0", "s1", "s2"])
    settings = [SiteSettings(partition=k, samples_per_site=5, device="cpu", identity=str(key), roster=str(roster),
                             state_dir=str(folder / "state")) for k, key in enumerate(keys)]
    plan = small_plan(folder / "run", secure_aggregation={"enabled": True}, roster=str(roster))
    model = build_model(plan.model.build_config(num_classes=2, seed=0, checkpoint=None))
    layout = Layout.of(trainable_state(model))
    return settings, Roster.load(roster), plan, layout, layout.flatten(trainable_state(model))


def transcript(federation, *, run: str = "run-a", **changes) -> RoundTranscript:
    _, roster, plan, layout, vector = federation
    instructions = round_instructions(plan, 1, num_classes=2, num_clients=3, run_id="test-run")
    values = dict(run_id=run, round=1, roster=roster.digest, participants=(1, 2, 3),
                  config=round_config(plan.secure_aggregation, num_clients=3, vector_length=layout.numel + 1),
                  weighting=Weighting(rule="samples", max_weight=4.0), global_sha256=vector_sha256(vector),
                  instructions=instructions)
    return RoundTranscript(**{**values, **changes})


def setups(federation, script: RoundTranscript, *, round_id: str | None = None):
    """The server's setup stage for `script`: its session and each site's setup content."""
    _, roster, *_ = federation
    server = ServerSession(script.config, round_id=round_id or script.session_id, roster=roster.ids,
                           participants=list(script.participants))
    return server, {c: RecordDict({SECAGG_KEY: stage_record(m.to_bytes()), SECAGG_ROUND: script.record()})
                    for c, m in server.start().items()}


def session(settings: SiteSettings, context: Context, instructions: Instructions | None = None) -> SiteSession:
    out = SiteSession(settings, SiteRuntime(settings), context, "train" if instructions else "secure aggregation")
    if instructions is not None:
        out.prepare(instructions)
    return out


def contexts():
    return {c: Context(run_id=1, node_id=c, node_config={}, state=RecordDict(), run_config={}) for c in (1, 2, 3)}


def refusal(settings, content, context=None) -> str:
    with pytest.raises(RoundRefused) as refused:
        answer_stage(session(settings, context or contexts()[1]), content)
    return refused.value.reason


def test_a_setup_must_agree_with_its_transcript(federation):
    settings = federation[0]
    _, content = setups(federation, transcript(federation), round_id="another-session")
    assert "does not commit to the round transcript" in refusal(settings[0], content[1])
    _, content = setups(federation, transcript(federation, roster="0" * 64))
    assert "the server's roster differs from this site's" in refusal(settings[0], content[1])
    odd = transcript(federation, config=round_config(SecureAggregationSection(precision_bits=8), num_clients=3,
                                                      vector_length=federation[3].numel + 1))
    _, content = setups(federation, odd)
    assert "is not the one its announced section makes for 3 participants: precision_bits" in refusal(
        settings[0], content[1])


def test_a_site_never_joins_a_session_twice(federation):
    settings = federation[0]
    script = transcript(federation, run="run-once")
    _, content = setups(federation, script)
    answer_stage(session(settings[0], contexts()[1]), content[1])
    assert "was already run with this site" in refusal(settings[0], content[1])


def to_shares(federation, script: RoundTranscript, ctxs) -> dict[int, RecordDict]:
    """Run the setup and the key stages for all three sites; the SharesForward each train message carries."""
    settings = federation[0]
    server, requests = setups(federation, script)
    for _ in range(2):
        for c, content in requests.items():
            server.receive(stage_bytes(RecordDict({SECAGG_KEY: answer_stage(session(settings[c - 1], ctxs[c]), content)}),
                                       "reply"))
        requests = {c: RecordDict({SECAGG_KEY: stage_record(m.to_bytes())}) for c, m in server.advance().items()}
    return requests


def test_a_train_message_must_be_the_transcript_the_site_signed(federation):
    settings, _, _, _, vector = federation
    script, ctxs = transcript(federation, run="run-train"), contexts()
    shares = to_shares(federation, script, ctxs)
    faster = script.instructions.model_copy(
        update={"training": script.instructions.training.model_copy(update={"lr": 1e-30})})
    with pytest.raises(RoundRefused, match=r"not the round transcript this site signed: "
                                           r"instructions.training.lr differ"):
        SecureRelease.prepare(session(settings[0], ctxs[1], faster), shares[1], vector_sha256(vector))
    other = vector.copy()
    other[0] += 1.0
    with pytest.raises(RoundRefused, match=r"global \(the starting model\) differ"):
        SecureRelease.prepare(session(settings[0], ctxs[1], script.instructions), shares[1], vector_sha256(other))
    release = SecureRelease.prepare(session(settings[0], ctxs[1], script.instructions), shares[1],
                                    vector_sha256(vector))
    with pytest.raises(RoundRefused, match="the update has 1 NaN/Inf values"):
        release.seal(np.where(np.arange(vector.size) == 3, np.nan, 0.0).astype(np.float32))
    _record, words = release.seal(np.full(vector.size, 0.01, np.float32))
    assert words.dtype == np.dtype("<u4") and words.shape == (vector.size + 1,)


def test_a_site_refuses_a_round_announced_secure_without_its_stage(federation):
    settings, _, plan, _, vector = federation
    instructions = round_instructions(plan, 1, num_classes=2, num_clients=3, run_id="test-run")
    with pytest.raises(RoundRefused, match="carries no secure-aggregation stage; no plain update is sent"):
        SecureRelease.prepare(session(settings[0], contexts()[1], instructions), RecordDict({}), vector_sha256(vector))
