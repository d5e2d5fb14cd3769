"""Reader studies: a web reading station for blinded and AI-consulted reading, and readers-vs-AI statistics."""

from .analysis import AnalysisResult, analyze_study, diagnostic_rates, mcnemar_correctness
from .app import create_app, serve
from .store import ReaderStore
from .study import create_study, export_reads, load_cases, load_predictions, reads_table, reset_password

__all__ = [
    "AnalysisResult",
    "ReaderStore",
    "analyze_study",
    "create_app",
    "create_study",
    "diagnostic_rates",
    "export_reads",
    "load_cases",
    "load_predictions",
    "mcnemar_correctness",
    "reads_table",
    "reset_password",
    "serve",
]
