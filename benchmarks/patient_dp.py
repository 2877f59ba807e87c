"""Patient-level against image(slice)-level DP-SGD on a synthetic volumetric federation, at equal epsilon.

fedmed's synthetic generator draws 2D pictures only, so this script stacks them into volumes: patient
p of a site is the synthetic pictures p*D .. p*D+D-1 of that site (the same scanner profile), written
as one NIfTI volume [S, S, D] with its label (Decathlon layout, modality MRI: percentile scaling),
so every volume is one patient of D slices. Then, for each target epsilon and each unit, one
`fedmed simulate --data FOLDER` run (secure aggregation on, DP-SGD, the tiny preset), each site
under a policy that extends `research` and sets `[privacy] unit` (and max_delta = 1e-5, so both units run at delta 1e-5); a run's sites have their own state
folder, so every run starts from an empty ledger. Reported per run: the mean validation Dice of the
last round (training sites), the epsilon each site reports (its ledger's, composed), the unit the
sites reported, and from the sites' ledgers the noise multiplier, sample rate and steps a round.

    python benchmarks/patient_dp.py [--sites 3] [--patients 12] [--slices 8] [--size 64] [--rounds 3]
                                    [--epsilons 4,8] [--units patient,image] [--batch 2] [--out DIR]
                                    [--timeout 900]

Prints one JSON object: the settings, and `runs`: one entry per (epsilon, unit) with `mean_dice`,
`epsilon_reported`, `privacy_unit`, `noise_multiplier`, `sample_rate`, `steps_per_round`,
`seconds` and the exact `command`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedmed.data.synthetic import site_profiles, synthetic_sample  # noqa: E402

POLICY = 'extends = "research"\n[privacy]\nrequired = true\nmodes = ["sample"]\nmax_delta = 1e-5\nunit = "{unit}"\n'


def write_federation(root: Path, *, sites: int, patients: int, slices: int, size: int, seed: int = 0) -> Path:
    """`sites` NIfTI dataset folders under `root`, each of `patients` volumes of `slices` slices."""
    for k, profile in enumerate(site_profiles(sites, seed)):
        folder = root / f"site-{k}"
        (folder / "imagesTr").mkdir(parents=True)
        (folder / "labelsTr").mkdir()
        training = []
        for p in range(patients):
            pairs = [synthetic_sample(profile, seed=seed, site=k, index=p * slices + s, image_size=size,
                                      num_classes=2) for s in range(slices)]
            image = np.stack([pair[0] for pair in pairs], axis=-1).astype(np.float32)
            label = np.stack([pair[1] for pair in pairs], axis=-1).astype(np.uint8)
            name = f"p{p:02d}.nii.gz"
            nib.save(nib.Nifti1Image(image, np.eye(4)), folder / "imagesTr" / name)
            nib.save(nib.Nifti1Image(label, np.eye(4)), folder / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        meta = {"name": folder.name, "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "organ"},
                "training": training}
        (folder / "dataset.json").write_text(json.dumps(meta))
    return root


def ledgers(state: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(state.rglob("ledgers/*.json"))]


def run(data: Path, work: Path, *, epsilon: float, unit: str, rounds: int, batch: int, timeout: float) -> dict:
    name = f"eps{epsilon:g}-{unit}"
    policy = work / f"{unit}.toml"
    policy.write_text(POLICY.format(unit=unit))
    out, state = work / "runs" / name, work / "state" / name
    command = [str(Path(sys.executable).with_name("fedmed")), "simulate", "--data", str(data), "--arch", "tiny", "--rounds",
               str(rounds), "--batch-size", str(batch), "--dp", "sample", "--epsilon", f"{epsilon:g}", "--policy",
               str(policy), "--state-dir", str(state), "--out", str(out), "--name", name]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return {"epsilon_target": epsilon, "unit": unit, "error": (done.stderr or done.stdout)[-2000:],
                "command": " ".join(command)}
    metrics = json.loads((out / "metrics.json").read_text())
    last = metrics["rounds"][-1]
    trained = [last["sites"][s] for s in last["trained"]]
    kept = ledgers(state)
    charges = [charge for ledger in kept for charge in ledger["rounds"]]
    return {
        "epsilon_target": epsilon, "unit": unit, "mean_dice": last["mean_dice"],
        "epsilon_reported": [round(s["epsilon"], 4) for s in trained],
        "privacy_unit": sorted({s.get("privacy_unit") for s in trained}, key=str),
        "ledger_units": sorted({ledger.get("unit", "image") for ledger in kept}),
        "noise_multiplier": sorted({round(c["noise_multiplier"], 4) for c in charges}),
        "sample_rate": sorted({round(c["sample_rate"], 5) for c in charges}),
        "steps_per_round": sorted({c["steps"] for c in charges}),
        "delta": sorted({ledger["delta"] for ledger in kept}),
        "seconds": round(seconds, 1), "command": " ".join(command),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--epsilons", default="4,8")
    parser.add_argument("--units", default="patient,image")
    parser.add_argument("--out", type=Path, default=None, help="work folder [a temporary one]")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per simulate run")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="fedmed-patient-dp-"))
    data = write_federation(work / "data", sites=args.sites, patients=args.patients, slices=args.slices,
                            size=args.size)
    runs = [run(data, work, epsilon=float(e), unit=u, rounds=args.rounds, batch=args.batch, timeout=args.timeout)
            for e in args.epsilons.split(",") for u in args.units.split(",")]
    print(json.dumps({"sites": args.sites, "patients_per_site": args.patients, "slices_per_patient": args.slices,
                      "size": args.size, "rounds": args.rounds, "batch": args.batch, "work": str(work),
                      "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
