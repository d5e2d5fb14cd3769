"""Who the synthetic patients are: cancer type, sex, age and grade drawn to match the paper's Table 1.

Zhao et al. 2020, Table 1 (all three cohorts together, 12,222 patients): cancer-type mix, sex per cancer type,
age mean and SD per cancer type (training cohort) and metastasis rate per cancer type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .findings import DifficultyProfile, benign_count_mean


@dataclass(frozen=True)
class CancerGroup:
    """One column of Table 1."""

    name: str
    patients: int
    male: int
    age_mean: float
    age_sd: float
    metastasis_rate: float
    superscan_weight: float  # relative chance that a grade-3 case is a diffuse superscan


# Male counts sum the training (2699/1474/10/1238), validation (336/185/0/147) and testing (357/185/0/150) cohorts.
TABLE1 = (
    CancerGroup("lung", 6021, 3392, 58.5, 10.8, 0.4401, 0.6),
    CancerGroup("prostate", 1844, 1844, 71.0, 8.7, 0.4871, 2.5),
    CancerGroup("breast", 2100, 10, 51.4, 10.4, 0.3655, 1.0),
    CancerGroup("other", 2257, 1535, 56.1, 12.9, 0.3695, 0.6),
)
TABLE1_TOTAL = sum(group.patients for group in TABLE1)  # 12,222


@dataclass(frozen=True)
class Demographics:
    """One synthetic patient's clinical row."""

    cancer_type: str
    sex: str
    age: int
    grade: int
    superscan: bool

    @property
    def label(self) -> int:
        return int(self.grade >= 2)


def sample_demographics(rng: np.random.Generator, profile: DifficultyProfile) -> Demographics:
    """Draw cancer type, sex, age and grade for one patient following Table 1."""
    weights = np.array([group.patients for group in TABLE1], float)
    group = TABLE1[int(rng.choice(len(TABLE1), p=weights / weights.sum()))]
    sex = "M" if rng.random() < group.male / group.patients else "F"
    age = int(np.clip(round(rng.normal(group.age_mean, group.age_sd)), 18, 95))
    metastatic = rng.random() < group.metastasis_rate
    if metastatic:
        grade = 3 if rng.random() < profile.grade3_share else 2
    else:
        # Benign findings (grade 1) become common with age, as degenerative disease does.
        p_benign = 1.0 - np.exp(-benign_count_mean(age, profile))
        grade = 1 if rng.random() < p_benign else 0
    superscan = grade == 3 and rng.random() < min(profile.superscan_share * group.superscan_weight, 0.5)
    return Demographics(group.name, sex, age, grade, bool(superscan))
