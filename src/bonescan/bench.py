"""Benchmarks: `bonescan bench train` and `bonescan bench predict`, and the measurements they share.

Both report speed against the same roofline: the machine's measured matmul throughput per dtype
(`matmul_peak_gflops`) and the network's FLOPs per study counted by torch's FlopCounterMode
(`model_gflop_per_case`), plus the process's peak resident memory (`peak_rss_mib`). Figures measured while
other work shares the machine are noisy.
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from .device import choose_precision, cpu_supports_bf16, torch_threads, tune_allocator
from .errors import ConfigError
from .exported import default_threads
from .fastpath import InferenceEngine, ParityReport, parity, reference_probabilities
from .io import StudySource, find_studies
from .model import MultiViewNet, build_model
from .predict import OperatingPoint, default_workers, iterate_batches, predict_sources

# ---------------------------------------------------------------------------------------------------------------
# Shared measurements


def matmul_peak_gflops(dtype: torch.dtype, device: str | torch.device = "cpu", seconds: float = 1.0,
                       max_size: int = 2048) -> float:
    """Measured matrix-multiply throughput in GFLOP/s: the machine's practical compute ceiling for `dtype`.

    The matrix size grows from 256 until one product takes a noticeable time (or reaches `max_size`), so an
    emulated dtype (bf16 on an AVX2 CPU) is measured quickly instead of running for minutes.
    """
    device = torch.device(device)
    size = 256
    while True:
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        elapsed = _time_matmuls(a, b, repeats=1, device=device)
        if elapsed > 0.05 or size >= max_size:
            break
        size *= 2
    repeats = max(1, int(seconds / max(elapsed, 1e-6)))
    elapsed = _time_matmuls(a, b, repeats, device)
    return 2.0 * size**3 * repeats / elapsed / 1e9


def _time_matmuls(a: torch.Tensor, b: torch.Tensor, repeats: int, device: torch.device) -> float:
    torch.matmul(a, b)  # warm-up: kernel selection, page faults
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def model_gflop_per_case(model: nn.Module, height: int, width: int, backward: bool = False) -> float:
    """GFLOP of one study (2 views) through the network: the forward pass, or with `backward` a training step's
    forward + backward. Counted by torch's FLOP counter on a meta-device copy, so nothing is computed."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        meta_model = type(model)(model.config)  # the classifier or the lesion network
    meta_model.train(backward)
    inputs = torch.empty(1, 2, height, width, device="meta")
    with FlopCounterMode(display=False) as counter:
        if backward:
            meta_model(inputs).sum().backward()
        else:
            with torch.no_grad():
                meta_model(inputs)
    return counter.get_total_flops() / 1e9


def peak_rss_mib(include_children: bool = False) -> float:
    """Peak resident memory in MiB of this process (plus its largest finished child process, if asked)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux reports KiB
    if include_children:
        kib += resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return kib / 1024.0


# ---------------------------------------------------------------------------------------------------------------
# bonescan bench train


def _network_and_loss(config, batch_size: int):
    """The preset's network and its training loss on random targets (classifier or lesion task)."""
    if config.task == "lesion":
        from .lesions.network import build_lesion_net
        from .lesions.regions import N_LABELS
        from .lesions.task import lesion_loss

        h, w = config.preprocess.height, config.preprocess.width
        regions = torch.randint(0, N_LABELS, (batch_size, 2, h, w))
        hot = torch.randint(0, 3, (batch_size, 2, h, w))
        weights = torch.ones(batch_size, 2)
        return build_lesion_net(config.lesion), lambda logits: lesion_loss(logits, regions, hot, weights)
    labels = (torch.rand(batch_size) > 0.5).float()
    return build_model(config.model), lambda logits: nn.functional.binary_cross_entropy_with_logits(logits, labels)


def _training_step_seconds(model: nn.Module, optimizer, loss_of, images: torch.Tensor, precision,
                           steps: int) -> list[float]:
    """Seconds of each of `steps` training steps, after one warm-up step (allocations, oneDNN kernel selection)."""
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            logits = model(images)
        loss_of(logits.float()).backward()
        optimizer.step()

    step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return times


