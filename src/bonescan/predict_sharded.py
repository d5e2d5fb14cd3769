"""`bonescan predict` under torchrun: every process predicts a share of the studies, rank 0 merges the shares.

    torchrun --nnodes N --nproc_per_node K -m bonescan -- predict --run RUN studies/ --out preds.csv

(`--` ends torchrun's own options; without it torchrun reads `--run` as an abbreviation of its `--run-path`.)

- Assignment: rank 0 lists the studies once (the sorted list of a one-process run, or the manifest's rows) and
  broadcasts it, so every rank works from the same list even if the archive changes meanwhile, and the archive's
  headers are read once rather than N x K times. Study i goes to rank i mod world size: round-robin keeps the
  shares within one study of each other, and a folder of large studies is spread over the ranks.
- Each rank predicts its share with the ordinary batch loop and writes the heat maps, DICOM results and lesion
  files (`--lesions`) of its own studies into the shared output folders, then its rows, atomically, into a
  hidden partial file beside `--out` (the current folder without `--out`): `.<out name>.<job>.rank<r>of<W>.json`.
  Several nodes need those folders on a file system they all share.
- One gather over the process group then tells every rank how each rank fared. Rank 0 reads the partial files,
  puts the rows back into the one-process order (each study exactly once, failures included), removes the files,
  rewrites hotspots.csv from every study's lesion JSON (each rank wrote one of its own share) and returns one
  report, which the CLI writes and summarises. The other ranks print nothing and exit 0 once they have handed in
  their share (or their error), skipping the interpreter's teardown (`cli.ranks`): the job's exit status
  is rank 0's, 2 when any study failed. (A rank that exits non-zero makes torchrun stop the others, so a
  non-zero exit on rank 1 could kill rank 0 before it has written the output or exited with its status.) When a
  study failed, torchrun itself exits 1 and its report shows rank 0's 2.
- The merged output equals a one-process run's in rows, order and values, except what belongs to the process
  that made it: `seconds` is rank 0's wall time for the whole job. Probabilities can differ in the last bits
  of fp32 because a rank's batches hold other studies than a single process's (oneDNN may block them
  differently): at most 3e-7 over 24 synthetic studies with the untrained `paper` network, fp32, 2 processes
  vs 1, on the 2-core development CPU (AMD EPYC, AVX2). There 2 processes were no faster than one (68 vs 64 s,
  the machine shared with other work): one process already keeps both cores busy. Sharding pays across nodes.
- A rank that fails (an exception) sends its error in the gather, so rank 0 fails the job naming that rank and
  the reason instead of waiting. A rank that dies (killed, out of memory) closes its connections: the others'
  gather fails at once and torchrun reports the dead rank. A rank that hangs is given up after the process
  group's timeout (30 minutes, which also bounds how far behind the slowest rank may finish).
- CPU threads are shared among the processes of a node, as in training (`train._init_distributed`); GPU ranks
  keep their threads. The process group is gloo: only small Python objects travel over it, on CPU or GPU jobs.
  On a GPU node each rank's torch engine takes the GPU of its LOCAL_RANK (`fastpath.InferenceEngine`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Sequence

from .errors import BoneScanError
from .fileio import write_text_atomic
from .predict import FoundStudies, PredictionReport, StudyOutcome

PARTIAL_FORMAT = 1
DEFAULT_TIMEOUT = timedelta(minutes=30)


class ShardError(BoneScanError):
    """A torchrun prediction job that cannot finish: a rank failed, or the shares cannot be merged."""


def shard_sources(n_studies: int, world_size: int, rank: int) -> list[int]:
    """The indices into the study list that `rank` predicts: round-robin, so each index goes to exactly one rank."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ShardError("torchrun", f"rank {rank} is not in a job of {world_size} processes")
    if n_studies < 0:
        raise ShardError("studies", f"cannot share {n_studies} studies")
    return list(range(rank, n_studies, world_size))


