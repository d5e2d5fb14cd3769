"""Readers vs AI, as in the paper's Fig. 3: accuracy, specificity, sensitivity, PPV and NPV with x/n for each
reader's own ("human") and AI-consulted reading and for the AI, reading times, McNemar tests, and the cases every
reader missed that the AI found (and the reverse), with thumbnails.

"Human" is the blinded phase when the study has one, else the readers' own answers of the AI-consulted phase
(given before the AI's result was shown). McNemar tests compare correctness case by case (exact binomial form).
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ..errors import ConfigError
from ..evaluate.stats import mcnemar_test
from ..fileio import atomic_path, write_text_atomic
from .mrmc import MrmcResult, study_mrmc
from .render import thumbnail
from .store import ReaderStore
from .study import label_from_row, read_csv_table, load_predictions

METRICS = ("accuracy", "specificity", "sensitivity", "ppv", "npv")
METRIC_TITLES = {"accuracy": "Accuracy", "specificity": "Specificity", "sensitivity": "Sensitivity",
                 "ppv": "PPV", "npv": "NPV"}
READINGS = {"human": "Human diagnosis", "ai-consulted": "AI consulted diagnosis",
            "ai-consulted-own": "Own answer before the AI was shown", "ai": "AI model"}
SUBSETS = {"all cases": None, "metastasis": 1, "no metastasis": 0}


@dataclass(frozen=True)
class Rate:
    """x out of n, shown as the paper does: 84.25%(337/400)."""

    x: int
    n: int

    @property
    def value(self) -> float:
        """x / n, NaN when n is 0."""
        return self.x / self.n if self.n else math.nan

    def text(self) -> str:
        """Percentage with two decimals and the counts."""
        return f"{100 * self.value:.2f}%({self.x}/{self.n})" if self.n else "–(0/0)"


def diagnostic_rates(truth: np.ndarray, decision: np.ndarray) -> dict[str, Rate]:
    """Accuracy, specificity, sensitivity, PPV and NPV of 0/1 decisions against 0/1 truth."""
    truth = np.asarray(truth, dtype=int)
    decision = np.asarray(decision, dtype=int)
    tp = int(np.sum((truth == 1) & (decision == 1)))
    tn = int(np.sum((truth == 0) & (decision == 0)))
    fp = int(np.sum((truth == 0) & (decision == 1)))
    fn = int(np.sum((truth == 1) & (decision == 0)))
    return {
        "accuracy": Rate(tp + tn, tp + tn + fp + fn),
        "specificity": Rate(tn, tn + fp),
        "sensitivity": Rate(tp, tp + fn),
        "ppv": Rate(tp, tp + fp),
        "npv": Rate(tn, tn + fn),
    }


@dataclass(frozen=True)
class McNemarTest:
    """Paired comparison of correctness: b = only the first correct, c = only the second correct."""

    both_correct: int
    first_only: int
    second_only: int
    both_wrong: int
    p_value: float

    @property
    def n(self) -> int:
        """Number of paired cases."""
        return self.both_correct + self.first_only + self.second_only + self.both_wrong


def mcnemar_correctness(truth: np.ndarray, first: np.ndarray, second: np.ndarray) -> McNemarTest:
    """Exact McNemar test of whether two readers (or reader and AI) are correct equally often on the same cases."""
    truth = np.asarray(truth, dtype=int)
    result = mcnemar_test(np.asarray(first, dtype=int) == truth, np.asarray(second, dtype=int) == truth, exact=True)
    return McNemarTest(result.both_correct, result.only_first_correct, result.only_second_correct, result.both_wrong,
                       result.p_value)


@dataclass
class AnalysisResult:
    """Tables of the analysis and the files written."""

    fig3: pd.DataFrame
    times: pd.DataFrame
    mcnemar: pd.DataFrame
    discordant: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    mrmc: MrmcResult | None = None
    mrmc_note: str = ""  # why the MRMC analysis was not computed

    def summary(self) -> str:
        """A few lines for the terminal: accuracy per reader and reading, and the MRMC result."""
        rows = self.fig3[self.fig3["metric"] == "accuracy"]
        lines = [f"{r.reader:>12}  {READINGS[r.reading]:<36} accuracy {Rate(r.x, r.n).text()}"
                 for r in rows.itertuples()]
        if self.mrmc is not None:
            m = self.mrmc
            lines.append(f"MRMC (Obuchowski-Rockette): AUC {m.mean_aucs[0]:.4f} vs {m.mean_aucs[1]:.4f}, difference "
                         f"{m.difference:+.4f} (95% CI {m.ci_low:+.4f} to {m.ci_high:+.4f}), F = {m.f_statistic:.3f}, "
                         f"ddf = {m.ddf:.2f}, p = {m.p_value:.4f}")
        else:
            lines.append(f"MRMC (Obuchowski-Rockette): not computed: {self.mrmc_note}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ inputs
def load_truth(path: str | Path) -> dict[str, int]:
    """Reference labels from a manifest: case_id with label 0/1 or grade 0-3 (grade >= 2 is metastasis)."""
    path = Path(path)
    table = read_csv_table(path, "truth manifest")
    columns = set(table.columns)
    if "case_id" not in columns or not {"label", "grade"} & columns:
        raise ConfigError(path, "needs a case_id column and a label or grade column")
    problems: list[str] = []
    truth = {}
    for index, row in table.iterrows():
        label = label_from_row(row, columns, f"line {index + 2}", problems)
        if label is not None:
            truth[row["case_id"].strip()] = label
    if problems:
        raise ConfigError(path, "; ".join(problems))
    return truth


def _ai_table(store: ReaderStore, ai_csv: Path | None, threshold: float) -> pd.DataFrame | None:
    """case_id -> AI probability and decision, from --ai or from the study's consulted phase."""
    case_ids = sorted(store.cases())
    if ai_csv is not None:
        rows = [(c, p, d) for c, p, d, _ in load_predictions(ai_csv, case_ids, threshold=threshold)]
    else:
        rows = [(r.case_id, r.probability, r.decision) for r in store.ai_records().values()]
    if not rows:
        return None
    return pd.DataFrame(rows, columns=["case_id", "ai_probability", "ai_decision"]).set_index("case_id")


