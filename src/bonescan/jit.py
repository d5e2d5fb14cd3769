"""numba compilation of kernels (the lesion step's, the trees' scores): compiled on first use and cached on disk."""

from __future__ import annotations

from numba import njit


def compiled(function=None, *, parallel: bool = False):
    """`function` compiled by numba on first use, and cached on disk (about a second, once); a decorator, bare or
    with options. `parallel` spreads its `prange` loops over all cores; otherwise it runs on the calling thread and
    lets other threads run meanwhile (the post-processing threads call such kernels at once). Where no cache folder
    can be written (an install in read-only site-packages run by a user without a home), numba refuses to cache: it
    is then compiled anew in each process."""
    options = {"parallel": True} if parallel else {"nogil": True}

    def build(function):
        try:
            return njit(cache=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(**options)(function)

    return build(function) if function is not None else build
