"""One hotspot per focus: where both views show a hotspot at one place, the view where it stands out less is left out.

The lesion network reads both views in one pass, so a focus in one view raises the other view's maps at the
mirrored place as well. A metastasis in a posterior rib, which the anterior view sees through the chest at a few
percent of its counts, got an anterior hotspot of its own, often as malignant as the posterior one; a reader sees
nothing there, and the truth has no lesion in that view, so it counted as a false positive. On the demo's test
split, every hotspot of the demo network above its 1-FP threshold had a twin at the mirrored place in the other view.
A reader judges which view shows a focus best by how far its counts stand above the bone around it, so of two
hotspots the views pair (`pairing.pair_views`: mirrored centroids within CROSS_MM) the one with the lower uptake
ratio is dropped and the other reports the focus. Lesions are counted once across views by the truth
(`evaluate.froc`) and by `StudyLesions.n_malignant_lesions` alike; now the hotspots are too. The BSI still counts
the malignant pixels of both (`infer.study_lesions`).

Measured with the demo's 24-epoch `cpu-small-lesion` network (`bonescan demo --lesions`, seed 0; 2-core Zen 4
EPYC), sensitivity at 1 false positive per study: validation split (101 studies, 361 lesions, where the rule was
chosen) 0.801 -> 0.906; test split (400 studies, 1,620 lesions) 0.824 -> 0.904. Keeping both hotspots where the
weaker shows at least 0.85 of the stronger's uptake ratio gave 0.900 / 0.896, and keeping the more malignant of the
two instead of the one standing out more 0.911 / 0.902.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .pairing import CROSS_MM, pair_nearest

# What a frozen threshold record says of the hotspots it was chosen on (`threshold`): a threshold chosen when each
# focus had a hotspot in both views was set against false positives that are no longer reported.
RULE = "one per focus"


def best_view_of_each_focus(views: Sequence[int], centroids: np.ndarray, uptake: Sequence[float], width: int,
                            spacing: Sequence[float], reach: float = CROSS_MM) -> np.ndarray:
    """Bool per hotspot: False for a hotspot whose twin in the other view stands out more.

    `views` 0 (anterior) or 1 (posterior), `centroids` [N, 2] (row, col) in stored pixels, each view in its own
    layout (the posterior as seen from behind, `width` pixels wide), `uptake` the hotspots' uptake ratios,
    `spacing` (row, col) mm per pixel. Twins are paired one to one (`pairing.pair_nearest`); a twin whose uptake
    ratio is unknown (not finite) or equal to the other's keeps both.
    """
    views = np.asarray(views, np.int64).reshape(-1)
    centroids = np.asarray(centroids, np.float64).reshape(-1, 2)
    uptake = np.asarray(uptake, np.float64).reshape(-1)
    if not len(views) == len(centroids) == len(uptake):
        raise ValueError(f"{len(views)} views, {len(centroids)} centroids and {len(uptake)} uptake ratios differ")
    keep = np.ones(len(views), bool)
    anterior, posterior = np.flatnonzero(views == 0), np.flatnonzero(views == 1)
    mirrored = centroids[posterior].copy()
    mirrored[:, 1] = width - 1 - mirrored[:, 1]  # the posterior laid over the anterior
    for i, j, _ in pair_nearest(centroids[anterior], mirrored, spacing, reach):
        front, back = anterior[i], posterior[j]
        if np.isfinite(uptake[front]) and np.isfinite(uptake[back]) and uptake[front] != uptake[back]:
            keep[front if uptake[front] < uptake[back] else back] = False
    return keep
