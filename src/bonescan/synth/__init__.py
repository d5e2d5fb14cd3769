"""Synthetic whole-body bone scans with known truth: the default data of demos, tests and benchmarks.

    from bonescan.synth import generate_case, generate_cohort
    case = generate_case("syn00000", seed=1, difficulty="paper")     # in memory: uint16 views + findings
    generate_cohort("runs/synth", cases=200, seed=0, workers=2)      # NM DICOM + findings JSON + manifest.csv

Modules: `phantom` (normal anatomy), `findings` (metastases, benign look-alikes, artifacts, difficulty
profiles), `cohort` (Table 1 demographics and grades), `case` (one study from one seed), `dicom` (NM writer),
`writer` (cohort folder, resume, workers), `preview` (contact sheet), `baseline` (difficulty check).
"""

from .baseline import BaselineResult, measure_baseline
from .case import SyntheticCase, case_seed, generate_case
from .cohort import TABLE1, Demographics
from .dicom import build_dataset, write_case_dicom
from .findings import DIFFICULTIES, DifficultyProfile, Finding, difficulty_profile
from .preview import preview_cases, write_preview
from .writer import CohortResult, SynthSettings, generate_cohort

__all__ = [
    "DIFFICULTIES", "TABLE1", "BaselineResult", "CohortResult", "Demographics", "DifficultyProfile", "Finding",
    "SynthSettings", "SyntheticCase", "build_dataset", "case_seed", "difficulty_profile", "generate_case",
    "generate_cohort", "measure_baseline", "preview_cases", "write_case_dicom", "write_preview",
]