def _ai_total_seconds(ai_csv: Path | None, ai_seconds: float | None) -> float | None:
    if ai_seconds is not None:
        if not ai_seconds >= 0:
            raise ConfigError("--ai-seconds", f"{ai_seconds} is not a non-negative number of seconds")
        return float(ai_seconds)
    if ai_csv is not None:
        table = pd.read_csv(ai_csv)
        if "seconds" in table.columns:
            return float(pd.to_numeric(table["seconds"], errors="coerce").sum())
    return None


def reader_decisions(reads: pd.DataFrame) -> pd.DataFrame:
    """One row per (reader, reading, case) with the decision and seconds: human, ai-consulted, ai-consulted-own."""
    phases = set(reads["phase"])
    parts = []
    human_phase = "blinded" if "blinded" in phases else "ai-consulted"
    human = reads[(reads["phase"] == human_phase) & reads["own_answer"].notna()]
    parts.append(human.assign(reading="human", decision=human["own_answer"], seconds=human["own_seconds"]))
    consulted = reads[(reads["phase"] == "ai-consulted") & reads["final_answer"].notna()]
    parts.append(consulted.assign(reading="ai-consulted", decision=consulted["final_answer"],
                                  seconds=consulted["own_seconds"] + consulted["final_seconds"]))
    if human_phase == "blinded":
        own = reads[(reads["phase"] == "ai-consulted") & reads["own_answer"].notna()]
        parts.append(own.assign(reading="ai-consulted-own", decision=own["own_answer"], seconds=own["own_seconds"]))
    table = pd.concat(parts, ignore_index=True)[["reader", "reading", "case_id", "decision", "seconds"]]
    table["decision"] = table["decision"].astype(int)
    return table


# ------------------------------------------------------------------------------------------------ analysis
def _fig3(decisions: pd.DataFrame, ai: pd.DataFrame | None, truth: pd.Series) -> pd.DataFrame:
    rows = []
    groups = list(decisions.groupby(["reader", "reading"], sort=True))
    if ai is not None:
        groups.append((("AI", "ai"), ai.reset_index().rename(columns={"ai_decision": "decision"})))
    for (reader, reading), group in groups:
        judged = group[group["case_id"].isin(truth.index)]
        for metric, rate in diagnostic_rates(truth[judged["case_id"]].to_numpy(), judged["decision"]).items():
            rows.append({"reader": reader, "reading": reading, "metric": metric, "x": rate.x, "n": rate.n,
                         "value": rate.value, "text": rate.text()})
    return pd.DataFrame(rows, columns=["reader", "reading", "metric", "x", "n", "value", "text"])