def bench_training(
    presets: list[str],
    precisions: list[str],
    steps: int = 2,
    batch_size: int = 2,
    threads: int | None = None,
    emulated_bf16: bool = False,
) -> list[str]:
    """Time training steps (forward + backward + AdamW) on random inputs; return printable lines."""
    from .presets import preset_config
    from .train import make_optimizer

    for precision_name in precisions:
        if precision_name not in ("fp32", "bf16"):
            raise ConfigError("--precisions", f"unknown precision {precision_name!r}; use fp32 or bf16")
    allocator = tune_allocator()
    device = torch.device("cpu")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    with torch_threads(threads):
        peaks = {name: matmul_peak_gflops(dtypes[name]) for name in dict.fromkeys(precisions)}
        lines = [
            f"machine: {torch.get_num_threads()} torch threads, "
            f"native bf16 {'yes' if cpu_supports_bf16() else 'no (bf16 is emulated, slow)'}, "
            f"--precision auto: {choose_precision(device, 'auto').name}, allocator {allocator}",
            "matmul roofline: " + ", ".join(f"{name} {peak:.1f} GFLOP/s" for name, peak in peaks.items()),
            f"{'preset':<16} {'prec':<5} {'input':>9} {'GFLOP/case':>11} {'s/case':>8} {'cases/s':>8} "
            f"{'roofline':>9} {'peak RSS':>9}",
        ]
        for name in presets:
            config = preset_config(name)
            height, width = config.preprocess.height, config.preprocess.width
            for precision_name in precisions:
                if precision_name == "bf16" and not cpu_supports_bf16() and not emulated_bf16:
                    lines.append(f"{name:<16} {precision_name:<5} skipped: this CPU has no native bf16 "
                                 "(emulated bf16 is far slower than fp32; --emulated-bf16 times it anyway)")
                    continue
                precision = choose_precision(device, precision_name)
                torch.manual_seed(0)
                model, loss_of = _network_and_loss(config, batch_size)
                if precision.channels_last:
                    model = model.to(memory_format=torch.channels_last)
                model.train()
                optimizer = make_optimizer(model, config)
                images = torch.rand(batch_size, 2, height, width)
                step_gflop = model_gflop_per_case(model, height, width, backward=True)
                times = _training_step_seconds(model, optimizer, loss_of, images, precision, steps)
                seconds_per_case = float(np.median(times)) / batch_size
                achieved_gflops = step_gflop / seconds_per_case
                lines.append(
                    f"{name:<16} {precision_name:<5} {height:>4}x{width:<4} "
                    f"{step_gflop:>11.1f} {seconds_per_case:>8.3f} {1 / seconds_per_case:>8.2f} "
                    f"{achieved_gflops / peaks[precision_name]:>8.1%} {peak_rss_mib():>6.0f} MiB"
                )
                del model, optimizer
    lines.append("GFLOP/case: forward + backward as counted by FlopCounterMode (about 3x the forward); s/case: "
                 "median step / batch; roofline: achieved FLOP/s / matmul FLOP/s; peak RSS: process maximum so far")
    return lines


# ---------------------------------------------------------------------------------------------------------------
# bonescan bench predict


@dataclass
class PredictBenchmark:
    """Figures of `bonescan bench predict`."""

    cases: int
    failed: int
    end_to_end_seconds: float
    model_cases: int
    model_seconds: float
    warm_up_seconds: float
    gflop_per_case: float
    peak_gflops: dict[str, float]
    precision: str
    peak_rss_mib: float
    parity: ParityReport
    engine: str
    allocator: str
    weights: str
    workers: int
    threads: int
    cold_start: str = "cold start: not measured"
    notices: tuple[str, ...] = ()

    @property
    def end_to_end_cases_per_s(self) -> float:
        return self.cases / self.end_to_end_seconds

    @property
    def model_cases_per_s(self) -> float:
        return self.model_cases / self.model_seconds

    @property
    def roofline_precision(self) -> str:
        """The dtype with the highest measured matmul peak: what this machine can do at best."""
        return max(self.peak_gflops, key=self.peak_gflops.get)

    @property
    def roofline_cases_per_s(self) -> float:
        return self.peak_gflops[self.roofline_precision] / self.gflop_per_case

    def lines(self) -> list[str]:
        """The printed report."""
        peaks = ", ".join(f"{name} {value:.0f} GFLOP/s" for name, value in self.peak_gflops.items())
        return [
            *(f"notice: {notice}" for notice in self.notices),
            f"engine: {self.engine}; {self.threads} threads; {self.workers} reader processes; allocator {self.allocator}",
            f"weights: {self.weights}",
            self.cold_start,
            f"warm-up (first batch{', incl. compile' if 'compile' in self.engine else ''}): {self.warm_up_seconds:.1f} s",
            f"end to end: {self.cases} studies in {self.end_to_end_seconds:.1f} s = "
            f"{self.end_to_end_cases_per_s:.2f} studies/s ({self.failed} failed)",
            f"model only: {self.model_cases_per_s:.2f} studies/s ({self.model_cases} studies in {self.model_seconds:.1f} s)",
            f"matmul peaks: {peaks}",
            f"network: {self.gflop_per_case:.3g} GFLOP per study -> roofline {self.roofline_cases_per_s:.2f} studies/s "
            f"(at the {self.roofline_precision} peak; engine runs {self.precision}); model-only reaches {self.model_cases_per_s / self.roofline_cases_per_s:.0%} of it, "
            f"end to end {self.end_to_end_cases_per_s / self.roofline_cases_per_s:.0%}",
            f"peak RSS: {self.peak_rss_mib:.0f} MiB (this process + reader processes)",
            self.parity.describe(),
        ]


