"""Duplicate and leakage checks over a manifest's images: exact copies, near duplicates, identical views.

Public sets carry duplicates that leak between a train and a test split: BS-80K's elbowLPOST crops repeat
elbowRPOST byte for byte for almost every patient, a few patients appear twice under two ids, and a derived set
(LIBS-160K) has most duplicate groups crossing its train/test split. `check_manifest` finds them; `split_groups`
gives `bonescan.cohort.split_manifest` the groups to keep in one split.

What is compared:
- exact: BLAKE2b-128 of each file's bytes, across every image of every row (any region, view or id);
- near: a perceptual hash of each view, 256 bits: the 16 x 16 lowest frequencies of the 2-D DCT of a 64 x 64 grey
  thumbnail (box filter), each bit set when the coefficient exceeds their median (pHash, as `imagehash.phash`
  with hash_size=16, in numpy). Two studies of the same kind (whole-body, or one region) are near duplicates when
  the Hamming distances of their anterior and of their posterior hashes sum to at most the threshold.

Thresholds (of 512 bits), measured on synthetic BS-80K-shaped trees (60 patients, `bonescan.synth.bs80k`):
whole-body studies re-encoded at another JPEG quality differ by at most 6 bits, the closest two different
patients by 102, so NEAR_THRESHOLD = 32 leaves a wide margin on both sides. Region crops are small and alike
from patient to patient (different patients' knee crops came as close as 43 bits, re-encoded crops as far as 58),
so crops get CROP_NEAR_THRESHOLD = 8: only nearly identical crops are called near duplicates; a duplicated
patient's crops are still grouped through the patient id they share with the whole-body study (check the
whole-body manifest together with the region manifests).

Groups: rows are joined when they share a `patient_id` (or `case_id` without one), hold an exactly identical
image, or are near duplicates; a split that keeps each group in one part cannot leak through them.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import BoneScanError
from .fileio import atomic_path

NEAR_THRESHOLD = 32
CROP_NEAR_THRESHOLD = 8
THUMBNAIL = 64
HASH_SIDE = 16
WHOLE_BODY = "wholeBody"
VIEW_COLUMNS = ("anterior", "posterior")


@dataclass
class ImageHash:
    """The hashes of one view of one manifest row (or why it could not be read)."""

    row: int
    view: str
    file: str
    digest: str = ""
    phash: np.ndarray | None = None  # 4 x uint64 (256 bits)
    error: str = ""


@dataclass
class LeakageReport:
    """Findings of a duplicate check: pairs found, the group of every row, and groups crossing splits."""

    pairs: pd.DataFrame  # kind, relation, distance, case_a, view_a, file_a, case_b, view_b, file_b
    groups: list[int]  # one group number per manifest row
    crossing: pd.DataFrame  # group, cases, splits: groups whose rows lie in more than one split
    unreadable: list[ImageHash] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0
    hash_seconds: float = 0.0

    def summary_lines(self) -> list[str]:
        """Counts of each finding, for printing."""
        lines = [f"checked {self.images} images in {self.seconds:.1f} s (hashing {self.hash_seconds:.1f} s)"]
        if self.pairs.empty:
            lines.append("no exact or near duplicates")
        for (kind, relation), n in self.pairs.groupby(["kind", "relation"]).size().items():
            lines.append(f"  {kind} duplicates, {relation}: {n} pairs")
        multi = pd.Series(self.groups).value_counts()
        lines.append(f"  {int((multi > 1).sum())} groups of rows to keep in one split (largest: {int(multi.max())} rows)"
                     if len(multi) else "  no rows")
        if len(self.crossing):
            lines.append(f"  LEAKAGE: {len(self.crossing)} groups have rows in more than one split")
        for item in self.unreadable:
            lines.append(f"  not hashed: {item.file}: {item.error}")
        return lines

    def write(self, target: str | Path) -> Path:
        """The pairs as CSV (atomically), with the groups crossing splits beside it as <target>_crossing.csv."""
        target = Path(target)
        with atomic_path(target) as tmp:
            self.pairs.to_csv(tmp, index=False)
        if len(self.crossing):
            with atomic_path(target.with_name(f"{target.stem}_crossing.csv")) as tmp:
                self.crossing.to_csv(tmp, index=False)
        return target


def check_manifest(manifest: pd.DataFrame, near_threshold: int = NEAR_THRESHOLD,
                   crop_near_threshold: int = CROP_NEAR_THRESHOLD, workers: int | None = None) -> LeakageReport:
    """Hash every view of every row and report exact and near duplicates, the row groups, and split leakage."""
    start = time.perf_counter()
    table = manifest.reset_index(drop=True)
    items = _items(table)
    hashed = _hash_all(items, workers)
    hash_seconds = time.perf_counter() - start
    cases = table["case_id"].astype(str).tolist()
    patients = _patients(table)
    kinds = _kinds(table)
    pairs = _exact_pairs(hashed, cases, patients, kinds)
    pairs += _near_pairs(hashed, table, kinds, cases, patients, near_threshold, crop_near_threshold)
    frame = pd.DataFrame([p[:9] for p in pairs], columns=["kind", "relation", "distance", "case_a", "view_a",
                                                          "file_a", "case_b", "view_b", "file_b"])
    groups = _groups(len(table), patients, pairs)
    crossing = _crossing(table, groups)
    return LeakageReport(frame, groups, crossing, [h for h in hashed if h.error], len(hashed),
                         time.perf_counter() - start, hash_seconds)


def split_groups(report: LeakageReport) -> list[int]:
    """The group of each manifest row, for `bonescan.cohort.split_manifest(groups=...)`."""
    return list(report.groups)


# ----------------------------------------------------------------------------------------------------------------
# Hashing


def _items(table: pd.DataFrame) -> list[ImageHash]:
    items = []
    for row, record in enumerate(table.itertuples(index=False)):
        values = record._asdict()
        path = values.get("path")
        if isinstance(path, str) and path:
            items += [ImageHash(row, view, path) for view in VIEW_COLUMNS]  # one file holding both views
            continue
        for view in VIEW_COLUMNS:
            file = values.get(view)
            if isinstance(file, str) and file:
                items.append(ImageHash(row, view, file))
    return items


def _hash_all(items: list[ImageHash], workers: int | None) -> list[ImageHash]:
    workers = workers if workers is not None else min(os.cpu_count() or 1, 4)
    jobs = [(item.file, item.view) for item in items]
    if workers > 1 and len(jobs) > 1000:
        chunks = [jobs[i:i + 500] for i in range(0, len(jobs), 500)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = [r for chunk in pool.map(_hash_chunk, chunks) for r in chunk]
    else:
        results = _hash_chunk(jobs)
    for item, (digest, phash, error) in zip(items, results):
        item.digest, item.phash, item.error = digest, phash, error
    return items


def _hash_chunk(jobs: list[tuple[str, str]]) -> list[tuple[str, np.ndarray | None, str]]:
    out = []
    for file, view in jobs:
        try:
            data = Path(file).read_bytes()
            out.append((hashlib.blake2b(data, digest_size=16).hexdigest(), phash(_thumbnail(file, view)), ""))
        except (OSError, ValueError, BoneScanError) as error:
            out.append(("", None, f"{type(error).__name__}: {error}"))
    return out


def _thumbnail(file: str, view: str) -> np.ndarray:
    """THUMBNAIL x THUMBNAIL grey thumbnail (box filter) of the view held by `file`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            if image.format == "JPEG":  # decode at the smallest DCT scale that still covers the thumbnail
                image.draft("L", (THUMBNAIL, THUMBNAIL))
            grey = image.convert("F") if image.mode not in ("F",) else image
            return np.asarray(grey.resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX), np.float64)
    except UnidentifiedImageError:
        pass  # DICOM, .npy: read as a study
    from .io.read import read_study  # imported here: DICOM reading pulls in pydicom

    study = read_study(file) if not file.endswith(".npy") else None
    if study is None:
        array = np.load(file).astype(np.float64)
    else:
        array = getattr(study, view) if getattr(study, view) is not None else study.anterior
    grey = Image.fromarray(np.asarray(array, np.float32), mode="F")
    return np.asarray(grey.resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX), np.float64)


