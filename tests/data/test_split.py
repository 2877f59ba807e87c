"""The site-fixed, patient-level train / val / test split."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedmed.cli.main import app
from fedmed.data import DataError, check_dataset, load_sites
from fedmed.data.split import SIDES, make_split, side_sizes

SIDE_NAMES = ("train", "val", "test")


def _sides(site) -> dict[str, list[str]]:
    return {side: sorted(set(getattr(site, side).case_ids())) for side in SIDE_NAMES}


def _patients_csv(root, groups: dict[str, list[int]]) -> None:
    lines = ["image,patient"] + [f"case{i}.png,{p}" for p, images in groups.items() for i in images]
    (root / "patients.csv").write_text("\n".join(lines) + "\n")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=40), st.sets(st.integers(0, 39), max_size=5),
       st.floats(0, 0.45), st.floats(0, 0.45))
def test_a_drawn_split_places_every_case_once_and_keeps_patients_whole(patients, held, val, test):
    cases = [SimpleNamespace(name=f"c{i}", patient=f"p{p}", held_out=i in held) for i, p in enumerate(patients)]
    sides = make_split(cases, val_fraction=val, test_fraction=test)
    placed = [n for s in SIDES for n in sides[s]]
    assert sorted(placed) == sorted(c.name for c in cases)
    side_of = {n: s for s in SIDES for n in sides[s]}
    for p in {c.patient for c in cases}:
        assert len({side_of[c.name] for c in cases if c.patient == p}) == 1
    assert all(side_of[c.name] == "test" for c in cases if c.held_out)
    if {c.patient for c in cases} - {c.patient for c in cases if c.held_out}:
        assert sides["train"]  # a patient without held-out cases always trains


def test_side_sizes():
    assert side_sizes(1, 0.2, 0.2) == (0, 0)
    assert side_sizes(2, 0.2, 0.2) == (1, 0)
    assert side_sizes(3, 0.2, 0.2) == (1, 1)
    assert side_sizes(10, 0.2, 0.2) == (2, 2)
    assert side_sizes(10, 0.0, 0.3) == (0, 3)


def test_the_kept_split_is_stable_across_loads_and_ignores_every_seed(make_2d, tmp_path):
    root = make_2d(n=15)
    keep = tmp_path / "state"
    first = _sides(load_sites(root, image_size=8, split_dir=keep)[0])
    assert (keep / "site.split.json").is_file()
    for seed in (1, 2, 3):  # what a server used to choose: the run seed; it is no longer an input at all
        assert _sides(load_sites(root, image_size=8, split_dir=keep, data_seed=seed)[0]) == first
        with pytest.raises(TypeError):
            load_sites(root, image_size=8, split_dir=keep, seed=seed)
    assert sum(len(v) for v in first.values()) == 15 and [len(first[s]) for s in SIDE_NAMES] == [9, 3, 3]


def test_fresh_splits_come_from_a_csprng_not_a_fixed_seed(make_2d):
    root = make_2d(n=40, size=8)
    draws = {json.dumps(_sides(load_sites(root, image_size=8)[0])) for _ in range(3)}
    assert len(draws) == 3  # equal draws of 40 cases: probability below 1e-15


def test_patients_never_straddle_sides(make_2d, tmp_path):
    root = make_2d(n=12, size=8)
    groups = {"anna": [0, 1, 2], "ben": [3, 4, 5], "cleo": [6, 7, 8], "dan": [9, 10, 11]}
    _patients_csv(root, groups)
    for _ in range(5):
        site = load_sites(root, image_size=8, split_dir=None)[0]
        side_of = {c: s for s, cases in _sides(site).items() for c in cases}
        for images in groups.values():
            assert len({side_of[f"case{i}"] for i in images}) == 1
        assert site.split.patients == {"train": 2, "val": 1, "test": 1}
        ids = dict(zip(site.train.case_ids(), site.train.patient_ids()))
        assert all(ids[f"case{i}"] == p for p, images in groups.items() for i in images if f"case{i}" in ids)


def test_a_kept_split_that_would_mix_a_patient_is_refused(make_2d, tmp_path):
    root = make_2d(n=6, size=8)
    keep = tmp_path / "state"
    load_sites(root, image_size=8, split_dir=keep)
    split = json.loads((keep / "site.split.json").read_text())
    train_case, val_case = split["train"][0], split["val"][0]
    _patients_csv(root, {"p": [int(train_case[4:]), int(val_case[4:])],
                         **{f"q{i}": [i] for i in range(6) if f"case{i}" not in (train_case, val_case)}})
    with pytest.raises(DataError, match="one patient on several sides") as info:
        load_sites(root, image_size=8, split_dir=keep)
    assert info.value.problems[0].path == keep / "site.split.json"


def test_a_corrupted_split_file_gets_an_error_naming_it(make_2d, tmp_path):
    root = make_2d(n=5, size=8)
    keep = tmp_path / "state"
    load_sites(root, image_size=8, split_dir=keep)
    (keep / "site.split.json").write_text('{"train": ["case0"], "val": 7')
    with pytest.raises(DataError) as info:
        load_sites(root, image_size=8, split_dir=keep)
    assert [p.path for p in info.value.problems] == [keep / "site.split.json"]
    assert "corrupt split file" in str(info.value)
    (keep / "site.split.json").write_text(json.dumps({"train": ["case0"], "val": "case1", "test": []}))
    assert "'val' must be a list" in str(check_dataset(root, split_dir=keep)[0])


def test_data_that_changed_since_the_split_is_refused(make_2d, tmp_path):
    root = make_2d(n=5, size=8)
    keep = tmp_path / "state"
    load_sites(root, image_size=8, split_dir=keep)
    (root / "images" / "case9.png").write_bytes((root / "images" / "case0.png").read_bytes())
    (root / "masks" / "case9.png").write_bytes((root / "masks" / "case0.png").read_bytes())
    with pytest.raises(DataError, match="does not place the cases case9"):
        load_sites(root, image_size=8, split_dir=keep)


def test_nnunet_splits_final_and_test_folders_are_honoured(make_nifti, tmp_path):
    root = make_nifti(n=4, depth=6)
    (root / "imagesTs").mkdir()
    (root / "labelsTs").mkdir()
    for name in ("c3",):  # move one case to the test folders
        (root / "imagesTr" / f"{name}.nii.gz").rename(root / "imagesTs" / f"{name}.nii.gz")
        (root / "labelsTr" / f"{name}.nii.gz").rename(root / "labelsTs" / f"{name}.nii.gz")
    (root / "splits_final.json").write_text(json.dumps([{"train": ["c0", "c2"], "val": ["c1"]},
                                                        {"train": ["c1", "c2"], "val": ["c0"]}]))
    (site,) = load_sites(root, image_size=8, split_dir=tmp_path / "state")
    assert _sides(site) == {"train": ["c0", "c2"], "val": ["c1"], "test": ["c3"]}
    assert "splits_final.json" in site.split.source and not (tmp_path / "state").exists()
    (root / "splits_final.json").write_text(json.dumps([{"train": ["c0"], "val": ["c1", "c3"]}]))
    problems = " ".join(str(p) for p in check_dataset(root))
    assert "splits_final.json" in problems and "does not place the cases c2" in problems
    assert "held-out case 'c3' on the val side" in problems


def test_fedmeds_own_splits_json_and_held_out_cases_without_one(make_nifti, tmp_path):
    root = make_nifti(n=3, depth=6)
    (root / "splits.json").write_text(json.dumps({"train": ["c2"], "val": ["c0"], "test": ["c1"]}))
    assert _sides(load_sites(root, image_size=8)[0]) == {"train": ["c2"], "val": ["c0"], "test": ["c1"]}


def test_nifti_patients_from_dataset_json(make_nifti):
    root = make_nifti(n=4, depth=6)
    meta = json.loads((root / "dataset.json").read_text())
    meta["patients"] = {"c0": "P1", "c1": "P1", "c2": "P2", "c3": "P3"}
    (root / "dataset.json").write_text(json.dumps(meta))
    site = load_sites(root, image_size=8)[0]
    pairs = set()
    for side in SIDE_NAMES:
        pairs |= set(zip(getattr(site, side).case_ids(), getattr(site, side).patient_ids()))
    assert pairs == {("c0", "P1"), ("c1", "P1"), ("c2", "P2"), ("c3", "P3")}
    meta["patients"] = {"c0": "P1", "c9": "P9"}
    (root / "dataset.json").write_text(json.dumps(meta))
    problems = " ".join(p.problem for p in check_dataset(root))
    assert "'c9', which is not a case" in problems and "patient of case 'c1'" in problems


def test_synthetic_split_follows_the_sites_own_data_seed():
    a = load_sites("synthetic", num_sites=2, image_size=16, samples_per_site=10, data_seed=0)
    b = load_sites("synthetic", num_sites=2, image_size=16, samples_per_site=10, data_seed=0)
    for x, y in zip(a, b):
        assert _sides(x) == _sides(y) and [len(getattr(x, s)) for s in SIDE_NAMES] == [8, 2, 2]
        assert x.train.patient_ids() == x.train.case_ids()  # one patient per picture
        assert "data seed 0" in x.split.source
    assert "data seed 5" in load_sites("synthetic", num_sites=1, data_seed=5)[0].split.source


def test_data_check_reports_the_split(make_2d, tmp_path):
    root = make_2d(n=5, size=8)
    result = CliRunner().invoke(app, ["data", "check", str(root), "--json", "--split-dir", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    split = json.loads(result.output)["sites"][0]["split"]
    assert split["cases"] == {"train": 3, "val": 1, "test": 1} and "none yet" in split["source"]
    assert not (tmp_path / "s").exists()  # a check writes nothing
    load_sites(root, image_size=8, split_dir=tmp_path / "s")
    table = CliRunner().invoke(app, ["data", "check", str(root), "--split-dir", str(tmp_path / "s")],
                               env={"COLUMNS": "250"})
    assert "3 / 1 / 1 cases" in table.output and "split file" in table.output
