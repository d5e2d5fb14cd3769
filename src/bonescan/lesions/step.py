"""The lesion step of batch prediction: a batch of read studies -> lesion network -> hotspots, BSI, files.

`bonescan predict --lesions RUN` runs it after the classifier on every batch of studies that were read; it fills
each study's outcome (bsi, n_malignant, n_malignant_lesions, superscan, probability_from_lesions, lesions) and
writes `LesionOutputs`. A study whose lesion step fails is marked failed with the reason; the batch goes on.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import OutputError, describe
from ..preprocess import preprocess_views
from .infer import LesionModel, load_lesion_run, study_lesions, tracking_key
from .outputs import LesionOutputs, render_lesions

POST_THREADS = min(4, os.cpu_count() or 1)  # studies post-processed at once


@dataclass
class LesionStep:
    """A loaded lesion run and where its results go; `seconds` sums the time of the whole step: network,
    hotspots and writing the files."""

    model: LesionModel
    outputs: LesionOutputs
    seconds: float = 0.0
    studies: int = 0
    # The last batch's written results by item index, for the DICOM writer: (StudyLesions, hotspot number map,
    # overlay palette image).
    last: dict = field(default_factory=dict)
    _pool: ThreadPoolExecutor | None = field(default=None, init=False, repr=False)

    @classmethod
    def open(cls, run_dir: str | Path, out_dir: str | Path, device: str = "auto", table: bool = True,
             precision: str = "auto") -> "LesionStep":
        return cls(load_lesion_run(run_dir, device=device, precision=precision),
                   LesionOutputs(Path(out_dir), table=table))

    def apply(self, items, outcomes) -> dict:
        """Predict and write the lesions of read studies (`items` hold views and spacing), filling `outcomes`; the
        StudyLesions written, by item index."""
        start = time.perf_counter()
        preprocess = self.model.config.preprocess
        inputs = np.stack([preprocess_views(*item.views, preprocess) for item in items])
        maps = self.model.maps(inputs)

        def study_of(item, outcome, study_maps):
            """(StudyLesions, hotspot numbers, overlay, JSON path, record), or the reason the study failed and
            whether only its files could not be written."""
            spacing = item.spacing if item.spacing else 2.4
            try:
                lesions, numbers = study_lesions(
                    study_maps, *item.views, spacing, preprocess.mirror_posterior,
                    study_key=tracking_key(outcome.study_id, outcome.name), threshold=self.model.threshold,
                    rescorer=self.model.rescorer, outline_threshold=self.model.outline_threshold)
            except Exception as error:  # noqa: BLE001 - reported per study, the batch goes on
                return f"finding lesions: {describe(error)}", False
            try:
                # rendered once: the lesion PNG and, with --dicom-out, the numbered-hotspot Secondary Capture
                overlay = render_lesions(*item.views, lesions, numbers, outcome.name)
                path, record = self.outputs.write_files(outcome.name, lesions, numbers, *item.views, overlay=overlay)
            except Exception as error:  # noqa: BLE001 - reported per study, the batch goes on
                return f"writing lesions: {describe(error)}", isinstance(error, OutputError)
            return lesions, numbers, overlay, path, record

        # Threads: most of the work is in numpy, scipy, torch, Pillow and zlib calls that let other threads run,
        # so studies overlap (measured on 2 cores: 22-26 -> 17-19 ms per study of post-processing).
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=POST_THREADS)
        results = list(self._pool.map(study_of, items, outcomes, maps))
        self.last = {}
        for item, outcome, result in zip(items, outcomes, results):
            if isinstance(result[0], str):  # the reason it failed
                outcome.status, (outcome.error, outcome.unwritten) = "failed", result
                continue
            lesions, numbers, overlay, path, record = result
            self.outputs.remember(record)  # in the studies' order
            unseen_camera = self.model.cameras.warning(item.meta) if self.model.cameras is not None else None
            if unseen_camera:
                outcome.warnings.append(unseen_camera)
            self.last[item.index] = (lesions, numbers, overlay)
            outcome.bsi = round(lesions.bsi, 4)
            outcome.n_malignant = lesions.n_malignant
            outcome.n_malignant_lesions = lesions.n_malignant_lesions
            outcome.superscan = lesions.superscan
            outcome.probability_from_lesions = round(lesions.probability, 4)
            outcome.lesions = str(path.resolve())
        self.seconds += time.perf_counter() - start
        self.studies += len(items)
        return {index: written[0] for index, written in self.last.items()}

    def finish(self) -> Path | None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        return self.outputs.finish()
