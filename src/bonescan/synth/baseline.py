"""How hard a difficulty is: AUCs of two simple baselines on a held-out part of a generated cohort.

- "logistic": logistic regression on both views block-averaged to 64 x 16 (posterior mirrored), each view
  divided by its total counts, standardised; L2 penalty C = 0.05 (fixed, not tuned on the test part).
- "max-pixel": the hottest 3 x 3-smoothed pixel of either view divided by the view's median body count, a
  "brightest spot" rule. The bladder and injection sites make it weak, as they do for a real reader's first glance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter

from ..errors import ConfigError
from .case import case_seed, generate_case

BLOCK = 16


@dataclass
class BaselineResult:
    """AUCs on the held-out part and the sizes of both parts."""

    difficulty: str
    n_train: int
    n_test: int
    prevalence: float
    auc_logistic: float
    auc_max_pixel: float


def _features(anterior: np.ndarray, posterior: np.ndarray) -> tuple[np.ndarray, float]:
    views = []
    hottest = 0.0
    for view in (anterior.astype(np.float32), posterior[:, ::-1].astype(np.float32)):
        rows, cols = view.shape
        blocks = view.reshape(rows // BLOCK, BLOCK, cols // BLOCK, BLOCK).mean(axis=(1, 3))
        views.append((blocks / max(view.sum(), 1.0)).ravel())
        body = view[view > 2]
        smooth = uniform_filter(view, 3)
        hottest = max(hottest, float(smooth.max()) / max(float(np.median(body)) if body.size else 1.0, 1.0))
    return np.concatenate(views) * 1e4, hottest


def measure_baseline(cases: int = 600, seed: int = 1000, difficulty: str = "paper", test_fraction: float = 0.3,
                     pixel_spacing: float = 2.4) -> BaselineResult:
    """Generate `cases` studies in memory, fit the baselines on one part and report AUCs on the rest."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, hottest, labels = [], [], []
    for index in range(cases):
        case = generate_case(f"b{index}", case_seed(seed, index), difficulty, pixel_spacing)
        f, h = _features(case.anterior, case.posterior)
        features.append(f)
        hottest.append(h)
        labels.append(case.demographics.label)
    x, h, y = np.array(features), np.array(hottest), np.array(labels)
    order = np.random.default_rng(seed).permutation(cases)
    n_test = max(int(round(cases * test_fraction)), 2)
    test, train = order[:n_test], order[n_test:]
    if len(set(y[train])) < 2 or len(set(y[test])) < 2:
        raise ConfigError("--cases", f"{cases} cases are too few: both parts need metastatic and non-metastatic studies")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
    model.fit(x[train], y[train])
    auc_lr = float(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1]))
    auc_max = float(roc_auc_score(y[test], h[test]))
    return BaselineResult(difficulty, len(train), len(test), float(y.mean()), auc_lr, auc_max)
