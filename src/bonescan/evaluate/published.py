"""Published AUCs of earlier bone-scan AI systems, as listed in Table 2 of Zhao, Pi et al., Sci Rep 2020.

These come from other patients, cameras and reference standards; they are shown beside our numbers for orientation
only, never as a head-to-head comparison. None = not reported.
"""

from __future__ import annotations

SOURCE = "Zhao Z, Pi Y, et al. Deep neural network based artificial intelligence assisted diagnosis of bone scintigraphy for cancer bone metastasis. Sci Rep 2020, Table 2"

# column -> (system, country, training n, testing n)
SYSTEMS = {
    "EXINIbone": ("EXINIbone (EB)", "Sweden", 795, 384),
    "BONENAVI v1": ("BONENAVI version 1 (BN1)", "Japan", 904, 257),
    "BONENAVI v2": ("BONENAVI version 2 (BN2)", "Japan", 1532, 503),
    "Zhao 2020": ("Zhao et al. 2020 (ResNet-50, two views)", "China", 9776, 1223),
}

# (dimension, group) as in our AUC table -> AUC per system (EXINIbone, BONENAVI v1, BONENAVI v2, Zhao 2020)
PUBLISHED_AUC: dict[tuple[str, str], tuple[float | None, float | None, float | None, float | None]] = {
    ("cancer_type", "prostate"): (0.939, 0.949, 0.957, 0.955),
    ("cancer_type", "breast"): (0.847, 0.91, 0.924, 0.988),
    ("cancer_type", "lung"): (None, None, None, 0.957),
    ("cancer_type", "other"): (0.77, 0.861, 0.914, 0.971),
    ("overall", "all"): (0.858, 0.91, 0.932, 0.964),
    ("sex", "M"): (0.877, 0.912, 0.934, 0.963),
    ("sex", "F"): (0.831, 0.91, 0.932, 0.966),
    ("age_group", "<60"): (None, None, None, 0.979),
    ("age_group", ">=60"): (None, None, None, 0.949),
    # Not in Table 2: the paper's Results text reports prostate AUC 0.992 below 60 years vs 0.938 from 60 (P < 0.05).
    ("cancer_age", "prostate <60"): (None, None, None, 0.992),
    ("cancer_age", "prostate >=60"): (None, None, None, 0.938),
}

