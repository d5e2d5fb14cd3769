"""Find the studies in files and folders: group DICOM files by study, pair image files by name.

Rules:
- Folders are walked recursively (hidden files and folders skipped). A file is considered when its first bytes
  identify DICOM, PNG, JPEG, TIFF or .npy, or its extension is one of those; other files met while walking a
  folder (reports, CSV, JSON) are skipped, while a file named explicitly is reported as a failed source.
- DICOM files are grouped by Study Instance UID. A study of one file is that file (one two-frame file, or a
  single view). A study of exactly two single-frame files is an anterior/posterior pair whose order is decided
  from each file's own view codes, view text or detector vector when it is read. Any other study (a two-frame
  file plus extra series, three views...) gives one source per file, with ids "<uid>#1", "<uid>#2", ...
- Image files are paired by name: "<id>_ant.png" with "<id>_post.png" (separator "_", "-", "." or space; view
  words ant, anterior, post, posterior, any case; extensions may differ), or "<folder>/anterior.png" with
  "<folder>/posterior.png" (id = folder name). An image without a partner is a single-view source.
- A file that cannot be opened or whose DICOM header cannot be read becomes a failed source carrying its error,
  so a batch can report it and go on.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import BoneScanError, UnreadableInputError
from .dicom import MEDIA_STORAGE_DIRECTORY, read_header
from .images import view_from_name
from .sniff import KNOWN_SUFFIXES, sniff


@dataclass(frozen=True)
class StudySource:
    """One study to read: its id and its files ((file,) or (anterior, posterior)), or why it cannot be read.

    ordered: True when `files` are known to be (anterior, posterior) in that order; False when the order must be
    decided from the files' contents (two single-view DICOM files of one study).
    """

    id: str
    files: tuple[Path, ...]
    ordered: bool = True
    error: BoneScanError | None = field(default=None, compare=False)

    @property
    def source(self) -> str:
        """The files as one string, for messages and reports."""
        return " + ".join(str(path) for path in self.files)

    @property
    def failed(self) -> bool:
        """True when the source was found unreadable while scanning."""
        return self.error is not None


def find_studies(paths: str | Path | Iterable[str | Path]) -> list[StudySource]:
    """Expand files and folders into study sources (see the module's rules); unreadable files become failed sources."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    sources: list[StudySource] = []
    dicom_groups: dict[str, list[tuple[Path, int]]] = defaultdict(list)
    images: list[Path] = []
    for path, explicit in _expand(paths, sources):
        try:
            kind = sniff(path)
        except OSError as error:
            sources.append(_failed(path, UnreadableInputError(path, f"cannot be opened ({error.strerror})")))
            continue
        if kind is None:
            if explicit or path.suffix.lower() in KNOWN_SUFFIXES:
                reason = "not a DICOM or image file (PNG, TIFF, JPEG, .npy), or truncated before its header"
                sources.append(_failed(path, UnreadableInputError(path, reason)))
        elif kind == "dicom":
            _add_dicom(path, explicit, dicom_groups, sources)
        else:
            images.append(path)
    sources += _dicom_sources(dicom_groups)
    sources += _image_sources(images)
    return sorted(_unique_ids(sources), key=lambda s: (str(s.files[0]), s.id))


def _expand(paths: Iterable[str | Path], sources: list[StudySource]) -> list[tuple[Path, bool]]:
    """(file, named explicitly) for every file under the given paths, without duplicates."""
    found: dict[Path, bool] = {}
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                hidden = any(part.startswith(".") for part in child.relative_to(path).parts)
                if child.is_file() and not hidden:
                    found.setdefault(child, False)
        elif path.is_file():
            found[path] = True
        else:
            sources.append(_failed(path, UnreadableInputError(path, "no such file or folder")))
    return list(found.items())


def _add_dicom(
    path: Path, explicit: bool, groups: dict[str, list[tuple[Path, int]]], sources: list[StudySource]
) -> None:
    try:
        header = read_header(path)
    except BoneScanError as error:
        sources.append(_failed(path, error))
        return
    if str(header.get("SOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY:
        if explicit:
            reason = "a DICOMDIR index, not an image; give the image files or their folder"
            sources.append(_failed(path, UnreadableInputError(path, reason)))
        return
    uid = str(header.get("StudyInstanceUID", "") or "").strip() or f"file:{path}"
    groups[uid].append((path, int(header.get("NumberOfFrames", 1) or 1)))


def _dicom_sources(groups: dict[str, list[tuple[Path, int]]]) -> list[StudySource]:
    sources = []
    for uid, members in groups.items():
        members.sort()
        study_id = Path(uid.removeprefix("file:")).stem if uid.startswith("file:") else uid
        if len(members) == 1:
            sources.append(StudySource(study_id, (members[0][0],)))
        elif len(members) == 2 and all(frames == 1 for _, frames in members):
            sources.append(StudySource(study_id, (members[0][0], members[1][0]), ordered=False))
        else:
            sources += [StudySource(f"{study_id}#{k}", (path,)) for k, (path, _) in enumerate(members, start=1)]
    return sources


def _image_sources(images: list[Path]) -> list[StudySource]:
    named: dict[tuple[Path, str], dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    sources = []
    for path in images:
        parsed = view_from_name(path)
        if parsed is None:
            sources.append(StudySource(path.stem, (path,)))
        else:
            case_id, view = parsed
            named[(path.parent, case_id)][view].append(path)
    for (_, case_id), views in named.items():
        anterior, posterior = views.get("anterior", []), views.get("posterior", [])
        if len(anterior) == 1 and len(posterior) == 1:
            sources.append(StudySource(case_id, (anterior[0], posterior[0])))
        else:  # unpaired or ambiguous (two anterior files): each file on its own
            sources += [StudySource(path.stem, (path,)) for path in sorted(anterior + posterior)]
    return sources


def _failed(path: Path, error: BoneScanError) -> StudySource:
    return StudySource(str(path), (path,), error=error)


def _unique_ids(sources: list[StudySource]) -> list[StudySource]:
    """Give repeated ids (same name in two folders) a "~2", "~3"... suffix so each source has its own id."""
    seen: dict[str, int] = defaultdict(int)
    unique = []
    for source in sorted(sources, key=lambda s: str(s.files[0])):
        seen[source.id] += 1
        if seen[source.id] > 1:
            source = StudySource(f"{source.id}~{seen[source.id]}", source.files, source.ordered, source.error)
        unique.append(source)
    return unique
