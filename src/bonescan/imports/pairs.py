"""`import_pairs`: a folder of `<id>_ant` / `<id>_post` images and a labels CSV -> a whole-body pair manifest.

Fits the IICS-UNA set (291 patients, 16-bit PNG pairs 256 x 1024, one label per patient) and any export named
the same way (view words and separators as `bonescan.io.images.view_from_name` reads them: `_ant`, `-anterior`,
`.post`..., any case; PNG, TIFF, JPEG or .npy). Folders are searched recursively.

The labels CSV has an id column (`case_id`, `patient_id` or `id`, the first present) and `label` (0/1); its other
columns (e.g. cancer_type, sex, age) are copied into the manifest. Writes OUT/manifest.csv, counts.csv,
problems.csv and summary.json, as `import_bs80k` does.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BoneScanError, ConfigError
from ..io.checks import check_whole_body
from ..io.images import view_from_name
from .probe import probe_image
from .report import ImportResult, Problem, attribute_removals

MANIFEST = "pairs"
IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy"}
ID_COLUMNS = ("case_id", "patient_id", "id")


def import_pairs(root: str | Path, labels: str | Path, out: str | Path) -> ImportResult:
    """Import `<id>_ant` / `<id>_post` image pairs under `root` with the labels of `labels` into `out`."""
    start = time.perf_counter()
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise ConfigError(root, "no such folder")
    problems: list[Problem] = []
    table, id_column = _read_labels(Path(labels), problems)
    views: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    images = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
            continue
        images += 1
        parsed = view_from_name(path)
        if parsed is None:
            problems.append(Problem(MANIFEST, str(path.parent), str(path), path.stem, "no view in file name",
                                    "the name does not end in _ant / _post (or anterior / posterior)"))
            continue
        views[parsed[0]][parsed[1]].append(path)
    if not images:
        raise ConfigError(root, "no image files found (PNG, TIFF, JPEG, .npy)")

    labelled = dict(zip(table[id_column], table["label"]))
    rows = []
    for pid in sorted(views):
        row = _pair(pid, views[pid], labelled, problems)
        if row is not None:
            rows.append(row)
    for pid in sorted(set(labelled) - set(views)):
        problems.append(Problem(MANIFEST, str(labels), str(labels), pid, "label line without image",
                                f"{Path(labels).name} names id {pid}, which has no image under {root}"))
    manifest = pd.DataFrame(rows, columns=["case_id", "patient_id", "anterior", "posterior"])
    extras = table.rename(columns={id_column: "patient_id"})
    manifest = manifest.merge(extras, on="patient_id", how="left")

    from ..cohort import write_manifest

    result = ImportResult(out)
    target = write_manifest(manifest, out / "manifest.csv")
    result.manifests[MANIFEST] = target
    result.rows[MANIFEST] = len(manifest)
    result.removed[MANIFEST] = attribute_removals(problems, set(views) - set(manifest["patient_id"]), MANIFEST)
    result.folder_counts = [{"folder": str(root), "manifest": MANIFEST, "images": images,
                             "label_lines": len(table), "label_0": int((table["label"] == 0).sum()),
                             "label_1": int((table["label"] == 1).sum()), "usable": 2 * len(manifest),
                             "usable_0": 2 * int((manifest["label"] == 0).sum()),
                             "usable_1": 2 * int((manifest["label"] == 1).sum())}]
    result.problems = problems
    result.seconds = time.perf_counter() - start
    result.write()
    return result


def _read_labels(path: Path, problems: list[Problem]) -> tuple[pd.DataFrame, str]:
    """The labels table (one row per id, label 0/1); bad, repeated and conflicting rows become problems."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ConfigError(path, "no such labels file") from None
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise ConfigError(path, f"not a readable CSV file ({error})") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    id_column = next((c for c in ID_COLUMNS if c in raw.columns), None)
    if id_column is None or "label" not in raw.columns:
        raise ConfigError(path, f"needs an id column ({', '.join(ID_COLUMNS)}) and a label column; "
                                f"has {', '.join(raw.columns)}")
    keep, seen, conflicting = [], {}, set()
    for i, row in raw.iterrows():
        pid, text = row[id_column].strip(), row["label"].strip()
        where = f"{path.name} line {i + 2}"
        if not pid or text not in ("0", "1"):
            problems.append(Problem(MANIFEST, str(path), str(path), pid, "bad label line",
                                    f"{where}: id {pid!r}, label {text!r} (label must be 0 or 1)"))
            continue
        if pid in seen:
            same = seen[pid] == text
            problems.append(Problem(MANIFEST, str(path), str(path), pid,
                                    "repeated label line" if same else "conflicting label lines",
                                    f"{where}: id {pid} again, label {text} (first: {seen[pid]})"))
            if not same:
                conflicting.add(pid)
            continue
        seen[pid] = text
        keep.append(i)
    table = raw.loc[keep].copy()
    table[id_column] = table[id_column].str.strip()
    table = table[~table[id_column].isin(conflicting)]
    table["label"] = table["label"].astype(int)
    return table.reset_index(drop=True), id_column


def _pair(pid: str, views: dict[str, list[Path]], labelled: dict, problems: list[Problem]) -> dict | None:
    """The manifest row of one id, or None after recording why it cannot be imported."""
    failed = False
    for view in ("anterior", "posterior"):
        files = views.get(view, [])
        if len(files) > 1:
            for file in files:
                problems.append(Problem(MANIFEST, str(file.parent), str(file), pid, "duplicate id",
                                        f"{len(files)} {view} images for id {pid}: "
                                        + ", ".join(str(f) for f in files)))
            failed = True
    present = {view: files[0] for view, files in views.items() if len(files) == 1}
    for have, missing in (("anterior", "posterior"), ("posterior", "anterior")):
        if have in present and missing not in views:
            problems.append(Problem(MANIFEST, str(present[have].parent), str(present[have]), pid,
                                    "missing partner view", f"no {missing} image of id {pid}"))
            failed = True
    for view, file in present.items():
        result = probe_image(file) if file.suffix.lower() != ".npy" else _npy_size(file)
        if isinstance(result, str):
            problems.append(Problem(MANIFEST, str(file.parent), str(file), pid, "unreadable image", result))
            failed = True
            continue
        try:
            check_whole_body(np.empty((result[1], result[0]), np.uint8), file, view)
        except BoneScanError as error:
            problems.append(Problem(MANIFEST, str(file.parent), str(file), pid, "not a usable view", error.reason))
            failed = True
    if pid not in labelled:
        for file in present.values():
            problems.append(Problem(MANIFEST, str(file.parent), str(file), pid, "image without label",
                                    f"id {pid} is not in the labels file"))
        failed = True
    if failed:
        return None
    return {"case_id": pid, "patient_id": pid, "anterior": str(present["anterior"]),
            "posterior": str(present["posterior"])}


def _npy_size(path: Path) -> tuple[int, int] | str:
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        return f"cannot be read ({error})"
    return (array.shape[-1], array.shape[-2]) if array.ndim >= 2 else f"holds an array of shape {array.shape}"
