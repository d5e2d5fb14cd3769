"""Receiving one instance: check it at the door, write it to disk durably, record it in the queue.

The order is what makes a success response a promise: the file is written to a temporary name, flushed to
disk (fsync) and renamed, then its queue row is committed, and only then does the caller answer success. A
kill -9 before the commit leaves at most a file without a row (ingested again at start-up, see `recover_files`)
and the sender never heard success, so it sends again.

Checked at the door, from the header alone (cheap, and a refusal tells the sender at once):
- the SOP class (NM Image Storage; Secondary Capture too when configured) and modality NM;
- Study and SOP Instance UIDs that are UIDs (they become file names);
- the matrix: at most two frames, one sample per pixel, and the whole-body geometry rule of
  `bonescan.io.checks` (>= 256 rows, rows / columns >= 2), so a 256 x 256 thyroid static is refused;
- pixel data present, and as long as the header says when it is uncompressed;
- room: an instance that would leave the store's disk with less than its reserve free is refused with Out of
  Resources, so the sender tries again later and the studies already received keep room for their results.
Anything else (a compressed stream that does not decode, counts that are all zero, views that cannot be told
apart) is found when the study is read, and the study is recorded as failed with the reason.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..io.checks import MIN_ASPECT, MIN_ROWS
from .queue import NodeQueue

log = logging.getLogger("bonescan.node")

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

# DIMSE C-STORE statuses (PS3.4 Annex B.2.3 and PS3.7 Annex C).
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class Verdict:
    """The C-STORE status to answer and why (the reason goes into the response's Error Comment)."""

    status: int
    reason: str = ""
    sop_uid: str | None = None
    study_uid: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


class Refusal(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def accepted_sop_classes(secondary_capture: bool) -> tuple[str, ...]:
    """The storage SOP classes the node negotiates."""
    return (NM_IMAGE_STORAGE, SECONDARY_CAPTURE) if secondary_capture else (NM_IMAGE_STORAGE,)


def check_header(ds: Dataset, sop_classes: tuple[str, ...]) -> tuple[str, str, str, int]:
    """(sop_class, study_uid, sop_uid, frames) of an acceptable instance, else a Refusal with status and reason."""
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class not in sop_classes:
        name = UID(sop_class).name if sop_class else "none"
        raise Refusal(SOP_CLASS_NOT_SUPPORTED, f"SOP class {name} is not accepted (NM whole-body images only)")
    study_uid, sop_uid = (str(ds.get(k, "") or "").strip() for k in ("StudyInstanceUID", "SOPInstanceUID"))
    for name, uid in (("Study Instance UID", study_uid), ("SOP Instance UID", sop_uid)):
        if not uid or len(uid) > 64 or not UID_PATTERN.match(uid):
            raise Refusal(CANNOT_UNDERSTAND, f"{name} {uid[:70]!r} is not a valid UID")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality != "NM":
        raise Refusal(DOES_NOT_MATCH_SOP_CLASS, f"modality {modality or 'missing'}; bone scans are NM")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except (AttributeError, TypeError, ValueError) as error:
        raise Refusal(CANNOT_UNDERSTAND, f"image matrix unreadable ({error})") from None
    if not 1 <= frames <= 2:
        raise Refusal(DOES_NOT_MATCH_SOP_CLASS, f"{frames} frames; a whole-body study has one or two views")
    if samples != 1:
        raise Refusal(DOES_NOT_MATCH_SOP_CLASS, "a colour image; bone scans are count images")
    if rows < MIN_ROWS or rows < MIN_ASPECT * cols:
        raise Refusal(DOES_NOT_MATCH_SOP_CLASS, f"a {rows} x {cols} image cannot be a whole-body view (needs >= "
                                                f"{MIN_ROWS} rows and rows >= {MIN_ASPECT:g} x columns)")
    if "PixelData" not in ds:
        raise Refusal(DOES_NOT_MATCH_SOP_CLASS, "no pixel data")
    syntax = UID(str(getattr(ds.get("file_meta", None) or Dataset(), "TransferSyntaxUID", "") or
                     "1.2.840.10008.1.2"))
    if not syntax.is_compressed:
        expected = rows * cols * frames * bits // 8
        if len(ds.PixelData) < expected:
            raise Refusal(CANNOT_UNDERSTAND, f"pixel data holds {len(ds.PixelData)} bytes, the header says "
                                             f"{expected}")
    return sop_class, study_uid, sop_uid, frames


def parse(raw: bytes) -> Dataset:
    """Decode an encoded instance (preamble and file meta included); Refusal when it is not understandable."""
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=True)
        ds.get("PixelData")  # decode lazily stored elements now, so damage shows here
    except Exception as error:  # noqa: BLE001 - pydicom raises many types for damaged bytes
        raise Refusal(CANNOT_UNDERSTAND, f"dataset cannot be decoded ({type(error).__name__})") from None
    return ds


def _uid_for_log(ds: Dataset | None) -> str:
    """The SOP Instance UID as far as it can be read (never any other attribute: logs carry no patient data)."""
    try:
        return repr(str(ds.get("SOPInstanceUID", "") or "?"))[:70] if ds is not None else "?"
    except Exception:  # noqa: BLE001 - a damaged element
        return "?"


def free_bytes(folder: Path) -> int:
    """Free bytes on the file system of `folder`, or of its nearest existing parent (before the first instance)."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def write_durably(target: Path, data: bytes) -> None:
    """Write to a temporary file beside `target`, fsync it, rename it onto `target`, fsync the folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class Intake:
    """Turns the bytes of one C-STORE into a stored, queued instance, or a refusal; never raises."""

    def __init__(self, queue: NodeQueue, incoming: Path, sop_classes: tuple[str, ...], reserve_bytes: int = 0):
        self.queue = queue
        self.incoming = Path(incoming)
        self.sop_classes = sop_classes
        self.reserve_bytes = reserve_bytes  # free space kept for the results of the studies already received
        self.on_stored = lambda: None  # called after each stored instance (wakes the prediction loop)

    def path_for(self, study_uid: str, sop_uid: str) -> Path:
        return self.incoming / study_uid / f"{sop_uid}.dcm"

    def accept(self, raw: bytes, calling_ae: str = "") -> Verdict:
        """Check, store and queue one encoded instance; the verdict says which status to answer."""
        ds = None
        try:
            with warnings.catch_warnings():  # pydicom warns on every odd value; the verdict says what matters
                warnings.simplefilter("ignore")
                ds = parse(raw)
                sop_class, study_uid, sop_uid, frames = check_header(ds, self.sop_classes)
        except Refusal as refusal:
            log.warning("refused instance %s from %s: %s", _uid_for_log(ds), calling_ae or "?", refusal.reason)
            return Verdict(refusal.status, refusal.reason)
        except Exception as error:  # noqa: BLE001 - whatever the bytes, the node answers and keeps serving
            log.warning("refused an instance from %s: %s", calling_ae or "?", type(error).__name__)
            return Verdict(CANNOT_UNDERSTAND, f"dataset cannot be checked ({type(error).__name__})")
        try:
            if self.queue.has_instance(sop_uid):
                log.info("instance %s of study %s received again; already held", sop_uid, study_uid)
                return Verdict(SUCCESS, "already held", sop_uid, study_uid)
            if self.reserve_bytes and free_bytes(self.incoming) - len(raw) < self.reserve_bytes:
                log.warning("refused instance %s of study %s: the store's disk would keep under %.0f MB free",
                            sop_uid, study_uid, self.reserve_bytes / 1e6)
                return Verdict(OUT_OF_RESOURCES, "store's disk nearly full; send again later", sop_uid, study_uid)
            path = self.path_for(study_uid, sop_uid)
            write_durably(path, raw)
            outcome = self.queue.add_instance(sop_uid, study_uid, sop_class, frames, path, calling_ae)
        except Exception as error:  # noqa: BLE001 - disk full, database locked: the sender will try again
            log.error("could not store instance %s of study %s: %s", sop_uid, study_uid, error)
            return Verdict(OUT_OF_RESOURCES, f"cannot store the instance ({type(error).__name__})", sop_uid, study_uid)
        self.on_stored()
        log.info("received instance %s (%d frame%s) of study %s from %s%s", sop_uid, frames, "s" * (frames > 1),
                 study_uid, calling_ae or "?", "" if outcome == "new" else f" ({outcome})")
        return Verdict(SUCCESS, outcome, sop_uid, study_uid)

    def recover_files(self) -> int:
        """Queue instance files written before a crash but never recorded; delete temporary files. Returns count."""
        recovered = 0
        if not self.incoming.is_dir():
            return 0
        for path in sorted(self.incoming.rglob("*")):
            if not path.is_file():
                continue
            if path.name.startswith("."):
                if path.name.endswith(".tmp"):
                    path.unlink(missing_ok=True)  # a write cut short: the sender was never told success
                continue
            sop_uid = path.stem
            if self.queue.has_instance(sop_uid):
                continue
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    sop_class, study_uid, sop_uid, frames = check_header(parse(path.read_bytes()), self.sop_classes)
                self.queue.add_instance(sop_uid, study_uid, sop_class, frames, path, "recovered")
                recovered += 1
            except Exception as error:  # noqa: BLE001 - a file that no longer passes is set aside, not fatal
                log.warning("set aside %s found at start-up: %s", path.name, error)
                path.rename(path.with_name(f".{path.name}.rejected"))
        return recovered
