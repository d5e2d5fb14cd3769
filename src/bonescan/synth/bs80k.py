"""A BS-80K-shaped folder tree from synthetic studies, for tests and benchmarks of `bonescan import bs80k`.

BS-80K (Huang et al., Comput Biol Med 2022) is not redistributable, so its layout is rebuilt from synthetic
studies with known truth:

    wholeBodyANT/<id>.jpg, wholeBodyANT/wholeBodyANT.txt ("<file name>\\t0|1"), wholeBodyANT/ant/<id>.xml
    wholeBodyPOST/<id>.jpg, wholeBodyPOST/wholeBodyPOST.txt, wholeBodyPOST/post/<id>.xml
    <region><VIEW>/<id>.jpg and <region><VIEW>/<region><VIEW>.txt, e.g. chestRANT/, chestRPOST/

Views are 8-bit JPEGs 256 wide x 1024 high (counts scaled by each view's maximum, as in a DICOM-to-JPEG export).
VOC boxes: "nidus" around each metastasis (two Gaussian sigmas), the finding's kind (e.g. "injection_site") for
benign and artefactual hot spots. Crops are cut at fixed fractions of the body's extent; a crop is abnormal when a
nidus box centre falls inside it, a whole-body view when it shows any nidus. `elbow_defect` copies each
elbowRPOST crop into elbowLPOST byte for byte, and `duplicate_patients` writes that many patients a second time
under new ids (re-encoded at another JPEG quality), the two known defects of the real set.
"""

from __future__ import annotations

import io
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..crops import REGIONS
from .case import SyntheticCase, case_seed, generate_case

VIEWS = (("ANT", "anterior", "ant"), ("POST", "posterior", "post"))
# Crop boxes as (first row, last row) fractions of the body's height and (near, far) column offsets from the body's
# midline in pixels, on the patient's right side; left crops mirror them. Sized after a 1024 x 256 view.
CROP_BOXES: dict[str, tuple[float, float, int, int]] = {
    "head": (0.00, 0.13, -40, 40),
    "sho": (0.13, 0.24, 30, 100),
    "chest": (0.16, 0.40, 5, 70),
    "vertbra": (0.14, 0.56, -16, 16),
    "elbow": (0.36, 0.48, 55, 105),
    "pelvis": (0.44, 0.60, -75, 75),
    "knee": (0.70, 0.80, 5, 45),
    "ankle": (0.90, 1.00, 5, 45),
}


@dataclass
class TreeResult:
    """What was written: patient ids with their whole-body label, and ids written twice (original -> copy)."""

    root: Path
    ids: list[str]
    labels: dict[str, int]
    duplicates: dict[str, str]


def write_bs80k_tree(root: str | Path, cases: int, seed: int = 0, difficulty: str = "easy",
                     regions: Sequence[str] | None = None, workers: int = 1, elbow_defect: bool = True,
                     duplicate_patients: int = 0, first_id: int = 1) -> TreeResult:
    """Write `cases` synthetic patients as a BS-80K tree under `root` (regions: default all 13)."""
    root = Path(root)
    regions = list(REGIONS) if regions is None else list(regions)
    ids = [str(first_id + i) for i in range(cases)]
    jobs = [(root, pid, case_seed(seed, i), difficulty, regions, elbow_defect, None) for i, pid in enumerate(ids)]
    rng = np.random.default_rng(seed)
    copies = {ids[int(i)]: str(first_id + cases + k)
              for k, i in enumerate(rng.choice(cases, size=min(duplicate_patients, cases), replace=False))}
    jobs += [(root, new, case_seed(seed, ids.index(old)), difficulty, regions, elbow_defect, 75)
             for old, new in copies.items()]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_write_patient, jobs, chunksize=8))
    else:
        results = [_write_patient(job) for job in jobs]
    labels = dict(results)
    _write_label_files(root, labels, regions)
    return TreeResult(root, ids + list(copies.values()), {k: v["wholeBody"] for k, v in labels.items()}, copies)


