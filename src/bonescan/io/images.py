"""Read one view from an image file: PNG (8/16-bit), TIFF, JPEG or NumPy .npy, as a float32 2-D array.

Public bone-scan datasets ship each view as an image file. Grey levels are taken as they are; 8-bit and JPEG
files get a warning because their values are display levels (and JPEG is lossy), not photon counts. A colour file
whose channels are equal is read as grey; a truly coloured one is converted to luminance with a warning.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from ..errors import UnreadableInputError
from .sniff import FileKind

# Image-file names carry the view: "<id>_ant.png", "<id>-posterior.tif", or "<id>/anterior.npy".
VIEW_SUFFIX = re.compile(r"^(?P<id>.+?)[ _.\-](?P<view>ant|anterior|post|posterior)$", re.IGNORECASE)
VIEW_ONLY = re.compile(r"^(?P<view>ant|anterior|post|posterior)$", re.IGNORECASE)


def view_from_name(path: Path) -> tuple[str, str] | None:
    """(case id, "anterior"/"posterior") from a file name following the naming rule above, else None."""
    stem = path.stem
    match = VIEW_SUFFIX.match(stem)
    if match:
        case_id, word = match.group("id"), match.group("view")
    else:
        match = VIEW_ONLY.match(stem)
        if not match:
            return None
        case_id, word = path.parent.name, match.group("view")
    return case_id, "anterior" if word.lower().startswith("ant") else "posterior"


def read_image(path: Path, kind: FileKind) -> tuple[np.ndarray, list[str]]:
    """Read one view from an image file as float32, with warnings about what its values mean."""
    if kind == "npy":
        array, warnings = _read_npy(path), []
    elif kind == "tiff":
        array, warnings = _read_tiff(path)
    else:
        array, warnings = _read_pillow(path)
    if array.ndim != 2:
        raise UnreadableInputError(path, f"holds an array of shape {array.shape}; one view per file is expected")
    if kind == "jpeg":
        warnings.append("JPEG is lossy: values are display levels, not counts")
    elif array.dtype == np.uint8:
        warnings.append("8-bit image: values are display levels, not counts")
    return array.astype(np.float32), warnings


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise UnreadableInputError(path, f"truncated or corrupt .npy file ({error})") from None
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise UnreadableInputError(path, f".npy array of type {array.dtype} is not numeric")
    return np.squeeze(array) if array.ndim > 2 else array


def _read_tiff(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        array = tifffile.imread(path)
    except Exception as error:  # tifffile raises assorted types for damaged files
        raise UnreadableInputError(path, f"truncated or corrupt TIFF file ({type(error).__name__}: {error})") from None
    return _grey(np.squeeze(array), path)


def _read_pillow(path: Path) -> tuple[np.ndarray, list[str]]:
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("P", "PA"):
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            array = np.asarray(image)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        raise UnreadableInputError(path, f"truncated or corrupt image file ({error})") from None
    return _grey(array, path)


def _grey(array: np.ndarray, path: Path) -> tuple[np.ndarray, list[str]]:
    """Single-channel image from grey, grey+alpha, RGB or RGBA data."""
    if array.ndim != 3 or array.shape[-1] not in (2, 3, 4):
        return array, []
    colour = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
    if (colour == colour[..., :1]).all():
        return colour[..., 0], []
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    luminance = (colour.astype(np.float32) @ weights).astype(np.float32)
    return luminance, [f"colour image converted to luminance ({path.name})"]
