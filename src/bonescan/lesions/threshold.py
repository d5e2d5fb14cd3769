"""A lesion run's frozen malignancy threshold, chosen on its validation studies at a false-positive budget.

A hotspot counts as malignant (in n_malignant, BSI, the overlay's red, the SR's "Bony metastasis: Present" and the
follow-up's new-lesion count) when its malignancy reaches the run's threshold. 0.5 is the network's own midpoint,
but a small network trained briefly calls many hotspots malignant at 0.5 (2.8 false positives per study measured
on the `paper` test split), and every count built on them inherits that. `bonescan lesions threshold` reads the
validation split with the run, draws its FROC curve (`evaluate.froc`: the same hit criterion as the lesion
evaluation) and freezes the lowest threshold whose false positives per study stay within the budget, in
RUN/malignancy_threshold.json; `load_lesion_run` then uses it everywhere. Runs without the file keep 0.5.

A rescored run's threshold is on the rescorer's scale, but the BSI still outlines each malignant hotspot by the
network's own pixel probabilities (`infer.study_lesions`), so the record keeps the network's threshold beside it as
`outline_threshold`: the threshold frozen before the rescorer was fitted (DEFAULT_THRESHOLD when there was none).
The record also says whether the network's maps are averaged with the mirrored study's (`flip_average`, chosen with
`--flip-average`): the threshold holds for the maps it was chosen on, so the run keeps them. It names the precision
those maps were made in (`precision`, chosen with `--precision`); a machine that makes them in another precision
(bf16 where it is fast, fp32 where bf16 is emulated) uses the threshold all the same, and `load_lesion_run` says so
(`LesionModel.notes`): the maps then differ by a few hundredths, enough to move a call near the threshold.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..device import PRECISION_DTYPES
from ..errors import ManifestError, RunError
from ..evaluate.froc import FrocCurve, froc_curve, match_hotspots, study_detections
from ..fileio import write_text_atomic
from .foci import RULE as HOTSPOT_RULE
from .truth import load_truth

THRESHOLD_FILE = "malignancy_threshold.json"
DEFAULT_THRESHOLD = 0.5
PRECISIONS = tuple(PRECISION_DTYPES)  # the names a frozen record may give (`device.Precision.name`)


def threshold_at_fp(curve: FrocCurve, fp_per_study: float) -> tuple[float, float, float]:
    """(threshold, sensitivity, false positives per study) of the FROC point with the most sensitivity whose false
    positives per study are at most `fp_per_study`; threshold 1.0 when no hotspot can be called at that budget."""
    allowed = np.flatnonzero(np.asarray(curve.fp_per_study) <= fp_per_study)
    best = allowed[np.argmax(np.asarray(curve.sensitivity)[allowed])] if allowed.size else 0
    threshold = float(curve.thresholds[best])
    if not math.isfinite(threshold):
        return 1.0, 0.0, 0.0
    return min(threshold, 1.0), float(curve.sensitivity[best]), float(curve.fp_per_study[best])


def freeze_malignancy_threshold(run_dir: str | Path, manifest: pd.DataFrame, split: str = "val",
                                fp_per_study: float = 1.0, device: str = "auto",
                                flip_average: bool | None = None, precision: str = "auto") -> dict:
    """Choose the run's malignancy threshold on `split` studies with truth and write RUN/malignancy_threshold.json.

    `flip_average` (None: as the run has it) chooses whether the network's maps are averaged with the mirrored
    study's, here and wherever the run is used after; `precision` ("auto": bf16 where this CPU runs it faster) is
    the maps' precision, recorded (freeze with the precision of the machines that will use the run). Returns what
    was written. ManifestError when the split has no study with lesion truth.
    """
    from ..io import read_study
    from .infer import load_lesion_run

    if not fp_per_study > 0:
        raise RunError(run_dir, f"the false-positive budget must be > 0 per study, got {fp_per_study}")
    rows = manifest[(manifest.get("split", pd.Series("", index=manifest.index)) == split)]
    if "truth" in rows.columns:
        rows = rows[rows["truth"].fillna("").astype(str) != ""]
    if "truth" not in manifest.columns or rows.empty:
        raise ManifestError("manifest", f"no {split!r} study with lesion truth (a `truth` column) to choose on")
    model = load_lesion_run(run_dir, device=device, flip_average=flip_average, precision=precision)
    detections = []
    for row in rows.itertuples():
        source = row.path if isinstance(getattr(row, "path", None), str) and row.path else [row.anterior,
                                                                                              row.posterior]
        lesions, _ = model.read(read_study(source))
        truth = load_truth(row.truth)
        instances, ids = truth.confluent_metastases()  # lesions as the evaluation counts them
        views = [0 if h.view == "anterior" else 1 for h in lesions.hotspots]
        centroids = np.array([h.centroid for h in lesions.hotspots], dtype=float).reshape(-1, 2)
        hits = match_hotspots(instances, ids, views, centroids)
        detections.append(study_detections(ids, hits, [h.malignancy for h in lesions.hotspots]))
    curve = froc_curve(detections)
    threshold, sensitivity, fp = threshold_at_fp(curve, fp_per_study)
    outline = model.outline_threshold if model.rescorer is not None else threshold  # the network's, as loaded
    record = {"malignancy_threshold": threshold, "outline_threshold": outline, "fp_per_study_budget": fp_per_study,
              "chosen_on": split, "n_studies": len(detections), "n_lesions": curve.n_lesions,
              "sensitivity_there": sensitivity, "fp_per_study_there": fp, "rescored": model.rescorer is not None,
              "flip_average": model.flip_average,
              "precision": model.precision.name,  # the maps' (`load_lesion_run`: bf16 where the CPU runs it faster)
              "hotspots": HOTSPOT_RULE,  # how hotspots were found (`foci`); another rule asks for a new threshold
              "rule": "lowest malignancy threshold whose false-positive hotspots per study stay within the budget "
                      "on the chosen split (FROC of bonescan.evaluate.froc)"}
    write_text_atomic(Path(run_dir) / THRESHOLD_FILE, json.dumps(record, indent=2) + "\n")
    return record


@dataclass(frozen=True)
class FrozenThreshold:
    """What RUN/malignancy_threshold.json says of how the run's hotspots are called (defaults without the file)."""

    threshold: float = DEFAULT_THRESHOLD
    outline_threshold: float = DEFAULT_THRESHOLD  # the network's own pixel threshold (the BSI's outline)
    flip_average: bool = False  # the maps are averaged with the mirrored study's (`infer.LesionModel`)
    precision: str | None = None  # the maps' precision when it was chosen (None: no record, or one from before)
    hotspot_rule: str | None = HOTSPOT_RULE  # how hotspots were found when it was chosen (None: before records said)


