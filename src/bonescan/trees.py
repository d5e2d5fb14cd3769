"""Fitted gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier) saved and loaded safely.

Stored with skops, so loading runs no pickled code: the one type it must trust is scikit-learn's tree predictor, and
a file holding any other is refused. Scored and fitted on one OpenMP thread: the models score tens of rows per
study while studies are processed in threads already (a thread team per call, beside torch's, cost more than the
trees), and a busy machine made a spinning team 10x slower.
"""

from __future__ import annotations

import functools
from pathlib import Path

from threadpoolctl import ThreadpoolController

from .fileio import atomic_path

TRUSTED = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


@functools.cache
def _openmp() -> ThreadpoolController:
    """One controller: it finds the loaded thread pools once (threadpool_limits searched them per call, 15 ms)."""
    return ThreadpoolController()


def one_thread():
    """Context manager: OpenMP held to one thread inside (`with one_thread(): model.predict_proba(...)`)."""
    return _openmp().limit(limits=1, user_api="openmp")


def save_trees(model, target: str | Path) -> Path:
    """Write `model` to `target` with skops, atomically."""
    import skops.io

    with atomic_path(target) as path:
        skops.io.dump(model, path)
    return Path(target)


def load_trees(path: str | Path):
    """The model stored at `path`; ValueError when the file holds a type other than the trusted tree predictor
    (skops and zip errors pass through for the caller to name the file)."""
    import skops.io

    unknown = set(skops.io.get_untrusted_types(file=path)) - set(TRUSTED)
    if unknown:
        raise ValueError(f"it holds types that are not trusted: {sorted(unknown)}")
    return skops.io.load(path, trusted=TRUSTED)
