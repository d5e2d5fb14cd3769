"""One field of /proc/cpuinfo: what the CPU is, read from the kernel rather than from a library's own detection."""

from __future__ import annotations

from pathlib import Path

CPUINFO = "/proc/cpuinfo"


def cpuinfo_field(name: str, cpuinfo: str | Path = CPUINFO) -> str | None:
    """The value of the first `name : value` line (the first processor's); None where the file or the field is
    missing (other kernels, aarch64 without vendor_id)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, colon, value = line.partition(":")
                if colon and key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None
