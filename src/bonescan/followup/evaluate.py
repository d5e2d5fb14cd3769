"""Follow-up over a manifest: every patient compared, and (with truth) measured against what really changed.

Batch: the manifest's rows are grouped by `patient_id` and ordered by `timepoint` (days); the first three visits
are baseline, first follow-up and confirmatory. A patient that cannot be compared is recorded with its reason and
the batch goes on.

Evaluation (needs the synthetic truth files with `identity`, i.e. a `bonescan synth --follow-up` cohort):
- truth new lesions on the follow-up: metastases, confluent ones counted once, none of whose findings showed on the
  baseline (`truth_changes`); on the confirmatory scan: on neither earlier visit; the truth PCWG3 verdict applies
  `pcwg3_verdict` to those counts;
- ">= 2 new lesions" and the PCWG3 verdict ("progression" positive) as tests against the truth: sensitivity and
  specificity with Wilson 95 % intervals, per patient;
- new-lesion count agreement (exact, within one, mean difference, Pearson r); change in BSI agreement (Pearson r,
  mean difference, 95 % limits of agreement, Bland and Altman 1986);
- per course (stable, progression, response, flare): how often ">= 2 new" and PCWG3 progression were called;
- matching: distance after registration between linked hotspots (mm), and the share of links joining the same
  true finding (the identity under each hotspot's centroid);
- what became of each true new lesion of the follow-up (`fates`: found, not called new, under an earlier hotspot,
  no hotspot), and the ">= 2 new lesions" sensitivity a perfect new-lesion judge of the reader's hotspots would
  reach (the lesions in its reach: found or not called new);
- what each lesion called new on the follow-up truly was (`called_new`: a new metastasis, one seen before, a benign
  finding, an artifact, physiological uptake, nothing), per judge (the rules; the change network when given), over
  all patients and over those it falsely called ">= 2 new".
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import jinja2
import numpy as np
import pandas as pd

from .. import __version__
from ..cohort import load_manifest
from ..errors import BoneScanError, ManifestError
from ..fileio import write_text_atomic
from ..lesions.bsi import bone_scan_index
from ..lesions.truth import LesionTruth, load_truth
from .called_new import JUDGE_NAMES, JUDGES, KINDS, called_new_kinds, kind_map
from .change_net import ChangeModel
from .compare import Comparison, compare_visits
from .fates import FATES, IN_REACH, count_fates, hotspot_fates, new_lesion_fates
from .output import write_comparison
from .pcwg3 import MIN_NEW, pcwg3_verdict
from .readers import LesionReader, OracleReader
from .visits import ROLES, load_visit

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
TEMPLATE_NAME = "followup_report.html.j2"
SUMMARY_FILE = "followup_summary.csv"
REPORT_FILE = "followup_report.html"


@dataclass
class PatientResult:
    """One patient's comparison in a batch (or why it failed), with the truth beside it when known."""

    patient_id: str
    change: str = ""
    n_visits: int = 0
    verdict: str = ""
    reason: str = ""
    new: int | None = None  # as the verdict counts them: the rules', joined with the change network's if given
    confirm_new: int | None = None
    rules_new: int | None = None
    network_new: int | None = None  # the change network's count, when one was given
    days_to_confirm: int | None = None
    bsi_change: float | None = None
    seconds: float | None = None
    truth_new: int | None = None
    truth_confirm_new: int | None = None
    truth_verdict: str = ""
    truth_bsi_change: float | None = None
    error: str = ""
    distances: list[float] = field(default_factory=list, repr=False)
    links_correct: int = 0
    links_judged: int = 0
    fates: dict[str, int] = field(default_factory=dict)  # true new lesions of the follow-up per `fates.FATES`
    called_new: dict[str, dict[str, int]] = field(default_factory=dict)  # judge -> `called_new.KINDS` -> lesions


