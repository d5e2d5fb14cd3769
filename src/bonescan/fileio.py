"""Atomic writes: a reader never sees a half-written file, and an interrupted write leaves the old one.

A file that cannot be written (a full disk, no permission, a read-only file system) raises `OutputError` naming
it, so the command line says which file and why in one line, and a batch records it beside the study.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import OutputError


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except (FileExistsError, NotADirectoryError) as error:  # a file where a folder of the path should be
        blocking = next((p for p in reversed(target.parents) if p.exists() and not p.is_dir()), target.parent)
        raise OutputError(target, f"cannot be written: {blocking} is not a folder") from error
    except OSError as error:
        raise _unwritable(target, error) from error
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_current_umask())  # mkstemp makes 0600; outputs get the usual permissions
        yield tmp_path
        os.replace(tmp_path, target)
    except (OSError, RuntimeError) as error:
        system = _system_error(error)
        if system is None or system.filename is not None and str(system.filename) not in (str(tmp_path), str(target)):
            raise  # not the system's refusal, or another file's (an input the block reads): not this output's
        raise _unwritable(target, system) from error
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_together(*writes: tuple[str | Path, Callable[[Path], object]]) -> None:
    """Write files that belong together (a study's JSON, label maps and overlay): each (target, write) in turn
    writes its temporary path, and only when every write succeeded are they all renamed onto their targets. A failed
    write leaves all of them as they were and names its own file. The first target is renamed last, so a reader that
    finds it finds the rest."""
    with contextlib.ExitStack() as stack:
        for target, write in writes:
            write(stack.enter_context(atomic_path(target)))  # a failure: the innermost context names this target


def _system_error(error: BaseException | None) -> OSError | None:
    """The system's own error behind `error`: pydicom re-raises it as a copy whose message holds a whole traceback,
    torch's writer as a RuntimeError ('unexpected pos') raised while handling it."""
    for _ in range(8):
        if isinstance(error, OSError) and error.errno is not None:
            return error
        if not isinstance(error, (OSError, RuntimeError)):
            return None
        error = error.__cause__ or error.__context__
    return None


def _unwritable(target: Path, error: OSError) -> OutputError:
    return OutputError(target, f"cannot be written: {error.strerror or error}")


def write_torch_atomic(target: str | Path, payload) -> Path:
    """`torch.save` `payload` to `target` atomically, through a Python file: a full disk then raises the system's
    error, where torch's own file writer reports only 'unexpected pos'."""
    import torch

    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)
    return Path(target)


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
        write_npz(tmp, arrays, level)
    return Path(target)


def write_npz(path: str | Path, arrays: dict[str, np.ndarray], level: int) -> None:
    """`write_npz_atomic` in place (for a path `atomic_path` or `write_together` gave)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
