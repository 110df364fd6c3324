"""Peak resident memory of a phase (Linux: reset VmHWM via /proc/self/clear_refs, read it back)."""

from __future__ import annotations

import contextlib
from typing import Iterator


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``peak_mb``: highest RSS during the block minus RSS at its start (None where unsupported)."""

    peak_mb: float | None = None


def _release_free_memory() -> None:
    """Give memory freed by earlier work back to the OS (glibc keeps it in the heap otherwise), so
    the next block's growth is its own and not hidden by reuse of what an earlier artifact freed."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):   # not glibc: nothing to release
        pass


@contextlib.contextmanager
def track_peak_memory() -> Iterator[PeakMemory]:
    res = PeakMemory()
    _release_free_memory()
    base = _status_kb("VmRSS")
    ok = _reset_peak() and base is not None
    try:
        yield res
    finally:
        hwm = _status_kb("VmHWM")
        if ok and hwm is not None:
            res.peak_mb = round(max(hwm - base, 0) / 1024.0, 2)
