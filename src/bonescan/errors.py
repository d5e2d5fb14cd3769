"""One exception family for everything bonescan refuses.

Every message names the input (file, row, setting) and the reason, so the CLI can print it as one line
and a batch can record it beside the study that failed.
"""

from __future__ import annotations

from pathlib import Path


class BoneScanError(Exception):
    """Base class: `source` names the offending input, `reason` says what is wrong with it."""

    def __init__(self, source: str | Path | None, reason: str):
        self.source = str(source) if source is not None else None
        self.reason = reason
        super().__init__(f"{self.source}: {reason}" if self.source else reason)

    def __reduce__(self):
        # Rebuilt from (source, reason), so an error crosses a process boundary (worker processes, torchrun ranks).
        return type(self), (self.source, self.reason)


class UnreadableInputError(BoneScanError):
    """Not a DICOM or image file, truncated, or pixel data that cannot be decoded."""


class MissingDecoderError(UnreadableInputError):
    """A compressed transfer syntax whose decoder package is not installed."""


class NotABoneScanError(BoneScanError):
    """Readable, but not a whole-body bone scan (wrong modality, wrong geometry, empty counts)."""


class ViewError(BoneScanError):
    """Views missing, ambiguous, or inconsistent (e.g. a single view where two are needed)."""


class ManifestError(BoneScanError):
    """A cohort manifest that fails validation; the message lists every bad row."""


class ConfigError(BoneScanError):
    """An impossible setting: unknown preset, negative count, an output folder holding other files."""


class RunError(BoneScanError):
    """A training run folder or checkpoint that cannot be used as asked."""


class PredictionsError(BoneScanError):
    """A predictions table that cannot be evaluated: missing columns, bad probabilities or labels, too few cases."""


class EngineError(BoneScanError):
    """An exported or quantised engine that cannot be built, loaded or used as asked (e.g. int8 refused by its
    parity gate); the message names the engine file or run and gives the figures."""


class AnnotationError(BoneScanError):
    """Lesion or region annotations (Pascal VOC XML, COCO JSON, truth files) that cannot be used as training truth:
    the message lists every problem found in the file."""


class OutputError(BoneScanError):
    """An output file that cannot be written: a full disk, no permission, a read-only file system."""


class FollowUpError(BoneScanError):
    """Studies that cannot be compared as visits of one patient: another patient, a follow-up dated before its
    baseline, a visit without both views."""


def describe(error: BaseException) -> str:
    """One line for an error caught to fail one study: bonescan's own errors already name the input and the
    reason; any other is named by its type."""
    return str(error) if isinstance(error, BoneScanError) else f"{type(error).__name__}: {error}"


def workers_stopped(workers: int, error: BaseException, in_process: str) -> ConfigError:
    """The error for a process pool whose workers stopped (`BrokenProcessPool`). Most often a Python script that
    calls bonescan without a main guard: each worker process imports the script again, its top level starts workers
    of its own, and Python stops that. `in_process` says how to run without workers."""
    return ConfigError("--workers", f"the {workers} worker process(es) stopped before finishing ({error}). A Python "
                                    f"script that calls bonescan with workers must run under "
                                    f"`if __name__ == \"__main__\":`, as each worker process imports it; "
                                    f"{in_process} works in this process")