def _write_patient(job: tuple) -> tuple[str, dict[str, int]]:
    """Write one patient's images and VOC files; returns its labels per folder stem (wholeBody, chestR...)."""
    root, pid, seed, difficulty, regions, elbow_defect, quality = job
    case = generate_case(pid, seed=seed, difficulty=difficulty)
    quality = quality or 92
    labels: dict[str, int] = {}
    views = {"ANT": _to_uint8(case.anterior), "POST": _to_uint8(case.posterior)}
    for suffix, view, sub in VIEWS:
        nidi = _boxes(case, view)
        labels[f"wholeBody{suffix}"] = int(any(name == "nidus" for name, _ in nidi))
        folder = root / f"wholeBody{suffix}"
        _save_jpeg(folder / f"{pid}.jpg", views[suffix], quality)
        _write_voc(folder / sub / f"{pid}.xml", f"{pid}.jpg", views[suffix].shape, nidi)
        top, bottom, mid = _body_extent(views[suffix])
        for name in regions:
            spec = REGIONS[name]
            r0, r1, c0, c1 = _crop_box(spec.part, spec.side, suffix, top, bottom, mid, views[suffix].shape)
            crop = views[suffix][r0:r1, c0:c1]
            if elbow_defect and name == "elbowL" and suffix == "POST":
                rr0, rr1, rc0, rc1 = _crop_box("elbow", "R", suffix, top, bottom, mid, views[suffix].shape)
                crop = views[suffix][rr0:rr1, rc0:rc1]  # the real set's elbowLPOST repeats elbowRPOST
            _save_jpeg(root / f"{name}{suffix}" / f"{pid}.jpg", crop, quality)
            inside = any(name_ == "nidus" and r0 <= (b[1] + b[3]) / 2 - 1 < r1 and c0 <= (b[0] + b[2]) / 2 - 1 < c1
                         for name_, b in nidi)
            labels[f"{name}{suffix}"] = int(inside)
    labels["wholeBody"] = max(labels["wholeBodyANT"], labels["wholeBodyPOST"])
    return pid, labels


def _to_uint8(counts: np.ndarray) -> np.ndarray:
    scale = 255.0 / max(float(counts.max()), 1.0)
    return np.clip(np.round(counts.astype(np.float32) * scale), 0, 255).astype(np.uint8)


def _save_jpeg(path: Path, image: np.ndarray, quality: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    path.write_bytes(buffer.getvalue())


def _boxes(case: SyntheticCase, view: str) -> list[tuple[str, tuple[float, float, float, float]]]:
    """(name, (xmin, ymin, xmax, ymax)) in VOC pixels (1-based, inclusive) of the findings seen in `view`."""
    rows, cols = case.anterior.shape
    out = []
    for finding in case.findings:
        if finding.view not in (view, "both"):
            continue
        row, col = finding.centre_anterior if view == "anterior" else finding.centre_posterior
        half = max(3.0, 2.0 * finding.size_mm / case.patient.pixel_spacing)
        box = (max(1.0, col - half + 1), max(1.0, row - half + 1), min(cols, col + half + 1), min(rows, row + half + 1))
        if box[0] < box[2] and box[1] < box[3]:
            out.append(("nidus" if finding.category == "metastasis" else finding.kind, tuple(round(v) for v in box)))
    return out


def _write_voc(path: Path, filename: str, shape: tuple[int, int], boxes: list) -> None:
    objects = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>" for name, b in boxes)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{shape[1]}</width>"
                    f"<height>{shape[0]}</height><depth>1</depth></size>{objects}</annotation>\n")


def _body_extent(image: np.ndarray) -> tuple[int, int, int]:
    """First and last body rows and the midline column (count-weighted centre) of a view."""
    profile = image.astype(np.float32).sum(axis=1)
    rows = np.flatnonzero(profile > 0.1 * profile.max())
    top, bottom = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, image.shape[0])
    weights = image[top:bottom].astype(np.float64).sum(axis=0)
    mid = int(round(float((weights * np.arange(image.shape[1])).sum() / max(weights.sum(), 1.0))))
    return top, bottom, mid


def _crop_box(part: str, side: str, view: str, top: int, bottom: int, mid: int,
              shape: tuple[int, int]) -> tuple[int, int, int, int]:
    f0, f1, near, far = CROP_BOXES[part]
    height = bottom - top
    r0, r1 = top + int(f0 * height), top + int(f1 * height)
    # The patient's right is on the image's left in an anterior view and on its right in a posterior one.
    toward_image_left = (side == "R") == (view == "ANT")
    if side == "":
        c0, c1 = mid + near, mid + far
    elif toward_image_left:
        c0, c1 = mid - far, mid - near
    else:
        c0, c1 = mid + near, mid + far
    c0, c1 = max(0, c0), min(shape[1], c1)
    r0, r1 = max(0, r0), min(shape[0], max(r1, r0 + 16))
    return r0, r1, c0, c1


def _write_label_files(root: Path, labels: dict[str, dict[str, int]], regions: Sequence[str]) -> None:
    folders = [f"wholeBody{s}" for s, _, _ in VIEWS] + [f"{r}{s}" for r in regions for s, _, _ in VIEWS]
    for folder in folders:
        lines = "".join(f"{pid}.jpg\t{values[folder]}\n"
                        for pid, values in sorted(labels.items(), key=lambda kv: int(kv[0])))
        path = root / folder / f"{folder}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(lines)
