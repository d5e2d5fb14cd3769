"""Batch prediction: files and folders of bone scans -> probability and decision per study, heat maps, DICOM results.

Reading and preprocessing run in reader processes (a process pool) while the main process runs the network, so
decoding overlaps with compute. A study that cannot be read (any refusal of the reading layer), or whose heat
map or DICOM result cannot be written, is listed with its reason and the batch goes on.

Decisions use a frozen operating point from RUN/operating_points.json (written by `bonescan evaluate --run`):
positive when probability >= threshold. A run without that file falls back to 0.5, with a warning on every study.

Studies come from files and folders (`find_studies`), or from a cohort manifest: then every row is keyed by its
`case_id` (the first column of the CSV, beside the study's Study Instance UID) and heat maps are named
<case_id>.png, so the output feeds `bonescan reader create --predictions` and `bonescan evaluate --heatmaps`.

The network runs in the engine `engine_select` picks for the run on this machine (a stored exported engine, int8
or fp32, where it was measured faster; else torch's); the report names it. Torch is imported only when needed
(heat maps, DICOM results, building an engine, the torch engine), since importing it costs
more than predicting one study with an exported engine.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from . import __version__
from .cameras import CameraCheck
from .disk_forecast import output_files, shortfall
from .errors import (BoneScanError, ConfigError, OutputError, PredictionsError, RunError, describe,
                     workers_stopped)
from .fileio import write_text_atomic
from .io import StudySource, find_studies, read_study
from .preprocess import PreprocessConfig, preprocess_study
from .study import StudyMeta

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from .exported import ExportedEngine
    from .fastpath import InferenceEngine

OPERATING_POINTS_FILE = "operating_points.json"
OPERATING_POINT_NAMES = ("youden", "rule-out", "rule-in", "0.5")
GRAD_CAM_CHUNK = 2
LESION_FIELDS = ("bsi", "n_malignant", "n_malignant_lesions", "superscan", "probability_from_lesions", "lesions",
                 "dicom_seg", "dicom_hotspots_sc")
ENGINE_CHOICES = ("auto", "torch")
FALLBACK_WARNING = "run has no frozen operating points (operating_points.json): decision at threshold 0.5"


@dataclass(frozen=True)
class OperatingPoint:
    """A named decision threshold: positive when probability >= threshold."""

    name: str
    threshold: float
    warning: str | None = None
    # Fitted by `bonescan recalibrate` (or evaluate's temperature scaling): the probability reported as calibrated
    # is expit(logit(p) / temperature). Decisions compare the model's own probability with the threshold.
    temperature: float | None = None

    def calibrated(self, probability: float) -> float | None:
        if self.temperature is None:
            return None
        from .evaluate.calibration import apply_temperature  # scipy only, no torch: the exported engine path

        return round(float(apply_temperature([probability], self.temperature)[0]), 6)


def resolve_operating_point(run_dir: str | Path, name: str = "youden") -> OperatingPoint:
    """The threshold frozen for `name` in RUN/operating_points.json; 0.5 with a warning when the file is absent."""
    if name not in OPERATING_POINT_NAMES:
        raise ConfigError("--operating-point", f"unknown operating point {name!r}; use {', '.join(OPERATING_POINT_NAMES)}")
    path = Path(run_dir) / OPERATING_POINTS_FILE
    if not path.is_file():
        return OperatingPoint(name="0.5", threshold=0.5, warning=FALLBACK_WARNING)
    from .evaluate.operating_points import load_operating_points

    try:
        points = load_operating_points(path)
    except PredictionsError as error:
        raise RunError(path, error.reason) from error
    threshold = float(points[name])
    if not 0.0 <= threshold <= 1.0:
        raise RunError(path, f"threshold {threshold} for {name!r} is not a probability")
    return OperatingPoint(name=name, threshold=threshold, temperature=load_temperature(path))


def load_temperature(path: Path) -> float | None:
    """The temperature stored beside the thresholds, None when there is none; RunError when it is not usable."""
    value = json.loads(path.read_text(encoding="utf-8")).get("temperature")
    if value is None:
        return None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise RunError(path, f"temperature {value!r} must be a positive number")
    return float(value)


@dataclass
class StudyOutcome:
    """One study's row in the output: a prediction, or the reason it failed."""

    study_id: str  # Study Instance UID (DICOM), else the id taken from the file names
    source: str
    status: str  # "ok" or "failed"
    probability: float | None = None
    # With a run recalibrated for this site (`bonescan recalibrate`): the probability after its temperature.
    calibrated_probability: float | None = None
    decision: str | None = None  # "metastasis" / "no metastasis"
    operating_point: str | None = None
    threshold: float | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None  # "<ErrorType>: message" when failed
    heatmap: str | None = None
    dicom_sc: str | None = None
    dicom_sr: str | None = None
    case_id: str | None = None  # the manifest's case_id when studies came from a manifest
    # With a lesion run (`--lesions`): Bone Scan Index (%), malignant hotspots (both views), malignant lesions (a
    # focus seen in both views once), whether the uptake is a superscan's (diffuse: the lesions are then not
    # countable), the lesions' study probability and the study's lesion JSON (`bonescan.lesions.outputs`).
    bsi: float | None = None
    n_malignant: int | None = None
    n_malignant_lesions: int | None = None
    superscan: bool | None = None
    probability_from_lesions: float | None = None
    lesions: str | None = None
    dicom_seg: str | None = None  # with --dicom-out: the Segmentation files (one per view), separated by ";"
    dicom_hotspots_sc: str | None = None  # with --dicom-out: the numbered hotspots as a Secondary Capture
    # Failed only because its files could not be written (a full disk): the study itself may be read again later.
    # Not an output column.
    unwritten: bool = False

    @property
    def name(self) -> str:
        """The id shown to users and used for file names: case_id when known, else study_id."""
        return self.case_id if self.case_id is not None else self.study_id


