"""Fit a lesion run's hotspot rescorer (`bonescan.lesions.rescore`) on studies with lesion truth.

Every candidate of every study (the network's hotspots and the count candidates, before any floor) is labelled by
the evaluation's hit criterion (`evaluate.froc.match_hotspots`: its centroid within 3 pixels of a metastasis,
confluent metastases one lesion), the gradient-boosted rescorer is fitted on them and saved beside the run.
Studies that cannot be read are listed and left out; the fit goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BoneScanError, ManifestError
from ..evaluate.froc import match_hotspots
from ..preprocess import preprocess_views
from .infer import MIN_AREA_MM2, NetworkMaps, load_lesion_run, maps_at_stored_size, network_candidates
from .rescore import all_candidates, fit_rescorer, save_rescorer
from .truth import load_truth


@dataclass
class RescorerFit:
    """What `fit_hotspot_rescorer` did."""

    path: Path
    n_studies: int
    n_candidates: int
    n_on_metastases: int
    keep_floor: float
    failed: list[tuple[str, str]] = field(default_factory=list)  # (case id, reason)


def _source(row) -> str | list[str]:
    path = getattr(row, "path", None)
    return path if isinstance(path, str) and path else [row.anterior, row.posterior]


def fit_hotspot_rescorer(run_dir: str | Path, manifest: pd.DataFrame, split: str | None = None,
                         device: str = "auto", progress=None, flip_average: bool | None = None,
                         precision: str = "auto") -> RescorerFit:
    """Fit on the manifest's studies with truth (of `split` when given) and write RUN/hotspot_rescorer.*.

    `flip_average` (None: as the run has it) chooses the network's maps the features are measured on; freeze the
    threshold with the same choice after; `precision` is the maps', recorded as the threshold's is. ManifestError
    when no study has lesion truth with findings; `progress(done, total)` is called per study.
    """
    from ..io import read_study

    rows = manifest
    if split is not None:
        rows = rows[rows.get("split", pd.Series("", index=rows.index)) == split]
    if "truth" not in rows.columns or rows["truth"].fillna("").astype(str).eq("").all():
        raise ManifestError("manifest", f"no {split or 'manifest'} study with lesion truth (a `truth` column) to fit "
                                        "the rescorer on")
    rows = rows[rows["truth"].fillna("").astype(str) != ""]
    model = load_lesion_run(run_dir, device=device, flip_average=flip_average, rescorer=False, precision=precision)
    config = model.config.preprocess
    features, labels, from_counts, failed = [], [], [], []
    n_studies = 0
    for done, row in enumerate(rows.itertuples(), start=1):
        try:
            truth = load_truth(row.truth)
            if not truth.has_findings:
                raise ManifestError(row.truth, "holds no annotated findings")
            study = read_study(_source(row))
            maps = model.maps(preprocess_views(study.anterior, study.posterior, config)[None])[0]
        except BoneScanError as error:
            failed.append((str(row.case_id), str(error)))
            if progress is not None:
                progress(done, len(rows))
            continue
        spacing = (study.pixel_spacing or (2.4, 2.4))[0]
        counts = (np.asarray(study.anterior, np.float32), np.asarray(study.posterior, np.float32))
        regions, probabilities = maps_at_stored_size(maps, study.anterior.shape, config.mirror_posterior)
        min_pixels = MIN_AREA_MM2 / spacing**2
        found = network_candidates(NetworkMaps(maps, counts, config.mirror_posterior), regions, min_pixels, spacing)
        candidates, study_features = all_candidates(found, probabilities, counts, regions, spacing, min_pixels)
        centroids = np.array([c.centroid for c in candidates]).reshape(-1, 2)
        instances, ids = truth.confluent_metastases()  # lesions as the evaluation counts them
        hits = match_hotspots(instances, ids, [c.view for c in candidates], centroids)
        features.append(study_features)
        labels.append(hits > 0)
        from_counts.append([c.from_counts for c in candidates])
        n_studies += 1
        if progress is not None:
            progress(done, len(rows))
    if not n_studies:
        raise ManifestError("manifest", f"none of its {len(rows)} studies with truth could be read: "
                                        f"{failed[0][1] if failed else ''}")
    rescorer = fit_rescorer(np.concatenate(features), np.concatenate(labels),
                            np.concatenate([np.asarray(f, bool) for f in from_counts]), n_studies)
    path = save_rescorer(rescorer, run_dir, {"fitted_on_split": split or "all", "failed_studies": len(failed),
                                             "flip_average": model.flip_average,
                                             "precision": model.precision.name})
    return RescorerFit(path, n_studies, rescorer.info["n_candidates"], rescorer.info["n_on_metastases"],
                       rescorer.keep_floor, failed)