def manifest_patients(manifest: str | Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The validated manifest and its visits per patient (ordered by timepoint)."""
    df = load_manifest(manifest)
    missing = [c for c in ("patient_id", "timepoint") if c not in df.columns]
    if missing:
        raise ManifestError(manifest, f"a follow-up manifest needs the columns {', '.join(missing)} (one row per "
                                      "visit: patient_id and timepoint in days); bonescan synth --follow-up writes one")
    bad = [str(v) for v in df["timepoint"] if pd.isna(pd.to_numeric(v, errors="coerce"))]
    if bad:
        raise ManifestError(manifest, f"timepoint must be a number of days, got {', '.join(bad[:5])}")
    df = df.assign(timepoint=pd.to_numeric(df["timepoint"]).astype(int), patient_id=df["patient_id"].astype(str))
    return df, {pid: g.sort_values("timepoint", kind="stable") for pid, g in df.groupby("patient_id", sort=True)}


def visit_files(row: pd.Series) -> list[str]:
    """A manifest row's files, as written: one study path, or the anterior and posterior images."""
    path = row.get("path")
    if isinstance(path, str) and path:
        return [path]
    return [row["anterior"], row["posterior"]]


def compare_patient(rows: pd.DataFrame, reader: LesionReader, first_followup: bool = True,
                    force: bool = False, change_model: ChangeModel | None = None, join: str = "either",
                    judge=None) -> Comparison:
    """Compare the first three visits of one patient's manifest rows (`judge`: as `compare_visits` takes it)."""
    rows = rows.head(3)
    start = int(rows["timepoint"].iloc[0])
    visits = [load_visit(files if len(files) == 2 else files[0], role, int(t) - start)
              for files, role, t in zip((visit_files(r) for _, r in rows.iterrows()), ROLES, rows["timepoint"])]
    return compare_visits(visits, reader, first_followup, force, change_model=change_model, join=join, judge=judge)


def truth_of(rows: pd.DataFrame) -> list[LesionTruth]:
    """The truth files of a patient's visits (they must carry finding identities)."""
    truths = [load_truth(p) for p in rows.head(3)["truth"]]
    for path, truth in zip(rows["truth"], truths):
        if truth.identity is None:
            raise ManifestError(path, "this truth file has no finding identities; evaluation needs a follow-up "
                                      "cohort (bonescan synth --follow-up)")
    return truths


def truth_changes(truths: list[LesionTruth], followup_new: list[int] | None = None) -> tuple[int, int | None, float]:
    """(new metastases on the follow-up, more new on the confirmatory or None, change in BSI follow-up - baseline).

    New as a reader can see it: a lesion of the later visit (`LesionTruth.confluent_metastases`: touching outlines
    are one focus) none of whose findings showed on an earlier visit. A new metastasis touching an old one reads as
    that one's growth, two touching new ones as one new focus. `followup_new`: the follow-up's `new_lesion_ids`
    against the baseline when the caller has them already.
    """
    new = len(followup_new if followup_new is not None else new_lesion_ids(truths[1], shown_identities(truths[0])))
    more = (len(new_lesion_ids(truths[2], shown_identities(truths[0]) | shown_identities(truths[1])))
            if len(truths) > 2 else None)
    bsi = [bone_scan_index(t.regions, t.malignant_mask())[0] for t in truths[:2]]
    return new, more, bsi[1] - bsi[0]


def shown_identities(truth: LesionTruth) -> set[int]:
    """Identities of the findings with at least one pixel in either view."""
    return {i for i, shown in zip(truth.identity, truth.shown()[1:]) if i and shown}


def new_lesion_ids(truth: LesionTruth, before: set[int],
                   confluent: tuple[np.ndarray, list[int]] | None = None) -> list[int]:
    """Lesion ids (`confluent_metastases`, or `confluent` when the caller has it already) of `truth` none of whose
    member findings is in `before`."""
    instances, lesions = confluent if confluent is not None else truth.confluent_metastases()
    members: dict[int, set[int]] = {lesion: set() for lesion in lesions}
    for finding in truth.metastasis_ids():
        lead = int(instances[truth.instances == finding][0])
        members[lead].add(truth.identity[finding - 1])
    return [lesion for lesion, identities in members.items() if not identities & before]


def first_followup_new(truths: list[LesionTruth]) -> tuple[tuple[np.ndarray, list[int]], list[int]]:
    """The first follow-up's metastases as a reader counts them (`confluent_metastases`) and the ids of the new ones
    among them (none of their findings shown on the baseline)."""
    confluent = truths[1].confluent_metastases()
    return confluent, new_lesion_ids(truths[1], shown_identities(truths[0]), confluent)


def _identity_at(truth: LesionTruth, view: str, centroid: tuple[float, float]) -> int:
    v = 0 if view == "anterior" else 1
    r = int(np.clip(round(centroid[0]), 0, truth.instances.shape[1] - 1))
    c = int(np.clip(round(centroid[1]), 0, truth.instances.shape[2] - 1))
    k = int(truth.instances[v, r, c])
    return truth.identity[k - 1] if k else 0


def run_followup_batch(manifest: str | Path, reader: LesionReader, out: str | Path, evaluate: bool = False,
                       first_followup: bool = True, force: bool = False,
                       progress: Callable[[int, int, PatientResult], None] | None = None,
                       change_model: ChangeModel | None = None, join: str = "either",
                       judge=None) -> list[PatientResult]:
    """Compare every patient of `manifest`, write each comparison to out/<patient_id>/ and a summary CSV; with
    `change_model`, new lesions are counted as `join` of the rules' and the change network's; `judge` decides
    which lesions unseen before are new (`compare_visits`)."""
    table, patients = manifest_patients(manifest)
    if isinstance(reader, OracleReader) and "truth" in table.columns:  # the manifest says where each truth file is
        for _, row in table.iterrows():
            reader.truth_files.update({str(f): row["truth"] for f in visit_files(row) if row["truth"]})
    out = Path(out)
    results = []
    for n, (pid, rows) in enumerate(patients.items(), 1):
        result = PatientResult(pid, str(rows["change"].iloc[0]) if "change" in rows else "", min(len(rows), 3))
        try:
            truths = truth_of(rows) if evaluate else None
            start = time.perf_counter()
            comparison = compare_patient(rows, reader, first_followup, force, change_model, join, judge)
            seconds = time.perf_counter() - start  # reading the studies included, writing the outputs not
            write_comparison(comparison, out / _safe(pid))
        except BoneScanError as error:
            result.error = str(error)
        except Exception as error:  # noqa: BLE001 - reported per patient, the batch goes on
            result.error = f"{type(error).__name__}: {error}"
        else:
            _fill(result, comparison, truths)
            result.seconds = seconds
        results.append(result)
        if progress:
            progress(n, len(patients), result)
    summary = pd.DataFrame([{**{k: v for k, v in asdict(r).items() if k not in ("distances", "fates", "called_new")},
                             **{f"new_{fate.replace(' ', '_')}": r.fates.get(fate) for fate in FATES},
                             **{f"{judge}_called_{kind.replace(' ', '_')}": r.called_new.get(judge, {}).get(kind)
                                for judge in JUDGES for kind in KINDS}}
                            for r in results])
    write_text_atomic(out / SUMMARY_FILE, summary.to_csv(index=False))
    return results


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) or "patient"


