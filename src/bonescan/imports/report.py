"""What an import found: every inconsistency per file with its reason and effect, and the counts per folder.

An import never stops at a bad file and never drops one silently: each problem is one row of `problems.csv`
(manifest, folder, file, id, problem, reason, effect), and `summary.json` / the printed summary say how many
manifest rows each kind of problem removed.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from ..fileio import atomic_path, write_text_atomic

# Kinds of problem, in the order a study's removal is attributed to them (the first that applies).
REMOVING = (
    "unreadable image", "not a usable view", "duplicate id", "conflicting label lines", "image without label",
    "missing partner view",
)
KEEPING = (
    "missing folder", "no label file", "unexpected file", "label line without image", "bad label line", "repeated label line", "annotation unusable",
    "no annotation file", "annotation without image", "label disagrees with boxes", "unexpected image size",
)


@dataclass(frozen=True)
class Problem:
    """One inconsistency of one file."""

    manifest: str  # "wholeBody", a region name, or "pairs"
    folder: str
    file: str
    id: str
    problem: str  # one of REMOVING or KEEPING
    reason: str

    @property
    def removes(self) -> bool:
        return self.problem in REMOVING


@dataclass
class ImportResult:
    """The manifests written, the counts per folder and label, and every problem found."""

    out_dir: Path
    manifests: dict[str, Path] = field(default_factory=dict)  # "wholeBody" / region / "pairs" -> CSV
    rows: dict[str, int] = field(default_factory=dict)
    folder_counts: list[dict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    removed: dict[str, Counter] = field(default_factory=dict)  # manifest -> problem -> rows removed
    seconds: float = 0.0

    def removed_by_problem(self) -> Counter:
        """Rows removed per kind of problem, over all manifests."""
        total: Counter = Counter()
        for counts in self.removed.values():
            total.update(counts)
        return total

    def summary_lines(self) -> list[str]:
        """The printed summary: rows per manifest, then each kind of problem with files and rows removed."""
        lines = [f"{name}: {self.rows.get(name, 0)} rows -> {path}" for name, path in self.manifests.items()]
        files = Counter(p.problem for p in self.problems)
        removed = self.removed_by_problem()
        example = {p.problem: p for p in self.problems}
        for kind in (*REMOVING, *KEEPING):
            if files.get(kind):
                effect = f"{removed.get(kind, 0)} rows removed" if kind in REMOVING else _effect(example[kind])
                lines.append(f"  {kind}: {files[kind]} listed, {effect}")
        if not self.problems:
            lines.append("  no inconsistencies found")
        return lines

    def write(self) -> None:
        """problems.csv, counts.csv and summary.json in out_dir, atomically."""
        problems = pd.DataFrame([asdict(p) | {"effect": _effect(p)} for p in self.problems],
                                columns=["manifest", "folder", "file", "id", "problem", "reason", "effect"])
        with atomic_path(self.out_dir / "problems.csv") as tmp:
            problems.to_csv(tmp, index=False)
        with atomic_path(self.out_dir / "counts.csv") as tmp:
            pd.DataFrame(self.folder_counts).to_csv(tmp, index=False)
        summary = {
            "manifests": {k: {"path": str(v), "rows": self.rows.get(k, 0)} for k, v in self.manifests.items()},
            "problems": dict(Counter(p.problem for p in self.problems)),
            "rows_removed": {k: dict(v) for k, v in self.removed.items()},
            "rows_removed_by_problem": dict(self.removed_by_problem()),
            "seconds": round(self.seconds, 2),
        }
        write_text_atomic(self.out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")


def _effect(problem: Problem) -> str:
    if problem.removes:
        return "row removed"
    if problem.problem in ("annotation unusable", "no annotation file"):
        return "row kept without boxes"
    if problem.problem == "no label file":
        return "its images are unlabelled (listed one by one)"
    if problem.problem == "unexpected file":
        return "ignored"
    if problem.problem == "missing folder":
        return "no manifest for this pair of folders"
    return "row kept"


def attribute_removals(problems: list[Problem], ids: set[str], manifest: str) -> Counter:
    """Rows removed per kind of problem: each removed id counts once, for its first removing problem."""
    first: dict[str, str] = {}
    rank = {kind: i for i, kind in enumerate(REMOVING)}
    for p in problems:
        if p.manifest == manifest and p.removes and p.id in ids:
            if p.id not in first or rank[p.problem] < rank[first[p.id]]:
                first[p.id] = p.problem
    return Counter(first.values())
