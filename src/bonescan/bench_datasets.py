"""`bonescan bench import`: how long importing and checking a BS-80K-sized tree takes here.

Writes a synthetic BS-80K-shaped tree (`bonescan.synth.bs80k`; all 13 regions, the elbow defect and a few
patients written twice) unless the folder holds one already, then times `import_bs80k` and the duplicate /
leakage check over the whole-body and every region manifest together, and prints the figures.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterator


def bench_import(data: str | Path, patients: int = 3000, workers: int | None = None,
                 check: bool = True) -> Iterator[str]:
    """Yield lines of figures: tree writing (if needed), import, and the duplicate check."""
    import pandas as pd

    from .cohort import load_manifest
    from .imports import import_bs80k
    from .leakage import check_manifest
    from .synth.bs80k import write_bs80k_tree

    data = Path(data)
    tree, out = data / "tree", data / "import"
    stamp = tree / ".written.json"
    workers = workers or min(os.cpu_count() or 1, 4)
    if not stamp.is_file() or json.loads(stamp.read_text()).get("patients") != patients:
        start = time.perf_counter()
        written = write_bs80k_tree(tree, patients, seed=0, workers=workers, duplicate_patients=max(1, patients // 300))
        stamp.write_text(json.dumps({"patients": patients, "duplicates": written.duplicates}))
        yield f"wrote a synthetic tree of {patients} patients in {time.perf_counter() - start:.0f} s"
    images = sum(1 for folder in tree.iterdir() if folder.is_dir() for _ in os.scandir(folder))
    yield f"tree: {tree} ({images} entries in {sum(1 for f in tree.iterdir() if f.is_dir())} folders)"
    start = time.perf_counter()
    result = import_bs80k(tree, out, workers=workers)
    seconds = time.perf_counter() - start
    yield (f"import bs80k: {seconds:.1f} s for {patients} patients, {images} files "
           f"({images / seconds:.0f} files/s, {workers} worker processes); rows: " +
           ", ".join(f"{k} {v}" for k, v in result.rows.items()))
    if not check:
        return
    table = pd.concat([load_manifest(path, check_files=False) for path in result.manifests.values()],
                      ignore_index=True)
    report = check_manifest(table, workers=workers)
    yield (f"cohort check: {report.seconds:.1f} s for {report.images} images of {len(table)} rows "
           f"(hashing {report.hash_seconds:.1f} s, {report.images / report.hash_seconds:.0f} images/s; "
           f"comparing {report.seconds - report.hash_seconds:.1f} s)")
    yield from report.summary_lines()[1:]
    duplicates = json.loads(stamp.read_text())["duplicates"]
    near = report.pairs[(report.pairs["kind"] == "near") & ~report.pairs["case_a"].str.contains("-")]
    found = {frozenset(p) for p in zip(near["case_a"].astype(str), near["case_b"].astype(str))}
    hits = sum(frozenset(p) in found for p in duplicates.items())
    yield f"patients written twice: {len(duplicates)}, found as whole-body near duplicates: {hits}"
