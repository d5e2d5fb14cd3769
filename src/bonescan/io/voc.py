"""Pascal VOC XML box annotations, as distributed with public bone-scan sets (BS-80K: one XML per view image).

`read_voc(path)` returns the image size, file name and every box, validated at once: a file that does not parse,
a missing size, boxes with min >= max or outside the image, an image size other than the one expected, or object
names outside an allowed set all go into one AnnotationError that lists every problem of that file.

Coordinates stay as VOC writes them (pixels, 1-based, inclusive: xmin >= 1, xmax <= width); `VocBox.pixel_slices`
converts to 0-based half-open array slices. What a box *means* (lesion, physiological hotspot) is not decided
here: that mapping belongs to the consumer (lesion truth, dataset import), which passes its names in `allowed`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

from ..errors import AnnotationError


@dataclass(frozen=True)
class VocBox:
    """One annotated object: its name and corners in VOC pixel coordinates (1-based, inclusive)."""

    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float

    def pixel_slices(self) -> tuple[slice, slice]:
        """(rows, cols) slices of a 0-based array covering the box."""
        return (slice(int(round(self.ymin)) - 1, int(round(self.ymax))),
                slice(int(round(self.xmin)) - 1, int(round(self.xmax))))


@dataclass(frozen=True)
class VocAnnotation:
    """Everything one VOC file says about its image."""

    path: Path
    filename: str
    width: int
    height: int
    boxes: tuple[VocBox, ...]


def read_voc(path: str | Path, image_size: tuple[int, int] | None = None,
             allowed: Collection[str] | None = None) -> VocAnnotation:
    """Read and validate one VOC XML file; `image_size` is (width, height) of the image it must describe."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise AnnotationError(path, f"not a readable Pascal VOC XML file ({exc})") from None
    problems: list[str] = []
    width, height = _int(root, "size/width", problems), _int(root, "size/height", problems)
    if image_size is not None and width and height and (width, height) != tuple(image_size):
        problems.append(f"annotated image size {width} x {height} differs from the image's "
                        f"{image_size[0]} x {image_size[1]} (width x height)")
    boxes = []
    for n, obj in enumerate(root.findall("object"), start=1):
        box = _box(obj, n, width, height, allowed, problems)
        if box is not None:
            boxes.append(box)
    if problems:
        raise AnnotationError(path, "; ".join(problems))
    return VocAnnotation(path, (root.findtext("filename") or "").strip(), width, height, tuple(boxes))


def _box(obj: ET.Element, n: int, width: int, height: int, allowed: Collection[str] | None,
         problems: list[str]) -> VocBox | None:
    name = (obj.findtext("name") or "").strip()
    where = f"object {n} ({name or 'no name'})"
    if not name:
        problems.append(f"{where}: missing <name>")
    elif allowed is not None and name not in allowed:
        problems.append(f"{where}: unknown name {name!r}; known: {', '.join(sorted(allowed))}")
    corners = [_float(obj, f"bndbox/{tag}", problems, where) for tag in ("xmin", "ymin", "xmax", "ymax")]
    if any(c is None for c in corners):
        return None
    xmin, ymin, xmax, ymax = corners
    if xmin >= xmax or ymin >= ymax:
        problems.append(f"{where}: empty box (xmin {xmin:g}, xmax {xmax:g}, ymin {ymin:g}, ymax {ymax:g})")
        return None
    if width and height and (xmin < 1 or ymin < 1 or xmax > width or ymax > height):
        problems.append(f"{where}: box ({xmin:g}, {ymin:g})-({xmax:g}, {ymax:g}) lies outside the "
                        f"{width} x {height} image")
        return None
    return VocBox(name, xmin, ymin, xmax, ymax)


def _int(root: ET.Element, tag: str, problems: list[str]) -> int:
    value = _float(root, tag, problems, "image")
    if value is None:
        return 0
    if value <= 0 or value != int(value):
        problems.append(f"image: <{tag}> must be a positive whole number, got {value:g}")
        return 0
    return int(value)


def _float(element: ET.Element, tag: str, problems: list[str], where: str) -> float | None:
    text = element.findtext(tag)
    if text is None or not text.strip():
        problems.append(f"{where}: missing <{tag}>")
        return None
    try:
        return float(text)
    except ValueError:
        problems.append(f"{where}: <{tag}> is not a number ({text.strip()!r})")
        return None
