"""Real annotations in: Pascal VOC boxes (hotspots) and COCO masks (skeletal regions) -> per-study lesion truth.

A manifest names a study's annotation files in three optional columns (paths relative to the manifest's folder):
- `boxes_anterior`, `boxes_posterior`: one Pascal VOC XML file per view image, as BS-80K distributes them. Giving
  either marks the study as box-annotated; a view whose cell is blank then has no findings. VOC files do not link
  the two views, so a lesion boxed in both views becomes two findings.
- `regions_coco`: a COCO JSON file (one per study, or one for the whole set) whose category names are skeletal
  regions; polygons and RLE are decoded with pycocotools. A study with region masks but no box files gets
  region-only truth (`has_findings = False`): its hotspots were not annotated, so no lesion loss is taken on it. The study's two images are its entries whose file name
  (without extension) is that of the view's own image file, or `<case_id>_anterior` / `<case_id>_posterior`.

`bonescan annotations convert` reads them once, validates them against the study's images, and writes one truth
file per study (`bonescan.lesions.truth`) plus a copy of the manifest with a `truth` column, which is what
training and evaluation read. Converting once, rather than parsing XML and JSON in every epoch, means a bad file is
found before training starts, with one error per file listing all its problems, and the training data code reads
one format whatever the source (phantom truth, VOC, COCO). Validation: VOC through `bonescan.io.voc.read_voc`
(size against the image, boxes inside the image, names known to the mapping, file name against the image's);
COCO: an image entry per view, its size against the view, categories known to the mapping, polygons inside the
image. A study whose files fail gets no truth file and the batch goes on; a study without annotations gets an
empty `truth` cell: it stays in classification and is left out of the lesion loss.

**Class mapping.** What a box name or COCO category means is data, not code: a JSON file
`{"boxes": {"nidus": "metastasis", ...}, "regions": {"Skull": "skull", ...}}` (`--mapping`). Box names map to
the truth categories (metastasis, benign, artifact, physiological); the key `"*"` maps every other name, and
without it an unknown name is an error. Region categories map to `bonescan.lesions.regions` names; a category
already named like a region (`ribs_left`, `Ribs (left)`: case and punctuation aside) needs no entry. The default, `BS80K_MAPPING`,
follows BS-80K: `nidus` (the suspected lesion) is a metastasis and every other object name a physiological hotspot.

**How box-only data trains (box supervision).** A box says where a hotspot is, not its outline. The truth keeps the
box as the instance (`boxes = True`); `box_supervision` turns it into a weak mask: the box shrunk by `band` pixels
is hotspot foreground, a band of `band` pixels either side of the box edge is ignored (weight 0), the rest of the
image is background. The malignancy of a hotspot is learned from its box's category as for outlined findings.
Without region maps (`has_regions = False`) the region loss is skipped for that study and BSI truth is undefined.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..errors import AnnotationError, BoneScanError, ConfigError
from ..fileio import atomic_path
from ..io.voc import VocAnnotation, read_voc
from ..study import VIEWS
from .regions import BY_LABEL, BY_NAME, REGIONS
from .truth import CATEGORIES, LesionTruth, save_truth

BOX_COLUMNS = ("boxes_anterior", "boxes_posterior")
COCO_COLUMN = "regions_coco"
ANY = "*"
BS80K_MAPPING = {"boxes": {"nidus": "metastasis", ANY: "physiological"}, "regions": {}}


@dataclass(frozen=True)
class ClassMapping:
    """Box names -> truth categories, COCO category names -> region names."""

    boxes: dict[str, str]
    regions: dict[str, str] = field(default_factory=dict)
    source: str = "BS-80K default"

    def __post_init__(self):
        problems = [f"box name {name!r} maps to {c!r}, not one of {', '.join(CATEGORIES)}"
                    for name, c in self.boxes.items() if c not in CATEGORIES]
        problems += [f"region category {name!r} maps to {r!r}, not a region name" for name, r in self.regions.items()
                     if r not in BY_NAME]
        if problems:
            raise ConfigError(self.source, "; ".join(problems))

    def box_names(self) -> set[str] | None:
        """Names a VOC file may use (None: any, through the "*" entry)."""
        return None if ANY in self.boxes else set(self.boxes)

    def category(self, name: str) -> str:
        """Truth category of a box name."""
        return self.boxes.get(name, self.boxes.get(ANY, ""))

    def region(self, category_name: str) -> str | None:
        """Region name of a COCO category, None when unknown."""
        if category_name in self.regions:
            return self.regions[category_name]
        key = _normalise(category_name)  # 'Ribs (left)', 'ribs-left' and 'ribs_left' name the same region
        return next((r.name for r in REGIONS if _normalise(r.name) == key), None)


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def load_mapping(path: str | Path | None) -> ClassMapping:
    """The class mapping of a JSON file, or the BS-80K default when `path` is None."""
    if path is None:
        return ClassMapping(dict(BS80K_MAPPING["boxes"]), dict(BS80K_MAPPING["regions"]))
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(path, f"not a readable JSON class mapping ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("boxes", {}), dict) \
            or not isinstance(data.get("regions", {}), dict) or set(data) - {"boxes", "regions"}:
        raise ConfigError(path, 'expected {"boxes": {name: category}, "regions": {category: region}}')
    return ClassMapping({str(k): str(v) for k, v in data.get("boxes", {}).items()},
                        {str(k): str(v) for k, v in data.get("regions", {}).items()}, str(path))


# ----------------------------------------------------------------------------------------------------------------
# One study


@dataclass
class StudyAnnotations:
    """The annotation files of one study (None where not given) and its view images' file names."""

    case_id: str
    boxes: tuple[Path | None, Path | None] = (None, None)
    coco: Path | None = None
    image_names: tuple[str | None, str | None] = (None, None)  # file name of each view's own image, if any

    @property
    def annotated(self) -> bool:
        return self.coco is not None or any(p is not None for p in self.boxes)


