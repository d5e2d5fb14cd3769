"""read_study: one file, or an (anterior, posterior) pair of files, into a checked Study."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from ..errors import UnreadableInputError, ViewError
from ..crops import check_region_crop
from ..study import Study, StudyMeta
from .checks import check_counts, check_whole_body
from .dicom import ANTERIOR, POSTERIOR, DicomContent, read_dicom, views_or_refuse
from .images import read_image, view_from_name
from .sniff import FileKind, sniff
from .sources import StudySource

StudyInput = Union[str, Path, Sequence[Union[str, Path]], StudySource]


@dataclass
class _OneView:
    """One file holding one view, with what the file itself says about which view it is."""

    path: Path
    image: np.ndarray
    view: str | None
    rule: str | None  # how `view` was found: a DICOM rule, or "file name" for image files
    is_dicom: bool
    spacing: tuple[float, float] | None = None
    meta: StudyMeta = field(default_factory=StudyMeta)
    warnings: list[str] = field(default_factory=list)


def read_study(source: StudyInput, region: str | None = None) -> Study:
    """Read a study from a file, an [anterior, posterior] pair of files, or a StudySource from find_studies.

    `region` (e.g. "chestR"): the views are crops of that body region, checked by the crop rule of
    `bonescan.crops` instead of the whole-body rule, and their shapes may differ.
    """
    files, ordered = _files_of(source)
    if len(files) == 1:
        return _read_one_file(files[0], region)
    return _read_pair(files[0], files[1], ordered, region)


def _files_of(source: StudyInput) -> tuple[list[Path], bool]:
    if isinstance(source, StudySource):
        if source.error is not None:
            raise source.error
        return list(source.files), source.ordered
    if isinstance(source, (str, Path)):
        return [Path(source)], True
    files = [Path(item) for item in source]
    if len(files) not in (1, 2):
        reason = f"a study is one file or two (anterior, posterior), not {len(files)}"
        raise ViewError(", ".join(map(str, files)), reason)
    return files, True


def _kind(path: Path) -> FileKind:
    if path.is_dir():
        raise UnreadableInputError(path, "is a folder; give a file, or use find_studies / `bonescan inspect`")
    if not path.is_file():
        raise UnreadableInputError(path, "no such file")
    if path.stat().st_size == 0:
        raise UnreadableInputError(path, "empty file")
    kind = sniff(path)
    if kind is None:
        raise UnreadableInputError(
            path, "not a DICOM or image file (PNG, TIFF, JPEG, .npy): its first bytes match none (or it is truncated)"
        )
    return kind


def _read_one_file(path: Path, region: str | None = None) -> Study:
    kind = _kind(path)
    content = read_dicom(path) if kind == "dicom" else None
    if content is not None and len(content.frames) == 2:
        views = views_or_refuse(content.decision, path)
        images = dict(zip(views, content.frames))
        warnings = content.warnings + content.decision.warnings
        warnings += _check_views(images, str(path), region)
        return Study(
            source=str(path),
            anterior=images[ANTERIOR],
            posterior=images[POSTERIOR],
            pixel_spacing=content.pixel_spacing,
            meta=content.meta,
            view_rule=content.decision.rule or "unknown",
            warnings=warnings,
        )
    view = _one_view(path, kind, content)
    name = view.view or ANTERIOR
    note = f"{name} (decided by {view.rule})" if view.rule else "no view information, taken as anterior"
    warnings = view.warnings + [f"single view: {note}"]
    warnings += _check_views({name: view.image}, str(path), region)
    return Study(
        source=str(path),
        anterior=view.image if name == ANTERIOR else None,
        posterior=view.image if name == POSTERIOR else None,
        pixel_spacing=view.spacing,
        meta=view.meta,
        view_rule="single-view",
        warnings=warnings,
    )


def _load_one_view(path: Path) -> _OneView:
    kind = _kind(path)
    return _one_view(path, kind, read_dicom(path) if kind == "dicom" else None)


def _one_view(path: Path, kind: FileKind, content: DicomContent | None) -> _OneView:
    """The single view of an image file, or of a DICOM file already read into `content`."""
    if content is None:
        image, warnings = read_image(path, kind)
        parsed = view_from_name(path)
        view, rule = (parsed[1], "file name") if parsed else (None, None)
        return _OneView(path, image, view, rule, False, warnings=warnings)
    if len(content.frames) != 1:
        raise ViewError(path, "holds both views as two frames; read it on its own, not as one file of a pair")
    decision = content.decision
    view = decision.views[0] if decision.rule else None
    return _OneView(
        path, content.frames[0], view, decision.rule, True, content.pixel_spacing, content.meta,
        content.warnings + decision.warnings,
    )


def _read_pair(first: Path, second: Path, ordered: bool, region: str | None = None) -> Study:
    a, b = _load_one_view(first), _load_one_view(second)
    source = f"{first} + {second}"
    warnings: list[str] = []
    if ordered:
        anterior, posterior = a, b
        for given, expected in ((a, ANTERIOR), (b, POSTERIOR)):
            if given.view is not None and given.view != expected:
                name, rule = given.path.name, given.rule
                warnings.append(f"{name} was given as the {expected} view but its {rule} says {given.view}")
        rule = "file-pair" if a.is_dicom and b.is_dicom else "image-pair"
    else:
        if a.view is None or b.view is None or a.view == b.view:
            said = ", ".join(f"{v.path.name}: {v.view or 'no view information'}" for v in (a, b))
            raise ViewError(source, f"cannot tell which of the two files is the anterior view ({said})")
        anterior, posterior = (a, b) if a.view == ANTERIOR else (b, a)
        rules = {anterior.rule, posterior.rule}
        rule = "file-pair:" + "+".join(sorted(r for r in rules if r))
    for view in (anterior, posterior):
        warnings += [f"{view.path.name}: {text}" for text in view.warnings]
    warnings += _check_views({ANTERIOR: anterior.image, POSTERIOR: posterior.image}, source, region)
    spacing = anterior.spacing or posterior.spacing
    if anterior.spacing and posterior.spacing and not np.allclose(anterior.spacing, posterior.spacing):
        warnings.append(f"the views' pixel spacings differ: {anterior.spacing} vs {posterior.spacing}")
    return Study(
        source=source,
        anterior=anterior.image,
        posterior=posterior.image,
        pixel_spacing=spacing,
        meta=_pair_meta(anterior.meta, posterior.meta, warnings),
        view_rule=rule,
        warnings=warnings,
    )


def _check_views(images: dict[str, np.ndarray], source: str, region: str | None = None) -> list[str]:
    """Geometry of each view, equal shapes (whole-body views), then counts; returns warnings, raises refusals."""
    for name, image in images.items():
        if region is None:
            check_whole_body(image, source, name)
        else:
            check_region_crop(image, source, name, region)
    shapes = {name: image.shape for name, image in images.items()}
    if region is None and len(set(shapes.values())) > 1:
        described = ", ".join(f"{name} {s[0]} x {s[1]}" for name, s in shapes.items())
        raise ViewError(source, f"the views have different shapes ({described}); both views must share one matrix")
    warnings = []
    for name, image in images.items():
        warnings += check_counts(image, source, name)
    return warnings


def _pair_meta(anterior: StudyMeta, posterior: StudyMeta, warnings: list[str]) -> StudyMeta:
    if anterior.study_uid and posterior.study_uid and anterior.study_uid != posterior.study_uid:
        warnings.append("the two files belong to different studies (Study Instance UIDs differ)")
    merged = {name: getattr(anterior, name) or getattr(posterior, name) for name in StudyMeta.__dataclass_fields__}
    merged["sop_instance_uids"] = anterior.sop_instance_uids + posterior.sop_instance_uids
    return replace(StudyMeta(), **merged)