def merge_outcomes(parts: Sequence[tuple[Sequence[int], Sequence[StudyOutcome]]],
                   n_studies: int) -> list[StudyOutcome]:
    """Every rank's (indices, outcomes) back in study order; a study missing or given twice is refused."""
    merged: list[StudyOutcome | None] = [None] * n_studies
    for indices, outcomes in parts:
        if len(indices) != len(outcomes):
            raise ShardError("merge", f"{len(outcomes)} results for {len(indices)} studies in one share")
        for index, outcome in zip(indices, outcomes):
            if not 0 <= index < n_studies:
                raise ShardError("merge", f"study index {index} outside the job's {n_studies} studies")
            if merged[index] is not None:
                raise ShardError("merge", f"study {outcome.name} ({index}) was predicted twice")
            merged[index] = outcome
    missing = [index for index, outcome in enumerate(merged) if outcome is None]
    if missing:
        raise ShardError("merge", f"{len(missing)} of {n_studies} studies have no result (first: index {missing[0]})")
    return merged  # type: ignore[return-value]


@dataclass
class _Status:
    """What each rank tells the others once its share is done (or has failed)."""

    rank: int
    error: str | None = None
    partial: str | None = None


@dataclass
class PredictJob:
    """This process's place in a torchrun prediction job (a job of one process without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # processes on this node
    initialised_here: bool = False  # this job started the process group (and ends it)
    out: Path | None = None
    job_id: str = "job"
    n_studies: int | None = None  # the whole job's, once listed
    indices: list[int] = field(default_factory=list)  # this rank's share
    gathered: bool = False  # every rank's status arrived: all ranks were alive then

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def sharded(self, predict: Callable[..., PredictionReport]) -> Callable[..., PredictionReport | None]:
        """Wrap `predict_studies`: each rank predicts its share; rank 0 returns the merged report of the job.

        Without torchrun, `predict` itself. Under torchrun the other ranks return their own share's report
        (None if it failed); rank 0 raises ShardError when any rank failed.
        """
        if not self.active:
            return predict

        @functools.wraps(predict)
        def run(*args, **kwargs) -> PredictionReport | None:
            start = time.perf_counter()
            kwargs["shard"] = self.take
            if not self.is_main:
                kwargs["progress"] = None  # one progress line, rank 0's share
            if kwargs.get("workers") is None:
                kwargs["workers"] = max(1, min(4, _cores() // self.local_world_size // 2))
            try:
                return self._run(predict, args, kwargs, start)
            finally:
                if self.initialised_here and _dist().is_initialized():
                    if self.gathered:
                        # Every rank is alive and past the gather: leave together, after rank 0's merge. A rank
                        # that tears gloo down while another still holds its connections can abort at exit.
                        _dist().barrier()
                    _dist().destroy_process_group()

        return run

    def take(self, find: Callable[[], FoundStudies]) -> FoundStudies:
        """List the studies on rank 0, broadcast the list and keep this rank's share of it."""
        payload: list = [None]
        if self.is_main:
            try:
                payload = [find()]
            except Exception as error:  # the other ranks are waiting for the list: tell them why there is none
                _dist().broadcast_object_list([f"{type(error).__name__}: {error}"], src=0)
                raise
        _dist().broadcast_object_list(payload, src=0)
        if isinstance(payload[0], str):
            raise ShardError("rank 0", f"could not list the studies: {payload[0]}")
        sources, case_ids = payload[0]
        self.n_studies = len(sources)
        self.indices = shard_sources(len(sources), self.world_size, self.rank)
        return [sources[i] for i in self.indices], None if case_ids is None else [case_ids[i] for i in self.indices]

    def _run(self, predict, args, kwargs, start: float) -> PredictionReport | None:
        report, error, status = None, None, _Status(self.rank)
        try:
            report = predict(*args, **kwargs)
            status.partial = str(self._write_partial(report))
        except Exception as caught:  # noqa: BLE001 - handed to rank 0, which fails the job naming this rank
            error = caught
            status.error = f"{type(caught).__name__}: {caught}"
            if not isinstance(caught, BoneScanError):
                traceback.print_exc()  # an unexpected failure keeps its traceback, on the rank where it happened
        try:
            statuses = self._gather(status)
            self.gathered = True
        except ShardError:
            _discard(status)
            raise
        failed = [s for s in statuses if s.error is not None]
        if failed:
            _discard(status)  # nothing is merged: each rank removes its own partial file
            if not self.is_main:
                return None if error is not None else report
            if error is not None:
                raise error
            reasons = "; ".join(f"rank {s.rank} of {self.world_size} failed: {s.error}" for s in failed)
            raise ShardError("torchrun", f"{reasons}; no results were merged")
        if not self.is_main:
            return report
        return self._merge(report, [Path(s.partial) for s in statuses], start)

    def _gather(self, status: _Status) -> list[_Status]:
        gathered: list = [None] * self.world_size
        try:
            _dist().all_gather_object(gathered, status)
        except RuntimeError as error:  # a rank died or hung past the process group's timeout
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ShardError("torchrun", f"rank {self.rank} lost the other ranks while gathering results "
                                         f"({first}); torchrun's report names the rank that failed") from error
        return gathered

    def _partial_path(self, rank: int) -> Path:
        folder, name = (self.out.parent, self.out.name) if self.out is not None else (Path.cwd(), "bonescan-predict")
        return folder / f".{name}.{self.job_id}.rank{rank}of{self.world_size}.json"

    def _write_partial(self, report: PredictionReport) -> Path:
        payload = {
            "format": PARTIAL_FORMAT,
            "rank": self.rank,
            "world_size": self.world_size,
            "n_studies": self.n_studies,
            "indices": self.indices,
            "engine": report.engine,
            "studies": [asdict(outcome) for outcome in report.studies],
        }
        return write_text_atomic(self._partial_path(self.rank), json.dumps(payload) + "\n")

    def _merge(self, own: PredictionReport, partials: list[Path], start: float) -> PredictionReport:
        parts, engines = [], []
        try:
            for rank, path in enumerate(partials):
                data = _read_partial(path)
                if (data["rank"], data["world_size"], data["n_studies"]) != (rank, self.world_size,
                                                                             self.n_studies):
                    raise ShardError(path, "partial results of another job or rank")
                parts.append((data["indices"], [StudyOutcome(**study) for study in data["studies"]]))
                if data["engine"] not in engines:
                    engines.append(data["engine"])
            studies = merge_outcomes(parts, self.n_studies or 0)
        finally:
            for path in partials:
                path.unlink(missing_ok=True)
        lesion_files = [s.lesions for s in studies if s.lesions]
        if lesion_files:  # every rank wrote a hotspots.csv of its own share; the job's holds every study's
            from .lesions.outputs import merge_hotspots

            merge_hotspots(lesion_files)
        return PredictionReport(own.run, own.operating_point, " | ".join(engines), studies,
                                time.perf_counter() - start)


