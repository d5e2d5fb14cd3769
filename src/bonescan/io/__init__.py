"""Reading whole-body bone scans: DICOM NM files and image files into Study objects.

- `read_study(source)`: one NM DICOM file holding both views as two frames, one single-view file (readable for
  inspection; anything needing two views refuses it through Study.both_views), two DICOM files
  [anterior, posterior], or two image files (PNG 8/16-bit, TIFF, JPEG, .npy). Compressed DICOM transfer syntaxes
  (JPEG lossless, JPEG-LS, JPEG 2000, RLE) decode through pydicom's pixel handlers.
- `find_studies(paths)`: files and folders -> StudySource objects that read_study accepts (rules in `sources`).

Which frame of a DICOM file is which view: see `bonescan.io.dicom` (view codes, then view text, then the
detector vector). `Study.view_rule` records the rule: "view-code", "text", "detector-vector" for a two-frame
file; "single-view"; "file-pair" / "image-pair" for files given in (anterior, posterior) order;
"file-pair:<rule>" for two DICOM files whose order was decided from their contents.

What is refused (all BoneScanError subclasses naming the file): not a DICOM or image file, truncated files,
no pixel data, a modality other than NM, an image that cannot be a whole-body view (rule in
`bonescan.io.checks`: at least 256 rows and rows / columns >= 2), views of different shapes, non-finite or
all-zero pixels, a compressed transfer syntax without an installed decoder (the message names the pip package).
"""

from .read import StudyInput, read_study
from .sources import StudySource, find_studies

__all__ = ["StudyInput", "StudySource", "find_studies", "read_study"]
