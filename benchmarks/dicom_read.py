"""Read time per slice: a CT volume as a DICOM series (pydicom) against the same volume as NIfTI (nibabel).

Writes one CT volume (int16 stored values, rescale slope/intercept, axial) once as an uncompressed
DICOM series with a DICOM SEG of its label, and once as NIfTI (`.nii.gz`, as Decathlon ships, and
`.nii`) with a NIfTI label. Times, alternating the formats so machine noise hits both alike, medians:
- `volume`: the image volume in HU, closest canonical orientation (`DicomSeries.read` against
  `nifti.read_volume`);
- `case`: a whole case as training serves it (image normalised and resized, labels decoded; the
  first item of the site's dataset, which loads and caches its case).

    python benchmarks/dicom_read.py [--size 512] [--depth 48] [--repeats 5]

Prints one JSON object: milliseconds per slice for each and the DICOM / NIfTI ratios (goal <= 2).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "data")]

from dicom_helpers import ras_affine, write_series  # noqa: E402  (the tests' series writer)

from fedmed.data import load_sites, write_dicom_seg  # noqa: E402
from fedmed.data.dicom.series import DicomSeries, check_series  # noqa: E402
from fedmed.data.nifti import read_volume  # noqa: E402

GEOMETRY = dict(spacing=(0.7, 0.7), step=2.0, origin=(-180.0, -180.0, 0.0))


def _volume(size: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(HU [K, rows, cols], labels [K, rows, cols]): noise around soft tissue with a liver-like blob."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    hu = rng.normal(40, 30, (depth, size, size)).astype(np.float32)
    labels = np.zeros((depth, size, size), np.uint8)
    for k in range(depth // 4, 3 * depth // 4):
        labels[k] = (yy - size * 0.45) ** 2 + (xx - size * 0.4) ** 2 < (size * 0.2) ** 2
    return np.round(hu + 60 * labels), labels


def _make(root: Path, size: int, depth: int) -> dict[str, Path]:
    hu, labels = _volume(size, depth)
    dicom = root / "dicom_site"
    datasets = write_series(dicom / "dicom" / "case0", hu, slope=1.0, intercept=-1024.0, **GEOMETRY)
    write_dicom_seg(labels, datasets, ["background", "liver"], algorithm_name="bench", algorithm_version="0",
                    model_sha256="0" * 64, out_path=dicom / "labels" / "seg.dcm")
    (dicom / "classes.json").write_text(json.dumps(["background", "liver"]))
    sites = {"dicom": dicom}
    for name, suffix in (("nifti_gz", ".nii.gz"), ("nifti", ".nii")):
        site = root / f"{name}_site"
        (site / "imagesTr").mkdir(parents=True)
        (site / "labelsTr").mkdir()
        (site / "dataset.json").write_text(json.dumps({"labels": ["background", "liver"], "modality": {"0": "CT"}}))
        nib.save(nib.Nifti1Image(np.transpose(hu, (2, 1, 0)).astype(np.int16), ras_affine(**GEOMETRY)),
                 site / "imagesTr" / f"case0{suffix}")
        nib.save(nib.Nifti1Image(np.transpose(labels, (2, 1, 0)), ras_affine(**GEOMETRY)), site / "labelsTr" / f"case0{suffix}")
        sites[name] = site
    return sites


def _series(site: Path) -> DicomSeries:
    folder = site / "dicom" / "case0"
    ordered, _ = check_series([(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in sorted(folder.iterdir())])
    return DicomSeries.from_headers(ordered)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--depth", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sites = _make(Path(tmp), args.size, args.depth)
        loaded = {name: load_sites(path, image_size=256, val_fraction=0, test_fraction=0)[0]
                  for name, path in sites.items()}
        series = _series(sites["dicom"])
        volume = {"dicom": series.read, "nifti_gz": lambda: read_volume(sites["nifti_gz"] / "imagesTr" / "case0.nii.gz"),
                  "nifti": lambda: read_volume(sites["nifti"] / "imagesTr" / "case0.nii")}
        assert np.array_equal(volume["dicom"](), volume["nifti_gz"]())  # the same volume both ways
        times: dict[str, dict[str, list[float]]] = {"volume": {}, "case": {}}
        for _ in range(args.repeats):
            for name in sites:
                started = time.perf_counter()
                volume[name]()
                times["volume"].setdefault(name, []).append(time.perf_counter() - started)
                data = loaded[name].train
                data._cache.clear()  # the dataset caches a case after its first item: time the load
                started = time.perf_counter()
                data[0]
                times["case"].setdefault(name, []).append(time.perf_counter() - started)
    ms = {kind: {name: 1000 * statistics.median(v) / args.depth for name, v in per.items()}
          for kind, per in times.items()}
    print(json.dumps({
        "volume": f"{args.size}x{args.size}x{args.depth} CT, int16, uncompressed DICOM",
        "ms_per_slice": {kind: {k: round(v, 3) for k, v in per.items()} for kind, per in ms.items()},
        "dicom_over_nifti_gz": {kind: round(per["dicom"] / per["nifti_gz"], 2) for kind, per in ms.items()},
        "dicom_over_nifti": {kind: round(per["dicom"] / per["nifti"], 2) for kind, per in ms.items()},
        "repeats": args.repeats,
    }, indent=1))


if __name__ == "__main__":
    main()
