"""Camera and site profiles: each header convention reads back and predicts; placement, artifacts, look-alikes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch

from bonescan.cli import main
from bonescan.errors import ConfigError
from bonescan.synth import SITES, case_seed, difficulty_profile, generate_case, generate_cohort, site_profile
from bonescan.synth.findings import FindingPainter, lookalike_count_mean
from bonescan.synth.realism import body_mask, view_statistics

# What each camera profile must write, and the rule the reader must decide the views by.
EXPECTED = {
    "generic": (1, "view-code", "bonescan synthetic"),
    "ge-discovery": (1, "detector-vector", "GE MEDICAL SYSTEMS"),
    "siemens-symbia": (1, "view-code", "SIEMENS NM"),
    "philips-brightview": (2, "file-pair:text+view-code", "Philips Medical Systems"),
}


N_MIXED = 6


@pytest.fixture(scope="module")
def mixed_cohort(tmp_path_factory):
    """A `mixed` cohort large enough to hold every camera, plus one cohort per single profile."""
    root = tmp_path_factory.mktemp("sites")
    drawn = [site_profile("mixed", case_seed(4, i)).name for i in range(N_MIXED)]
    assert set(drawn) == set(SITES) - {"generic"}  # these studies of seed 4 cover all three cameras
    result = generate_cohort(root / "mixed", N_MIXED, seed=4, difficulty="paper", site="mixed")
    return root, result.manifest


def test_each_camera_writes_its_convention_and_the_reader_decides_views(mixed_cohort, tmp_path):
    from bonescan.cohort import load_manifest
    from bonescan.data import study_source
    from bonescan.io import find_studies, read_study

    _, manifest_path = mixed_cohort
    df = load_manifest(manifest_path)
    assert set(df["site"]) == set(SITES) - {"generic"}
    seen = set()
    for row in df.itertuples():
        files, rule, manufacturer = EXPECTED[row.site]
        source = study_source(pd.Series(row._asdict()))
        paths = [source] if isinstance(source, str) else source
        assert len(paths) == files
        study = read_study(source)
        # Ordered manifest pairs are read as given; the files themselves must agree (no warning).
        assert study.view_rule == (rule if files == 1 else "file-pair") and not study.warnings
        assert study.pixel_spacing == (SITES[row.site].pixel_spacing_mm,) * 2
        if row.site not in seen:  # the pixels are the generated ones (once per camera: generating costs time)
            again = generate_case(row.case_id, int(row.seed), "paper", site="mixed")
            assert np.array_equal(study.anterior, again.anterior)
            assert np.array_equal(study.posterior, again.posterior)
        ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
        assert ds.Manufacturer == manufacturer and ds.Modality == "NM"
        items = ds.DetectorInformationSequence
        if row.site == "ge-discovery":  # the real GE files: two frames, detector vector, no view codes
            assert list(ds.DetectorVector) == [1, 2] and not any("ViewCodeSequence" in it for it in items)
        if row.site == "siemens-symbia":
            assert [it.ViewCodeSequence[0].CodeValue for it in items] == ["G-5215", "G-5216"]
        if row.site == "philips-brightview":
            post = pydicom.dcmread(paths[1], stop_before_pixels=True)
            assert int(ds.NumberOfFrames) == int(post.NumberOfFrames) == 1
            assert ds.StudyInstanceUID == post.StudyInstanceUID and ds.SeriesInstanceUID != post.SeriesInstanceUID
        seen.add(row.site)
    assert seen == set(SITES) - {"generic"}
    # Found by folder, as `bonescan inspect` / `predict DIR` do: one study per case, views decided from the files.
    sources = find_studies([manifest_path.parent / "studies"])
    assert len(sources) == len(df) and not any(s.failed for s in sources)
    rules = {read_study(s).view_rule for s in sources}
    assert rules == {"detector-vector", "view-code", "file-pair:text+view-code"}


def test_every_site_predicts_through_the_manifest(mixed_cohort, one_thread):
    from bonescan.model import MultiViewNet
    from bonescan.fastpath import InferenceEngine
    from bonescan.predict import OperatingPoint, manifest_studies, predict_sources
    from bonescan.preprocess import PreprocessConfig

    _, manifest_path = mixed_cohort
    torch.manual_seed(0)
    model = MultiViewNet(backbone="resnet10", trunk_width=8, hidden=16, dropout=0.0).eval()
    engine = InferenceEngine(model, device="cpu", precision="fp32", compile="off", batch_size=4)
    studies = manifest_studies(manifest_path)
    report = predict_sources(studies.sources, model, PreprocessConfig(height=64, width=32), engine,
                             OperatingPoint("0.5", 0.5), workers=1, case_ids=studies.case_ids)
    assert report.ok and len(report.studies) == N_MIXED
    assert all(0.0 <= s.probability <= 1.0 for s in report.studies)


def test_ge_places_the_body_from_the_top_and_leaves_the_feet_end_empty():
    ge = [view_statistics(generate_case("g", case_seed(8, i), "paper", site="ge-discovery").anterior).values
          for i in range(6)]
    generic = [view_statistics(generate_case("g", case_seed(8, i), "paper").anterior).values for i in range(6)]
    # Measured on real GE Discovery 670 studies: the vertex near the top row, 24-31 % of rows empty below.
    assert all(v["top_margin"] < 0.06 for v in ge)
    assert 0.22 <= np.median([v["empty_below"] for v in ge]) <= 0.33
    assert all(0.3e6 <= v["counts"] <= 0.75e6 for v in ge)
    # The generic phantom places bodies anywhere: its margins spread much wider.
    assert np.ptp([v["top_margin"] for v in generic]) > 3 * np.ptp([v["top_margin"] for v in ge])
    # Bone stands out more against soft tissue than on the generic phantom, as it did on the real studies.
    assert np.median([v["bone_soft_ratio"] for v in ge]) > 1.1 * np.median([v["bone_soft_ratio"] for v in generic])


def test_urinary_catheter_runs_to_a_bag_between_the_feet():
    case = None
    for i in range(400):
        c = generate_case("u", case_seed(21, i), "paper", site="ge-discovery")
        if any(f.kind == "urinary_catheter" for f in c.findings):
            case = c
            break
    assert case is not None
    parts = [f for f in case.findings if f.kind == "urinary_catheter"]
    assert {f.category for f in parts} == {"artifact"} and len(parts) == 2  # the tube and the bag
    bag = max(parts, key=lambda f: f.centre_anterior[0])
    rows = case.anterior.sum(axis=1)
    feet = np.flatnonzero(rows > 0.02 * rows.max())[-1]
    midline = case.patient.centre_col
    assert abs(bag.centre_anterior[0] - feet) < 0.1 * case.patient.height_px
    assert abs(bag.centre_anterior[1] - midline) < 15
    r, c = (int(round(v)) for v in bag.centre_anterior)
    body = case.anterior[body_mask(case.anterior)]
    assert case.anterior[r - 3:r + 4, c - 3:c + 4].mean() > 3 * np.median(body)


def test_ge_injection_sites_are_mostly_at_the_wrist():
    painter_share = SITES["ge-discovery"].wrist_injection_share
    assert painter_share > FindingPainter.__dataclass_fields__["wrist_injection_share"].default


def test_metastasis_lookalikes_come_with_age_in_men_and_sit_where_metastases_do():
    profile = difficulty_profile("demo")
    assert lookalike_count_mean(75, "M", profile) > 4 * lookalike_count_mean(45, "M", profile)
    assert lookalike_count_mean(75, "M", profile) > 1.5 * lookalike_count_mean(75, "F", profile)
    assert lookalike_count_mean(75, "M", difficulty_profile("easy")) == 0.0  # `easy` stays easy
    kinds = set(FindingPainter.LOOKALIKE_KINDS)
    old_men = young_women = 0
    for i in range(90):
        case = generate_case("l", case_seed(6, i), "demo")
        d = case.demographics
        found = [f for f in case.findings if f.kind in kinds]
        if d.grade == 0:
            assert not found
        for f in found:
            assert f.category == "benign" and f.region in FindingPainter.METASTASIS_REGIONS
            assert profile.lookalike_contrast[0] <= f.contrast <= profile.lookalike_contrast[1]
        if d.sex == "M" and d.age >= 65:
            old_men += len(found)
        if d.sex == "F" and d.age < 55:
            young_women += len(found)
    assert old_men > 3 * max(young_women, 1)


def test_unknown_site_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="ge-discovery"):
        generate_case("x", 1, "paper", site="acme")
    assert main(["synth", "--out", str(tmp_path / "c"), "--cases", "2", "--site", "acme"]) == 2
    err = capsys.readouterr().err
    assert "--site" in err and "acme" in err and len(err.strip().splitlines()) == 1
