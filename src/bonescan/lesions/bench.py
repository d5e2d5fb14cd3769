"""`bonescan bench lesions`: what the lesion step costs per study, against the classifier's whole prediction.

The lesion goal asks the lesion step to cost at most twice the classifier's time per study. Both sides are
measured here as `bonescan predict` runs them, on the same studies:
- the classifier: `predict` without lesions, end to end (reading, preprocessing, the engine `predict` chooses),
  per study at the margin: the difference between predicting all the studies and half of them, so that starting
  the reader processes (about a second, paid once per call) is not spread over the studies as if each cost it;
- the lesion step: the lesion network on each batch, then the hotspots of the batch's studies and their files
  (JSON, label maps, overlay PNG) in threads (`LesionStep.seconds`);
Both are timed in interleaved rounds (classifier on half the studies, on all, then the lesion step on all), so
that each round's ratio compares times taken under the same load of a shared machine; the report gives the median
round and the range over rounds (one round's margin moved 0.9-7.1 ms between runs on a shared 2-core machine).
And where the lesion step's time goes, one study at a time: the network, the hotspots from its maps, with a
rescorer its count candidates, features and scores, and the files. Post-processing time grows with the hotspots a
study has, so the hotspots per study are printed beside it; an untrained lesion network, which finds noise
everywhere, gives no useful figure.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..bench import benchmark_engine, benchmark_model, benchmark_sources, peak_rss_mib
from ..device import tune_allocator
from ..errors import ConfigError
from ..predict import OperatingPoint, default_workers, iterate_batches, predict_sources
from ..preprocess import preprocess_views
from .infer import study_lesions
from .outputs import render_lesions
from .step import LesionStep


@dataclass
class LesionBenchmark:
    """Figures of `bonescan bench lesions` (seconds per study)."""

    cases: int
    failed: int
    classifier_end_to_end: float  # median over rounds
    classifier_margin: float | None  # see the module's docstring; median over rounds; None when they show none
    lesion_step: float  # median over rounds
    network: float
    hotspots: float
    rescorer: float | None
    hotspots_per_study: float
    files: float
    parts_cases: int
    engine: str
    threads: int
    peak_rss_mib: float
    weights: str
    lesion_precision: str  # the lesion network's (`load_lesion_run`'s "auto")
    ratios: tuple[float, ...]  # each round's lesion step over its classifier figure

    @property
    def ratio(self) -> float:
        """The median of the rounds' ratios of lesion step to classifier (each round's own two figures)."""
        return float(np.median(self.ratios))

    @property
    def classifier(self) -> float:
        """What the lesion step is compared with: the margin where there is one."""
        return self.classifier_margin or self.classifier_end_to_end

    def lines(self) -> list[str]:
        """The printed report."""
        rescorer = ("no rescorer" if self.rescorer is None
                    else f"rescorer (count candidates, features, scores) {_ms(self.rescorer)} ms")
        return [
            f"classifier: {self.weights}; engine {self.engine}; {self.threads} threads",
            "classifier, whole prediction: " + (
                f"{_ms(self.classifier_margin)} ms per study at the margin ({_ms(self.classifier_end_to_end)} "
                "ms with the reader processes' start" if self.classifier_margin else
                f"{_ms(self.classifier_end_to_end)} ms per study (with the reader processes' start: too few "
                "studies to measure the margin") + f"; {self.cases} studies, {self.failed} failed)",
            f"lesion step as predict runs it: {_ms(self.lesion_step)} ms per study, {_figure(self.ratio)}x the "
            "classifier (goal: <= 2x)" + (
                f"; medians of {len(self.ratios)} rounds, whose ratios ran "
                f"{_figure(min(self.ratios))}-{_figure(max(self.ratios))}x" if len(self.ratios) > 1 else ""),
            f"its parts, one study at a time ({self.parts_cases} studies, {self.hotspots_per_study:.1f} hotspots per "
            f"study): network ({self.lesion_precision}) {_ms(self.network)} ms, hotspots {_ms(self.hotspots)} ms, "
            f"{rescorer}, files (overlay, JSON, label maps) {_ms(self.files)} ms",
            f"peak RSS: {self.peak_rss_mib:.0f} MiB (this process + reader processes)",
        ]


def _ms(seconds: float) -> str:
    """Milliseconds to three significant digits: a fast classifier's 0.27 ms printed as 0.3 would be 10 % off, and
    so would every ratio read from the printed figures."""
    return _figure(seconds * 1000.0)


def _figure(value: float) -> str:
    """Three significant digits, whole numbers from 100 (never an exponent)."""
    return f"{value:.0f}" if value >= 99.95 else f"{value:.3g}"


def benchmark_lesions(lesions: str | Path, run_dir: str | Path | None = None, preset: str = "cpu-small",
                      data: str | Path | None = None, cases: int = 100, batch_size: int = 8, parts_cases: int = 20,
                      seed: int = 0, progress: Callable[[str], None] | None = None,
                      rounds: int = 3) -> LesionBenchmark:
    """Time the classifier's prediction and the lesion step of `lesions` (a lesion run) on `cases` studies from
    `data` (as `bonescan bench predict` takes them) in `rounds` interleaved rounds, and the lesion step's parts on
    the first `parts_cases`."""
    if cases < 1 or parts_cases < 1:
        raise ConfigError("--cases", "cases and parts cases must be at least 1")
    if rounds < 1:
        raise ConfigError("--rounds", "at least one round of classifier and lesion step is needed")
    say = progress or (lambda message: None)
    tune_allocator()
    temporary = Path(tempfile.mkdtemp(prefix="bonescan-bench-lesions-"))
    try:
        step = LesionStep.open(lesions, temporary / "lesions", device="cpu", table=False)
        model, preprocess_cfg, weights, run_dir = benchmark_model(run_dir, preset, seed, temporary / "run")
        sources = benchmark_sources(Path(data) if data else temporary / "data", cases, seed, say)
        engine, _, _ = benchmark_engine(run_dir, model, preprocess_cfg, batch_size, "auto", "auto", "auto", "auto",
                                         say, len(sources))
        engine.warm_up(preprocess_cfg.height, preprocess_cfg.width)
        point, workers = OperatingPoint("0.5", 0.5), default_workers()
        say("the lesion step: warming up on one batch")
        predict_sources(sources[:batch_size], model, preprocess_cfg, engine, point, workers=0, lesion_step=step)
        n, ends, margins, steps, failed = len(sources), [], [], [], 0
        for round_ in range(1, rounds + 1):
            say(f"round {round_} of {rounds}: the classifier alone on {n // 2} studies, then {n}; the lesion step")
            half = predict_sources(sources[:n // 2], model, preprocess_cfg, engine, point, workers=workers)
            alone = predict_sources(sources, model, preprocess_cfg, engine, point, workers=workers)
            ends.append(alone.seconds / n)
            margins.append((alone.seconds - half.seconds) / (n - n // 2) if n > 1 else 0.0)
            failed = len(alone.failures)
            # a fresh folder each round: replacing the last round's files costs more than writing new ones
            step.outputs = replace(step.outputs, folder=temporary / f"lesions-{round_}", rows=[])
            step.seconds, step.studies = 0.0, 0
            predict_sources(sources, model, preprocess_cfg, engine, point, workers=workers, lesion_step=step)
            steps.append(step.seconds / max(step.studies, 1))
        step.finish()
        say(f"its parts: {min(parts_cases, n)} studies one at a time")
        parts = _time_parts(step, sources[:parts_cases], batch_size)
        # a few studies on a busy machine can show no margin: such a round compares with its end-to-end figure
        compared = [margin if margin > 0 else end for margin, end in zip(margins, ends)]
        margin = float(np.median(margins))
        return LesionBenchmark(
            cases=n, failed=failed, classifier_end_to_end=float(np.median(ends)),
            classifier_margin=margin if margin > 0 else None, lesion_step=float(np.median(steps)),
            parts_cases=parts.pop("studies"), **parts, engine=engine.settings.describe(),
            threads=torch.get_num_threads(), peak_rss_mib=peak_rss_mib(include_children=True), weights=weights,
            lesion_precision=step.model.precision.name,
            ratios=tuple(lesion / classifier for lesion, classifier in zip(steps, compared)))
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _time_parts(step: LesionStep, sources, batch_size: int) -> dict:
    """Seconds per study of the network (one study per call), the hotspots from its maps, the rescorer's share
    (hotspots with it, less without it) and the files (overlay rendered, files written); mean hotspots per study
    as predict finds them."""
    model = step.model
    preprocess = model.config.preprocess
    items = [item for batch in iterate_batches(sources, preprocess, batch_size, 0, keep_views=True)
             for item in batch if item.error is None]
    if not items:
        raise ConfigError("--data", "none of the studies could be read; see `bonescan predict` for the reasons")
    network = plain = rescored = files = 0.0
    hotspots = 0
    for index, item in enumerate(items):
        spacing = item.spacing or 2.4
        start = time.perf_counter()
        maps = model.maps(preprocess_views(*item.views, preprocess)[None])[0]
        network += time.perf_counter() - start
        kwargs = dict(pixel_spacing=spacing, mirror_posterior=preprocess.mirror_posterior,
                      threshold=model.threshold, outline_threshold=model.outline_threshold)
        start = time.perf_counter()
        found, numbers = study_lesions(maps, *item.views, **kwargs)
        plain += time.perf_counter() - start
        if model.rescorer is not None:
            start = time.perf_counter()
            found, numbers = study_lesions(maps, *item.views, rescorer=model.rescorer, **kwargs)
            rescored += time.perf_counter() - start
        hotspots += len(found.hotspots)
        start = time.perf_counter()
        overlay = render_lesions(*item.views, found, numbers, f"study {index}")
        step.outputs.write_files(f"parts-{index}", found, numbers, *item.views, overlay=overlay)
        files += time.perf_counter() - start
    n = len(items)
    return {"studies": n, "network": network / n, "hotspots": plain / n,
            "rescorer": (rescored - plain) / n if model.rescorer is not None else None,
            "hotspots_per_study": hotspots / n, "files": files / n}
