"""Two models' predictions on the same cases: paired DeLong test of their AUCs, McNemar's test at a threshold.

Each predictions CSV needs `case_id` and `probability` (the output of `bonescan predict --manifest` or of
`bonescan evaluate` works as it is). Labels come from the manifest when one is given (a CSV's own labels must
then agree with it), else from the CSVs' `label` columns (which must agree with each other). With a split
chosen, each CSV keeps the cases of that split (from the manifest, else from its own `split` column; a CSV
without one is taken whole for the default split, test). Both must then hold exactly the same cases.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import PredictionsError
from ..fileio import write_text_atomic
from .pipeline import check_values, join_manifest, normalise_cases, read_predictions_csv
from .stats import ModelComparison, clean_for_json, compare_models

SCHEMA = "bonescan.compare/1"


@dataclass
class PairedPredictions:
    """Both models' probabilities on the same cases, in one order, with the labels."""

    case_ids: list[str]
    labels: np.ndarray
    probabilities_a: np.ndarray
    probabilities_b: np.ndarray
    label_source: str  # the file the labels were taken from


@dataclass
class ComparisonReport:
    """The comparison of model A with model B, and where their predictions came from."""

    a: str
    b: str
    manifest: str | None
    split: str
    n_cases: int
    n_positive: int
    comparison: ModelComparison

    def lines(self) -> list[str]:
        """The printed summary: AUCs, difference A - B with its CI, z and p; McNemar when a threshold was given."""
        d = self.comparison.delong
        lines = [
            f"{self.split}: {self.n_cases} cases ({self.n_positive} with metastasis)",
            f"AUC A {d.auc1:.4f}  ({self.a})",
            f"AUC B {d.auc2:.4f}  ({self.b})",
        ]
        if math.isnan(d.statistic):
            lines.append(f"difference A - B {d.difference:+.4f}; paired DeLong test undefined: {d.reason}")
        else:
            lines.append(f"difference A - B {d.difference:+.4f} (95% CI {d.ci_low:+.4f} to {d.ci_high:+.4f}); "
                         f"paired DeLong z = {d.statistic:.3f}, {_p(d.p_value)}")
            if d.reason:
                lines.append(f"note: {d.reason}")
        m = self.comparison.mcnemar
        if m is not None:
            total = m.both_correct + m.only_first_correct + m.only_second_correct + m.both_wrong
            accuracy_a = (m.both_correct + m.only_first_correct) / total
            accuracy_b = (m.both_correct + m.only_second_correct) / total
            lines.append(
                f"at threshold {self.comparison.threshold:g}: accuracy A {accuracy_a:.3f}, "
                f"B {accuracy_b:.3f}; only A correct {m.only_first_correct}, "
                f"only B correct {m.only_second_correct}; McNemar {'exact' if m.exact else 'chi-square'} "
                f"statistic {m.statistic:.3f}, {_p(m.p_value)}")
        return lines

    def as_dict(self) -> dict:
        """JSON layout: schema, inputs, case counts, then the DeLong and McNemar results."""
        return clean_for_json({
            "schema": SCHEMA,
            "a": self.a,
            "b": self.b,
            "manifest": self.manifest,
            "split": self.split,
            "n_cases": self.n_cases,
            "n_positive": self.n_positive,
            "difference": "A - B",
            **self.comparison.as_dict(),
        })

    def write(self, path: str | Path) -> Path:
        """Write the result as JSON, atomically."""
        return write_text_atomic(Path(path), json.dumps(self.as_dict(), indent=2) + "\n")


def _p(value: float) -> str:
    return "p < 0.0001" if value < 1e-4 else f"p = {value:.4f}"


def _read_side(path: Path, manifest: pd.DataFrame | None, split: str) -> pd.DataFrame:
    """One CSV's case_id, probability, label (when known) and split rows, checked, one split kept."""
    frame = read_predictions_csv(path)
    missing = [c for c in ("case_id", "probability") if c not in frame.columns]
    if missing:
        raise PredictionsError(path, f"missing column(s): {', '.join(missing)}")
    if manifest is not None:
        frame = join_manifest(frame, manifest, str(path))  # refuses unknown cases and labels differing from it
    frame = normalise_cases(frame, path)
    if split != "all":
        has_split = "split" in frame.columns and (frame["split"] != "").any()
        if has_split:
            frame = frame[frame["split"] == split]
        elif split != "test":
            raise PredictionsError(path, f"--split {split} asked for, but it has no split column (give --manifest)")
        if frame.empty:
            raise PredictionsError(path, f"no cases in split {split!r}")
    # Values are checked on the chosen split only: a failed prediction elsewhere does not block the comparison.
    return check_values(frame, path).set_index("case_id")


def _listed(case_ids: set[str]) -> str:
    shown = sorted(case_ids)
    return ", ".join(shown[:5]) + (f" and {len(shown) - 5} more" if len(shown) > 5 else "")


def pair_predictions(a: str | Path, b: str | Path, manifest: str | Path | None = None,
                     split: str = "test") -> PairedPredictions:
    """Join two predictions CSVs on case_id, with labels; refuse differing case sets or labels, naming the file."""
    a, b = Path(a), Path(b)
    table = None
    if manifest is not None:
        from ..cohort import load_manifest

        table = load_manifest(manifest, check_files=False)
    side_a, side_b = _read_side(a, table, split), _read_side(b, table, split)
    only_a, only_b = set(side_a.index) - set(side_b.index), set(side_b.index) - set(side_a.index)
    if only_a or only_b:
        parts = ([f"{len(only_a)} case(s) only in {a}: {_listed(only_a)}"] if only_a else []) + \
                ([f"{len(only_b)} case(s) only in {b}: {_listed(only_b)}"] if only_b else [])
        raise PredictionsError(b, f"holds other cases than {a} (split {split}); a paired test needs the same "
                                  "cases: " + "; ".join(parts))
    case_ids = list(side_a.index)
    side_b = side_b.loc[case_ids]
    if "label" in side_a.columns and "label" in side_b.columns:
        differ = [c for c in case_ids if side_a.at[c, "label"] != side_b.at[c, "label"]]
        if differ:
            raise PredictionsError(b, f"label differs from {a} for {len(differ)} case(s): {_listed(set(differ))}")
    if "label" in side_a.columns:
        labels, label_source = side_a["label"], manifest or a
    elif "label" in side_b.columns:
        labels, label_source = side_b["label"], b
    else:
        raise PredictionsError(a, f"no labels: neither it nor {b} has a label column; give --manifest")
    return PairedPredictions(case_ids, labels.loc[case_ids].to_numpy(np.int64), side_a["probability"].to_numpy(),
                             side_b["probability"].to_numpy(), str(label_source))


def compare_prediction_files(a: str | Path, b: str | Path, manifest: str | Path | None = None,
                             split: str = "test", threshold: float | None = None) -> ComparisonReport:
    """Paired DeLong test of model A against model B on the same cases (McNemar too, at `threshold`)."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise PredictionsError("--threshold", f"{threshold} is not a probability between 0 and 1")
    paired = pair_predictions(a, b, manifest, split)
    n_positive = int(paired.labels.sum())
    n_negative = len(paired.labels) - n_positive
    if n_positive < 2 or n_negative < 2:
        raise PredictionsError(paired.label_source, f"split {split}: {n_positive} positive and {n_negative} "
                                                    "negative cases; the DeLong test needs at least 2 of each")
    result = compare_models(paired.labels, paired.probabilities_a, paired.probabilities_b, threshold=threshold)
    return ComparisonReport(str(a), str(b), None if manifest is None else str(manifest), split,
                            len(paired.case_ids), n_positive, result)