def phash(thumbnail: np.ndarray) -> np.ndarray:
    """256-bit DCT perceptual hash (16 x 16 lowest frequencies above their median) as 4 uint64 words."""
    from scipy.fft import dctn

    low = dctn(thumbnail, norm="ortho")[:HASH_SIDE, :HASH_SIDE]
    bits = (low > np.median(low)).ravel()
    return np.packbits(bits).view(np.uint64).copy()


# ----------------------------------------------------------------------------------------------------------------
# Pairs and groups


def _patients(table: pd.DataFrame) -> list[str]:
    column = "patient_id" if "patient_id" in table.columns else "case_id"
    return [str(v) if not pd.isna(v) and str(v) else str(c) for v, c in zip(table[column], table["case_id"])]


def _kinds(table: pd.DataFrame) -> list[str]:
    if "region" not in table.columns:
        return [WHOLE_BODY] * len(table)
    return [str(v) if isinstance(v, str) and v else WHOLE_BODY for v in table["region"]]


def _relation(row_a: int, row_b: int, patients: list[str], kinds: list[str]) -> str:
    if row_a == row_b:
        return "both views of one study"
    if patients[row_a] != patients[row_b]:
        return "different ids"
    return "same patient, other region" if kinds[row_a] != kinds[row_b] else "same patient, other study"


