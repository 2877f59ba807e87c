"""Patient-level DP-SGD in the federation, and FedProx under DP-SGD, from the side of someone checking
the claims: a strict site on volumes trains and accounts per patient (Opacus's accountant at the
patient rate), says so to the server and in its audit log, refuses a unit its data cannot give or
its ledger did not account, and applies FedProx's term exactly once, after the noise."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedmed.config import FederationSection, ModelSpec, PrivacySection, SecureAggregationSection, StrategySection
from fedmed.config import TrainingSection
from fedmed.data import make_synthetic_sites
from fedmed.fl.launch.simulation import prepare_simulation
from fedmed.fl.server.rounds import RoundFailed, run_federation
from fedmed.fl.site import training
from fedmed.fl.site.privacy import SitePrivacy, choose_unit, dp_config
from fedmed.fl.site.runtime import dataset_fingerprint, load_site_data
from fedmed.fl.site.settings import SiteSettings
from fedmed.fl.wire.instructions import Instructions
from fedmed.fl.wire.transcript import vector_sha256
from fedmed.models import ModelConfig, build_model
from fedmed.privacy import FedmedDPOptimizer
from fedmed.privacy import train as privacy_train
from fedmed.privacy.ledger_file import ledger_path
from fl_helpers import plan_of
from guard_helpers import entries, grid_of, guarded_plan, guarded_sites, policy_file, secure
from policies import load_policy

PATIENTS, SLICES = 5, 6  # per site; the split keeps 3 patients (18 slices) to train, 1 to validate, 1 to test


def volumetric_federation(root: Path, sites: int = 3) -> Path:
    """`sites` NIfTI folders (Decathlon layout) of PATIENTS volumes [16, 16, SLICES], one patient each."""
    yy, xx = np.mgrid[:16, :16]
    for k in range(sites):
        folder = root / f"site-{k}"
        (folder / "imagesTr").mkdir(parents=True)
        (folder / "labelsTr").mkdir()
        cases = []
        for p in range(PATIENTS):
            label = np.stack([((yy - 8) ** 2 + (xx - 6 - s % 4) ** 2 <= 16 + p) for s in range(SLICES)], -1)
            image = np.where(label, 300.0, -800.0).astype(np.float32) + k * 10
            nib.save(nib.Nifti1Image(image, np.eye(4)), folder / "imagesTr" / f"p{p}.nii.gz")
            nib.save(nib.Nifti1Image(label.astype(np.uint8), np.eye(4)), folder / "labelsTr" / f"p{p}.nii.gz")
            cases.append({"image": f"./imagesTr/p{p}.nii.gz", "label": f"./labelsTr/p{p}.nii.gz"})
        (folder / "dataset.json").write_text(json.dumps({"name": folder.name, "modality": {"0": "CT"},
                                                         "labels": {"0": "background", "1": "organ"},
                                                         "training": cases}))
    return root


def volume_sites(out: Path, data: Path, policy: str, state: Path) -> list[SiteSettings]:
    base = [SiteSettings(data=str(data), partition=k, device="cpu", state_dir=str(state / f"site-{k}"))
            for k in range(3)]
    return prepare_simulation(plan_of(out), base, policy=policy)[1]


@pytest.fixture(scope="module")
def strict_volumes(tmp_path_factory):
    """One secure DP-SGD round of three strict sites on NIfTI volumes (batch: 2 patients); what each
    site's trainer was given."""
    root = tmp_path_factory.mktemp("volumes")
    data, state, out = volumetric_federation(root / "data"), root / "state", root / "run"
    seen = []
    original = privacy_train.train_dp_sgd

    def spy(model, dataset, train_config, plan, *, groups=None, **kwargs):
        seen.append((plan, groups, dataset.patient_ids()))
        return original(model, dataset, train_config, plan, groups=groups, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(privacy_train, "train_dp_sgd", spy)
        plan, sites = secure(guarded_plan(out, batch_size=2, num_clients=3), volume_sites(out, data, "strict", state))
        metrics = run_federation(grid_of(sites), plan)
    return SimpleNamespace(data=data, state=state, out=out, sites=sites, metrics=metrics, seen=seen)


def test_a_strict_site_on_volumes_trains_and_accounts_per_patient(strict_volumes):
    run = strict_volumes
    assert run.metrics["rounds"][0]["trained"] == ["site-0", "site-1", "site-2"]
    for plan, groups, patients in run.seen:  # each patient's slices clipped together
        assert plan.unit == "patient" and groups == patients and len(groups) == 3 * SLICES
        assert len(set(groups)) == 3
    for site in run.sites:
        ledger = json.loads(ledger_path(site.state_dir, dataset_fingerprint(site)).read_text())
        [charge] = ledger["rounds"]
        assert ledger["unit"] == charge["unit"] == "patient"
        assert (charge["sample_rate"], charge["steps"]) == (0.5, 2)  # 2 of 3 patients a step, not 2 of 18 slices
        assert ledger["delta"] == 1e-5  # min(1/3 patients, strict's 1e-5)
        accountant = RDPAccountant()
        accountant.history = [(charge["noise_multiplier"], 0.5, 2)]
        assert charge["epsilon_total"] == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-9)
        assert charge["epsilon_total"] <= 8.0  # the federation's target, strict's cap
        reported = run.metrics["rounds"][0]["sites"][f"site-{site.partition}"]
        assert reported["privacy_unit"] == "patient" and reported["epsilon"] == pytest.approx(charge["epsilon_total"])
        log = Path(site.audit_dir) / f"site-{site.partition}.jsonl"
        [budget] = entries(log, "privacy_budget")
        assert budget["body"]["unit"] == "patient" and budget["body"]["charge"] == charge["charge"]
    server_log = next(Path(run.out).rglob("server*.jsonl"))
    assert {e["body"]["unit"] for e in entries(server_log, "privacy_reported")} == {"patient"}