def _fill(result: PatientResult, comparison: Comparison, truths: list[LesionTruth] | None) -> None:
    result.verdict, result.reason = comparison.verdict.status, comparison.verdict.reason
    result.new, result.confirm_new = comparison.new_count, comparison.confirm_new_count
    result.rules_new = len(comparison.followup.new)
    result.network_new = len(comparison.network.followup) if comparison.network else None
    visits = comparison.visits
    if len(visits) > 2 and visits[2].timepoint is not None and visits[1].timepoint is not None:
        result.days_to_confirm = visits[2].timepoint - visits[1].timepoint
    result.bsi_change = comparison.followup.bsi_change
    result.distances = [p.distance_mm for p in comparison.pairs]
    if truths is None:
        return
    confluent, new_ids = first_followup_new(truths)
    result.truth_new, result.truth_confirm_new, result.truth_bsi_change = truth_changes(truths, new_ids)
    result.truth_verdict = pcwg3_verdict(result.truth_new, result.truth_confirm_new, result.days_to_confirm,
                                         comparison.first_followup).status
    result.fates = count_fates(new_lesion_fates(confluent[0], new_ids, hotspot_fates(comparison)))
    result.called_new = called_new_kinds(comparison, kind_map(truths[1], confluent[0], new_ids))
    for pair in comparison.pairs:
        a = _identity_at(truths[pair.earlier], pair.view, pair.first.centroid)
        b = _identity_at(truths[pair.later], pair.view, pair.second.centroid)
        if a or b:
            result.links_judged += 1
            result.links_correct += bool(a and a == b)


# --- metrics ------------------------------------------------------------------------------------------------------

