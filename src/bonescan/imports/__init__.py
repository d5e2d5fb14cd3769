"""Public bone-scan sets as they are distributed -> bonescan manifests, with every inconsistency listed.

One module per source format: `bs80k` (BS-80K's folders of JPEGs, label files and VOC XML, and its region crops),
`pairs` (IICS-UNA and any folder of `<id>_ant` / `<id>_post` images with a labels CSV). `layout` describes where a
set keeps its files; `report` collects counts and problems; `probe` checks images quickly.
"""

from .bs80k import import_bs80k
from .layout import Layout, load_layout
from .pairs import import_pairs
from .report import ImportResult, Problem

__all__ = ["ImportResult", "Layout", "Problem", "import_bs80k", "import_pairs", "load_layout"]
