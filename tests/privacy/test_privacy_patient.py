"""Patient-level DP-SGD: per-patient clipping of summed slice gradients, sampling and accounting by patient."""

from __future__ import annotations

import json

import pytest
import torch
from opacus.accountants import RDPAccountant

from fedmed.privacy import DPSGD, DPConfig, FastClipper, GroupingError, RoundPlan, Units, dp_train_local, epsilon_of
from fedmed.privacy import dp_sgd as dp_sgd_module
from fedmed.privacy import LEDGER_FILE, LedgerMismatchError, PrivacyLedger, plan_round, site_ledger
from fedmed.train import SegmentationLoss, TrainConfig, boxes_from_masks

from privacy_helpers import TinyDataset, make_batch, perturbed_model


def _plan(clip: float, expected: float = 2.0) -> RoundPlan:
    return RoundPlan(mode="sample", unit="patient", noise_multiplier=1.0, sample_rate=0.5, steps=1, delta=1e-3,
                     max_grad_norm=clip, expected_batch_size=expected)


def _batch(n: int) -> dict:
    return {**make_batch(n), "id": [f"slice-{i}" for i in range(n)]}


def _loop_clipped_sum(model, batch: dict, labels: list[int], clip: float) -> dict[str, torch.Tensor]:
    """Per patient: its slices one at a time through the model's own forward, gradients summed, the sum clipped."""
    params = dict(model.named_parameters())
    tensors = [params[name] for name in model.trainable_names]
    loss_fn = SegmentationLoss(model.num_classes)
    boxes, present = boxes_from_masks(batch["mask"], model.num_classes)
    out = {name: torch.zeros_like(params[name]) for name in model.trainable_names}
    for patient in dict.fromkeys(labels):
        total = [torch.zeros_like(t) for t in tensors]
        for i in [i for i, label in enumerate(labels) if label == patient]:
            loss = loss_fn(model(batch["image"][i:i + 1], boxes[i:i + 1], present[i:i + 1]), batch["mask"][i:i + 1])
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            total = [t if g is None else t + g for t, g in zip(total, grads)]
        norm = torch.linalg.vector_norm(torch.stack([t.norm() for t in total]))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for name, t in zip(model.trainable_names, total):
            out[name] += factor * t
    return out


@pytest.mark.parametrize("chunk", [None, 2], ids=["one-pass", "patient-larger-than-a-chunk"])
def test_a_patients_clipped_contribution_equals_a_loop_over_its_slices(chunk):
    model = perturbed_model("fedmsa", prompt="box")
    batch, labels = _batch(5), [4, 4, 4, 1, 1]
    trainer = DPSGD(model, _plan(0.25), TrainConfig(device="cpu", box_jitter=0.0), max_physical_batch=chunk, seed=0)
    sums, losses = trainer.clipped_sum(batch, labels)
    expected = _loop_clipped_sum(model, batch, labels, 0.25)
    flat = torch.cat([sums[n].flatten() for n in model.trainable_names])
    reference = torch.cat([expected[n].flatten() for n in model.trainable_names])
    assert losses.shape == (5,)
    assert float((flat - reference).norm()) <= 1e-5 * float(reference.norm())
    assert float(reference.norm()) < 2 * 0.25  # both patients clipped: each contributes norm 0.25


def test_removing_one_patient_moves_the_clipped_sum_by_at_most_C_with_jitter_on():
    """Box jitter keyed per example: the other patients' boxes, and so their clipped gradients, stay put."""
    clip = 1e-3  # every patient clipped: each contributes a vector of norm C
    batch, labels = _batch(6), [0, 0, 1, 1, 2, 2]
    keep = [2, 3, 4, 5]  # patient 0 removed: every other example moves up two places
    without = {"image": batch["image"][keep], "mask": batch["mask"][keep], "id": [batch["id"][i] for i in keep]}
    model = perturbed_model("samed", prompt="box")
    trainer = DPSGD(model, _plan(clip), TrainConfig(device="cpu", box_jitter=0.5), seed=11)
    full, _ = trainer.clipped_sum(batch, labels)
    reduced, _ = trainer.clipped_sum(without, [1, 1, 2, 2])
    moved = torch.cat([(full[n] - reduced[n]).flatten() for n in model.trainable_names]).norm()
    assert float(moved) <= clip * (1 + 1e-4)

    # The attacker's side: with jitter drawn by batch position from a generator seeded from a number the
    # server knows (what fedmed did before), removing patient 0 shifts the others' boxes too.
    clipper = FastClipper(model)

    def positional(b: dict, lab: list[int]) -> dict:
        boxes, present = boxes_from_masks(b["mask"], model.num_classes, jitter=0.5,
                                          generator=torch.Generator().manual_seed(0))
        return clipper(b["image"], boxes, present, b["mask"], Units.of_labels(lab), max_grad_norm=clip)[0]

    old_full, old_reduced = positional(batch, labels), positional(without, [1, 1, 2, 2])
    old_moved = torch.cat([(old_full[n] - old_reduced[n]).flatten() for n in model.trainable_names]).norm()
    assert float(old_moved) > clip * 1.05


