"""`bonescan demo`: the whole pipeline on a synthetic cohort."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `demo` to the bonescan app."""

    @app.command("demo")
    def demo(
        out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the cohort, run, report and results."),
        cases: int = typer.Option(1000, "--cases", help="Synthetic studies to generate (paper-sized: 12222)."),
        ratios: str = typer.Option("0.5,0.1,0.4", "--ratios", help="train,val,test fractions (the paper: "
                                   "0.8,0.1,0.1; the demo tests on more studies for tighter confidence intervals)."),
        preset: str = typer.Option("cpu-small", "--preset", help="Training preset: cpu-small, paper or tiny."),
        difficulty: str = typer.Option("demo", "--difficulty",
                                       help="Cohort difficulty: demo (the paper's picture), easy, paper, hard."),
        site: str = typer.Option("generic", "--site", help="Camera and site profile (see bonescan synth --help)."),
        epochs: int = typer.Option(4, "--epochs", help="Training epochs (4 keep the demo within 5 minutes on a "
                                   "2-core CPU; 0: the preset's)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the cohort, split and training."),
        workers: int = typer.Option(0, "--workers", help="Processes generating studies (0: one per core)."),
        pretrained: Optional[str] = typer.Option(None, "--pretrained", help="ImageNet weights: a file or 'imagenet'."),
        fresh: bool = typer.Option(False, "--fresh", help="Start over instead of reusing finished stages."),
        lesions: bool = typer.Option(False, "--lesions", help="Also train a lesion network: hotspots, skeletal "
                                     "regions and BSI of every test study, evaluated in the report."),
        lesion_preset: Optional[str] = typer.Option(None, "--lesion-preset", help="With --lesions: the lesion "
                                                    "training preset, cpu-small-lesion (default) or tiny-lesion."),
        lesion_epochs: Optional[int] = typer.Option(None, "--lesion-epochs", help="With --lesions: training epochs "
                                                    "(default 24: 7-8 minutes on a 2-core Zen 4 CPU; 0: the "
                                                    "preset's)."),
    ) -> None:
        """Generate a synthetic cohort, train, evaluate, predict with heat maps and DICOM results, summarise."""
        from ..cohort import parse_ratios
        from ..demo import DemoSettings, run_demo
        from ..errors import ConfigError

        given = [name for name, value in (("--lesion-preset", lesion_preset), ("--lesion-epochs", lesion_epochs))
                 if value is not None]
        if given and not lesions:  # it would be ignored: say so rather than train nothing
            raise ConfigError(given[0], "takes effect only with --lesions; add --lesions to train a lesion network")
        if lesion_epochs is None:
            lesion_epochs = DemoSettings.lesion_epochs
        settings = DemoSettings(cases=cases, ratios=parse_ratios(ratios), seed=seed, difficulty=difficulty, site=site,
                                preset=preset, epochs=epochs or None, workers=workers, pretrained=pretrained,
                                lesions=lesions, lesion_preset=lesion_preset or DemoSettings.lesion_preset,
                                lesion_epochs=lesion_epochs or None)
        result = run_demo(out, settings, fresh=fresh, say=typer.echo)
        typer.echo(f"Open the report: {result.report.resolve()}")
        if not lesions:  # the finished stages are reused: only the lesion stages are added
            typer.echo(f"Where, not only whether: `bonescan demo --out {out} --lesions` adds hotspots, skeletal "
                       "regions and the Bone Scan Index to this demo (a lesion network: 9 minutes on a 2-core Zen 4 "
                       "CPU, longer where bf16 is not native)")
