"""The done/total counter long commands print on stderr.

On a terminal the count is rewritten in place. Written to a log (stderr redirected, a job scheduler), a rewritten
count would become one line of thousands of counts, so there it prints the first count (the job has started), then
a line at every tenth of the way, the last at the end.
"""

from __future__ import annotations

import sys
from typing import Callable, TextIO


def done_counter(unit: str, stream: TextIO | None = None) -> Callable[[int, int], None]:
    """A progress callback `(done, total)` that prints "done/total unit" on `stream` (stderr by default)."""
    out = stream if stream is not None else sys.stderr
    in_place = out.isatty()
    printed_tenth = [-1]

    def progress(done: int, total: int) -> None:
        if in_place:
            print(f"\r{done}/{total} {unit}", end="" if done < total else "\n", file=out, flush=True)
            return
        tenth = 10 * done // max(total, 1)
        if tenth > printed_tenth[0]:
            printed_tenth[0] = tenth
            print(f"{done}/{total} {unit}", file=out, flush=True)

    return progress
