"""Fitted trees scored by the compiled pass (`trees.FlatTrees`) against scikit-learn's own scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from bonescan.trees import FlatTrees


def _data(rng, n, missing=0.1):
    features = rng.normal(size=(n, 6))
    labels = features[:, 0] + 0.5 * features[:, 1] ** 2 - features[:, 2] * features[:, 3] > 0.3
    features[rng.random(features.shape) < missing] = np.nan  # missing values follow each node's learnt side
    return features, labels


def test_flat_trees_give_scikit_learns_probabilities_to_the_bit():
    rng = np.random.default_rng(0)
    features, labels = _data(rng, 2000)
    model = HistGradientBoostingClassifier(max_iter=120, max_leaf_nodes=31, random_state=0).fit(features, labels)
    flat = FlatTrees.of(model)
    assert flat is not None and len(flat.roots) == model.n_iter_
    fresh, _ = _data(rng, 500, missing=0.2)
    fresh[:5] = np.nan  # rows with nothing known
    np.testing.assert_array_equal(flat.probabilities(fresh), model.predict_proba(fresh)[:, 1])
    # rows exactly on a split's threshold go left, as scikit-learn sends them
    on_split = features[:50].copy()
    tree = model._predictors[0][0].nodes
    split = np.flatnonzero(~tree["is_leaf"].astype(bool))[0]
    on_split[:, tree["feature_idx"][split]] = tree["num_threshold"][split]
    np.testing.assert_array_equal(flat.probabilities(on_split), model.predict_proba(on_split)[:, 1])
    with pytest.raises(ValueError, match="rows of 6 features"):
        flat.probabilities(fresh[:, :5])


def test_only_binary_classifiers_on_numeric_features_are_flattened():
    rng = np.random.default_rng(1)
    features, labels = _data(rng, 600, missing=0.0)
    three = HistGradientBoostingClassifier(max_iter=10).fit(features, np.digitize(features[:, 0], [-0.5, 0.5]))
    assert FlatTrees.of(three) is None
    categories = np.column_stack([rng.integers(0, 4, 600), features[:, 1:]])
    odd = categories[:, 0] % 2 == 1  # a label that only a split on the categories finds
    categorical = HistGradientBoostingClassifier(max_iter=10, categorical_features=[0]).fit(categories, odd)
    assert FlatTrees.of(categorical) is None
    assert FlatTrees.of(object()) is None


def test_trees_that_do_not_give_their_models_scores_are_not_used():
    rng = np.random.default_rng(2)
    features, labels = _data(rng, 600)

    class Shifted(HistGradientBoostingClassifier):
        """Scores otherwise than its trees read as FlatTrees reads them (as a changed scikit-learn might)."""

        def predict_proba(self, X):
            p = super().predict_proba(X)
            p[:, 1] = np.minimum(p[:, 1] + 1e-6, 1.0)
            return p

    assert FlatTrees.of(HistGradientBoostingClassifier(max_iter=20).fit(features, labels)) is not None
    assert FlatTrees.of(Shifted(max_iter=20).fit(features, labels)) is None
