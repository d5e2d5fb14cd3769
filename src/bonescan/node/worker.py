"""The prediction loop: claim ready studies from the queue, read them with the run's network, queue the results.

The network is loaded once. Studies are read in batches of up to `batch_size` through `predict.predict_sources`
(the same code as `bonescan predict`: probability, decision at the run's frozen operating point, Grad-CAM heat
map, Secondary Capture and Comprehensive SR in the source study; with a lesion run also hotspots, BSI and one
DICOM Segmentation per view; with --followup the follow-up SR against the patient's prior, `node.followup`).
Results are written under the store's `results/` folder, named by Study Instance UID; a re-read after a crash
overwrites files that were never queued.
A study that cannot be read is recorded as failed with the reading layer's reason, and the loop goes on. A study
whose results cannot be written (a full disk) goes back to the queue and is read again UNWRITTEN_RETRY_SECONDS later.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pydicom

from ..cameras import CameraCheck
from ..errors import describe
from ..io import StudySource
from ..predict import OperatingPoint, StudyOutcome, predict_sources, resolve_operating_point
from .followup import NodeComparison, PriorComparer, patient_study
from .queue import UNWRITTEN_RETRY_SECONDS, NodeQueue, PatientStudy, StudyWork

log = logging.getLogger("bonescan.node")


def build_engine(model, device: str, batch_size: int):
    """The inference engine for the node: eager fp32/auto precision, no compilation (first result at once)."""
    from ..fastpath import InferenceEngine

    return InferenceEngine(model, device=device, precision="auto", compile="off", batch_size=batch_size)


def study_source(work: StudyWork) -> StudySource:
    """The instances of a claimed study as a source the reading layer takes.

    One instance: that file (two frames, or a lone view that the reader refuses with its reason). Two
    single-frame instances: a pair whose order the files' own view information decides. Anything else is
    refused here, naming what arrived.
    """
    files = tuple(instance.path for instance in work.instances)
    if len(files) == 1:
        return StudySource(work.study_uid, files)
    if len(files) == 2 and all(instance.frames == 1 for instance in work.instances):
        return StudySource(work.study_uid, files, ordered=False)
    from ..errors import ViewError

    frames = "+".join(str(instance.frames) for instance in work.instances)
    error = ViewError(work.study_uid, f"{len(files)} instances ({frames} frames); a study is one two-frame "
                                      "instance or two single-view instances")
    return StudySource(work.study_uid, files, error=error)


class Predictor:
    """The run's network (and the lesion run's, if any), loaded once, and the folder results go to."""

    def __init__(self, run: str | Path, results: str | Path, operating_point: str = "youden", batch_size: int = 8,
                 device: str = "cpu", lesions: str | Path | None = None):
        from ..device import tune_allocator
        from ..inference import load_run

        self.point: OperatingPoint = resolve_operating_point(run, operating_point)
        tune_allocator()
        loaded = load_run(run, device=device)
        self.model = loaded.model
        self.preprocess = loaded.preprocess_cfg
        self.engine = build_engine(loaded.model, device, batch_size)
        self.results = Path(results)
        self.label = f"{run} ({loaded.checkpoint_path.name})"
        self.cameras = CameraCheck.of_run(run)
        self.batch_size = batch_size
        self.lesion_step = None
        self.lesions: dict = {}  # the last batch's StudyLesions by Study Instance UID (with a lesion run)
        if lesions is not None:
            from ..lesions.step import LesionStep

            self.lesion_step = LesionStep.open(lesions, self.results, device=device, table=False)
            for line in self.lesion_step.model.notes:
                log.warning("%s", line)

    def warm_up(self) -> float:
        """Read one synthetic study end to end (results in `results/.warm-up`, removed after); returns the seconds
        it took.

        The first study pays for lazy imports and first-call set-up (about 2-3 s here); paying it at start-up
        keeps it out of the first patient's latency, and a run that cannot read a study fails before listening.
        The folder is the node's own, emptied first: a node killed while warming up leaves one folder behind for
        the next start to clear, not one in the system's temporary folder per kill.
        """
        import shutil

        from ..synth import build_dataset, generate_case

        start = time.perf_counter()
        folder = self.results / ".warm-up"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            path = folder / "warmup.dcm"
            build_dataset(generate_case("warmup", seed=0)).save_as(path, enforce_file_format=True)
            lesion_step = None
            if self.lesion_step is not None:  # the same network; its files go to the warm-up folder
                from ..lesions.step import LesionStep

                lesion_step = LesionStep(self.lesion_step.model, replace(self.lesion_step.outputs, folder=folder))
            report = predict_sources([StudySource("warmup", (path,))], self.model, self.preprocess, self.engine,
                                     self.point, run_label=self.label, workers=0, dicom_dir=folder,
                                     lesion_step=lesion_step)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if report.failures:
            from ..errors import OutputError, RunError

            failure = report.failures[0]
            if failure.unwritten:  # the store's disk (full, or without permission), not the run
                raise OutputError(folder, f"the warm-up study's results cannot be written: {failure.error}")
            raise RunError(self.label, f"cannot read a synthetic study: {failure.error}")
        return time.perf_counter() - start

    def predict(self, works: list[StudyWork]) -> list[StudyOutcome]:
        """One outcome per claimed study, in order; SR and SC written for those that were read. With a lesion run,
        `lesions` holds this batch's StudyLesions by Study Instance UID (for the follow-up comparison)."""
        sources = [study_source(work) for work in works]
        report = predict_sources(sources, self.model, self.preprocess, self.engine, self.point,
                                 run_label=self.label, workers=0, dicom_dir=self.results,
                                 lesion_step=self.lesion_step, keep_lesions=True, cameras=self.cameras)
        self.lesions = {works[index].study_uid: lesions for index, lesions in report.lesions.items()}
        return report.studies


