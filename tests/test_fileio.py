"""Atomic writes: the old file survives a failed write, and no temp file is left behind; a file that cannot be
written is named, with the reason."""

from __future__ import annotations

import errno

import pytest

from bonescan.errors import OutputError
from bonescan.fileio import atomic_path, write_text_atomic, write_together


def test_write_replaces_content(tmp_path):
    target = tmp_path / "sub" / "report.json"
    write_text_atomic(target, "first")
    write_text_atomic(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.json"]


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "metrics.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]


def test_written_file_has_umask_permissions_not_private_temp_ones(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        target = write_text_atomic(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o644


def test_files_written_from_threads_at_once_all_keep_the_umask_permissions(tmp_path):
    import os
    import sys
    from concurrent.futures import ThreadPoolExecutor

    mask, interval = os.umask(0o022), sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between any two calls, as they may on a loaded machine
    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            targets = list(pool.map(lambda k: write_text_atomic(tmp_path / f"{k}.json", "{}"), range(400)))
    finally:
        os.umask(mask)
        sys.setswitchinterval(interval)
    assert {target.stat().st_mode & 0o777 for target in targets} == {0o644}


def test_a_full_disk_is_an_output_error_naming_the_file_and_the_reason(tmp_path):
    target = tmp_path / "hotspots.csv"
    with pytest.raises(OutputError) as raised:
        with atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device")  # as a write to the temporary file raises it
    assert str(raised.value) == f"{target}: cannot be written: No space left on device"
    assert list(tmp_path.iterdir()) == []


def test_the_reason_is_the_systems_even_when_a_library_rewraps_its_error(tmp_path):
    target = tmp_path / "report_sr.dcm"
    with pytest.raises(OutputError, match=r"report_sr.dcm: cannot be written: No space left on device$"):
        with atomic_path(target):
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as error:  # pydicom's tag_in_exception: a copy whose message holds a traceback
                raise OSError(f"With tag (7FE0,0010) got exception: {error}\nTraceback ...") from error


def test_a_folder_that_cannot_be_made_is_an_output_error(tmp_path):
    (tmp_path / "lesions").write_text("a file where the folder should be")
    with pytest.raises(OutputError) as raised:
        write_text_atomic(tmp_path / "lesions" / "a.json", "{}")
    assert str(raised.value) == f"{tmp_path}/lesions/a.json: cannot be written: {tmp_path}/lesions is not a folder"
    with pytest.raises(OutputError, match=r"/b/a.json: cannot be written: .*/lesions is not a folder$"):
        write_text_atomic(tmp_path / "lesions" / "b" / "a.json", "{}")  # a file higher up the path


def test_another_files_error_inside_the_block_is_left_as_it_is(tmp_path):
    source = tmp_path / "missing.dcm"
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "out.json"):
            source.read_bytes()  # reading an input fails: not this output's trouble
    assert list(tmp_path.iterdir()) == []


def test_files_that_belong_together_are_all_written_or_none_is_and_the_failed_one_is_named(tmp_path):
    targets = [tmp_path / name for name in ("a.json", "a.npz", "a.png")]
    for target in targets:
        target.write_text("old")

    def disk_full(tmp):
        tmp.write_text("ne")
        raise OSError(errno.ENOSPC, "No space left on device")

    def new(tmp):
        tmp.write_text("new")

    for failing in range(3):
        with pytest.raises(OutputError) as raised:
            write_together(*[(target, disk_full if k == failing else new) for k, target in enumerate(targets)])
        assert str(raised.value) == f"{targets[failing]}: cannot be written: No space left on device"
        assert [t.read_text() for t in targets] == ["old"] * 3  # none new beside older ones
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.npz", "a.png"]
    write_together(*[(target, new) for target in targets])
    assert [t.read_text() for t in targets] == ["new"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.npz", "a.png"]


def test_a_checkpoint_that_outgrows_the_disk_is_an_output_error_and_leaves_nothing(tmp_path):
    import subprocess
    import sys

    # A file-size limit fails the write the way a full disk does (EFBIG for ENOSPC), in a process of its own.
    script = f"""
import resource, signal, torch
from bonescan.errors import OutputError
from bonescan.fileio import write_torch_atomic
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
write_torch_atomic({str(tmp_path / 'small.pt')!r}, torch.zeros(1000))
try:
    write_torch_atomic({str(tmp_path / 'best.pt')!r}, torch.zeros(1_000_000))
except OutputError as error:
    print(error)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{tmp_path / 'best.pt'}: cannot be written: File too large"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.pt"]