def benchmark_prediction(
    cases: int = 400,
    data: str | Path | None = None,
    preset: str = "paper",
    run_dir: str | Path | None = None,
    batch_size: int = 8,
    workers: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    compile: str = "auto",
    parity_cases: int = 16,
    model_cases: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    engine: str = "auto",
    cold_start: bool = True,
) -> PredictBenchmark:
    """Time prediction of `cases` studies end to end and the network alone; measure peaks, memory and parity.

    Studies come from `data` (read as they are; an empty folder or a synthetic-cohort folder is filled or
    completed with `bonescan synth` studies of difficulty "paper"), else from a temporary synthetic cohort.
    Without `run_dir` the network of `preset` is untrained (seeded, saved as a temporary run): speed does not
    depend on the weights. The engine is the one `bonescan predict` would choose (`engine_select`), or torch's
    with engine="torch"; `cold_start` also times a fresh process opening it and predicting the first study.
    """
    if cases < 1 or parity_cases < 1:
        raise ConfigError("--cases", "cases and parity cases must be at least 1")
    say = progress or (lambda message: None)
    allocator = tune_allocator()
    temporary = Path(tempfile.mkdtemp(prefix="bonescan-bench-predict-"))
    model, preprocess_cfg, weights, run_dir = benchmark_model(run_dir, preset, seed, temporary / "run")
    if data is None:
        data = temporary / "data"
    try:
        sources = benchmark_sources(Path(data), cases, seed, say)
        engine, notices, chosen = benchmark_engine(run_dir, model, preprocess_cfg, batch_size, device, precision,
                                                   compile, engine, say, len(sources))
        cold = "cold start: not measured (an engine was asked for; predict chooses its own only with defaults)"
        if cold_start and chosen:
            from .coldstart import measure_cold_start

            say("cold start: a fresh process opening the stored engine and predicting one study")
            cold = measure_cold_start(run_dir, list(sources[0].files)).describe()
        workers = default_workers() if workers is None else workers
        say(f"warming up {engine.settings.describe()}")
        warm_up = engine.warm_up(preprocess_cfg.height, preprocess_cfg.width)

        say(f"end to end: {len(sources)} studies")
        report = predict_sources(sources, model, preprocess_cfg, engine, OperatingPoint("0.5", 0.5), workers=workers)
        engine.synchronize()

        loaded = [item for batch in iterate_batches(sources[:max(batch_size, parity_cases)], preprocess_cfg,
                                                    batch_size, 0) for item in batch if item.error is None]
        if not loaded:
            raise ConfigError(data, "none of the studies could be read; see `bonescan predict` for the reasons")
        batch = np.stack([item.inputs for item in loaded[:batch_size]])
        model_cases = model_cases or min(len(sources), 4 * batch_size)
        say(f"model only: {model_cases} studies")
        start = time.perf_counter()
        done = 0
        while done < model_cases:
            engine.probabilities(batch)
            done += len(batch)
        engine.synchronize()
        model_seconds = time.perf_counter() - start

        say(f"parity: {min(parity_cases, len(loaded))} studies against fp32")
        cohort = np.stack([item.inputs for item in loaded[:parity_cases]])
        parity_report = parity(reference_probabilities(model, [cohort]), engine.probabilities(cohort), 0.5)

        say("matmul peaks")
        peak_device = getattr(engine, "device", torch.device("cpu"))
        peaks = {"fp32": matmul_peak_gflops(torch.float32, peak_device),
                 "bf16": matmul_peak_gflops(torch.bfloat16, peak_device)}
        if peak_device.type == "cuda":
            peaks["fp16"] = matmul_peak_gflops(torch.float16, peak_device)
        rss = peak_rss_mib(include_children=True)
        return PredictBenchmark(
            cases=len(sources), failed=len(report.failures), end_to_end_seconds=report.seconds,
            model_cases=done, model_seconds=model_seconds, warm_up_seconds=warm_up,
            gflop_per_case=model_gflop_per_case(model, preprocess_cfg.height, preprocess_cfg.width),
            peak_gflops=peaks, precision=engine.settings.precision, peak_rss_mib=rss, parity=parity_report,
            engine=engine.settings.describe(), allocator=allocator, weights=weights, workers=workers,
            threads=torch.get_num_threads() if isinstance(engine, InferenceEngine) else default_threads(),
            cold_start=cold, notices=tuple(notices),
        )
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def benchmark_model(run_dir, preset: str, seed: int, temporary_run: Path):
    """(model, preprocess settings, weights label, RUN folder); an untrained network is saved as a temporary RUN
    so that its engines are built and stored exactly as a trained run's."""
    if run_dir is not None:
        from .inference import load_run

        loaded = load_run(run_dir)
        return loaded.model, loaded.preprocess_cfg, f"trained, from {run_dir}", Path(run_dir)
    from .presets import preset_config
    from .train import CHECKPOINT_FORMAT, RunPaths

    config = preset_config(preset)
    torch.manual_seed(seed)
    model = MultiViewNet(config.model).eval()
    paths = RunPaths(temporary_run)
    paths.checkpoints.mkdir(parents=True)
    torch.save({"format": CHECKPOINT_FORMAT, "kind": "best", "config": config.to_dict(), "epoch": 0,
                "model": model.state_dict()}, paths.best)
    return (model, config.preprocess, f"untrained {preset} network (seed {seed}); speed does not depend on weights",
            temporary_run)