def truth_from_annotations(study: StudyAnnotations, shape: tuple[int, int], mapping: ClassMapping,
                           coco_cache: dict | None = None) -> LesionTruth:
    """LesionTruth of one study from its VOC and COCO files; views of `shape` (rows, columns).

    Raises one AnnotationError naming every file that failed, each with all of its problems.
    """
    errors: list[AnnotationError] = []
    regions = np.zeros((2, *shape), np.uint8)
    has_regions = False
    if study.coco is not None:
        try:
            regions = coco_regions(study.coco, study, shape, mapping, coco_cache)
            has_regions = True
        except AnnotationError as error:
            errors.append(error)
    annotations: list[VocAnnotation | None] = [None, None]
    for view, path in enumerate(study.boxes):
        if path is None:
            continue
        try:
            annotations[view] = read_voc(path, image_size=(shape[1], shape[0]), allowed=mapping.box_names())
            _check_voc_filename(annotations[view], study.image_names[view])
        except AnnotationError as error:
            errors.append(error)
    if errors:
        raise AnnotationError(study.case_id, " | ".join(str(e) for e in errors))
    instances = np.zeros((2, *shape), np.uint16)
    category, kind, region = [], [], []
    for view, annotation in enumerate(annotations):
        boxes = annotation.boxes if annotation is not None else ()
        # larger boxes first: where boxes overlap the later one wins, so a small box inside a large one survives
        for box in sorted(boxes, key=lambda b: -(b.xmax - b.xmin) * (b.ymax - b.ymin)):
            number = len(category) + 1
            instances[view][box.pixel_slices()] = number
            category.append(mapping.category(box.name))
            kind.append(box.name)
            region.append(_majority_region(regions[view][box.pixel_slices()]) if has_regions else "")
    boxed = study.boxes != (None, None)
    return LesionTruth(regions, instances, category, kind, region, has_regions=has_regions, boxes=boxed,
                       has_findings=boxed)


def _check_voc_filename(annotation: VocAnnotation, image_name: str | None) -> None:
    if image_name and annotation.filename and Path(annotation.filename).stem != Path(image_name).stem:
        raise AnnotationError(annotation.path, f"describes image {annotation.filename!r}, but the study's view "
                                               f"image is {image_name!r}")


def _majority_region(labels: np.ndarray) -> str:
    labels = labels[labels > 0]
    return BY_LABEL[int(np.bincount(labels).argmax())].name if labels.size else ""


def _load_coco(path: Path, cache: dict | None) -> dict:
    key = (str(path), path.stat().st_mtime_ns) if path.exists() else None
    if cache is not None and key in cache:
        return cache[key]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AnnotationError(path, f"not a readable COCO JSON file ({error})") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise AnnotationError(path, f"missing list(s): {', '.join(missing)}")
    if cache is not None:
        cache[key] = data
    return data