@dataclass
class PredictionReport:
    """Every study's outcome plus what produced them and how long it took."""

    run: str
    operating_point: OperatingPoint
    engine: str
    studies: list[StudyOutcome]
    seconds: float
    notices: list[str] = field(default_factory=list)  # engine rebuilds and fallbacks, for the record
    # Files of the whole job that could not be written (hotspots.csv on a full disk): the job failed, though every
    # study's reading is kept.
    unwritten: list[OutputError] = field(default_factory=list)
    # With a lesion step and `keep_lesions`: each study's StudyLesions by its index among the sources.
    lesions: dict = field(default_factory=dict, repr=False)

    @property
    def failures(self) -> list[StudyOutcome]:
        return [s for s in self.studies if s.status != "ok"]

    @property
    def ok(self) -> bool:
        return not self.failures and not self.unwritten

    @property
    def keyed_by_case(self) -> bool:
        """True when the studies came from a manifest and carry its case_id."""
        return any(s.case_id is not None for s in self.studies)

    def _columns(self) -> list[str]:
        # case_id first (what `bonescan reader create --predictions` joins on); absent without a manifest.
        fields = [name for name in StudyOutcome.__dataclass_fields__ if name not in ("case_id", "unwritten")]
        if all(s.lesions is None for s in self.studies):  # no lesion run: the CSV keeps its classifier columns
            fields = [name for name in fields if name not in LESION_FIELDS]
        if all(s.calibrated_probability is None for s in self.studies):  # run not recalibrated
            fields.remove("calibrated_probability")
        return ["case_id", *fields] if self.keyed_by_case else fields

    def to_frame(self) -> pd.DataFrame:
        """One row per study (failed ones included, with their error), and the engine that ran."""
        import pandas as pd

        rows = [{**asdict(s), "warnings": "; ".join(s.warnings), "engine": self.engine} for s in self.studies]
        return pd.DataFrame(rows, columns=[*self._columns(), "engine"])

    def to_json_dict(self) -> dict:
        """The JSON layout: provenance, then studies and failures."""
        failure_keys = (["case_id"] if self.keyed_by_case else []) + ["study_id", "source", "error"]
        return {
            "run": self.run,
            "bonescan_version": __version__,
            "operating_point": self.operating_point.name,
            "threshold": self.operating_point.threshold,
            "decision_rule": "metastasis when probability >= threshold",
            "engine": self.engine,
            "engine_notices": list(self.notices),
            "n_studies": len(self.studies),
            "n_failed": len(self.failures),
            "seconds": round(self.seconds, 3),
            "studies": [{name: asdict(s)[name] for name in self._columns()} for s in self.studies if s.status == "ok"],
            "failures": [{key: getattr(s, key) for key in failure_keys} for s in self.failures],
        }

    def write(self, path: str | Path) -> Path:
        """Write the report as .csv or .json (chosen by the suffix), atomically."""
        path = Path(path)
        if path.suffix.lower() == ".json":
            return write_text_atomic(path, json.dumps(self.to_json_dict(), indent=2) + "\n")
        if path.suffix.lower() == ".csv":
            return write_text_atomic(path, self.to_frame().to_csv(index=False))
        raise ConfigError(path, "output must end in .csv or .json")


