"""Tell a file's format from its first bytes (the extension is only a hint)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

FileKind = Literal["dicom", "png", "jpeg", "tiff", "npy"]

IMAGE_KINDS: tuple[FileKind, ...] = ("png", "jpeg", "tiff", "npy")
# Extensions worth a look when walking a folder, even when the first bytes do not identify the file
# (a preamble-less or truncated DICOM, a corrupt image): such files are reported, not silently skipped.
KNOWN_SUFFIXES = {".dcm", ".dicom", ".ima", ".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy"}

_SIGNATURES: tuple[tuple[bytes, FileKind], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),  # BigTIFF
    (b"MM\x00+", "tiff"),
    (b"\x93NUMPY", "npy"),
)


def sniff(path: Path) -> FileKind | None:
    """Return the file's format from its signature: DICOM ("DICM" at byte 128) or an image format, else None."""
    with open(path, "rb") as handle:
        head = handle.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return kind
    return None
