"""Studies -> preprocessed arrays cached on disk, a torch Dataset over them, and scintigraphy augmentations.

The cache is one memory-mapped float16 array N x 2 x H x W (`arrays.npy`) plus `index.json`, in a folder named
by a hash of the input files' (path, size, mtime) and the preprocessing settings: a changed file or setting
gives a new key, hence a rebuild, and epochs never decode DICOM again. float16 keeps ~3 significant digits in
[0, 1], finer than the count noise of a bone scan, at half the size of float32.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .errors import BoneScanError, ConfigError, ManifestError
from .preprocess import PreprocessConfig, preprocess_study
from .presets import AugmentConfig

CACHE_FORMAT = 1
ARRAY_FILE = "arrays.npy"
INDEX_FILE = "index.json"


@dataclass
class ArrayCache:
    """A built cache: rows of `arrays` hold the studies listed in `case_ids` (failed studies are not in it)."""

    folder: Path
    key: str
    case_ids: list[str]
    labels: np.ndarray  # int64, -1 where the manifest has no label
    splits: list[str]
    preprocess: PreprocessConfig
    failures: list[dict] = field(default_factory=list)  # {"case_id", "source", "reason"}
    _arrays: np.ndarray | None = field(default=None, repr=False)

    @property
    def arrays(self) -> np.ndarray:
        """The N x 2 x H x W float16 memory map (opened read-only on first use)."""
        if self._arrays is None:
            self._arrays = np.load(self.folder / ARRAY_FILE, mmap_mode="r")
        return self._arrays

    def __len__(self) -> int:
        return len(self.case_ids)

    def rows(self, split: str | None = None) -> np.ndarray:
        """Row numbers of one split ("train", "val", "test"), or of all rows when split is None."""
        if split is None:
            return np.arange(len(self.case_ids))
        return np.array([i for i, s in enumerate(self.splits) if s == split], dtype=np.int64)

    def __getstate__(self) -> dict:
        # DataLoader workers reopen the memory map instead of pickling it.
        state = dict(self.__dict__)
        state["_arrays"] = None
        return state


def study_source(row: pd.Series) -> str | list[str]:
    """The input `read_study` takes for a manifest row: `path`, else [anterior, posterior]."""
    path = row.get("path")
    if isinstance(path, str) and path:
        return path
    anterior, posterior = row.get("anterior"), row.get("posterior")
    if isinstance(anterior, str) and anterior and isinstance(posterior, str) and posterior:
        return [anterior, posterior]
    raise ManifestError(str(row.get("case_id")), "the row has neither `path` nor both `anterior` and `posterior`")


def default_cache_dir() -> Path:
    """$BONESCAN_CACHE_DIR, else $XDG_CACHE_HOME/bonescan/arrays, else ~/.cache/bonescan/arrays."""
    if os.environ.get("BONESCAN_CACHE_DIR"):
        return Path(os.environ["BONESCAN_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "bonescan" / "arrays"


def cache_key(manifest: pd.DataFrame, preprocess: PreprocessConfig) -> str:
    """Hash of every input file's (path, size, mtime), the case ids, labels, splits and preprocessing settings."""
    entries = []
    for _, row in manifest.iterrows():
        source = study_source(row)
        files = [source] if isinstance(source, str) else source
        stamps = []
        for name in files:
            try:
                stat = os.stat(name)
                stamps.append([name, stat.st_size, stat.st_mtime_ns])
            except OSError:
                stamps.append([name, None, None])
        entries.append([str(row["case_id"]), _label_of(row), str(row.get("split", "") or ""), stamps])
    payload = json.dumps(
        {"format": CACHE_FORMAT, "preprocess": preprocess.to_dict(), "studies": entries}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def build_cache(
    manifest: pd.DataFrame,
    preprocess: PreprocessConfig,
    cache_dir: str | Path | None = None,
    fail_fast: bool = False,
    workers: int | None = None,
    progress: bool = False,
) -> ArrayCache:
    """Preprocess every study of the manifest once into an on-disk cache, or open the cache already built.

    Studies that fail to read are skipped and listed in `failures` (or, with fail_fast, the first failure is
    raised). The cache folder appears complete or not at all (built in a temporary folder, then renamed).
    """
    if "case_id" not in manifest.columns:
        raise ManifestError("manifest", "no case_id column")
    if len(manifest) == 0:
        raise ManifestError("manifest", "no studies to cache")
    manifest = manifest.reset_index(drop=True)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key(manifest, preprocess)
    folder = cache_dir / key
    if (folder / INDEX_FILE).is_file():
        return open_cache(folder)

    sources = [study_source(row) for _, row in manifest.iterrows()]
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache_dir))
    try:
        array_path = staging / ARRAY_FILE
        shape = (len(sources), 2, preprocess.height, preprocess.width)
        np.lib.format.open_memmap(array_path, mode="w+", dtype=np.float16, shape=shape).flush()
        errors = _fill(array_path, sources, preprocess, fail_fast, workers, progress)
        ok = [i for i in range(len(sources)) if errors[i] is None]
        failures = [
            {"case_id": str(manifest.at[i, "case_id"]), "source": _describe(sources[i]), "reason": errors[i]}
            for i in range(len(sources))
            if errors[i] is not None
        ]
        if len(ok) < len(sources):  # compact: keep only the studies that were read
            full = np.load(array_path, mmap_mode="r")
            compact_path = staging / "compact.npy"
            compact = np.lib.format.open_memmap(compact_path, mode="w+", dtype=np.float16, shape=(len(ok), *shape[1:]))
            for out_row, in_row in enumerate(ok):
                compact[out_row] = full[in_row]
            compact.flush()
            del compact, full
            os.replace(compact_path, array_path)
        index = {
            "format": CACHE_FORMAT,
            "key": key,
            "preprocess": preprocess.to_dict(),
            "case_ids": [str(manifest.at[i, "case_id"]) for i in ok],
            "labels": [_label_of(manifest.loc[i]) for i in ok],
            "splits": [str(manifest.at[i, "split"] or "") if "split" in manifest.columns else "" for i in ok],
            "failures": failures,
        }
        (staging / INDEX_FILE).write_text(json.dumps(index, indent=1), encoding="utf-8")
        try:
            os.replace(staging, folder)
        except OSError:  # another process finished the same cache first
            if not (folder / INDEX_FILE).is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return open_cache(folder)


