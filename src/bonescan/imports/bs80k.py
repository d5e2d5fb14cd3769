"""`import_bs80k`: a BS-80K-style folder tree -> manifests of whole-body and region-crop pairs, counts, problems.

For each view folder of the layout (`bonescan.imports.layout`): the images (ids from file names), the label file
(`<file name><TAB>0|1` per line), then every image that is labelled, unique and decodable is kept, and checked by
the whole-body rule (whole-body folders) or the crop rule (region folders). An anterior and a posterior image of
the same id make a pair; a pair is abnormal when either view is. Whole-body pairs link their VOC XML files
(checked by `bonescan.io.voc.read_voc` against the image's size) and count their lesion boxes.

Writes to OUT: `manifest.csv` (whole-body pairs), `regions/<region>.csv` (one per region pair, e.g. chestR),
`counts.csv` (per folder: images, label lines, labels 0 / 1, usable), `problems.csv` and `summary.json`
(`bonescan.imports.report`). Manifest paths are relative to the manifest's folder, the VOC columns included.
Demographics are not part of BS-80K, so the manifests have none (unknown; see `bonescan.cohort`).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import AnnotationError, BoneScanError, ConfigError
from ..io.checks import check_whole_body
from ..io.voc import read_voc
from ..crops import check_region_crop
from ..study import VIEWS
from .layout import Layout
from .probe import probe_many
from .report import ImportResult, Problem, attribute_removals

WHOLE_BODY = "wholeBody"


@dataclass
class FolderScan:
    """One view folder: its usable images (id -> file), their labels and sizes, and counts for the summary."""

    folder: str
    present: bool
    files: dict[str, Path] = field(default_factory=dict)  # every image of a unique id
    labels: dict[str, int] = field(default_factory=dict)
    usable: dict[str, Path] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    counts: dict = field(default_factory=dict)


def import_bs80k(root: str | Path, out: str | Path, layout: Layout | None = None, workers: int | None = None,
                 progress=None) -> ImportResult:
    """Import a BS-80K-style tree under `root` into manifests in `out` (see the module's description)."""
    start = time.perf_counter()
    root, out = Path(root), Path(out)
    layout = layout or Layout()
    if not root.is_dir():
        raise ConfigError(root, "no such folder")
    say = progress or (lambda text: None)
    pairs = {WHOLE_BODY: layout.whole_body, **layout.regions}
    problems: list[Problem] = []
    scans: dict[str, FolderScan] = {}
    for manifest, views in pairs.items():
        for view in VIEWS:
            scans[views[view]] = _list_folder(root, views[view], manifest, layout, problems)
    if not any(scan.present for scan in scans.values()):
        raise ConfigError(root, f"none of the {layout.name} folders is there (e.g. {layout.whole_body['anterior']}/)")
    say(f"listed {sum(len(s.files) for s in scans.values())} images in {len(scans)} folders")
    _probe(scans, pairs, layout, problems, workers)
    say("checked every image")

    result = ImportResult(out)
    from ..cohort import write_manifest

    for manifest, views in pairs.items():
        ant, post = scans[views["anterior"]], scans[views["posterior"]]
        if not (ant.present and post.present):
            continue
        table = _pair_table(manifest, ant, post, problems)
        if manifest == WHOLE_BODY:
            table = _link_annotations(table, root, layout, ant, post, out, problems)
            target = out / "manifest.csv"
        else:
            table.insert(0, "case_id", [f"{pid}-{manifest}" for pid in table["patient_id"]])
            table["region"] = manifest
            target = out / "regions" / f"{manifest}.csv"
        table["source"] = layout.name
        write_manifest(table, target)
        result.manifests[manifest] = target
        result.rows[manifest] = len(table)
        removed_ids = (set(ant.files) | set(post.files)) - set(table["patient_id"])
        result.removed[manifest] = attribute_removals(problems, removed_ids, manifest)
    result.folder_counts = [scan.counts for scan in scans.values()]
    result.problems = problems
    result.seconds = time.perf_counter() - start
    result.write()
    return result


def file_id(name: str, numeric: bool) -> str:
    """The id a file name stands for: its stem, without leading zeros when ids are numbers."""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return str(int(stem)) if numeric and stem.isdigit() else stem


# ----------------------------------------------------------------------------------------------------------------
# One folder: images, label lines


def _list_folder(root: Path, folder: str, manifest: str, layout: Layout, problems: list[Problem]) -> FolderScan:
    path = root / folder
    scan = FolderScan(folder, path.is_dir())
    scan.counts = {"folder": folder, "manifest": manifest, "images": 0, "label_lines": 0, "label_0": 0,
                   "label_1": 0, "usable": 0, "usable_0": 0, "usable_1": 0}
    if not scan.present:
        problems.append(Problem(manifest, folder, str(path), "", "missing folder", "no such folder"))
        return scan
    suffixes = tuple(s.lower() for s in layout.image_suffixes)
    by_id: dict[str, list[Path]] = defaultdict(list)
    label_names = {Path(pattern.format(folder=folder)).name for pattern in layout.label_files}
    with os.scandir(path) as entries:
        for entry in entries:
            if not entry.is_file():
                continue
            if entry.name.lower().endswith(suffixes):
                by_id[file_id(entry.name, layout.numeric_ids)].append(Path(entry.path))
            elif entry.name not in label_names and not entry.name.startswith("."):
                problems.append(Problem(manifest, folder, entry.path, "", "unexpected file",
                                        f"not an image ({', '.join(layout.image_suffixes)}) nor the label file"))
    scan.counts["images"] = sum(len(v) for v in by_id.values())
    for pid, files in sorted(by_id.items()):
        if len(files) == 1:
            scan.files[pid] = files[0]
            continue
        names = ", ".join(sorted(f.name for f in files))
        for file in files:
            problems.append(Problem(manifest, folder, str(file), pid, "duplicate id",
                                    f"files {names} all stand for id {pid}"))
    duplicated = {pid for pid, files in by_id.items() if len(files) > 1}
    conflicting = _read_labels(root, scan, manifest, layout, duplicated, problems)
    for pid, file in sorted(scan.files.items()):
        if pid not in scan.labels and pid not in conflicting:
            reason = (f"not named in {scan.counts['label_file']}" if scan.counts.get("label_file")
                      else "the folder has no label file")
            problems.append(Problem(manifest, folder, str(file), pid, "image without label", reason))
    return scan


def _read_labels(root: Path, scan: FolderScan, manifest: str, layout: Layout, duplicated: set[str],
                 problems: list[Problem]) -> set[str]:
    """Fill scan.labels from the folder's label file; returns the ids whose label lines conflict."""
    candidates = [root / pattern.format(folder=scan.folder) for pattern in layout.label_files]
    label_file = next((c for c in candidates if c.is_file()), None)
    if label_file is None:
        looked = ", ".join(str(c.relative_to(root)) for c in candidates)
        problems.append(Problem(manifest, scan.folder, str(root / scan.folder), "", "no label file",
                                f"looked for {looked}"))
        return set()
    scan.counts["label_file"] = str(label_file)
    seen: dict[str, tuple[int, int]] = {}  # id -> (label, line number)
    conflicting: set[str] = set()
    lines = label_file.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        scan.counts["label_lines"] += 1
        fields_ = line.split("\t") if "\t" in line else line.split()
        where = f"{label_file.name} line {number}"
        if len(fields_) != 2 or fields_[1].strip() not in ("0", "1"):
            problems.append(Problem(manifest, scan.folder, str(label_file), "", "bad label line",
                                    f"{where}: {line.strip()!r} is not '<file name><TAB>0|1'"))
            continue
        name, label = fields_[0].strip(), int(fields_[1])
        pid = file_id(Path(name).name, layout.numeric_ids)
        scan.counts[f"label_{label}"] += 1
        if pid not in scan.files and pid not in duplicated:
            problems.append(Problem(manifest, scan.folder, str(root / scan.folder / name), pid,
                                    "label line without image", f"{where} names {name}, which is not in the folder"))
            continue
        if pid in seen:
            previous, first_line = seen[pid]
            if previous == label:
                problems.append(Problem(manifest, scan.folder, str(label_file), pid, "repeated label line",
                                        f"{where} repeats line {first_line} ({name}: {label})"))
            elif pid not in conflicting:
                conflicting.add(pid)
                problems.append(Problem(manifest, scan.folder, str(scan.files.get(pid, name)), pid,
                                        "conflicting label lines",
                                        f"{label_file.name} lines {first_line} and {number} give {previous} and {label}"))
            continue
        seen[pid] = (label, number)
    scan.labels = {pid: label for pid, (label, _) in seen.items() if pid not in conflicting and pid in scan.files}
    return conflicting


# ----------------------------------------------------------------------------------------------------------------
# Every labelled image: decodable, and of a usable shape


def _probe(scans: dict[str, FolderScan], pairs: dict[str, dict], layout: Layout, problems: list[Problem],
           workers: int | None) -> None:
    region_of = {views[v]: (m, v) for m, views in pairs.items() for v in VIEWS}
    todo = [(folder, pid, scan.files[pid]) for folder, scan in scans.items() for pid in sorted(scan.labels)]
    files = [file for _, _, file in todo]
    workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
    if workers > 1 and len(files) > 2000:
        chunks = [files[i:i + 1000] for i in range(0, len(files), 1000)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = [r for chunk in pool.map(probe_many, chunks) for r in chunk]
    else:
        results = probe_many(files)
    expected = tuple(layout.image_size)
    for (folder, pid, file), result in zip(todo, results):
        scan, (manifest, view) = scans[folder], region_of[folder]
        if isinstance(result, str):
            problems.append(Problem(manifest, folder, str(file), pid, "unreadable image", result))
            continue
        width, height = result
        try:
            shape_only = np.empty((height, width), np.uint8)  # the geometry rules look at the shape alone
            if manifest == WHOLE_BODY:
                check_whole_body(shape_only, file, view)
            else:
                check_region_crop(shape_only, file, view, manifest)
        except BoneScanError as error:
            problems.append(Problem(manifest, folder, str(file), pid, "not a usable view", error.reason))
            continue
        if manifest == WHOLE_BODY and (width, height) != expected:
            problems.append(Problem(manifest, folder, str(file), pid, "unexpected image size",
                                    f"{width} x {height} (width x height), the layout says {expected[0]} x "
                                    f"{expected[1]}; kept, as it passes the whole-body rule"))
        scan.usable[pid] = file
        scan.sizes[pid] = (width, height)
        label = scan.labels[pid]
        scan.counts["usable"] += 1
        scan.counts[f"usable_{label}"] += 1


# ----------------------------------------------------------------------------------------------------------------
# Pairs and annotations


def _pair_table(manifest: str, ant: FolderScan, post: FolderScan, problems: list[Problem]) -> pd.DataFrame:
    rows = []
    for pid in sorted(set(ant.files) | set(post.files), key=_id_order):
        a, p = ant.usable.get(pid), post.usable.get(pid)
        if a is not None and p is not None:
            la, lp = ant.labels[pid], post.labels[pid]
            rows.append({"patient_id": pid, "anterior": str(a), "posterior": str(p), "label": max(la, lp),
                         "label_anterior": la, "label_posterior": lp})
            continue
        for have, missing in ((ant, post), (post, ant)):
            if pid in have.usable and pid not in missing.files:
                problems.append(Problem(manifest, have.folder, str(have.usable[pid]), pid, "missing partner view",
                                        f"no image of id {pid} in {missing.folder}/"))
    columns = ["patient_id", "anterior", "posterior", "label", "label_anterior", "label_posterior"]
    table = pd.DataFrame(rows, columns=columns)
    if manifest == WHOLE_BODY:
        table.insert(0, "case_id", table["patient_id"])
    return table


def _id_order(pid: str) -> tuple:
    return (0, int(pid), "") if pid.isdigit() else (1, 0, pid)


def _link_annotations(table: pd.DataFrame, root: Path, layout: Layout, ant: FolderScan, post: FolderScan,
                      out: Path, problems: list[Problem]) -> pd.DataFrame:
    """voc_anterior / voc_posterior (relative to `out`) and nidus counts; problems for missing or bad XML."""
    allowed = set(layout.box_names) if layout.box_names is not None else None
    lesions = set(layout.lesion_names)
    for view, scan in (("anterior", ant), ("posterior", post)):
        folder = root / layout.annotations[view]
        xml_stems = {file_id(p.name, layout.numeric_ids): p for p in folder.glob("*.xml")} if folder.is_dir() else {}
        links, nidi = [], []
        for pid, label in zip(table["patient_id"], table[f"label_{view}"]):
            image = scan.usable[pid]
            xml = xml_stems.get(pid)
            if xml is None:
                problems.append(Problem(WHOLE_BODY, layout.annotations[view], str(folder / f"{image.stem}.xml"),
                                        pid, "no annotation file", f"no VOC file for {image.name}"))
                links.append("")
                nidi.append(pd.NA)
                continue
            try:
                annotation = read_voc(xml, image_size=scan.sizes[pid], allowed=allowed)
            except AnnotationError as error:
                problems.append(Problem(WHOLE_BODY, layout.annotations[view], str(xml), pid, "annotation unusable",
                                        error.reason))
                links.append("")
                nidi.append(pd.NA)
                continue
            count = sum(box.name in lesions for box in annotation.boxes)
            if bool(count) != bool(label):
                problems.append(Problem(WHOLE_BODY, layout.annotations[view], str(xml), pid,
                                        "label disagrees with boxes",
                                        f"label {label} but {count} lesion box(es) ({', '.join(sorted(lesions))})"))
            links.append(os.path.relpath(xml.resolve(), out.resolve()))
            nidi.append(count)
        for pid, xml in sorted(xml_stems.items()):
            if pid not in scan.files:
                problems.append(Problem(WHOLE_BODY, layout.annotations[view], str(xml), pid,
                                        "annotation without image", f"no image of id {pid} in {scan.folder}/"))
        table[f"voc_{view}"] = links
        table[f"nidus_{view}"] = pd.array(nidi, dtype="Int64")
    return table

