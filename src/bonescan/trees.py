"""Fitted gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier) saved and loaded safely.

Stored with skops, so loading runs no pickled code: the one type it must trust is scikit-learn's tree predictor, and
a file holding any other is refused. Scored and fitted on one OpenMP thread: the models score tens of rows per
study while studies are processed in threads already (a thread team per call, beside torch's, cost more than the
trees), and a busy machine made a spinning team 10x slower. `FlatTrees` scores a binary model's trees in one
compiled pass, with scikit-learn's results.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from .fileio import atomic_path
from .jit import compiled

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


class FlatTrees:
    """A binary HistGradientBoostingClassifier's trees in flat arrays, scored in one compiled pass.

    scikit-learn scores tree after tree from Python: for the tens of rows a study gives, that loop is the cost (300
    trees, 70 rows: 2.7 ms on the 2-core Zen 4 EPYC, against 0.55 ms here). The same comparisons (a value at most the
    threshold goes left, a missing one where the node says), the same float64 sums from the baseline in the trees'
    order and scipy's expit give `predict_proba(X)[:, 1]` to the bit (a test compares them)."""

    def __init__(self, model):
        nodes = [predictor.nodes for (predictor,) in model._predictors]
        if model.n_trees_per_iteration_ != 1 or any(tree["is_categorical"].any() for tree in nodes):
            raise ValueError("only binary classifiers on numeric features are flattened")
        self.baseline = float(np.asarray(model._baseline_prediction).ravel()[0])
        self.roots = np.cumsum([0] + [len(tree) for tree in nodes[:-1]]).astype(np.int64)
        every = np.concatenate(nodes)
        offsets = np.repeat(self.roots, [len(tree) for tree in nodes])  # children are numbered within their tree
        self.feature = every["feature_idx"].astype(np.int64)
        self.threshold = every["num_threshold"].astype(np.float64)
        self.value = every["value"].astype(np.float64)
        self.leaf = every["is_leaf"].astype(np.bool_)
        self.missing_left = every["missing_go_to_left"].astype(np.bool_)
        self.left = every["left"].astype(np.int64) + offsets
        self.right = every["right"].astype(np.int64) + offsets
        self.n_features = int(model.n_features_in_)

    @classmethod
    def of(cls, model) -> "FlatTrees | None":
        """The flattened trees of `model`, or None where it is not a binary classifier on numeric features, or where
        they do not give its own scores on rows made of its split thresholds (a scikit-learn whose trees are built
        otherwise than this reads them)."""
        try:
            flat = cls(model)
        except (AttributeError, KeyError, TypeError, ValueError):
            return None
        probe = flat._probe_rows()
        with one_thread():
            theirs = model.predict_proba(probe)[:, 1]
        return flat if np.array_equal(flat.probabilities(probe), theirs) else None

    def _probe_rows(self, n: int = 64) -> np.ndarray:
        """Rows on, just below and just above split thresholds of every feature, and one of missing values."""
        rng = np.random.default_rng(0)
        split = ~self.leaf
        rows = np.zeros((n, self.n_features))
        for feature in range(self.n_features):
            thresholds = self.threshold[split & (self.feature == feature)]
            if thresholds.size:
                rows[:, feature] = rng.choice(thresholds, n) + rng.choice([-1e-9, 0.0, 1e-9], n)
        return np.vstack([rows, np.full((1, self.n_features), np.nan)])

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """The positive class's probability of each row of `features` [N, n_features]."""
        from scipy.special import expit

        features = np.ascontiguousarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {features.shape}")
        raw = _raw_scores(features, self.baseline, self.roots, self.feature, self.threshold, self.value, self.leaf,
                          self.missing_left, self.left, self.right)
        return expit(raw)


@compiled
def _raw_scores(features, baseline, roots, feature, threshold, value, leaf, missing_left, left, right):
    out = np.empty(features.shape[0])
    for row in range(features.shape[0]):
        total = 0.0 + baseline
        for root in roots:
            node = root
            while not leaf[node]:
                x = features[row, feature[node]]
                if np.isnan(x):
                    node = left[node] if missing_left[node] else right[node]
                else:
                    node = left[node] if x <= threshold[node] else right[node]
            total += value[node]
        out[row] = total
    return out