def test_rounds_sample_whole_patients(monkeypatch):
    seen = []
    record = lambda self, batch, units: seen.append((batch["id"], units)) or 0.0  # noqa: E731
    monkeypatch.setattr(dp_sgd_module.DPSGD, "step", record)
    groups = ["a", "b", "a", "c", "b", "a"]
    plan = plan_round(DPConfig(mode="sample", noise_multiplier=1.0, unit="patient"), num_samples=6, num_units=3,
                      batch_size=1, epochs=4)
    dp_sgd_module.train_dp_sgd(perturbed_model("flap-sam", num_classes=2), TinyDataset(6), TrainConfig(device="cpu"),
                               plan, groups=groups, seed=3)
    assert len(seen) == plan.steps == 12
    members = {"a": {"case-0", "case-2", "case-5"}, "b": {"case-1", "case-4"}, "c": {"case-3"}}
    for ids, units in seen:
        by_unit = {}
        for example, unit in zip(ids, units):
            by_unit.setdefault(unit, set()).add(example)
        assert all(any(found == whole for whole in members.values()) for found in by_unit.values())
    assert any(len(set(units)) > 1 for _, units in seen) and any(not ids for ids, _ in seen)


def test_patient_rounds_are_accounted_at_the_patient_rate(tmp_path):
    groups = ["p0", "p0", "p1", "p1"]  # 4 images, 2 patients
    config = DPConfig(mode="sample", noise_multiplier=1.1, unit="patient", delta=1e-3, seed=0)
    ledger = site_ledger(tmp_path, config, num_samples=2)
    train = TrainConfig(batch_size=1, epochs=1, device="cpu", box_jitter=0.1)
    result, report = dp_train_local(perturbed_model("flap-sam", num_classes=2), TinyDataset(4), train, config, ledger,
                                    round=1, groups=groups)
    assert (report.sample_rate, report.steps) == (0.5, 2)  # q = 1 / ceil(2 patients / 1), not 1 / 4 images
    opacus = RDPAccountant()
    for _ in range(2):
        opacus.step(noise_multiplier=1.1, sample_rate=0.5)
    assert report.epsilon_total == pytest.approx(opacus.get_epsilon(delta=1e-3), rel=1e-9)
    image_level = epsilon_of([(1.1, 0.25, 4)], delta=1e-3)
    assert report.epsilon_total != pytest.approx(image_level, rel=1e-3)
    assert result.steps == 2


def test_patient_unit_without_groups_is_refused_before_the_ledger_moves(tmp_path):
    config = DPConfig(mode="sample", noise_multiplier=1.1, unit="patient", delta=1e-3, seed=0)
    ledger = site_ledger(tmp_path, config, num_samples=2)
    train = TrainConfig(batch_size=1, device="cpu")
    for groups, message in ((None, "needs groups"), (["p0", "p1"], "2 patients for 4 training examples")):
        with pytest.raises(GroupingError, match=message):
            dp_train_local(perturbed_model("flap-sam", num_classes=2), TinyDataset(4), train, config, ledger, round=1,
                           groups=groups)
    assert ledger.epsilon_spent == 0.0


def test_a_ledger_keeps_its_unit_and_refuses_a_round_of_the_other(tmp_path):
    """Charges per image and per patient do not compose into one number that means either: a switch is refused."""
    patient = DPConfig(mode="sample", noise_multiplier=1.1, unit="patient", delta=1e-3, seed=0)
    ledger = site_ledger(tmp_path, patient, num_samples=2)
    train = TrainConfig(batch_size=1, epochs=1, device="cpu")
    _, report = dp_train_local(perturbed_model("flap-sam", num_classes=2), TinyDataset(4), train, patient, ledger,
                               round=1, groups=["p0", "p0", "p1", "p1"])
    assert report.unit == ledger.unit == ledger.record.rounds[0].unit == "patient"
    image = patient.model_copy(update={"unit": "image"})
    with pytest.raises(LedgerMismatchError, match="its epsilon is per patient, asked to charge a round per image"):
        site_ledger(tmp_path, image, num_samples=4)
    with pytest.raises(LedgerMismatchError, match="ledger accounts epsilon per patient, config asks for a round per image"):
        dp_train_local(perturbed_model("flap-sam", num_classes=2), TinyDataset(4), train, image, ledger, round=2)
    assert PrivacyLedger.open(tmp_path, mode="sample").unit == "patient"  # unit=None keeps the ledger's
    assert ledger.rounds == 1


def test_a_ledger_written_before_units_were_recorded_is_per_image(tmp_path):
    (tmp_path / LEDGER_FILE).write_text(json.dumps({"format": "fedmed-privacy-ledger-v2", "mode": "sample",
                                                   "delta": 1e-3, "accountant": "rdp", "rounds": []}))
    assert PrivacyLedger.open(tmp_path, mode="sample", unit="image").unit == "image"
    with pytest.raises(LedgerMismatchError, match="per image"):
        PrivacyLedger.open(tmp_path, mode="sample", unit="patient")
    client = PrivacyLedger.open(tmp_path / "client", mode="client", delta=1e-3, unit=None)
    assert client.guarantee_unit == "site"  # client-level DP protects the whole dataset