def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float, float] | None:
    """Proportion k / n with its Wilson score 95 % interval; None when n = 0."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def binary_test(truth: list[bool], called: list[bool]) -> dict:
    """Sensitivity and specificity (Wilson intervals) of `called` against `truth`, with the counts."""
    tp = sum(t and c for t, c in zip(truth, called))
    fn = sum(t and not c for t, c in zip(truth, called))
    tn = sum(not t and not c for t, c in zip(truth, called))
    fp = sum(not t and c for t, c in zip(truth, called))
    return {"tp": tp, "fn": fn, "tn": tn, "fp": fp, "sensitivity": wilson(tp, tp + fn),
            "specificity": wilson(tn, tn + fp)}


def agreement(truth: list[float], measured: list[float]) -> dict:
    """Pearson r, mean difference (measured - truth) and 95 % limits of agreement."""
    t, m = np.asarray(truth, float), np.asarray(measured, float)
    if len(t) < 2:
        return {"n": len(t), "r": None, "bias": None, "limits": None}
    d = m - t
    r = float(np.corrcoef(t, m)[0, 1]) if t.std() > 0 and m.std() > 0 else None
    sd = float(d.std(ddof=1))
    return {"n": len(t), "r": r, "bias": float(d.mean()), "limits": (float(d.mean() - 1.96 * sd),
                                                                     float(d.mean() + 1.96 * sd))}


def summarize(results: list[PatientResult]) -> dict:
    """Every evaluation figure of a batch with truth (see the module docstring)."""
    done = [r for r in results if not r.error and r.truth_new is not None]
    new_truth = [r.truth_new >= MIN_NEW for r in done]
    new_called = [r.new >= MIN_NEW for r in done]
    counts = [(r.truth_new, r.new) for r in done]
    per_change = {}
    for change in sorted({r.change for r in done}):
        group = [r for r in done if r.change == change]
        per_change[change] = {
            "n": len(group),
            "truth_two_new": sum(r.truth_new >= MIN_NEW for r in group),
            "called_two_new": wilson(sum(r.new >= MIN_NEW for r in group), len(group)),
            "truth_progression": sum(r.truth_verdict == "progression" for r in group),
            "called_progression": wilson(sum(r.verdict == "progression" for r in group), len(group)),
            "mean_new": float(np.mean([r.new for r in group])), "mean_truth_new": float(np.mean([r.truth_new for r in group])),
            "mean_bsi_change": float(np.mean([r.bsi_change for r in group])),
            "mean_truth_bsi_change": float(np.mean([r.truth_bsi_change for r in group])),
        }
    distances = [d for r in done for d in r.distances]
    judged = sum(r.links_judged for r in done)
    positives = [r for r in done if r.truth_new >= MIN_NEW]
    in_reach = sum(sum(r.fates.get(fate, 0) for fate in IN_REACH) >= MIN_NEW for r in positives)
    statuses = ("progression", "unconfirmed", "no progression")
    return {
        "patients": len(results), "compared": len(done), "failed": [(r.patient_id, r.error) for r in results if r.error],
        "two_new": binary_test(new_truth, new_called),
        "pcwg3": binary_test([r.truth_verdict == "progression" for r in done],
                             [r.verdict == "progression" for r in done]),
        "pcwg3_table": [[sum(r.truth_verdict == t and r.verdict == c for r in done) for c in statuses]
                        for t in statuses],
        "statuses": statuses,
        "new_count": {"exact": wilson(sum(t == m for t, m in counts), len(counts)),
                      "within_one": wilson(sum(abs(t - m) <= 1 for t, m in counts), len(counts)),
                      **agreement([t for t, _ in counts], [m for _, m in counts])},
        "bsi_change": agreement([r.truth_bsi_change for r in done], [r.bsi_change for r in done]),
        "per_change": per_change,
        "flare_two_new": per_change.get("flare", {}).get("called_two_new"),
        "flare_progression": per_change.get("flare", {}).get("called_progression"),
        "matching": {"links": len(distances), "median_mm": float(np.median(distances)) if distances else None,
                     "p95_mm": float(np.percentile(distances, 95)) if distances else None,
                     "correct": wilson(sum(r.links_correct for r in done), judged)},
        "new_fates": {fate: sum(r.fates.get(fate, 0) for r in done) for fate in FATES},
        "two_new_in_reach": wilson(in_reach, len(positives)),
        "called_new": _called_new_totals(done),
        "seconds": {"median": float(np.median([r.seconds for r in done])) if done else None,
                    "max": float(max(r.seconds for r in done)) if done else None},
    }


def _called_new_totals(done: list[PatientResult]) -> dict[str, dict[str, dict[str, int]]]:
    """Per judge that ran: its called new lesions per kind over all patients, and over the patients it alone would
    have called ">= 2 new" without truly having them (its false positives)."""
    totals = {}
    for judge in JUDGES:
        ran = [r for r in done if r.called_new.get(judge)]
        if not ran:
            continue
        false = [r for r in ran if r.truth_new < MIN_NEW and getattr(r, f"{judge}_new") >= MIN_NEW]
        totals[judge] = {"all": {k: sum(r.called_new[judge][k] for r in ran) for k in KINDS},
                         "false_two_new": {k: sum(r.called_new[judge][k] for r in false) for k in KINDS},
                         "false_patients": len(false)}
    return totals


def write_followup_report(out: str | Path, results: list[PatientResult], reader: str, manifest: str | Path,
                          note: str = "") -> Path:
    """The evaluation as out/followup_report.html (own template)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    html = env.get_template(TEMPLATE_NAME).render(
        summary=summarize(results), results=results, reader=reader, manifest=str(manifest), version=__version__,
        kinds=KINDS, judge_names=JUDGE_NAMES, note=note, generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), oracle=reader == OracleReader.name)
    return write_text_atomic(Path(out) / REPORT_FILE, html)