def benchmark_engine(run_dir: Path, model, preprocess_cfg, batch_size: int, device: str, precision: str, compile: str,
                     engine: str, say: Callable[[str], None], studies: int | None = None):
    """The engine `bonescan predict` would run on `studies` studies (see predict.predict_studies), the notices
    choosing it gave, and whether predict's own choice applied (defaults: no engine, precision, compile or GPU
    asked for)."""
    from .engine_select import select_engine
    from .predict import ENGINE_CHOICES, uses_stored_engine

    if engine not in ENGINE_CHOICES:
        raise ConfigError("--engine", f"unknown engine {engine!r}; use {' or '.join(ENGINE_CHOICES)}")
    if engine == "auto" and uses_stored_engine(run_dir, "best", device, precision, compile):
        say("choosing the engine (builds and times the exported engine the first time)")
        selection = select_engine(run_dir, "best", batch_size, lambda: (model, preprocess_cfg), say, studies)
        if selection.engine is not None:
            return selection.engine, selection.notices, True
        torch_engine = InferenceEngine(model, device=device, precision=precision, compile=compile,
                                       batch_size=batch_size)
        return torch_engine, selection.notices, True
    return InferenceEngine(model, device=device, precision=precision, compile=compile, batch_size=batch_size), [], False


def benchmark_sources(data: Path, cases: int, seed: int, say: Callable[[str], None]) -> list[StudySource]:
    synthetic = not data.exists() or not any(data.iterdir()) or (data / "synth.json").exists()
    # studies, not files: a camera that stores each view as its own file writes two per study
    have = len(find_studies([data / "studies"])) if synthetic and (data / "studies").is_dir() else 0
    if synthetic and have < cases:  # fill an empty folder, or complete a synthetic cohort that is too small
        from .synth import generate_cohort

        say(f"generating {cases - have} synthetic studies (difficulty paper) in {data}")
        generate_cohort(data, cases, seed=seed, difficulty="paper", workers=default_workers() + 1)
    sources = find_studies([data / "studies"] if synthetic else [data])
    if not sources:
        raise ConfigError(data, "no DICOM or image files found")
    return sources[:cases]
