"""Atomic writes: a reader never sees a half-written file, and an interrupted write leaves the old one."""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_UMASK_LOCK = threading.Lock()


def _current_umask() -> int:
    # Reading the umask means setting it: without the lock, a thread writing beside another (the lesion step writes
    # studies in threads) could read the 0 set here for a moment and make its file writable by everyone.
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def write_text_atomic(target: str | Path, text: str) -> Path:
    """Write `text` to `target` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_bytes_atomic(target: str | Path, data: bytes) -> Path:
    """Write `data` to `target` atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_npz_atomic(target: str | Path, arrays: dict[str, np.ndarray], level: int) -> Path:
    """Write `arrays` to `target` atomically as an .npz that `np.load` reads, deflated at zlib `level`
    (`np.savez_compressed` always takes 6, slow for label maps that compress well at 1-3)."""
    with atomic_path(target) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w") as member:
                    np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
    return Path(target)
