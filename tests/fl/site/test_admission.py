"""A strict site refuses, before any training and with audit entries, every round its policy forbids:
through the real ClientApp and server loop (in-process), and the pure checks behind it."""

from __future__ import annotations

import pytest
import torch

from audit import verify
from fedmed.config import FederationSection, ModelSpec, PrivacySection, SecureAggregationSection, TrainingSection
from fedmed.fl.server.rounds import RoundFailed, run_federation
from fedmed.fl.site.admission import round_request
from fedmed.fl.site.release import payload_summary, release_violations
from fedmed.fl.site.settings import SIMULATION_SERVER, SiteSettings
from fedmed.fl.wire.instructions import Instructions
from fedmed.fl.wire.layout import Layout
from guard_helpers import entries, grid_of, guarded_plan, guarded_sites, policy_file, secure
from policies import check_round, load_policy

STRICT = load_policy("strict")


@pytest.fixture
def no_training(monkeypatch):
    """Training of any kind fails the test: a refusal must come before it."""
    def trained(*_args, **_kwargs):
        raise AssertionError("the site trained")

    monkeypatch.setattr("fedmed.fl.site.training.train_local", trained)
    monkeypatch.setattr("fedmed.fl.site.privacy.dp_train_local", trained)


def refused_run(out, plan, sites) -> str:
    with pytest.raises(RoundFailed) as failed:
        run_federation(grid_of(sites), plan)
    return str(failed.value)


def assert_refused_and_audited(out, message: str, rule: str, stage: str = "instructions") -> None:
    assert message.count("refused") >= 2 and rule in message, message
    for party in ("site-0", "site-1", "site-2"):
        log = out / "audit" / f"{party}.jsonl"
        assert verify(log).ok
        rejected = [e["body"] for e in entries(log, "policy_decision") if not e["body"]["accepted"]]
        assert rejected and rejected[0]["stage"] == stage and any(rule in v for v in rejected[0]["violations"])
        refusals = entries(log, "refusal")
        assert len(refusals) == 1 and rule in refusals[0]["body"]["reason"] and refusals[0]["body"]["round"] == 1
        assert not entries(log, "tensor_sent") and not entries(log, "privacy_budget")
        assert not (out / "state" / party / "privacy_ledger.json").exists()
    server = out / "audit" / "server.jsonl"
    assert verify(server).ok
    assert sorted(e["body"]["peer"] for e in entries(server, "refusal")) == ["site-0", "site-1", "site-2"]


def test_strict_refuses_fedsam_which_sends_the_image_encoder(tmp_path, no_training):
    plan, sites = secure(guarded_plan(tmp_path, model=ModelSpec(image_size=32, method="fedsam")),
                         guarded_sites(tmp_path, "strict"))
    message = refused_run(tmp_path, plan, sites)
    assert_refused_and_audited(tmp_path, message, "allowed_methods")
    assert "tensors.allow" in message and "image_encoder.patch_embed" in message


def test_strict_refuses_a_round_without_differential_privacy(tmp_path, no_training):
    plan, sites = secure(guarded_plan(tmp_path, privacy={"mode": "none"}), guarded_sites(tmp_path, "strict"))
    assert_refused_and_audited(tmp_path, refused_run(tmp_path, plan, sites), "privacy.required")


def test_strict_refuses_a_round_without_secure_aggregation(tmp_path, no_training):
    plan, sites = guarded_plan(tmp_path), guarded_sites(tmp_path, "strict")
    assert_refused_and_audited(tmp_path, refused_run(tmp_path, plan, sites), "secure_aggregation.required")


def test_a_site_refuses_a_secure_round_below_its_threshold_at_setup(tmp_path, no_training):
    # all 3 of 3 must unmask for this site; the round's actual threshold is 2 (a strict majority)
    policy = policy_file(tmp_path, 'extends = "strict"\n[secure_aggregation]\nmin_threshold_fraction = 1.0\n')
    plan, sites = secure(guarded_plan(tmp_path), guarded_sites(tmp_path, policy))
    message = refused_run(tmp_path, plan, sites)
    assert "secure_aggregation.min_threshold" in message and "below this site's floor of 3" in message
    for party in ("site-0", "site-1", "site-2"):
        log = tmp_path / "audit" / f"{party}.jsonl"
        decision = entries(log, "policy_decision")[0]["body"]  # at the setup: before any key is advertised
        assert decision["stage"] == "instructions" and not decision["accepted"] and decision["round"] == 1
        assert entries(log, "refusal") and not entries(log, "tensor_sent") and verify(log).ok


def test_strict_refuses_a_server_it_does_not_know(tmp_path, no_training):
    plan, sites = secure(guarded_plan(tmp_path), guarded_sites(tmp_path, "strict", server_address="10.0.0.7:9092"))
    message = refused_run(tmp_path, plan, sites)
    assert_refused_and_audited(tmp_path, message, "servers.allowed")
    assert "10.0.0.7:9092" in message


# ---- the pure checks ------------------------------------------------------------------------

def instructions(num_clients: int = 3, **secure) -> Instructions:
    return Instructions(run_id="run", round=1, num_classes=2, num_clients=num_clients, federation=FederationSection(),
                        model=ModelSpec(), training=TrainingSection(),
                        secure_aggregation=SecureAggregationSection(**secure), privacy=PrivacySection())


SITE = SiteSettings(server_address=SIMULATION_SERVER).own_server()
LAYOUT = Layout.of({"sam.mask_decoder.iou_token.weight": torch.zeros(4, 8)})


def test_the_request_carries_the_rounds_actual_threshold_and_strict_holds_it_to_its_floor():
    # 20 sites: a strict majority is 11, strict's floor is ceil(0.6 * 20) = 12
    request = round_request(instructions(20, threshold=11), SITE, layout=LAYOUT, local_samples=64)
    assert request.secure_aggregation.threshold == 11
    assert [v.rule for v in check_round(STRICT, request, epsilon_projected=1.0)] == ["secure_aggregation.min_threshold"]
    raised = round_request(instructions(3, threshold=1), SITE, layout=LAYOUT, local_samples=64)
    assert raised.secure_aggregation.threshold == 2  # a stated threshold below a majority is raised to one


def test_the_request_takes_the_server_from_the_site_and_names_as_sam_does():
    site = SiteSettings(server_address="10.0.0.7:9092", server_tls=False).own_server()
    request = round_request(instructions(), site, layout=LAYOUT, local_samples=64)
    assert request.server.address == "10.0.0.7:9092" and request.server.tls is False
    assert request.tensor_names == ("mask_decoder.iou_token.weight",)
    unknown = round_request(instructions(), SiteSettings().own_server(), layout=LAYOUT, local_samples=64)
    assert unknown.server.address == "unknown"  # a deployed site not told its server: strict refuses it


def test_an_unmasked_payload_is_refused_where_secure_aggregation_is_required():
    request = round_request(instructions(), SITE, layout=LAYOUT, local_samples=64)
    payload = payload_summary(LAYOUT, round=1, dp_mode="sample", epsilon_after=3.0, delta=1e-5, local_samples=64)
    assert release_violations(STRICT, payload, request, masked=True) == []
    assert [v.field for v in release_violations(STRICT, payload, request, masked=False)] == ["masked"]
    over = payload_summary(LAYOUT, round=1, dp_mode="sample", epsilon_after=9.0, delta=1e-5, local_samples=64)
    assert [v.rule for v in release_violations(STRICT, over, request, masked=True)] == ["privacy.max_epsilon"]
