"""Atomic writes: the old file survives a failed write, and no temp file is left behind."""

from __future__ import annotations

import pytest

from bonescan.fileio import atomic_path, write_text_atomic


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
