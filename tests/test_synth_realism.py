"""The realism check: statistics measure what they claim, on the real scan NM1 and on synthetic cohorts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from bonescan.cli import main
from bonescan.synth import case_seed, compare_realism, generate_case
from bonescan.synth.realism import JUDGED, STATISTICS, view_statistics

pytest.importorskip("pylibjpeg")  # NM1 is JPEG lossless


@pytest.fixture(scope="module")
def report(nm1_path):
    return compare_realism([nm1_path], sites=["generic", "ge-discovery"], cases=12, seed=3)


def test_nm1_statistics_are_those_of_a_real_whole_body_view(report, nm1_path):
    import pydicom

    (ref,) = report.references
    pixels = pydicom.dcmread(nm1_path).pixel_array.astype(np.float64)
    assert ref.values["counts"] == pytest.approx(pixels.sum())
    # A 1.72 m patient at 2.26 mm spans about three quarters of the 1024 rows, head near the top.
    assert 0.65 < ref.values["body_extent"] < 0.85 and ref.values["top_margin"] < 0.15
    # Counts of a real camera are Poisson: the normalised high-frequency noise power is close to 1.
    assert 0.8 < ref.values["noise_nps_high"] < 1.3
    assert ref.values["hotspot_contrast"] > ref.values["bone_soft_ratio"] > 2


def test_the_comparison_judges_each_statistic_against_the_synthetic_spread(report):
    table = report.table()
    for stat in STATISTICS:
        assert f"| {stat} |" in table
    (ref,) = report.references
    for site in report.synthetic:
        for stat in JUDGED:
            lo, mid, hi = report.summary(site, stat)
            assert lo <= mid <= hi
            assert report.inside(site, stat) == (lo <= ref.values[stat] <= hi)
    # NM1 was counted far longer (3.6 M) than GE Discovery's fast scans (0.36-0.68 M): outside that profile.
    assert "counts" in report.outside()["ge-discovery"]
    # Placement: the generic phantom puts the body anywhere, the GE profile at the top; its row profile is tighter.
    generic_r = [v.values["profile_r"] for v in report.synthetic["generic"]]
    ge_r = [v.values["profile_r"] for v in report.synthetic["ge-discovery"]]
    assert np.ptp(ge_r) < np.ptp(generic_r)


def test_noise_power_tells_poisson_counts_from_smoothed_ones():
    view = generate_case("n", case_seed(2, 0), "paper").anterior.astype(np.float32)
    poisson = view_statistics(view).values["noise_nps_high"]
    smoothed = view_statistics(gaussian_filter(view, 1.0)).values["noise_nps_high"]
    assert 0.85 < poisson < 1.2
    assert smoothed < 0.3 * poisson


def test_cli_prints_the_table_and_writes_the_plot(nm1_path, tmp_path, capsys):
    plot = tmp_path / "realism.png"
    assert main(["synth", "--realism", str(nm1_path), "--cases", "10", "--site", "siemens-symbia",
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "bone_soft_ratio" in out and "siemens-symbia" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_a_reference_that_is_not_a_scan(tmp_path, capsys):
    bad = tmp_path / "notes.dcm"
    bad.write_text("not a scan")
    assert main(["synth", "--realism", str(bad), "--cases", "10", "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "notes.dcm" in err and "--realism" in err
    assert not (tmp_path / "p.png").exists()
