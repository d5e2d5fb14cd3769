"""`bonescan followup`: what changed between a baseline and later studies of one patient (new lesions, change in
BSI, PCWG3 verdict), for one patient or a manifest; with --evaluate, against a synthetic cohort's truth."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from .counter import done_counter

READERS = ("auto", "network", "oracle")


def _warn(line: str) -> None:
    typer.echo(f"bonescan: warning: {line}", err=True)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add `followup` to the bonescan app."""

    @app.command("followup")
    def followup(
        studies: Optional[list[Path]] = typer.Argument(None, help="BASELINE FOLLOWUP [CONFIRMATORY]: each a study "
                                                       "file or a folder holding one study."),
        out: Path = typer.Option(..., "--out", help="Folder for followup.json, followup_regions.csv, followup.png, "
                                                    "followup_sr.dcm (a manifest: one folder per patient)."),
        run: Optional[Path] = typer.Option(None, "--run", help="Training run with the lesion network."),
        manifest: Optional[Path] = typer.Option(None, "--manifest", help="Manifest with patient_id and timepoint "
                                                "(days) per visit: compare every patient."),
        reader: str = typer.Option("auto", "--reader", help="Lesion reader: network (needs --run), oracle (the "
                                   "synthetic truth files; an upper bound), auto (network if --run is given)."),
        evaluate: bool = typer.Option(False, "--evaluate", help="With --manifest of a synthetic follow-up cohort: "
                                      "measure against its truth and write followup_report.html."),
        later_scan: bool = typer.Option(False, "--later-scan", help="FOLLOWUP is a later scan and BASELINE the "
                                        "first post-treatment scan (PCWG3 rule for later scans)."),
        force: bool = typer.Option(False, "--force", help="Compare studies whose PatientIDs differ."),
        change_net: Optional[Path] = typer.Option(None, "--change-net", help="A change network (bonescan "
                                                  "followup-train: RUN/change_net.pt): a second judge of new lesions "
                                                  "that sees both visits."),
        join: str = typer.Option("either", "--join", help="With --change-net, the new-lesion count of the verdict: "
                                 "either (the larger of the rules' and the network's), union (the rules' new lesions "
                                 "plus the network's that lie on none of the lesions the rules judged), network (the "
                                 "network's; better beside a small lesion network such as cpu-small-lesion, README)."),
        judge: Optional[Path] = typer.Option(None, "--judge", help="A learned new-lesion judge (bonescan "
                                             "followup-judge) instead of the hand rules; fitted with --run's network "
                                             "(and --change-net's, if fitted beside one)."),
    ) -> None:
        """Compare a baseline with follow-up studies: new / resolved / persistent / grown lesions per region,
        change in BSI, PCWG3 verdict; side-by-side PNG and a DICOM SR referencing every study."""
        from ..followup import NetworkReader, OracleReader, compare_visits, load_visit
        from ..followup.evaluate import run_followup_batch, summarize, write_followup_report
        from ..followup.called_new import JUDGE_NAMES
        from ..followup.change_net import load_change_model
        from ..followup.joins import check_join
        from ..followup.output import write_comparison
        from ..followup.visits import ROLES

        check_join(join)
        if reader not in READERS:
            raise ConfigError("--reader", f"unknown reader {reader!r}; choose one of {', '.join(READERS)}")
        if (manifest is None) == (not studies):
            raise ConfigError("bonescan followup", "give either BASELINE FOLLOWUP [CONFIRMATORY] or --manifest")
        if studies and not 2 <= len(studies) <= 3:
            raise ConfigError("bonescan followup", f"give a baseline, a follow-up and optionally a confirmatory "
                                                   f"study, not {len(studies)}")
        if evaluate and manifest is None:
            raise ConfigError("--evaluate", "needs --manifest (a synthetic follow-up cohort with its truth)")
        if reader == "oracle":
            lesion_reader = OracleReader()
        elif run is not None:
            lesion_reader = NetworkReader(run, warn=_warn)
            for line in lesion_reader.model.notes:
                _warn(line)
        else:
            raise ConfigError("--run", "the lesion network's run is needed (or --reader oracle on a synthetic cohort)")
        change_model = load_change_model(change_net) if change_net is not None else None
        new_lesion_judge = None
        if judge is not None:
            from ..followup.new_judge import check_change_network, load_new_lesion_judge

            if reader == "oracle":
                raise ConfigError("--judge", "the oracle reader's lesions are the truth: there is nothing to judge")
            new_lesion_judge = load_new_lesion_judge(judge)
            fitted_with = new_lesion_judge.info.get("lesion_run")
            if fitted_with and Path(fitted_with).resolve() != Path(run).resolve():
                _warn(f"{judge} was fitted with the lesion network of {fitted_with}, not {run}: the malignancy it "
                      f"weighs is another network's")
            for warning in check_change_network(new_lesion_judge, change_net, join):
                _warn(f"{judge}: {warning}")
        if manifest is not None:
            def progress(done: int, total: int, result) -> None:
                what = result.error or f"{result.verdict}; {result.new} new"
                print(f"[{done}/{total}] {result.patient_id}: {what}", file=sys.stderr, flush=True)

            results = run_followup_batch(manifest, lesion_reader, out, evaluate, not later_scan, force, progress,
                                         change_model, join, new_lesion_judge)
            failed = sum(bool(r.error) for r in results)
            described = lesion_reader.name + (f"; new lesions judged by the {new_lesion_judge.name}"
                                              if new_lesion_judge is not None else "")
            typer.echo(f"compared {len(results) - failed} of {len(results)} patients (reader: {described}); "
                       f"summary: {out / 'followup_summary.csv'}")
            if evaluate:
                s = summarize(results)
                report = write_followup_report(out, results, described, manifest)
                t = s["two_new"]
                fmt = lambda x: "n/a" if x is None else f"{x[0]:.3f}"  # noqa: E731
                typer.echo(f">= 2 new lesions: sensitivity {fmt(t['sensitivity'])}, specificity "
                           f"{fmt(t['specificity'])}; PCWG3 sensitivity {fmt(s['pcwg3']['sensitivity'])}, "
                           f"specificity {fmt(s['pcwg3']['specificity'])}; flare called progression "
                           f"{fmt(s['flare_progression'])}; matching median {s['matching']['median_mm'] or 0:.1f} mm; "
                           f"median {s['seconds']['median'] or 0:.2f} s per comparison")
                fates = s["new_fates"]
                typer.echo(f"true new lesions: {fates['found']} found, {fates['not called new']} not called new, "
                           f"{fates['under an earlier hotspot']} under a hotspot linked to the baseline, "
                           f"{fates['no hotspot']} without a hotspot; >= 2 new lesions within a perfect judge's "
                           f"reach: {fmt(s['two_new_in_reach'])}")
                for which, totals in s["called_new"].items():
                    called = totals["all"]
                    kinds = ", ".join(f"{n} {kind}" for kind, n in called.items())
                    name = "learned judge" if which == "rules" and new_lesion_judge is not None else JUDGE_NAMES[which]
                    typer.echo(f"called new by the {name}: "
                               f"{sum(called.values())}, of which {kinds}")
                typer.echo(f"report: {report}")
            return
        visits = [load_visit(path, role) for path, role in zip(studies, ROLES)]
        comparison = compare_visits(visits, lesion_reader, not later_scan, force, change_model=change_model, join=join,
                                    judge=new_lesion_judge)
        paths = write_comparison(comparison, out)
        change = comparison.followup
        typer.echo(f"PCWG3: {comparison.verdict.status} ({comparison.verdict.reason})")
        typer.echo(f"follow-up: {len(change.new)} new, {len(change.resolved)} resolved, {len(change.persistent)} "
                   f"persistent ({len(change.grown)} grown); BSI {change.bsi_before:.2f} -> {change.bsi_after:.2f} % "
                   f"(reader: {comparison.reader}; new lesions judged by the {comparison.judge}; "
                   f"{comparison.seconds['total']:.1f} s)")
        if comparison.network is not None:
            typer.echo(f"change network: {len(comparison.network.followup)} new on the follow-up; the verdict counts "
                       f"{comparison.new_count} ({join})")
        typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))

    @app.command("followup-judge")
    def followup_judge(
        cohorts: list[Path] = typer.Argument(..., help="Synthetic follow-up cohorts to fit on (bonescan synth "
                                             "--follow-up folders; about 600 patients fit it well, README)."),
        run: Path = typer.Option(..., "--run", help="Training run with the lesion network the judge will serve."),
        out: Optional[Path] = typer.Option(None, "--out", help="The judge's file (and FILE.json). Default: "
                                           "RUN/new_lesion_judge.skops."),
        specificity: float = typer.Option(0.90, "--specificity", help="\">= 2 new lesions\" specificity per "
                                          "patient its threshold must reach out of fold."),
        change_net: Optional[Path] = typer.Option(None, "--change-net", help="A change network (bonescan "
                                                  "followup-train): the judge also weighs what it sees under each "
                                                  "candidate, and its threshold is chosen for the count --join makes "
                                                  "of both (followup --change-net --join)."),
        join: str = typer.Option("either", "--join", help="With --change-net: the join its threshold is chosen for, "
                                 "either or union (as bonescan followup --join)."),
    ) -> None:
        """Fit a learned new-lesion judge on synthetic follow-up cohorts (for bonescan followup --judge)."""
        from ..followup import NetworkReader
        from ..followup.new_judge import (check_fitting_join, collect_candidates, fit_new_lesion_judge,
                                          save_new_lesion_judge)

        if not 0.0 < specificity < 1.0:
            raise ConfigError("--specificity", f"must lie between 0 and 1, got {specificity}")
        for folder in cohorts:
            if not (folder / "manifest.csv").is_file():
                raise ConfigError(folder, "no manifest.csv here; give bonescan synth --follow-up folders")
        if not run.is_dir():
            raise ConfigError("--run", f"{run}: no such training run folder")
        if join != "either" and change_net is None:
            raise ConfigError("--join", "joins the judge's count with the change network's: it needs --change-net")
        check_fitting_join(join)  # before the comparisons, not after them
        lesion_reader = NetworkReader(run, warn=_warn)
        change_model = None
        if change_net is not None:
            from ..followup.change_net import load_change_model

            change_model = load_change_model(change_net)

        progress = done_counter("patients")

        candidates = collect_candidates([folder / "manifest.csv" for folder in cohorts], lesion_reader, progress,
                                        change_model)
        for patient, reason in candidates.failed:
            typer.echo(f"left out {patient}: {reason}", err=True)
        fitted_with = {"lesion_run": str(run.resolve()), "cohorts": [str(c) for c in cohorts]}
        if change_net is not None:
            fitted_with["change_network"] = str(change_net.resolve())
        fitted = fit_new_lesion_judge(candidates, specificity, fitted_with, join)
        path = save_new_lesion_judge(fitted, out or run / "new_lesion_judge.skops")
        info = fitted.info
        counted = f" (--join {join} with the change network)" if change_net is not None else ""
        use = f"bonescan followup --judge {path}" + (f" --change-net {change_net} --join {join}" if counted else "")
        typer.echo(f"new-lesion judge fitted on {info['fitted_on_patients']} patients ({info['candidates']} "
                   f"candidates, {info['on_new_metastases']} on new metastases); threshold {fitted.threshold:.2f}: "
                   f"out of fold \">= 2 new lesions\"{counted} sensitivity {info['out_of_fold_sensitivity']:.3f}, "
                   f"specificity {info['out_of_fold_specificity']:.3f}; wrote {path} (use: {use})")
        if candidates.failed:
            raise typer.Exit(2)

    @app.command("followup-train")
    def followup_train(
        cohorts: list[Path] = typer.Argument(..., help="Synthetic follow-up cohorts to train on (bonescan synth "
                                             "--follow-up folders)."),
        val: list[Path] = typer.Option(..., "--val", help="Follow-up cohort(s) that choose the operating point "
                                       "(repeat the option for more; about 1,000 patients choose it well, README)."),
        out: Path = typer.Option(..., "--out", help="Run folder: pairs, checkpoint, metrics.csv, change_net.pt."),
        epochs: int = typer.Option(24, "--epochs"),
        lr: float = typer.Option(2e-3, "--lr", help="Peak learning rate of the one-cycle schedule."),
        batch: int = typer.Option(8, "--batch"),
        resume: bool = typer.Option(False, "--resume", help="Continue after the run's last finished epoch."),
        workers: int = typer.Option(2, "--workers", help="Processes that build the visit pairs."),
        seed: int = typer.Option(0, "--seed"),
        new_pixel_weight: float = typer.Option(30.0, "--new-pixel-weight", help="Weight of new-lesion pixels in the "
                                               "loss; higher paints fainter lesions (10 found fewer, README)."),
        precision: str = typer.Option("fp32", "--precision", help="fp32 | bf16 | auto (bf16 where this CPU runs it "
                                      "faster: AMX, or AVX512-BF16 on AMD): the training forward pass; the loss and "
                                      "weights stay fp32."),
        channels: str = typer.Option("16,32,64,128,128", "--channels", help="U-Net channels per level (the file "
                                     "keeps them; bonescan followup rebuilds the same network)."),
    ) -> None:
        """Train the change network (new lesions seen from both visits) for `bonescan followup --change-net`."""
        from ..followup.change_train import train_change_network
        from .train import parse_channels

        for folder in [*cohorts, *val]:
            if not (folder / "manifest.csv").is_file():
                raise ConfigError(folder, "no manifest.csv here; give bonescan synth --follow-up folders")
        path = train_change_network(out, cohorts, val, epochs, lr, batch, resume, workers, seed,
                                    progress=sys.stderr.isatty(), new_pixel_weight=new_pixel_weight,
                                    precision=precision, channels=parse_channels(channels, "--channels"))
        typer.echo(f"change network: {path} (use: bonescan followup --change-net {path})")