def open_cache(folder: str | Path) -> ArrayCache:
    """Open a cache folder written by build_cache."""
    folder = Path(folder)
    try:
        index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(folder, f"not a readable array cache ({error})") from error
    return ArrayCache(
        folder=folder,
        key=index["key"],
        case_ids=list(index["case_ids"]),
        labels=np.asarray(index["labels"], dtype=np.int64),
        splits=list(index["splits"]),
        preprocess=PreprocessConfig(**index["preprocess"]),
        failures=list(index["failures"]),
    )


def _label_of(row: pd.Series) -> int:
    value = row.get("label")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return -1
    return int(value)


def _describe(source: str | list[str]) -> str:
    return source if isinstance(source, str) else " + ".join(source)


def _fill(
    array_path: Path,
    sources: list,
    preprocess: PreprocessConfig,
    fail_fast: bool,
    workers: int | None,
    progress: bool,
) -> list[str | None]:
    """Preprocess studies into the array file's rows; return one error text (or None) per study."""
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(sources) >= 32 else 1
    chunks = [list(range(start, len(sources), max(workers, 1))) for start in range(max(workers, 1))]
    errors: list[str | None] = [None] * len(sources)
    bar = _progress_bar(len(sources), progress)
    if workers <= 1:
        for i, error in _fill_rows(array_path, [(i, sources[i]) for i in range(len(sources))], preprocess, fail_fast):
            errors[i] = _record(error, fail_fast)
            bar.update(1)
    else:
        # Each process writes its rows straight into the memory-mapped file; only error texts come back.
        with ProcessPoolExecutor(max_workers=workers, initializer=_quiet_worker) as pool:
            futures = [
                pool.submit(_fill_chunk, array_path, [(i, sources[i]) for i in chunk], preprocess, fail_fast)
                for chunk in chunks
                if chunk
            ]
            for future in futures:
                for i, error in future.result():
                    errors[i] = _record(error, fail_fast)
                    bar.update(1)
    bar.close()
    return errors


