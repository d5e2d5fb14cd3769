"""Pascal VOC boxes: what a valid file gives, and every problem of a bad one listed at once."""

import numpy as np
import pytest

from bonescan.errors import AnnotationError
from bonescan.io.voc import read_voc


def _voc(tmp_path, objects, width=256, height=1024, name="a.xml"):
    body = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax>"
        f"</bndbox></object>" for n, x0, y0, x1, y1 in objects)
    path = tmp_path / name
    path.write_text(f"<annotation><filename>1.jpg</filename><size><width>{width}</width><height>{height}</height>"
                    f"<depth>3</depth></size>{body}</annotation>")
    return path


def test_boxes_and_size_are_read_and_slices_cover_the_box(tmp_path):
    path = _voc(tmp_path, [("nidus", 10, 20, 19, 39), ("bladder", 100, 500, 140, 540)])
    ann = read_voc(path, image_size=(256, 1024), allowed={"nidus", "bladder"})
    assert (ann.width, ann.height, ann.filename) == (256, 1024, "1.jpg")
    assert [b.name for b in ann.boxes] == ["nidus", "bladder"]
    image = np.zeros((1024, 256))
    image[ann.boxes[0].pixel_slices()] = 1
    # VOC corners are 1-based and inclusive: 10..19 x 20..39 is 10 columns by 20 rows.
    assert image.sum() == 200 and image[19, 9] == 1 and image[19, 8] == 0


def test_every_problem_of_a_file_is_listed_in_one_error(tmp_path):
    path = _voc(tmp_path, [("nidus", 10, 20, 5, 39), ("tumour", 1, 1, 5, 5), ("nidus", 200, 1000, 300, 1030)])
    with pytest.raises(AnnotationError) as err:
        read_voc(path, image_size=(256, 512), allowed={"nidus"})
    message = str(err.value)
    assert str(path) in message
    for expected in ("differs from the image's 256 x 512", "empty box", "unknown name 'tumour'", "outside"):
        assert expected in message


def test_unparseable_and_sizeless_files_are_refused(tmp_path):
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotation><size>")
    with pytest.raises(AnnotationError, match="not a readable Pascal VOC"):
        read_voc(broken)
    sizeless = tmp_path / "sizeless.xml"
    sizeless.write_text("<annotation><object><name>nidus</name></object></annotation>")
    with pytest.raises(AnnotationError, match="missing <size/width>.*missing <bndbox/xmin>"):
        read_voc(sizeless)
