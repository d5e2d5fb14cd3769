"""Synthetic whole-body bone scans with known truth: the default data of demos, tests and benchmarks.

    from bonescan.synth import generate_case, generate_cohort
    case = generate_case("syn00000", seed=1, difficulty="paper")     # in memory: uint16 views + findings
    generate_cohort("runs/synth", cases=200, seed=0, workers=2)      # NM DICOM + findings JSON + manifest.csv

Modules: `sites` (camera and site profiles), `phantom` (normal anatomy), `findings` (metastases, benign
look-alikes, artifacts, difficulty profiles), `cohort` (Table 1 demographics and grades), `case` (one study from
one seed), `dicom` (NM writer, per site header convention), `writer` (cohort folder, resume, workers), `preview`
(contact sheet), `baseline` (difficulty check), `realism` (statistics against real reference studies).
"""

from .baseline import BaselineResult, measure_baseline
from .case import SyntheticCase, case_seed, generate_case
from .cohort import TABLE1, Demographics
from .dicom import build_dataset, write_case_dicom
from .findings import DIFFICULTIES, DifficultyProfile, Finding, difficulty_profile
from .preview import preview_cases, write_preview
from .realism import RealismReport, compare_realism, write_realism_plot
from .sites import SITE_NAMES, SITES, SiteProfile, site_profile
from .writer import CohortResult, SynthSettings, generate_cohort

__all__ = [
    "DIFFICULTIES", "SITES", "SITE_NAMES", "TABLE1", "BaselineResult", "CohortResult", "Demographics",
    "DifficultyProfile", "Finding", "RealismReport", "SiteProfile", "SynthSettings", "SyntheticCase",
    "build_dataset", "case_seed", "compare_realism", "difficulty_profile", "generate_case", "generate_cohort",
    "measure_baseline", "preview_cases", "site_profile", "write_case_dicom", "write_preview", "write_realism_plot",
]