def _times(decisions: pd.DataFrame, ai_total: float | None, n_cases: int) -> pd.DataFrame:
    rows = []
    for (reader, reading), group in decisions.groupby(["reader", "reading"], sort=True):
        seconds = group["seconds"].astype(float)
        rows.append({"reader": reader, "reading": reading, "cases": len(group), "total_seconds": seconds.sum(),
                     "median_seconds": seconds.median(), "total_minutes": seconds.sum() / 60})
    if ai_total is not None:
        rows.append({"reader": "AI", "reading": "ai", "cases": n_cases, "total_seconds": ai_total,
                     "median_seconds": ai_total / n_cases if n_cases else math.nan, "total_minutes": ai_total / 60})
    table = pd.DataFrame(rows)
    if ai_total is not None and not table.empty:
        table["ai_time_saving"] = 1.0 - ai_total / table["total_seconds"].where(table["total_seconds"] > 0)
    return table


def _paired(decisions: pd.DataFrame, reader: str, reading: str) -> pd.Series:
    rows = decisions[(decisions["reader"] == reader) & (decisions["reading"] == reading)]
    return rows.set_index("case_id")["decision"]


def _mcnemar_rows(decisions: pd.DataFrame, ai: pd.DataFrame | None, truth: pd.Series) -> pd.DataFrame:
    comparisons = []
    for reader in sorted(set(decisions["reader"])):
        human = _paired(decisions, reader, "human")
        if ai is not None:
            comparisons.append((reader, "AI vs human", "AI", ai["ai_decision"], reader, human))
        consulted = _paired(decisions, reader, "ai-consulted")
        if not consulted.empty:
            comparisons.append((reader, "human vs AI-consulted", "human", human, "AI-consulted", consulted))
    rows = []
    for reader, comparison, first_name, first, second_name, second in comparisons:
        cases = first.index.intersection(second.index).intersection(truth.index)
        for subset, label in SUBSETS.items():
            chosen = cases if label is None else cases[truth[cases].to_numpy() == label]
            if len(chosen) == 0:
                continue
            test = mcnemar_correctness(truth[chosen].to_numpy(), first[chosen].to_numpy(), second[chosen].to_numpy())
            rows.append({
                "reader": reader, "comparison": comparison, "cases": subset, "n": test.n,
                "first": first_name, "second": second_name,
                "first_correct": test.both_correct + test.first_only, "second_correct": test.both_correct + test.second_only,
                "both_correct": test.both_correct, "only_first_correct": test.first_only,
                "only_second_correct": test.second_only, "both_wrong": test.both_wrong, "p_value": test.p_value,
            })
    return pd.DataFrame(rows)


def _discordant(decisions: pd.DataFrame, ai: pd.DataFrame | None, truth: pd.Series) -> pd.DataFrame:
    """Cases every reader (human reading) got wrong while the AI was right, and the reverse."""
    columns = ["case_id", "kind", "truth", "ai_probability", "ai_decision", "readers"]
    if ai is None:
        return pd.DataFrame(columns=columns)
    human = decisions[decisions["reading"] == "human"]
    rows = []
    for case_id, group in human.groupby("case_id", sort=True):
        if case_id not in truth.index or case_id not in ai.index:
            continue
        label = int(truth[case_id])
        readers_right = group["decision"].to_numpy() == label
        ai_right = int(ai.loc[case_id, "ai_decision"]) == label
        kind = None
        if ai_right and not readers_right.any():
            kind = "missed by every reader, found by the AI"
        elif not ai_right and readers_right.all():
            kind = "missed by the AI, found by every reader"
        if kind:
            answers = "; ".join(f"{r}: {'metastasis' if d else 'no metastasis'}"
                                for r, d in zip(group["reader"], group["decision"]))
            rows.append({"case_id": case_id, "kind": kind, "truth": label,
                         "ai_probability": float(ai.loc[case_id, "ai_probability"]),
                         "ai_decision": int(ai.loc[case_id, "ai_decision"]), "readers": answers})
    return pd.DataFrame(rows, columns=columns)