def test_a_site_that_accounted_per_patient_refuses_to_switch_its_ledger_to_images(strict_volumes, tmp_path):
    policy = policy_file(tmp_path, 'extends = "strict"\n[privacy]\nunit = "image"\n')
    out = tmp_path / "run"
    plan, sites = secure(guarded_plan(out, batch_size=2, num_clients=3),
                         volume_sites(out, strict_volumes.data, policy, strict_volumes.state))
    with pytest.raises(RoundFailed, match="site-0 declines round 1: .*epsilon is per patient, asked to charge a "
                                          "round per image"):
        run_federation(grid_of(sites), plan)
    for site in sites:  # nothing charged, nothing converted
        ledger = json.loads(ledger_path(site.state_dir, dataset_fingerprint(site)).read_text())
        assert ledger["unit"] == "patient" and len(ledger["rounds"]) == 1


def test_a_policy_requiring_patients_on_data_that_names_none_refuses_saying_why(tmp_path):
    policy = policy_file(tmp_path, 'extends = "research"\n[privacy]\nrequired = true\nunit = "patient"\n')
    sites = guarded_sites(tmp_path / "run", policy, sites=2)  # synthetic pictures: each its own patient
    with pytest.raises(RoundFailed, match="site-0 declines round 1: .*requires patient-level DP .* names no "
                                          "patients: each of its 16 training images is its own case"):
        run_federation(grid_of(sites), guarded_plan(tmp_path / "run", num_clients=2))
    assert not list(Path(sites[0].state_dir).rglob("ledgers/*.json"))  # refused before any charge


def test_auto_is_patient_where_the_data_names_patients_and_image_where_it_does_not(strict_volumes):
    volumes = load_site_data(replace(strict_volumes.sites[0], state_dir=None), image_size=32).train
    pictures = make_synthetic_sites(1, image_size=32, samples_per_site=5)[0].train
    for rule, expected in (("auto", ("patient", "image")), ("image", ("image", "image"))):
        policy = load_policy("strict").model_copy(update={"privacy": load_policy("strict").privacy.model_copy(
            update={"unit": rule})})
        assert (choose_unit(policy, volumes, party="a"), choose_unit(policy, pictures, party="b")) == expected
    assert choose_unit(None, volumes, party="a") == "patient"  # no policy: the patient wherever the data says
    assert load_policy("strict").privacy.unit == load_policy("balanced").privacy.unit == "auto"


def test_fedprox_under_dp_sgd_adds_its_term_exactly_once_after_the_noise(tmp_path, monkeypatch):
    """With C and the noise ~0, each step's gradient is the proximal term alone: mu (w - w_global), once
    (a parameter hook as well would add it again inside the clipped, averaged sum)."""
    mu = 0.5
    data = make_synthetic_sites(1, image_size=32, samples_per_site=20)[0]
    model = build_model(ModelConfig(image_size=32))
    params = dict(model.named_parameters())
    anchor = {id(params[n]): params[n].detach().clone() for n in model.trainable_names}
    instructions = Instructions(
        run_id="run", round=1, num_classes=2, num_clients=3, federation=FederationSection(rounds=1),
        model=ModelSpec(image_size=32), training=TrainingSection(batch_size=4, lr=0.01),
        strategy=StrategySection(name="fedprox", proximal_mu=mu), secure_aggregation=SecureAggregationSection(),
        privacy=PrivacySection(mode="sample", noise_multiplier=1e-6, max_grad_norm=1e-9))
    privacy = SitePrivacy.open(dp_config(instructions.privacy, planned_rounds=1), state_dir=str(tmp_path),
                               dataset="0" * 64, audit=None, party="site-0", policy=None, instructions=instructions,
                               train=data.train)
    session = SimpleNamespace(instructions=instructions, data=data, model=model, state_dir=None, round=1,
                              settings=SimpleNamespace(device="cpu"))
    steps = []
    original = FedmedDPOptimizer.pre_step

    def spy(self, closure=None):
        went = original(self, closure)
        steps.append([(p.grad.detach().clone(), mu * (p.detach() - anchor[id(p)])) for p in self.params])
        return went

    monkeypatch.setattr(FedmedDPOptimizer, "pre_step", spy)
    training.train_round(session, privacy, vector_sha256(np.zeros(1, dtype=np.float32)))
    assert privacy.plan.steps == len(steps) == 4 and privacy.report.unit == "image"
    moved = max(float(pull.abs().max()) for step in steps for _, pull in step)
    assert moved > 1e-4, "the weights must leave the global model for the term to show"
    for step in steps:
        for grad, pull in step:
            torch.testing.assert_close(grad, pull, atol=1e-8, rtol=1e-4)
    assert all(not params[n]._backward_hooks for n in model.trainable_names)  # no hook route under DP-SGD