@dataclass
class _Item:
    """What a worker hands back for one study (plain data: it crosses a process boundary)."""

    index: int
    inputs: np.ndarray | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    views: tuple[np.ndarray, np.ndarray] | None = None  # original grids, kept for heat maps / DICOM results
    meta: StudyMeta | None = None  # header facts (Study Instance UID...), small enough to keep for every study
    mirror_posterior: bool = True
    spacing: float | None = None  # mm per pixel (rows), kept with the views


class StudyReader:
    """Reads and preprocesses study i; a refusal becomes an `_Item` carrying the error instead of an exception."""

    def __init__(self, sources: Sequence[StudySource], config: PreprocessConfig, keep_views: bool = False):
        self.sources = list(sources)
        self.config = config
        self.keep_views = keep_views

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> _Item:
        source = self.sources[index]
        try:
            study = read_study(source, region=self.config.region)
            inputs = preprocess_study(study, self.config)
        except BoneScanError as error:
            return _Item(index, error=f"{type(error).__name__}: {error}")
        except Exception as error:  # an unexpected failure of one study must not stop the batch
            return _Item(index, error=f"{type(error).__name__}: {source.source}: {error}")
        item = _Item(index, inputs=inputs, warnings=list(study.warnings), meta=study.meta,
                     mirror_posterior=self.config.mirror_posterior)
        if self.keep_views:
            item.views = study.both_views()
            item.spacing = float(study.pixel_spacing[0]) if study.pixel_spacing else None
        return item


def iterate_batches(sources: Sequence[StudySource], config: PreprocessConfig, batch_size: int, workers: int,
                    keep_views: bool = False) -> Iterable[list[_Item]]:
    """Batches of read studies, in order, produced by `workers` processes ahead of the consumer (0: in this
    process). A plain process pool, not torch's DataLoader: reading needs no torch, and an exported engine
    predicts without importing it."""
    reader = StudyReader(sources, config, keep_views)
    starts = range(0, len(reader), batch_size)
    if workers == 0:
        return ([reader[i] for i in range(start, min(start + batch_size, len(reader)))] for start in starts)
    return _read_ahead(reader, starts, batch_size, workers)


def _read_ahead(reader: StudyReader, starts: range, batch_size: int, workers: int,
                per_worker: int = 4) -> Iterable[list[_Item]]:
    # At most `per_worker` batches per process wait ahead of the consumer (decoded views are megabytes each).
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # forkserver, not fork: a reader forked from this process shares its heap copy-on-write, so every page the
    # network then writes faults and is copied (measured: 9 s of system time and 1.47 instead of 1.77 studies/s
    # for 32 paper-sized studies on 2 cores). The readers need no torch; they start from a small server process.
    context = multiprocessing.get_context("forkserver")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_reader, initargs=(reader,))
    try:
        queue = iter(starts)
        first = itertools.islice(queue, per_worker * workers)
        pending = deque(pool.submit(_read_batch, start, batch_size) for start in first)
        while pending:
            try:
                batch = pending.popleft().result()
            except BrokenProcessPool as error:  # most often a script without a main guard (errors.workers_stopped)
                raise workers_stopped(workers, error, "workers=0 (--workers 0)") from error
            following = next(queue, None)
            if following is not None:
                pending.append(pool.submit(_read_batch, following, batch_size))
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_WORKER_READER: StudyReader | None = None  # the reader of this worker process, set once by _init_reader


def _init_reader(reader: StudyReader) -> None:
    global _WORKER_READER
    _WORKER_READER = reader