def _record(error: tuple | None, fail_fast: bool) -> str | None:
    """Error text for the failure list, or raise the original error class when failing fast."""
    if error is None:
        return None
    from . import errors as error_classes

    name, source, reason = error
    if fail_fast:
        raise getattr(error_classes, name, BoneScanError)(source, reason)
    return f"{source}: {reason}" if source else reason


def _quiet_worker() -> None:
    torch.set_num_threads(1)


def _fill_chunk(array_path: Path, items: list, preprocess: PreprocessConfig, fail_fast: bool) -> list:
    return list(_fill_rows(array_path, items, preprocess, fail_fast))


def _fill_rows(array_path: Path, items: list, preprocess: PreprocessConfig, fail_fast: bool):
    """Yield (row, None) or (row, (error class name, source, reason)); reading stops at a failure if fail_fast."""
    from .io import read_study  # imported here: reading pulls in pydicom and image codecs

    arrays = np.load(array_path, mmap_mode="r+")
    try:
        for i, source in items:
            try:
                study = read_study(source, region=preprocess.region)
                arrays[i] = preprocess_study(study, preprocess).astype(np.float16)
                yield i, None
            except BoneScanError as exc:
                # Plain values cross process boundaries; the exception is rebuilt in the main process.
                yield i, (type(exc).__name__, exc.source, exc.reason)
                if fail_fast:
                    return
    finally:
        arrays.flush()
        del arrays


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="caching studies", unit="study", disable=not enabled, leave=False)


# ---------------------------------------------------------------------------------------------------------------
# Dataset and augmentations


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The random stream of one sample in one epoch: depends on nothing else, so a resumed run is exact."""
    mixed = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(mixed, "little") & ((1 << 63) - 1))


def augment_pair(pair: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment one 2 x H x W study in [0, 1]; geometric changes move both views together."""
    if not config.enabled:
        return pair

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    out = pair
    # Count statistics: a scan of lower counts is a Poisson resampling of the expected image.
    if config.poisson_probability > 0 and uniform(0, 1) < config.poisson_probability:
        peak = uniform(*config.poisson_peak)
        out = torch.poisson(out.clamp_min(0) * peak, generator=generator) / peak
    if config.gain > 0:
        out = out * uniform(1 - config.gain, 1 + config.gain)
    # Position and size: one affine warp for both views (they share the patient's layout).
    flip = config.flip_probability > 0 and uniform(0, 1) < config.flip_probability
    zoom = uniform(1 - config.scale, 1 + config.scale) if config.scale > 0 else 1.0
    dy = uniform(-config.shift, config.shift) * 2 if config.shift > 0 else 0.0
    dx = uniform(-config.shift, config.shift) * 2 if config.shift > 0 else 0.0
    if zoom != 1.0 or dx or dy:
        theta = torch.tensor([[[1 / zoom, 0.0, dx], [0.0, 1 / zoom, dy]]], dtype=out.dtype)
        grid = F.affine_grid(theta, [1, *out.shape], align_corners=False)
        out = F.grid_sample(out[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    if flip:
        out = out.flip(-1)
    return out.clamp(0.0, 1.0)


class CachedScans(Dataset):
    """(2 x H x W float32 tensor, label float) for chosen rows of an ArrayCache, augmented when asked.

    Augmentation draws from a generator seeded by (seed, epoch, row), so every sample is reproducible whatever
    the process, worker or resume point. Call `set_epoch` before each epoch.
    """

    def __init__(self, cache: ArrayCache, rows: Sequence[int], augment: AugmentConfig | None = None, seed: int = 0):
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = int(self.rows[index])
        pair = torch.from_numpy(np.asarray(self.cache.arrays[row], dtype=np.float32))
        if self.augment is not None and self.augment.enabled:
            pair = augment_pair(pair, self.augment, sample_generator(self.seed, self.epoch, row))
        return pair, torch.tensor(float(self.cache.labels[row]))
