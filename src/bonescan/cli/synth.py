"""`bonescan synth`: synthetic whole-body bone scans; `bonescan bench synth`: generation speed and memory."""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from .counter import done_counter


def _peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `synth` and `bench synth` to the bonescan app."""

    @app.command("synth")
    def synth(
        cases: int = typer.Option(200, "--cases", help="Number of studies (cohort) or cases for --baseline."),
        out: Optional[Path] = typer.Option(None, "--out", help="Folder for studies/*.dcm, findings JSON, manifest.csv."),
        seed: int = typer.Option(0, "--seed", help="Cohort seed: the same seed gives identical pixel data."),
        difficulty: str = typer.Option("paper", "--difficulty", help="easy | demo | paper | hard."),
        site: str = typer.Option("generic", "--site", help="Camera and site profile: generic, ge-discovery, "
                                 "siemens-symbia, philips-brightview or mixed (--realism: also 'all')."),
        workers: int = typer.Option(1, "--workers", help="Processes generating studies."),
        pixel_spacing: float = typer.Option(2.4, "--pixel-spacing", help="Pixel size in mm (2.0-3.0)."),
        preview: Optional[Path] = typer.Option(None, "--preview", help="Write a PNG sheet of cases of each grade."),
        baseline: bool = typer.Option(False, "--baseline", help="Print held-out AUCs of two simple baselines."),
        realism: Optional[list[Path]] = typer.Option(None, "--realism", help="Real reference study (file or folder; "
                                                      "repeat for more): compare --cases synthetic studies with it."),
        plot: Path = typer.Option(Path("realism.png"), "--plot", help="Where --realism writes its figure."),
        ratios: str = typer.Option("0.8,0.1,0.1", "--ratios", help="train,val,test fractions of the manifest's "
                                   "split (sum to 1)."),
        follow_up: bool = typer.Option(False, "--follow-up", help="Followed patients instead of single studies: "
                                       "--cases patients, 2-3 dated visits each with known change (manifest "
                                       "columns patient_id, timepoint, change)."),
    ) -> None:
        """Generate a synthetic cohort (NM DICOM, findings JSON, manifest), a preview sheet, or a difficulty check."""
        from ..synth import generate_cohort, measure_baseline, preview_cases, write_preview
        from ..synth.realism import all_sites, compare_realism, write_realism_plot
        from ..synth.writer import SynthSettings, check_settings

        if out is None and preview is None and not baseline and not realism:
            raise ConfigError("bonescan synth", "nothing to do: give --out DIR, --preview PNG, --baseline or --realism")
        sites = all_sites() if realism and site == "all" else [site]
        for name in sites:
            check_settings(cases, SynthSettings(seed, difficulty, pixel_spacing, name), workers)
        if len(sites) > 1 and (out is not None or preview is not None or baseline):
            raise ConfigError("--site", "'all' is for --realism only; a cohort, preview or baseline takes one site")
        if out is not None:
            from ..cohort import parse_ratios

            fractions = parse_ratios(ratios)
            progress = done_counter("studies")

            if follow_up:
                from ..synth.followup import generate_followup_cohort
                result = generate_followup_cohort(out, cases, seed, difficulty, workers, pixel_spacing, progress, site,
                                                  fractions)
            else:
                result = generate_cohort(out, cases, seed, difficulty, workers, pixel_spacing, progress, site, fractions)
            typer.echo(f"wrote {result.written} studies, kept {result.skipped} complete ones, in "
                       f"{result.seconds:.1f} s; manifest: {result.manifest}")
        if preview is not None:
            write_preview(preview_cases(seed, difficulty, pixel_spacing=pixel_spacing, site=site), preview)
            typer.echo(f"preview: {preview}")
        if baseline:
            r = measure_baseline(cases, seed, difficulty, pixel_spacing=pixel_spacing)
            typer.echo(f"difficulty {r.difficulty}: {r.n_train} training / {r.n_test} held-out cases, "
                       f"prevalence {r.prevalence:.2f}; held-out AUC logistic regression (64x16 per view) "
                       f"{r.auc_logistic:.3f}, max-pixel rule {r.auc_max_pixel:.3f}")
        if realism:
            report = compare_realism(realism, sites, cases, seed, difficulty)
            for failure in report.failed_references:
                print(f"reference not used: {failure}", file=sys.stderr)
            typer.echo(f"{len(report.references)} reference view(s) against {cases} synthetic studies per site "
                       f"(anterior views; median [2.5-97.5 %]; ok / OUT: every reference inside that range or not)")
            typer.echo(report.table())
            typer.echo(f"plot: {write_realism_plot(report, plot)}")

    @bench.command("synth")
    def bench_synth(
        cases: int = typer.Option(200, "--cases", help="Studies to generate per measurement."),
        workers: list[int] = typer.Option([1, 2], "--workers", help="Worker counts to measure (repeatable)."),
        difficulty: str = typer.Option("paper", "--difficulty"),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Print cases/s (wall and per CPU-second) for generating and writing studies, and peak RSS."""
        from ..synth import generate_case
        from ..synth.case import case_seed
        from ..synth.dicom import write_case_dicom
        from ..synth.writer import SynthSettings, case_id_for, check_settings, generate_cohort, keep_freed_memory

        for w in workers:
            check_settings(cases, SynthSettings(seed, difficulty), w)
        keep_freed_memory()  # as generate_cohort does in every generating process
        # Stage breakdown, in this process: rendering + noise, then DICOM writing.
        n = min(cases, 30)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            made = [generate_case(case_id_for(i, cases), case_seed(seed, i), difficulty) for i in range(n)]
            t1 = time.perf_counter()
            for case in made:
                write_case_dicom(case, Path(tmp) / f"{case.case_id}.dcm")
            t2 = time.perf_counter()
        typer.echo(f"stages ({n} cases, 1 process): generate {1000 * (t1 - t0) / n:.1f} ms/case, "
                   f"write DICOM {1000 * (t2 - t1) / n:.1f} ms/case")
        for w in workers:
            with tempfile.TemporaryDirectory() as tmp:
                cpu0 = _cpu_seconds()
                result = generate_cohort(Path(tmp) / "cohort", cases, seed, difficulty, w)
                cpu = _cpu_seconds() - cpu0
            typer.echo(f"workers {w}: {cases} cases in {result.seconds:.2f} s = {cases / result.seconds:.1f} cases/s "
                       f"wall; {cases / max(cpu, 1e-9):.1f} cases per CPU-second; peak RSS main "
                       f"{_peak_rss_mib(resource.RUSAGE_SELF):.0f} MiB, largest worker "
                       f"{_peak_rss_mib(resource.RUSAGE_CHILDREN):.0f} MiB")
        typer.echo("(wall figures depend on what else runs on the machine; per CPU-second is the per-core rate)")