def _read_batch(start: int, batch_size: int) -> list[_Item]:
    reader = _WORKER_READER
    return [reader[i] for i in range(start, min(start + batch_size, len(reader)))]


def default_workers() -> int:
    """Reader processes: enough to keep the network fed without taking its cores (1 on a 2-core machine)."""
    cores = os.cpu_count() or 1
    return max(1, min(4, cores // 2))


@dataclass(frozen=True)
class ManifestStudies:
    """The studies of a manifest to predict: one source per row kept, and each row's case_id."""

    sources: list[StudySource]
    case_ids: list[str]


def manifest_studies(manifest: str | Path, split: str | None = None) -> ManifestStudies:
    """The manifest's rows not excluded (of one split, if given) as study sources, in manifest order.

    Files are not checked here: a missing or unreadable file fails only its own study in the batch.
    """
    from .cohort import SPLITS, load_manifest
    from .data import study_source

    if split is not None and split not in SPLITS:
        raise ConfigError("--split", f"unknown split {split!r}; use {', '.join(SPLITS)}")
    table = load_manifest(manifest, check_files=False)
    table = table[table["exclude_reason"] == ""]
    if split is not None:
        if not (table["split"] != "").any():
            raise ConfigError(manifest, f"--split {split} asked for, but the manifest has no split column")
        table = table[table["split"] == split]
    if table.empty:
        raise ConfigError(manifest, "no studies to predict" + (f" in split {split!r}" if split else "")
                          + " (excluded rows are skipped)")
    sources = []
    for _, row in table.iterrows():
        files = study_source(row)
        files = [files] if isinstance(files, str) else files
        sources.append(StudySource(str(row["case_id"]), tuple(Path(f) for f in files)))
    return ManifestStudies(sources, [str(case_id) for case_id in table["case_id"]])


FoundStudies = tuple[list[StudySource], list[str] | None]  # the sources, and their case_ids from a manifest


def studies_to_predict(paths: Sequence[str | Path] = (), manifest: str | Path | None = None,
                       split: str | None = None) -> FoundStudies:
    """The studies under `paths`, or the manifest's (one `split` if given), checked before any network loads."""
    paths = list(paths or ())
    if (manifest is None) == (not paths):
        raise ConfigError("bonescan predict", "give either study files/folders or --manifest, not both or neither")
    if split is not None and manifest is None:
        raise ConfigError("--split", "selects manifest rows; it needs --manifest")
    if manifest is not None:
        studies = manifest_studies(manifest, split)
        return studies.sources, studies.case_ids
    sources = find_studies(paths)
    if not sources:
        raise ConfigError(", ".join(map(str, paths)), "no DICOM or image files found")
    return sources, None


def predict_studies(
    run_dir: str | Path,
    paths: Sequence[str | Path] = (),
    operating_point: str = "youden",
    batch_size: int = 8,
    workers: int | None = None,
    heatmap_dir: str | Path | None = None,
    dicom_dir: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    compile: str = "auto",
    checkpoint: str = "best",
    progress: Callable[[int, int], None] | None = None,
    manifest: str | Path | None = None,
    split: str | None = None,
    engine: str = "auto",
    notice: Callable[[str], None] | None = None,
    shard: Callable[[Callable[[], FoundStudies]], FoundStudies] | None = None,
    lesions: str | Path | None = None,
    lesions_out: str | Path | None = None,
) -> PredictionReport:
    """Predict every study under `paths`, or of `manifest` (one `split` if given), with the run's network.

    Give either paths or a manifest. See the module docstring for what is written. `engine` "auto" runs the
    engine chosen for this machine (see `engine_select`; only with device, precision and compile left at "auto"),
    "torch" the torch engine; `notice` receives messages about engines rebuilt or set aside. `shard`, given a
    function that lists the studies, returns the share this process predicts (a torchrun job; see
    `predict_sharded`). `lesions`: a lesion run whose hotspots, regions and BSI are written to `lesions_out`
    (see `bonescan.lesions.outputs`).
    """
    if engine not in ENGINE_CHOICES:
        raise ConfigError("--engine", f"unknown engine {engine!r}; use {' or '.join(ENGINE_CHOICES)}")
    if batch_size < 1:
        raise ConfigError("--batch-size", f"must be at least 1, got {batch_size}")
    find = functools.partial(studies_to_predict, paths, manifest, split)
    sources, case_ids = shard(find) if shard is not None else find()
    run_dir = Path(run_dir)
    point = resolve_operating_point(run_dir, operating_point)
    if workers is None:  # a reader process starts in about a second: worth it only beyond one batch
        workers = 0 if len(sources) <= batch_size else default_workers()
    loaded = None
    if heatmap_dir or dicom_dir:  # Grad-CAM needs the torch network whichever engine predicts
        loaded = _load(run_dir, checkpoint)
    selection = None
    if engine == "auto" and uses_stored_engine(run_dir, checkpoint, device, precision, compile):
        from .engine_select import select_engine

        def load_model() -> tuple:
            nonlocal loaded
            loaded = loaded or _load(run_dir, checkpoint)
            return loaded.model, loaded.preprocess_cfg

        selection = select_engine(run_dir, checkpoint, batch_size, load_model, notice, studies=len(sources))
    if selection is not None and selection.engine is not None:
        runner, preprocess_cfg = selection.engine, selection.preprocess_cfg
    else:
        from .fastpath import InferenceEngine

        loaded = loaded or _load(run_dir, checkpoint)
        runner = InferenceEngine(loaded.model, device=device, precision=precision, compile=compile,
                                 batch_size=batch_size)
        preprocess_cfg = loaded.preprocess_cfg
    lesion_step = None
    if lesions is not None:
        from .lesions.step import LesionStep

        lesion_step = LesionStep.open(lesions, lesions_out if lesions_out is not None else ".", device=device,
                                      precision=precision)
    report = predict_sources(
        sources, loaded.model if loaded else None, preprocess_cfg, runner, point,
        run_label=f"{run_dir} ({checkpoint})", workers=workers,
        heatmap_dir=heatmap_dir, dicom_dir=dicom_dir, progress=progress, case_ids=case_ids, lesion_step=lesion_step,
        cameras=CameraCheck.of_run(run_dir), notice=notice,
    )
    report.notices = (list(selection.notices) if selection else []) + report.notices
    return report


def _load(run_dir: Path, checkpoint: str):
    from .device import tune_allocator
    from .inference import load_run

    tune_allocator()
    return load_run(run_dir, checkpoint=checkpoint)


def uses_stored_engine(run_dir: Path, checkpoint: str, device: str, precision: str, compile: str) -> bool:
    """Exported engines serve a run's own checkpoints on the CPU, when no precision or compile was asked for."""
    if checkpoint not in ("best", "last") or precision != "auto" or compile != "auto" or device not in ("auto", "cpu"):
        return False
    if device == "auto" and any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/kfd")):
        import torch  # a GPU driver is present; the GPU engine is used when a GPU really is

        return not torch.cuda.is_available()
    return True


def predict_sources(
    sources: Sequence[StudySource],
    model: torch.nn.Module | None,
    preprocess_cfg: PreprocessConfig,
    engine: InferenceEngine | ExportedEngine,
    point: OperatingPoint,
    run_label: str = "",
    workers: int = 1,
    heatmap_dir: str | Path | None = None,
    dicom_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    case_ids: Sequence[str] | None = None,
    lesion_step=None,
    keep_lesions: bool = False,
    cameras: CameraCheck | None = None,
    notice: Callable[[str], None] | None = None,
) -> PredictionReport:
    """The batch loop over already-found sources with an already-built engine (also used by the benchmark).

    With `case_ids` (one per source, from a manifest) each outcome carries its case_id, its study_id is the
    Study Instance UID read from the study (else the file name), and output files are named by case_id.
    `model` (the torch network) is needed only for heat maps and DICOM results. `lesion_step`
    (`bonescan.lesions.step.LesionStep`) adds each study's hotspots and BSI; with `keep_lesions` the report keeps
    every study's StudyLesions (`PredictionReport.lesions`; a few studies at a time: each holds its region maps).
    `cameras` (`bonescan.cameras.CameraCheck` of the run) warns on each study from a camera the run was not trained on.
    `notice` is told at once, after the first batch that wrote files, when the rest will not fit on the disk.
    """
    if case_ids is not None and len(case_ids) != len(sources):
        raise ConfigError("case_ids", f"{len(case_ids)} case ids for {len(sources)} studies")
    start = time.perf_counter()
    outputs = None
    if heatmap_dir or dicom_dir:
        if model is None:
            raise ConfigError("heat maps", "need the torch network (pass the run's model)")
        # Grad-CAM needs gradients, so it runs an fp32 eager copy of the network, on the GPU when there is one.
        device = engine.settings.device
        cam_model = model if device == "cpu" else copy.deepcopy(model).float().to(device)
        outputs = OutputWriter(cam_model, heatmap_dir, dicom_dir, run_label)
    outcomes: dict[int, StudyOutcome] = {}
    kept: dict = {}
    done = 0
    keep_views = outputs is not None or lesion_step is not None
    forecast = keep_views  # until the first studies' files were measured
    notices: list[str] = []
    for items in iterate_batches(sources, preprocess_cfg, engine.batch_size, workers, keep_views=keep_views):
        good = [item for item in items if item.error is None]
        for item in items:
            if item.error is not None:
                source = sources[item.index]
                outcomes[item.index] = StudyOutcome(_study_id(source, None, case_ids), source.source, "failed",
                                                    error=item.error, case_id=_case_id(item.index, case_ids))
        if good:
            probabilities = engine.probabilities(np.stack([item.inputs for item in good]))
            for item, probability in zip(good, probabilities):
                outcomes[item.index] = _outcome(sources[item.index], item, float(probability), point, case_ids,
                                                cameras)
            if lesion_step is not None:
                found = lesion_step.apply(good, [outcomes[item.index] for item in good])
                if keep_lesions:
                    kept.update(found)
            # a study whose lesion step failed gets no heat map or DICOM result without its lesions
            good = [item for item in good if outcomes[item.index].status != "failed"]
            if outputs is not None and good:
                outputs.write(good, [outcomes[item.index] for item in good], sources,
                              lesion_step.last if lesion_step is not None else {})
        done += len(items)
        written = [outcomes[item.index] for item in items if outcomes[item.index].status == "ok"] if forecast else []
        if written:
            forecast = False
            files = [path for outcome in written for path in output_files(outcome)]
            shortfall_notice = shortfall(files, len(written), len(sources) - done)
            if shortfall_notice:
                notices.append(shortfall_notice)
                if notice is not None:
                    notice(shortfall_notice)
        if progress:
            progress(done, len(sources))
    studies = [outcomes[i] for i in range(len(sources))]
    report = PredictionReport(run_label, point, engine.settings.describe(), studies, time.perf_counter() - start,
                              notices=notices, lesions=kept)
    if lesion_step is not None:
        try:
            lesion_step.finish()
        except OutputError as error:  # the readings above are kept, for the caller to write elsewhere
            report.unwritten.append(error)
        report.notices.extend(lesion_step.model.notes)
        if lesion_step.studies:
            report.notices.append(f"lesion step ({lesion_step.model.precision.name}): "
                                  f"{1000 * lesion_step.seconds / lesion_step.studies:.0f} ms "
                                  f"per study over {lesion_step.studies} studies")
    return report


def _case_id(index: int, case_ids: Sequence[str] | None) -> str | None:
    return None if case_ids is None else case_ids[index]


def _study_id(source: StudySource, meta: StudyMeta | None, case_ids: Sequence[str] | None) -> str:
    """find_studies already named the study; a manifest row's study is named by its UID, else its file name."""
    if case_ids is None:
        return source.id
    return (meta.study_uid if meta is not None else None) or source.files[0].stem


def _outcome(source: StudySource, item: _Item, probability: float, point: OperatingPoint,
             case_ids: Sequence[str] | None = None, cameras: CameraCheck | None = None) -> StudyOutcome:
    warnings = list(item.warnings) + ([point.warning] if point.warning else [])
    unseen_camera = cameras.warning(item.meta) if cameras is not None else None
    if unseen_camera:
        warnings.append(unseen_camera)
    return StudyOutcome(
        case_id=_case_id(item.index, case_ids),
        study_id=_study_id(source, item.meta, case_ids),
        source=source.source,
        status="ok",
        probability=probability,
        calibrated_probability=point.calibrated(probability),
        decision="metastasis" if probability >= point.threshold else "no metastasis",
        operating_point=point.name,
        threshold=point.threshold,
        warnings=warnings,
    )


class OutputWriter:
    """Heat-map PNGs and DICOM results for a batch of predicted studies; a failure marks only that study."""

    def __init__(self, model: torch.nn.Module, heatmap_dir: str | Path | None, dicom_dir: str | Path | None,
                 run_label: str):
        from .dicom_out import AlgorithmInfo

        self.model = model
        self.heatmap_dir = Path(heatmap_dir) if heatmap_dir else None
        self.dicom_dir = Path(dicom_dir) if dicom_dir else None
        self.algorithm = AlgorithmInfo(parameters=(f"run={run_label}",))

    def write(self, items: list[_Item], outcomes: list[StudyOutcome], sources: Sequence[StudySource],
              lesions: dict | None = None) -> None:
        from .heatmap import grad_cam

        maps = []
        # Small chunks: a backward pass through the trunk at 768 x 256 holds about 0.4 GB of activations per view.
        for start in range(0, len(items), GRAD_CAM_CHUNK):
            chunk = items[start:start + GRAD_CAM_CHUNK]
            try:
                maps += grad_cam(self.model, _as_tensor(np.stack([item.inputs for item in chunk])),
                                 [tuple(v.shape for v in item.views) for item in chunk], chunk[0].mirror_posterior)
            except Exception as error:  # noqa: BLE001 - reported per study, the batch goes on
                maps += [None] * len(chunk)
                for outcome in outcomes[start:start + GRAD_CAM_CHUNK]:
                    _mark_failed(outcome, f"heat map: {describe(error)}")
        for item, outcome, heat in zip(items, outcomes, maps):
            if heat is None:
                continue
            try:
                self._write_one(item, outcome, heat, sources[item.index], (lesions or {}).get(item.index))
            except Exception as error:  # noqa: BLE001 - reported per study, the batch goes on
                _mark_failed(outcome, f"writing results: {describe(error)}", unwritten=isinstance(error, OutputError))

    def _write_one(self, item: _Item, outcome: StudyOutcome, heat, source: StudySource, lesions=None) -> None:
        from .dicom_out import ReadingResult, safe_file_stem, write_dicom_results
        from .heatmap import caption_text, render_overlay, write_png
        from .study import Study

        positive = outcome.decision == "metastasis"
        caption = caption_text(outcome.probability, positive, outcome.operating_point, outcome.threshold)
        anterior, posterior = item.views
        overlay = render_overlay(anterior, posterior, heat, caption, title=f"{outcome.name} - bonescan {__version__}")
        stem = safe_file_stem(outcome.name)
        if self.heatmap_dir:
            # Absolute: readers of the CSV (reader study, evaluation) resolve relative paths from its own folder.
            outcome.heatmap = str(write_png(self.heatmap_dir / f"{stem}.png", overlay).resolve())
        if self.dicom_dir:
            study = Study(source.source, anterior, posterior, None, meta=item.meta or StudyMeta())
            result = ReadingResult(outcome.probability, positive, outcome.operating_point, outcome.threshold)
            found, numbers, lesion_overlay = lesions if lesions is not None else (None, None, None)
            if lesion_overlay is not None:  # a palette image; the Secondary Capture is RGB
                lesion_overlay = np.asarray(lesion_overlay.convert("RGB"))
            written = write_dicom_results(self.dicom_dir, study, overlay, result, source.files, self.algorithm,
                                          file_stem=stem, lesions=found, hotspot_numbers=numbers,
                                          lesion_overlay=lesion_overlay)
            outcome.dicom_sc, outcome.dicom_sr = str(written.secondary_capture), str(written.structured_report)
            if written.segmentations:
                outcome.dicom_seg = ";".join(str(path) for path in written.segmentations)
            if written.hotspots_capture is not None:
                outcome.dicom_hotspots_sc = str(written.hotspots_capture)
            outcome.warnings += written.warnings


def _as_tensor(array: np.ndarray):
    import torch

    return torch.from_numpy(array)


def _mark_failed(outcome: StudyOutcome, reason: str, unwritten: bool = False) -> None:
    outcome.status = "failed"
    outcome.error = reason
    outcome.unwritten = unwritten
