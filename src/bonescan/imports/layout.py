"""Where a public set keeps its images, labels and boxes: a small description, BS-80K's built in, overridable.

The description is data, not code, because public sets grow and get reorganised. A user's JSON or TOML file gives
only the keys that differ from BS-80K's default (`regions` replaces the default list as a whole):

    whole_body      {"anterior": folder, "posterior": folder}, relative to the set's root
    annotations     {"anterior": folder, "posterior": folder} of Pascal VOC XML files, one per image (<stem>.xml)
    regions         {name: {"anterior": folder, "posterior": folder}}; names as in bonescan.crops
    label_files     candidate label-file paths, "{folder}" replaced by each image folder; the first that exists
    image_suffixes  file endings of images (any case)
    image_size      [width, height] of a whole-body image (BS-80K: 256 x 1024)
    numeric_ids     ids are file numbers: "0012" and "12" are one id (so both files would be duplicates)
    lesion_names    VOC object names that mark a suspected metastasis ("nidus")
    box_names       every VOC object name allowed (null: any name)

`bonescan import bs80k --print-layout` prints the default to start from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..errors import ConfigError
from ..crops import REGIONS


def _bs80k_regions() -> dict[str, dict[str, str]]:
    return {name: {"anterior": f"{name}ANT", "posterior": f"{name}POST"} for name in REGIONS}


@dataclass(frozen=True)
class Layout:
    """The folder layout of a public bone-scan set (default: BS-80K)."""

    name: str = "BS-80K"
    whole_body: dict = field(default_factory=lambda: {"anterior": "wholeBodyANT", "posterior": "wholeBodyPOST"})
    annotations: dict = field(default_factory=lambda: {"anterior": "wholeBodyANT/ant",
                                                       "posterior": "wholeBodyPOST/post"})
    regions: dict = field(default_factory=_bs80k_regions)
    label_files: tuple = ("{folder}/{folder}.txt", "{folder}.txt")
    image_suffixes: tuple = (".jpg", ".jpeg")
    image_size: tuple = (256, 1024)
    numeric_ids: bool = True
    lesion_names: tuple = ("nidus",)
    box_names: tuple | None = None

    def __post_init__(self) -> None:
        for key in ("whole_body", "annotations"):
            if set(getattr(self, key)) != {"anterior", "posterior"}:
                raise ConfigError("layout", f"{key} must name an anterior and a posterior folder")
        for name, views in self.regions.items():
            if name not in REGIONS:
                raise ConfigError("layout", f"unknown region {name!r}; known: {', '.join(sorted(REGIONS))}")
            if set(views) != {"anterior", "posterior"}:
                raise ConfigError("layout", f"region {name} must name an anterior and a posterior folder")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigError("layout", f"image_size {self.image_size!r} must be [width, height]")

    def to_dict(self) -> dict:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def load_layout(path: str | Path | None) -> Layout:
    """BS-80K's layout, with the keys of a JSON or TOML file (if given) replacing the defaults."""
    if path is None:
        return Layout()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except FileNotFoundError:
        raise ConfigError(path, "no such layout file") from None
    except (OSError, ValueError) as error:
        raise ConfigError(path, f"not a readable JSON or TOML layout ({error})") from None
    known = {f.name for f in fields(Layout)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(path, f"unknown layout key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return Layout(**values)
    except ConfigError as error:
        raise ConfigError(path, error.reason) from None
