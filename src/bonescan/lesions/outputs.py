"""Per-study lesion results on disk: what `bonescan predict --lesions RUN` writes beside its predictions.

Layout of the lesion output folder (the --out file's folder unless given):
    hotspots.csv            one row per hotspot: case_id, then the `Hotspot` fields (box and centroid split into
                            columns)
    lesions/<name>.json     `StudyLesions.to_json()`: hotspots, number of malignant ones, BSI and BSI per region
    lesions/<name>.npz      `regions` uint8 [2, H, W] (skeletal-region labels) and `hotspots` uint16 [2, H, W]
                            (pixel value = hotspot number), both views as stored (posterior seen from behind)
    lesions/<name>.png      both views with numbered hotspot contours (red: malignant, blue: other), a palette PNG
<name> is the case_id when studies come from a manifest, else the study id, as for heat maps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..fileio import write_npz, write_text_atomic, write_together
from .hotspots import StudyLesions

if TYPE_CHECKING:
    from PIL import Image

HOTSPOT_COLUMNS = ["case_id", "number", "view", "row0", "col0", "row1", "col1", "centroid_row", "centroid_col",
                   "area_mm2", "region", "malignancy", "uptake_ratio", "malignant", "uid"]
LESIONS_DIR = "lesions"


@dataclass
class LesionOutputs:
    """Writes each study's lesion files as it is predicted, and hotspots.csv at the end."""

    folder: Path
    rows: list[dict] = field(default_factory=list)
    # keep each study's hotspot rows for hotspots.csv; a DICOM node never finishes, and keeps none
    table: bool = True

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)

    def write_study(self, name: str, lesions: StudyLesions, numbers: np.ndarray, anterior: np.ndarray,
                    posterior: np.ndarray, title: str = "", overlay: Image.Image | None = None) -> Path:
        """Write lesions/<name>.json, .npz and .png (`overlay` when the caller has rendered it, `render_lesions`);
        remember the study's hotspot rows. Returns the JSON path."""
        path, record = self.write_files(name, lesions, numbers, anterior, posterior, title, overlay)
        self.remember(record)
        return path

    def write_files(self, name: str, lesions: StudyLesions, numbers: np.ndarray, anterior: np.ndarray,
                    posterior: np.ndarray, title: str = "", overlay: Image.Image | None = None
                    ) -> tuple[Path, dict]:
        """`write_study` without remembering the rows: safe from several threads at once (each study has its own
        files). Returns the JSON path and the record, for `remember` in the order of the studies."""
        from ..dicom_out import safe_file_stem
        from ..heatmap import save_png

        stem = safe_file_stem(name)
        folder = self.folder / LESIONS_DIR
        record = {"case_id": name, **lesions.to_json()}
        if overlay is None:
            overlay = render_lesions(anterior, posterior, lesions, numbers, title or name)
        target = folder / f"{stem}.json"
        maps = {"regions": lesions.regions.astype(np.uint8), "hotspots": numbers.astype(np.uint16)}
        # all three or none: a study whose label maps could not be written (a full disk) keeps no JSON either
        write_together(
            (target, lambda tmp: tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")),
            # zlib level 3: these label maps took 1.6 ms against 3.7 per study at numpy's 6, 15 against 7 kB
            (folder / f"{stem}.npz", lambda tmp: write_npz(tmp, maps, level=3)),
            (folder / f"{stem}.png", lambda tmp: save_png(tmp, overlay)))
        return target, record

    def remember(self, record: dict) -> None:
        """Keep a written study's hotspot rows for hotspots.csv."""
        if self.table:
            self.rows += hotspot_rows(record)

    def finish(self) -> Path | None:
        """Write hotspots.csv (header only when no study had a hotspot); None without the table."""
        return _write_hotspots(self.folder, self.rows) if self.table else None


def hotspot_rows(record: dict) -> list[dict]:
    """The hotspots.csv rows of one study's lesion JSON record."""
    threshold = record["malignancy_threshold"]
    return [{"case_id": record["case_id"], "number": h["number"], "view": h["view"], "row0": h["box"][0],
             "col0": h["box"][1], "row1": h["box"][2], "col1": h["box"][3], "centroid_row": h["centroid"][0],
             "centroid_col": h["centroid"][1], "area_mm2": h["area_mm2"], "region": h["region"],
             "malignancy": h["malignancy"], "uptake_ratio": h["uptake_ratio"],
             "malignant": h["malignancy"] >= threshold, "uid": h["uid"]} for h in record["hotspots"]]


def merge_hotspots(lesion_files: list[str | Path]) -> Path:
    """Rewrite hotspots.csv from the studies' lesion JSON files, in the given order (all in one lesions/ folder).

    A prediction job sharded over processes (`predict_sharded`) writes each study's files from the rank that
    predicted it; rank 0 then makes the one hotspots.csv of the whole job from them.
    """
    paths = [Path(p) for p in lesion_files]
    rows = [row for path in paths for row in hotspot_rows(json.loads(path.read_text(encoding="utf-8")))]
    return _write_hotspots(paths[0].parent.parent, rows)


def _write_hotspots(folder: Path, rows: list[dict]) -> Path:
    return write_text_atomic(folder / "hotspots.csv", pd.DataFrame(rows, columns=HOTSPOT_COLUMNS).to_csv(index=False))


# The overlay's palette: a grey ramp from black (0) to white (_WHITE) for the counts and text, then matplotlib's
# tab:red and tab:blue (as in the other figures) for outlines and numbers. One byte per pixel: Pillow writes its PNG
# in 2.8 ms against 17-25 ms for the same image in RGB (1144 x 572), and about half the size (`heatmap.write_png`).
_BLACK, _WHITE, _RED, _BLUE = 0, 253, 254, 255
_TITLE_GREY = round(105 * _WHITE / 255)
OVERLAY_PALETTE = [round(level * 255 / _WHITE) for level in range(_WHITE + 1) for _ in range(3)] + [
    214, 39, 40, 31, 119, 180]
_MARGIN, _GAP, _TOP, _BOTTOM = 20, 20, 30, 90  # pixels around the two views


def _contours(numbers: np.ndarray, by_number: dict, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(malignant, other) masks of every hotspot's outline: its pixels next to another label.

    Each hotspot's pixels are compared with their eight neighbours (edge pixels repeated outward, as a 3 x 3 grey
    erosion and dilation see them) inside its own box, one pixel wider: 0.5 ms per study against 1.8 over the whole
    view, and 11 with one erosion per hotspot.
    """
    from scipy import ndimage

    malignant_edge, other_edge = np.zeros(numbers.shape, bool), np.zeros(numbers.shape, bool)
    for number, box in enumerate(ndimage.find_objects(numbers), start=1):
        if box is None:
            continue
        window = tuple(slice(max(side.start - 1, 0), side.stop + 1) for side in box)
        block = numbers[window]
        rows, cols = block.shape
        padded = np.pad(block, 1, mode="edge")
        differs = np.zeros(block.shape, bool)
        for dr in range(3):
            for dc in range(3):
                if dr != 1 or dc != 1:
                    differs |= padded[dr:dr + rows, dc:dc + cols] != block
        hotspot = by_number.get(number)
        edges = malignant_edge if hotspot is not None and hotspot.malignancy >= threshold else other_edge
        edges[window] |= (block == number) & differs
    return malignant_edge, other_edge


def render_lesions(anterior: np.ndarray, posterior: np.ndarray, lesions: StudyLesions, numbers: np.ndarray,
                   title: str) -> Image.Image:
    """Both views (counts inverted, as read) at one image pixel per scan pixel, numbered hotspot outlines and a
    BSI caption, as a palette ("P") image: `OVERLAY_PALETTE` (`.convert("RGB")` gives the colours). Drawn with
    Pillow: a matplotlib figure of the same took 0.3 s per study."""
    from PIL import Image, ImageDraw, ImageFont

    rows, cols = anterior.shape
    width, height = 2 * cols + 2 * _MARGIN + _GAP, rows + _TOP + _BOTTOM
    canvas = np.full((height, width), _WHITE, np.uint8)
    by_number = {h.number: h for h in lesions.hotspots}
    lefts = [_MARGIN + index * (cols + _GAP) for index in range(2)]
    for index, counts in enumerate((anterior, posterior)):
        counts = np.asarray(counts, np.float32)
        # the grey scale's white: the 99.5th percentile of every other row and column, a display window (0.2 ms per
        # view against 0.9 over every pixel; one partition, as preprocessing finds it, is slower still on counts
        # of a few dozen distinct values)
        ceiling = float(np.percentile(counts[::2, ::2], 99.5)) or float(counts.max()) or 1.0
        view = canvas[_TOP:_TOP + rows, lefts[index]:lefts[index] + cols]
        view[:] = ((1 - np.clip(counts / ceiling, 0, 1)) * _WHITE + 0.5).astype(np.uint8)
        malignant, other = _contours(numbers[index], by_number, lesions.threshold)
        view[malignant], view[other] = _RED, _BLUE
    image = Image.fromarray(canvas, mode="P")
    image.putpalette(OVERLAY_PALETTE)
    draw = ImageDraw.Draw(image)
    small, normal = ImageFont.load_default(size=10), ImageFont.load_default(size=13)  # Pillow's own FreeType font

    def text(xy, words: str, colour: int, font, anchor: str) -> None:
        # Smooth edges blend palette indices, which is right only along the grey ramp: grey text is smoothed
        # (on white or grey), coloured text is drawn without smoothing.
        draw.fontmode = "L" if colour <= _WHITE else "1"
        draw.text(xy, words, fill=colour, font=font, anchor=anchor)

    for index, (name, sides) in enumerate((("Anterior", ("R", "L")), ("Posterior", ("L", "R")))):
        left = lefts[index]
        text((left + cols / 2, _TOP - 6), name, _BLACK, normal, "ms")
        text((left + 3, _TOP + 3), sides[0], _BLUE, normal, "la")
        text((left + cols - 3, _TOP + 3), sides[1], _BLUE, normal, "ra")
        view_numbers = numbers[index]
        for number in np.unique(view_numbers[view_numbers > 0]):
            hotspot = by_number[int(number)]
            colour = _RED if hotspot.malignancy >= lesions.threshold else _BLUE
            text((left + hotspot.box[3] + 2, _TOP + hotspot.box[0]), str(hotspot.number), colour, small, "la")
    text((width / 2, _TOP + rows + 35), lesion_caption(lesions), _BLACK, normal, "mm")
    text((width / 2, height - 12), title, _TITLE_GREY, small, "mm")
    return image


def lesion_caption(lesions: StudyLesions) -> str:
    """The overlay's caption: hotspots, malignant ones and the lesions they make, BSI; or the superscan pattern."""
    if lesions.superscan:  # dozens of hotspots over diffuse uptake: the count is not the finding
        return f"Superscan pattern (diffuse uptake): lesions not countable;  BSI {lesions.bsi:.2f} %"

    def counted(n: int, noun: str) -> str:
        return f"{n} {noun}" + ("" if n == 1 else "s")

    lesion_count = f" in {counted(lesions.n_malignant_lesions, 'lesion')}" if lesions.n_malignant else ""
    return (f"{counted(len(lesions.hotspots), 'hotspot')}, {lesions.n_malignant} malignant (red: malignancy >= "
            f"{lesions.threshold:.2f}){lesion_count};  BSI {lesions.bsi:.2f} %")