def _fig3_wide(fig3: pd.DataFrame, times: pd.DataFrame) -> list[dict]:
    """Rows of the HTML table: per reader, each metric for human and AI-consulted reading, and total minutes."""
    out = []
    minutes = {(r.reader, r.reading): r.total_minutes for r in times.itertuples()} if not times.empty else {}
    for reader in [r for r in dict.fromkeys(fig3["reader"]) if r != "AI"] + (["AI"] if "AI" in set(fig3["reader"]) else []):
        cells = {}
        for reading in ("human", "ai-consulted", "ai"):
            part = fig3[(fig3["reader"] == reader) & (fig3["reading"] == reading)]
            for row in part.itertuples():
                cells[(row.metric, reading)] = row.text
        row_minutes = {reading: minutes.get((reader, reading)) for reading in ("human", "ai-consulted", "ai")}
        out.append({"reader": reader, "cells": cells, "minutes": row_minutes})
    return out


def analyze_study(
    study_dir: str | Path,
    *,
    truth_csv: str | Path | None = None,
    ai_csv: str | Path | None = None,
    ai_seconds: float | None = None,
    threshold: float = 0.5,
    out_dir: str | Path | None = None,
) -> AnalysisResult:
    """Compute the readers-vs-AI tables of a study and write report.html plus CSVs to `out_dir`."""
    store = ReaderStore.open(study_dir)
    cases = store.cases()
    ai_path = Path(ai_csv) if ai_csv is not None else None
    if truth_csv is not None:
        truth_map = load_truth(truth_csv)
    else:
        truth_map = {c.case_id: c.label for c in cases.values() if c.label is not None}
    truth = pd.Series({c: v for c, v in truth_map.items() if c in cases}, dtype=int)
    if truth.empty:
        raise ConfigError(study_dir, "no reference labels for the study's cases; pass --truth with a label or grade column")
    reads = store.reads_frame()
    decisions = reader_decisions(reads)
    if decisions.empty:
        raise ConfigError(study_dir, "no answers recorded yet; nothing to analyze")
    ai = _ai_table(store, ai_path, threshold)

    fig3 = _fig3(decisions, ai, truth)
    times = _times(decisions, _ai_total_seconds(ai_path, ai_seconds), len(cases))
    tests = _mcnemar_rows(decisions, ai, truth)
    discordant = _discordant(decisions, ai, truth)
    result = AnalysisResult(fig3, times, tests, discordant)
    mrmc = study_mrmc(reads, truth)
    if isinstance(mrmc, MrmcResult):
        result.mrmc = mrmc
        mrmc_summary, mrmc_readers = mrmc.summary_frame(), mrmc.reader_frame()
    else:
        result.mrmc_note = mrmc
        # Written even when not computed, so that no earlier result is left behind looking current.
        mrmc_summary = pd.DataFrame([("not computed", mrmc)], columns=["quantity", "value"])
        mrmc_readers = pd.DataFrame(columns=["reader", "auc_human", "auc_ai-consulted", "difference"])

    out = Path(out_dir) if out_dir is not None else Path(study_dir) / "analysis"
    for name, table in (("fig3.csv", fig3), ("times.csv", times), ("mcnemar.csv", tests),
                        ("discordant.csv", discordant), ("mrmc.csv", mrmc_summary),
                        ("mrmc_readers.csv", mrmc_readers)):
        with atomic_path(out / name) as tmp:
            table.to_csv(tmp, index=False)
        result.files.append(out / name)

    thumbs = {}
    for case_id in discordant["case_id"]:
        case = cases[case_id]
        png = thumbnail(store.images_dir / f"{case.image_key}_anterior.png",
                        store.images_dir / f"{case.image_key}_posterior.png", upper=case.upper)
        thumbs[case_id] = base64.b64encode(png).decode("ascii")
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=select_autoescape())
    html = env.get_template("analysis.html").render(
        study=str(study_dir), fig3_rows=_fig3_wide(fig3, times), metrics=METRICS, titles=METRIC_TITLES,
        times=times.to_dict("records"), tests=tests.to_dict("records"), readings=READINGS,
        discordant=discordant.to_dict("records"), thumbs=thumbs, n_truth=len(truth), n_cases=len(cases),
        human_phase="blinded" if "blinded" in set(reads["phase"]) else "ai-consulted",
        mrmc=result.mrmc, mrmc_note=result.mrmc_note,
        mrmc_readers=mrmc_readers.to_dict("records") if result.mrmc is not None else [],
    )
    result.files.append(write_text_atomic(out / "report.html", html))
    return result