def load_frozen_threshold(run_dir: str | Path) -> FrozenThreshold:
    """The run's frozen threshold record; defaults without the file; RunError when the file is unusable.

    The outline threshold is `outline_threshold` of a rescored record, the frozen threshold of a record without a
    rescorer, and DEFAULT_THRESHOLD for a rescored record written before the field (the network's threshold was
    not kept then).
    """
    record = _threshold_record(run_dir)
    if record is None:
        return FrozenThreshold()
    threshold = _probability(run_dir, record, "malignancy_threshold")
    if not record.get("rescored", False):
        outline = threshold
    else:
        outline = _probability(run_dir, record, "outline_threshold") if "outline_threshold" in record \
            else DEFAULT_THRESHOLD
    flip = record.get("flip_average", False)
    if not isinstance(flip, bool):
        raise RunError(Path(run_dir) / THRESHOLD_FILE, f"flip_average {flip!r} is not true or false")
    precision = record.get("precision")
    if precision is not None and precision not in PRECISIONS:
        raise RunError(Path(run_dir) / THRESHOLD_FILE, f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return FrozenThreshold(threshold, outline, flip, precision, record.get("hotspots"))


def _threshold_record(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / THRESHOLD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise RunError(path, f"cannot read the malignancy threshold ({error})") from error
    if not isinstance(record, dict):
        raise RunError(path, "cannot read the malignancy threshold (not a JSON object)")
    return record


def _probability(run_dir: str | Path, record: dict, name: str) -> float:
    path = Path(run_dir) / THRESHOLD_FILE
    if name not in record:
        raise RunError(path, f"cannot read the malignancy threshold (no {name!r})")
    value = record[name]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise RunError(path, f"{name.replace('_', ' ')} {value!r} is not a probability")
    return float(value)