def result_uids(outcome: StudyOutcome) -> list[tuple[str, str, Path]]:
    """(SOP Instance UID, kind, path) of a predicted study's Secondary Capture and SR, and with a lesion run its
    numbered hotspots (a Secondary Capture) and Segmentations, in sending order."""
    results = []
    lesions = [("hotspots", outcome.dicom_hotspots_sc)] if outcome.dicom_hotspots_sc else []
    lesions += [("seg", path) for path in (outcome.dicom_seg or "").split(";") if path]
    for kind, path in [("sc", outcome.dicom_sc), ("sr", outcome.dicom_sr)] + lesions:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        results.append((str(header.SOPInstanceUID), kind, Path(path)))
    return results


class PredictionWorker(threading.Thread):
    """Background thread: claim, predict, record; `wake` shortens the wait when a study becomes ready."""

    def __init__(self, queue: NodeQueue, predictor: Predictor, complete_after: float, forward: bool,
                 poll: float = 0.2, on_result: Callable[[], None] | None = None, comparer: PriorComparer | None = None):
        super().__init__(name="bonescan-predict", daemon=True)
        self.queue = queue
        self.predictor = predictor
        self.complete_after = complete_after
        self.forward = forward
        self.poll = poll
        self.on_result = on_result
        self.comparer = comparer  # with --followup: compares each study with its patient's prior
        # whether a study may wait to be compared with a prior that arrived after it: at start (a kill may have
        # cut one short) and after each study of a known patient, not at every idle poll
        self._stale_possible = True
        # (study, prior) comparisons that failed in this run: tried again at the next start, not at every idle poll
        self._failed: set[tuple[str, str]] = set()
        # studies whose outcome the database could not take (a full disk): put back in the queue at an idle moment
        self._unrecorded: set[str] = set()
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                works = self.queue.claim_ready(self.complete_after, self.predictor.batch_size)
            except Exception as error:  # noqa: BLE001 - e.g. a locked database: try again shortly
                log.error("cannot read the queue: %s", error)
                works = []
            if not works:
                if self._unrecorded:
                    self._release_unrecorded()
                if self.comparer is not None and self._stale_possible and self._compare_stale():
                    continue
                self.wake.wait(self.poll)
                self.wake.clear()
                continue
            self.process(works)

    def process(self, works: list[StudyWork]) -> None:
        """Predict a batch and record each study's result or failure (one transaction per study)."""
        start = time.perf_counter()
        try:
            outcomes = self.predictor.predict(works)
        except Exception as error:  # noqa: BLE001 - an unexpected failure fails this batch, not the node
            log.exception("prediction of %d studies failed", len(works))
            outcomes = [StudyOutcome(w.study_uid, "", "failed", error=describe(error))
                        for w in works]
        seconds = time.perf_counter() - start
        for work, outcome in zip(works, outcomes):
            self._record(work, outcome, seconds / len(works))
        if self.on_result is not None:
            self.on_result()

    def _record(self, work: StudyWork, outcome: StudyOutcome, seconds: float) -> None:
        uid = work.study_uid
        try:
            if outcome.unwritten:  # set only on a failed study
                # A full disk (or a results folder without permission) is the node's trouble, not the study's:
                # it is read again once there may be room, rather than failed until someone sends it again.
                self.queue.defer_study(uid, outcome.error, time.time() + UNWRITTEN_RETRY_SECONDS)
                log.warning("study %s: %s; read again in %d s", uid, outcome.error, UNWRITTEN_RETRY_SECONDS)
                return
            if outcome.status != "ok":
                reason = outcome.error or "unknown reason"
                if work.timed_out:
                    reason += f" (read {self.complete_after:g} s after its last instance)"
                self.queue.fail_study(uid, reason)
                log.warning("study %s failed: %s", uid, reason)
                return
            results = result_uids(outcome)
            patient = None
            if self.comparer is not None:
                patient, followup = self._compare(work)
                results += followup
            # e.g. no Segmentation written, or fewer hotspots listed than found (the run's fallback threshold
            # was said once at start)
            warnings = [w for w in outcome.warnings if w != self.predictor.point.warning]
            self.queue.finish_study(uid, outcome.probability, outcome.decision, outcome.operating_point,
                                    outcome.threshold, results, self.forward, patient=patient, warnings=warnings)
            self._stale_possible |= patient is not None
            log.info("study %s read: probability %.4f, %s (%s %.3g); results %s in %.2f s", uid,
                     outcome.probability, outcome.decision, outcome.operating_point, outcome.threshold,
                     ", ".join(sop for sop, _, _ in results), seconds)
            for warning in warnings:
                log.warning("study %s: %s", uid, warning)
        except Exception as error:  # noqa: BLE001 - e.g. a result file that cannot be re-read
            log.exception("cannot record study %s: %s", uid, error)
            try:
                self.queue.fail_study(uid, f"recording the result: {describe(error)}")
            except Exception:  # noqa: BLE001 - the database itself cannot write: read the study again later
                self._unrecorded.add(uid)

    def _release_unrecorded(self) -> None:
        """Put the studies whose outcome could not be recorded back in the queue, once the database writes again."""
        for uid in sorted(self._unrecorded):
            try:
                released = self.queue.release_study(uid, time.time() + UNWRITTEN_RETRY_SECONDS)
            except Exception:  # noqa: BLE001 - it still cannot write: the next idle moment tries again
                return
            self._unrecorded.discard(uid)
            if released:
                log.warning("study %s: its outcome could not be recorded; read again in %d s", uid,
                            UNWRITTEN_RETRY_SECONDS)

    def _compare(self, work: StudyWork) -> tuple[PatientStudy | None, list[tuple[str, str, Path]]]:
        """The study as its patient's (None without PatientID or StudyDate; with the prior it was compared with)
        and the follow-up SR to send. A comparison that fails is logged with the reason; the study's own results
        go out all the same."""
        uid = work.study_uid
        try:
            patient = patient_study([instance.path for instance in work.instances])
            if patient is None:
                return None, []
        except Exception as error:  # noqa: BLE001 - a header read once already; whatever fails, no comparison
            log.warning("study %s: no follow-up comparison (%s: %s)", uid, type(error).__name__, error)
            return None, []
        prior = self.queue.prior_study(patient)
        if prior is None:
            return patient, []
        # the lesions just found for this study: the comparison describes the hotspots its own report lists
        known = {uid: self.predictor.lesions[uid]} if uid in self.predictor.lesions else None
        compared = self._compare_with(patient, prior, known)
        if compared is None:  # recorded as not compared: the next start tries again
            return patient, []
        return self._compared(patient, prior, compared), compared.results

    @staticmethod
    def _compared(study: PatientStudy, prior: PatientStudy, compared: NodeComparison) -> PatientStudy:
        """The study as recorded once compared: with its prior, its verdict and what still awaits confirmation."""
        return replace(study, compared_with=prior, verdict=compared.verdict, awaiting=compared.awaiting)

    def _compare_with(self, study: PatientStudy, prior: PatientStudy, known: dict | None = None
                      ) -> NodeComparison | None:
        """The comparison of `study` with `prior`, and with the baseline and first follow-up whose new lesions the
        prior's comparison left awaiting confirmation; None, with the reason logged, when that fails (e.g. a
        prior whose files cannot be read): not tried again before the next start."""
        try:
            awaiting = self.queue.awaiting_confirmation(prior)
            if prior.awaiting and awaiting is None:
                self.queue.record_event("warning", "the baseline or first follow-up whose new lesions this scan "
                                                   "would confirm is no longer held; compared as a first follow-up "
                                                   f"of the study of {prior.study_date}", study.study_uid)
            compared = self.comparer.compare(study, prior, awaiting, known)
        except Exception as error:  # noqa: BLE001 - whatever fails, the study's own results are not held up
            reason = f"no follow-up comparison ({describe(error)}); tried again at the next start"
            log.warning("study %s: %s", study.study_uid, reason)
            self.queue.record_event("warning", reason, study.study_uid)
            self._failed.add((study.study_uid, prior.study_uid))
            return None
        log.info("study %s follow-up %s", study.study_uid, compared.summary)
        return compared

    def _compare_stale(self) -> bool:
        """Compare one study with a newer prior than it was compared with (one that arrived after it) and queue
        the follow-up results; False when there is none left to try in this run."""
        try:
            for study in self.queue.stale_comparisons():
                prior = self.queue.prior_study(study)
                if (study.study_uid, prior.study_uid) in self._failed:
                    continue
                compared = self._compare_with(study, prior)
                if compared is not None:
                    self.queue.record_comparison(self._compared(study, prior, compared), compared.results,
                                                 self.forward)
                    if self.on_result is not None:
                        self.on_result()
                return True
        except Exception as error:  # noqa: BLE001 - e.g. a locked database: the next idle moment tries again
            log.error("cannot compare a study with a prior that arrived after it: %s", error)
            return False
        self._stale_possible = False
        return False