def _exact_pairs(hashed: list[ImageHash], cases: list[str], patients: list[str], kinds: list[str]) -> list[tuple]:
    by_digest: dict[str, list[ImageHash]] = defaultdict(list)
    for item in hashed:
        if item.digest:
            by_digest[item.digest].append(item)
    pairs = []
    for members in by_digest.values():
        distinct = {(m.row, m.view): m for m in members}  # a two-view file is one file, not a duplicate
        members = list(distinct.values())
        if len({m.file for m in members}) < 2 and len({m.row for m in members}) < 2:
            continue
        first = members[0]
        for other in members[1:]:  # each member against the first: a group of k is k - 1 pairs
            pairs.append(("exact", _relation(first.row, other.row, patients, kinds), 0, cases[first.row], first.view,
                          first.file, cases[other.row], other.view, other.file, first.row, other.row))
    return pairs


def _near_pairs(hashed: list[ImageHash], table: pd.DataFrame, kinds: list[str], cases: list[str],
                patients: list[str], near_threshold: int, crop_near_threshold: int) -> list[tuple]:
    """Rows of one kind whose two views' hash distances sum to at most the kind's threshold."""
    views: dict[int, dict[str, ImageHash]] = defaultdict(dict)
    for item in hashed:
        if item.phash is not None:
            views[item.row][item.view] = item
    by_kind: dict[str, list[int]] = defaultdict(list)
    for row, found in views.items():
        if len(found) == 2:
            by_kind[kinds[row]].append(row)
    pairs = []
    for kind, rows in by_kind.items():
        threshold = near_threshold if kind == WHOLE_BODY else crop_near_threshold
        if threshold < 0 or len(rows) < 2:
            continue
        codes = np.stack([np.concatenate([views[r][v].phash for v in VIEW_COLUMNS]) for r in rows])  # n x 8 words
        digests = [tuple(views[r][v].digest for v in VIEW_COLUMNS) for r in rows]
        for i, j, distance in _close_pairs(codes, threshold):
            a, b = rows[i], rows[j]
            if digests[i] == digests[j]:
                continue  # identical files: already reported as exact
            pairs.append(("near", _relation(a, b, patients, kinds), int(distance), cases[a], "both",
                          f"{views[a]['anterior'].file} + {views[a]['posterior'].file}", cases[b], "both",
                          f"{views[b]['anterior'].file} + {views[b]['posterior'].file}", a, b))
    return pairs


def _close_pairs(codes: np.ndarray, threshold: int, block: int = 256):
    """(i, j, distance) with i < j and Hamming distance <= threshold, over n x words uint64 codes, in blocks."""
    n = len(codes)
    for start in range(0, n, block):
        chunk = codes[start:start + block]
        distance = np.bitwise_count(chunk[:, None, :] ^ codes[None, :, :]).sum(axis=2, dtype=np.int32)
        rows, cols = np.nonzero(distance <= threshold)
        for r, c in zip(rows, cols):
            i = start + int(r)
            if i < int(c):
                yield i, int(c), int(distance[r, c])


def _groups(n: int, patients: list[str], pairs: list[tuple]) -> list[int]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def join(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first_of: dict[str, int] = {}
    for row, patient in enumerate(patients):
        join(row, first_of.setdefault(patient, row))
    for pair in pairs:  # rows of the two sides are the pair's last two fields
        join(pair[-2], pair[-1])
    roots = [find(row) for row in range(n)]
    numbers = {root: k for k, root in enumerate(dict.fromkeys(roots))}
    return [numbers[root] for root in roots]


def _crossing(table: pd.DataFrame, groups: list[int]) -> pd.DataFrame:
    columns = ["group", "cases", "splits"]
    if "split" not in table.columns:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame({"group": groups, "case_id": table["case_id"].astype(str),
                          "split": table["split"].fillna("").astype(str)})
    frame = frame[frame["split"].isin(["train", "val", "test"])]
    rows = []
    for group, part in frame.groupby("group"):
        if part["split"].nunique() > 1:
            rows.append((group, " ".join(part["case_id"]), " ".join(sorted(set(part["split"])))))
    return pd.DataFrame(rows, columns=columns)