def _discard(status: _Status) -> None:
    if status.partial:
        Path(status.partial).unlink(missing_ok=True)


def _read_partial(path: Path, wait_s: float = 30.0) -> dict:
    """A rank's partial file; a file written on another node can take a moment to appear on a network share."""
    deadline = time.monotonic() + wait_s
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ShardError(path, "partial results of a rank not found: under several nodes, --out must be in a "
                               "folder every node shares") from error
    except (OSError, ValueError) as error:
        raise ShardError(path, f"partial results cannot be read ({error})") from error
    if data.get("format") != PARTIAL_FORMAT:
        raise ShardError(path, f"partial results of another format ({data.get('format')})")
    return data


def _dist():
    # Imported on first use: a one-process `bonescan predict` with a stored engine never imports torch.
    import torch.distributed

    return torch.distributed


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def join_predict_job(out: str | Path | None = None, device: str = "auto",
                     timeout: timedelta = DEFAULT_TIMEOUT) -> PredictJob:
    """Join the torchrun job described by RANK / WORLD_SIZE, if any; `out` decides where partial files go."""
    out = Path(out) if out is not None else None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return PredictJob(out=out)
    rank = int(os.environ.get("RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        # Share the cores among the processes on this node instead of oversubscribing them.
        torch.set_num_threads(max(1, _cores() // local_world))
    initialised_here = False
    if not _dist().is_initialized():
        _dist().init_process_group(backend="gloo", timeout=timeout)
        initialised_here = True
    job_id = re.sub(r"[^A-Za-z0-9_.-]", "_", os.environ.get("TORCHELASTIC_RUN_ID", "job"))
    return PredictJob(rank=rank, world_size=world, local_world_size=local_world, initialised_here=initialised_here,
                      out=out, job_id=job_id)