def coco_regions(path: str | Path, study: StudyAnnotations, shape: tuple[int, int], mapping: ClassMapping,
                 cache: dict | None = None) -> np.ndarray:
    """[2, H, W] uint8 region labels of one study from a COCO file; one AnnotationError lists every problem."""
    from pycocotools import mask as coco_mask

    path = Path(path)
    data = _load_coco(path, cache)
    problems: list[str] = []
    categories = {c.get("id"): str(c.get("name", "")) for c in data["categories"] if isinstance(c, dict)}
    by_stem: dict[str, dict] = {}
    for image in data["images"]:
        if isinstance(image, dict):
            by_stem.setdefault(Path(str(image.get("file_name", ""))).stem, image)
    height, width = shape
    regions = np.zeros((2, height, width), np.uint8)
    for view, name in enumerate(VIEWS):
        wanted = [Path(n).stem for n in (study.image_names[view],) if n] + [f"{study.case_id}_{name}"]
        image = next((by_stem[s] for s in wanted if s in by_stem), None)
        if image is None:
            problems.append(f"no image entry for the {name} view (file name {' or '.join(wanted)})")
            continue
        where = f"image {image.get('id')} ({image.get('file_name')})"
        if (image.get("width"), image.get("height")) != (width, height):
            problems.append(f"{where}: size {image.get('width')} x {image.get('height')} differs from the "
                            f"{name} view's {width} x {height} (width x height)")
            continue
        for ann in (a for a in data["annotations"] if isinstance(a, dict) and a.get("image_id") == image.get("id")):
            label = _annotation_label(ann, categories, mapping, where, problems)
            segmentation = ann.get("segmentation")
            with warnings.catch_warnings():  # pycocotools' RLE objects predate numpy 2's __array__(copy=) protocol
                warnings.simplefilter("ignore", DeprecationWarning)
                mask = _decode(coco_mask, segmentation, height, width, f"{where} annotation {ann.get('id')}",
                               problems)
            if label and mask is not None:
                regions[view][mask] = label
    if problems:
        raise AnnotationError(path, "; ".join(problems))
    return regions


def _annotation_label(ann: dict, categories: dict, mapping: ClassMapping, where: str, problems: list[str]) -> int:
    if ann.get("category_id") not in categories:
        problems.append(f"{where} annotation {ann.get('id')}: category id {ann.get('category_id')} not listed")
        return 0
    name = categories[ann["category_id"]]
    region = mapping.region(name)
    if region is None:
        problems.append(f"{where} annotation {ann.get('id')}: unknown category {name!r} (add it to the mapping's "
                        "\"regions\" or name it as a skeletal region)")
        return 0
    return BY_NAME[region].label


def _decode(coco_mask, segmentation: Any, height: int, width: int, where: str, problems: list[str]):
    if isinstance(segmentation, list):  # polygons [[x0, y0, x1, y1, ...], ...] in pixel-corner coordinates
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if len(polygons) != len(segmentation) or not polygons:
            problems.append(f"{where}: polygons need at least 3 (x, y) points")
            return None
        points = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons])
        if (points < 0).any() or (points[:, 0] > width).any() or (points[:, 1] > height).any():
            problems.append(f"{where}: polygon points outside the {width} x {height} image")
            return None
        rles = coco_mask.frPyObjects(polygons, height, width)
        return coco_mask.decode(coco_mask.merge(rles)).astype(bool)
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            problems.append(f"{where}: RLE size {segmentation['size']} differs from the image's [{height}, {width}]")
            return None
        rle = segmentation
        if isinstance(rle["counts"], list):  # uncompressed RLE
            rle = coco_mask.frPyObjects(rle, height, width)
        return coco_mask.decode(rle).astype(bool)
    problems.append(f"{where}: segmentation is neither polygons nor RLE")
    return None


