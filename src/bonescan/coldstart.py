"""Cold start: how long a fresh process takes to open a run's engine and to predict its first study.

`measure_cold_start` runs, in new Python processes, (1) a probe that times each step from the moment the process
started (imports, engine ready, first study's probability) and (2) the real `bonescan predict --run RUN STUDY`,
timed from outside. The probe mirrors `predict.predict_studies` step by step; it imports torch only when the
chosen engine is torch's, so its figures show what importing torch costs when it cannot be avoided.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


def process_age_seconds() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class ColdStart:
    """Seconds from process start: imports done, engine ready, first study predicted; and the CLI's wall time."""

    imports_s: float
    engine_ready_s: float
    first_study_s: float
    cli_wall_s: float
    engine: str
    torch_imported: bool

    def describe(self) -> str:
        return (f"cold start (fresh process, clock from process start): imports {self.imports_s:.2f} s, engine ready "
                f"{self.engine_ready_s:.2f} s, first study {self.first_study_s:.2f} s "
                f"({'torch imported' if self.torch_imported else 'without importing torch'}; {self.engine}); "
                f"`bonescan predict --run RUN STUDY` start to exit: {self.cli_wall_s:.2f} s")


def measure_cold_start(run_dir: str | Path, study_files: list[str | Path], timeout: float = 600) -> ColdStart:
    """Time a fresh process opening RUN's engine and predicting one study (files of one study)."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)  # this bonescan wins over any other installed one
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    files = [str(f) for f in study_files]
    probe = subprocess.run([sys.executable, "-m", "bonescan.coldstart", str(run_dir), *files], env=env,
                           capture_output=True, text=True, timeout=timeout)
    if probe.returncode != 0:
        raise RuntimeError(f"cold-start probe failed: {probe.stderr.strip().splitlines()[-1:]}")
    figures = json.loads(probe.stdout.strip().splitlines()[-1])
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bonescan", "predict", "--run", str(run_dir), "--workers", "0", *files],
                   env=env, capture_output=True, text=True, timeout=timeout)
    return ColdStart(cli_wall_s=time.perf_counter() - start, **figures)


def _probe(run_dir: str, files: list[str]) -> dict:
    """The child's side: predict_studies' steps, timed from process start."""
    import numpy as np

    from .engine_select import select_engine
    from .io import find_studies
    from .predict import iterate_batches, resolve_operating_point

    imported = process_age_seconds()
    resolve_operating_point(run_dir)
    selection = select_engine(run_dir, studies=1)  # as `predict` chooses for its one study
    if selection.engine is not None:
        engine, config = selection.engine, selection.preprocess_cfg
    else:
        from .fastpath import InferenceEngine
        from .inference import load_run

        loaded = load_run(run_dir)
        engine, config = InferenceEngine(loaded.model), loaded.preprocess_cfg
    ready = process_age_seconds()
    items = [item for batch in iterate_batches(find_studies(files)[:1], config, 1, 0) for item in batch]
    if items[0].error:
        raise SystemExit(items[0].error)
    engine.probabilities(np.stack([items[0].inputs]))
    return {"imports_s": imported, "engine_ready_s": ready, "first_study_s": process_age_seconds(),
            "engine": engine.settings.describe(), "torch_imported": "torch" in sys.modules}


if __name__ == "__main__":
    print(json.dumps(_probe(sys.argv[1], sys.argv[2:])))
