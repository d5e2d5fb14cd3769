"""Small generated two-view studies (.npy pairs) and manifests for the model, data and training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

ROWS, COLS = 256, 64  # the smallest whole-body shape the readers accept (rows >= 256, rows / cols >= 2)


def make_pair(rng: np.random.Generator, positive: bool) -> tuple[np.ndarray, np.ndarray]:
    """A faint body outline with count noise; a positive study has a few bright spots in both views."""
    body = np.zeros((ROWS, COLS), np.float32)
    body[20:240, 20:44] = 20.0
    expected = [body.copy(), body.copy()]
    if positive:
        for _ in range(3):
            r, c = rng.integers(30, 230), rng.integers(22, 42)
            for view in expected:
                view[r - 4 : r + 4, c - 3 : c + 3] += 150.0
    return rng.poisson(expected[0]).astype(np.float32), rng.poisson(expected[1]).astype(np.float32)


def write_cohort(folder: Path, n_train: int = 32, n_val: int = 16, seed: int = 0, n_test: int = 0) -> pd.DataFrame:
    """Write .npy pairs and return a manifest DataFrame in load_manifest's form (absolute paths, label, split)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    for i, split in enumerate(splits):
        label = i % 2
        anterior, posterior = make_pair(rng, bool(label))
        ant, post = folder / f"case{i:03d}_ant.npy", folder / f"case{i:03d}_post.npy"
        np.save(ant, anterior)
        np.save(post, posterior)
        rows.append({"case_id": f"case{i:03d}", "anterior": str(ant), "posterior": str(post), "cancer_type": "lung",
                     "sex": "M", "age": 60.0, "label": label, "split": split})
    return pd.DataFrame(rows)


def write_manifest_csv(folder: Path, manifest: pd.DataFrame) -> Path:
    """Save a manifest as CSV (absolute paths are accepted by load_manifest)."""
    path = folder / "manifest.csv"
    manifest.to_csv(path, index=False)
    return path


def train_tiny_run(folder: Path, n_train: int = 24, n_val: int = 24, n_test: int = 4) -> tuple[Path, Path]:
    """Train the `tiny` preset (64 x 32) on a generated cohort; returns (RUN folder, manifest CSV).

    The manifest path is recorded in RUN/config.json, as `bonescan train --manifest` does.
    """
    import torch

    from bonescan.presets import preset_config
    from bonescan.train import train

    manifest = write_cohort(folder / "data", n_train=n_train, n_val=n_val, n_test=n_test)
    manifest_path = write_manifest_csv(folder, manifest)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(manifest, folder / "run", preset_config("tiny"), cache_dir=folder / "cache", progress=False,
              manifest_path=manifest_path)
    finally:
        torch.set_num_threads(previous)
    return folder / "run", manifest_path