def box_supervision(truth: LesionTruth, band: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Weak hotspot targets from box truth: (instance id of each box core [2, H, W] uint16, ignore mask bool).

    Core: the box shrunk by `band` pixels on each side (at least its centre pixel); ignored: pixels within `band`
    of a box edge, inside or out, that are in no core; everything else is background. Outlined (non-box) truth
    passes through unchanged with nothing ignored.
    """
    if not truth.boxes:
        return truth.instances.copy(), np.zeros(truth.instances.shape, bool)
    core = np.zeros_like(truth.instances)
    ignore = np.zeros(truth.instances.shape, bool)
    height, width = truth.instances.shape[1:]
    for view in range(truth.instances.shape[0]):
        for number in np.unique(truth.instances[view]):
            if number == 0:
                continue
            rows, cols = np.nonzero(truth.instances[view] == number)
            r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            ignore[view, max(r0 - band, 0):r1 + band, max(c0 - band, 0):c1 + band] = True
            rc0, rc1 = min(r0 + band, (r0 + r1 - 1) // 2), max(r1 - band, (r0 + r1 + 1) // 2)
            cc0, cc1 = min(c0 + band, (c0 + c1 - 1) // 2), max(c1 - band, (c0 + c1 + 1) // 2)
            core[view, rc0:rc1, cc0:cc1] = number
    ignore &= core == 0
    return core, ignore


# ----------------------------------------------------------------------------------------------------------------
# A manifest


@dataclass
class ConversionReport:
    """What `convert_annotations` wrote and what it refused."""

    manifest: Path
    written: list[str] = field(default_factory=list)
    without_annotations: list[str] = field(default_factory=list)
    failures: list[BoneScanError] = field(default_factory=list)


def _cell(row: pd.Series, column: str) -> str:
    value = row.get(column, "")
    return value.strip() if isinstance(value, str) else ""


def convert_annotations(manifest: str | Path, out_dir: str | Path, mapping: ClassMapping | None = None,
                        read_shape: Callable[[Any], tuple[int, int]] | None = None,
                        progress: Callable[[str], None] | None = None) -> ConversionReport:
    """Write OUT/truth/<case_id>.npz for every annotated study of `manifest` and OUT/manifest.csv with a truth column.

    Path columns of the new manifest are rewritten relative to OUT, so it can live anywhere. Studies that fail keep
    an empty truth cell and are listed in the report; the batch goes on.
    """
    manifest, out_dir = Path(manifest), Path(out_dir)
    mapping = mapping or load_mapping(None)
    read_shape = read_shape or _view_shape
    try:
        raw = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as error:
        raise ConfigError(manifest, f"cannot read the manifest ({error})") from None
    if "case_id" not in raw.columns:
        raise ConfigError(manifest, "has no case_id column")
    duplicated = sorted(set(raw["case_id"][raw["case_id"].str.strip().duplicated()]))
    if duplicated:
        raise ConfigError(manifest, f"duplicate case_id (one truth file each): {', '.join(duplicated[:5])}")
    if not {*BOX_COLUMNS, COCO_COLUMN} & set(raw.columns):
        raise ConfigError(manifest, f"names no annotations: add {', '.join(BOX_COLUMNS)} and/or {COCO_COLUMN}")
    base = manifest.resolve().parent
    report = ConversionReport(out_dir / "manifest.csv")
    truth_cells: list[str | None] = []
    cache: dict = {}
    for _, row in raw.iterrows():
        case_id = row["case_id"].strip()
        study = _study_annotations(row, base)
        if not study.annotated:
            report.without_annotations.append(case_id)
            truth_cells.append(None)
            continue
        try:
            truth = truth_from_annotations(study, read_shape(_image_source(row, base)), mapping, cache)
            target = save_truth(truth, out_dir / "truth" / f"{case_id}.npz")
            truth_cells.append(os.path.relpath(target, out_dir))
            report.written.append(case_id)
        except BoneScanError as error:
            report.failures.append(error)
            truth_cells.append("")
        if progress is not None:
            progress(case_id)
    table = raw.copy()
    for column in ("path", "anterior", "posterior", *BOX_COLUMNS, COCO_COLUMN, "truth"):
        if column in table.columns:
            table[column] = [_rebase(v, base, out_dir) for v in table[column]]
    # a study without annotations keeps the truth it had (e.g. phantom truth); a refused one has none
    kept = table["truth"] if "truth" in table.columns else pd.Series([""] * len(table))
    table["truth"] = [new if new is not None else old for new, old in zip(truth_cells, kept)]
    with atomic_path(report.manifest) as tmp:
        table.to_csv(tmp, index=False)
    return report


def _study_annotations(row: pd.Series, base: Path) -> StudyAnnotations:
    def resolve(text: str) -> Path | None:
        return (base / text) if text else None

    image_names = (Path(_cell(row, "anterior")).name or None, Path(_cell(row, "posterior")).name or None)
    return StudyAnnotations(row["case_id"].strip(), (resolve(_cell(row, BOX_COLUMNS[0])),
                                                     resolve(_cell(row, BOX_COLUMNS[1]))),
                            resolve(_cell(row, COCO_COLUMN)), image_names)


def _image_source(row: pd.Series, base: Path) -> Any:
    if _cell(row, "path"):
        return str(base / _cell(row, "path"))
    if _cell(row, "anterior") and _cell(row, "posterior"):
        return [str(base / _cell(row, "anterior")), str(base / _cell(row, "posterior"))]
    raise AnnotationError(row["case_id"], "no image path (path, or anterior + posterior) to check the "
                                          "annotations against")


def _view_shape(source: Any) -> tuple[int, int]:
    from ..io import read_study

    anterior, _posterior = read_study(source).both_views()
    return tuple(anterior.shape)


def _rebase(value: str, base: Path, out_dir: Path) -> str:
    if not value or os.path.isabs(value):
        return value
    return os.path.relpath(base / value, out_dir.resolve())
