"""Atomic file writes: a failed command never leaves a half-written artifact."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from edgeskd.errors import UsageError


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask() can only be read by setting it, which is racy once threads
# (the stream's writer threads) create files.
_UMASK = _read_umask()


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (a directory) if needed; raise UsageError if it cannot be written."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create output directory {p}: {e.strerror}; choose a writable path") from None
    if not os.access(p, os.W_OK):
        raise UsageError(f"output directory {p} is not writable; choose a writable path")
    return p


def check_output_file(path: str | os.PathLike, *, overwrite: bool | None = None,
                      suffixes: tuple[str, ...] | None = None, option: str = "output") -> Path:
    """Fail early (UsageError) if ``path`` cannot become an output file: a directory, or an
    unwritable/uncreatable parent, or (``overwrite=False``) a file that already exists — every
    command's one overwrite policy: refuse, ``--overwrite`` replaces. ``overwrite=None``: no
    existence check (internal writes). Call before the work whose result goes there. ``suffixes``: the file types the writer
    makes (``option`` names the flag in the message)."""
    final = Path(path)
    if suffixes and final.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {final}: this writes {' / '.join(s.lstrip('.').upper() for s in suffixes)}; "
                         f"give a file name ending in {' or '.join(suffixes)}")
    if final.is_dir():
        raise UsageError(f"output {final} is a directory; give a file name")
    if overwrite is False and final.exists():
        raise UsageError(f"{final} already exists; pass --overwrite to replace it, or choose another path")
    probe_writable_dir(final.parent if str(final.parent) else Path("."))
    return final


def probe_writable_dir(path: str | os.PathLike) -> Path:
    """UsageError unless ``path`` exists as a writable directory or could be created (its nearest
    existing ancestor is a writable directory). Creates nothing: a command that fails later must
    not leave empty folders behind."""
    p = Path(path)
    q = p
    while not q.exists() and q.parent != q:
        q = q.parent
    if q.exists() and not q.is_dir():
        raise UsageError(f"cannot create output directory {p}: {q} is a file; choose a writable path")
    if not os.access(q, os.W_OK | os.X_OK):
        raise UsageError(f"output directory {p} is not writable; choose a writable path")
    try:   # os.access says yes to root on a read-only mount or /proc: try it
        with tempfile.TemporaryFile(dir=q):
            pass
    except OSError as e:
        raise UsageError(f"cannot write in {q}: {e.strerror}; choose a writable path") from None
    return p


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` only if the block succeeds.

    Use for writers that want a file name (torch.save, onnx.save, PyAV)::

        with atomic_path(out) as tmp:
            onnx.save(model, tmp)
    """
    final = check_output_file(path)
    parent = ensure_writable_dir(final.parent if str(final.parent) else ".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp" + final.suffix, dir=parent)
    except OSError as e:  # e.g. /proc, a read-only mount: os.access says yes to root
        raise UsageError(f"cannot write {final}: {e.strerror}; choose a writable path") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        try:
            # mkstemp makes 0600, and some writers (onnxruntime's calibration cache) recreate the
            # file with their own mode: artifacts get the usual umask permissions
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, final)
        except OSError as e:
            raise UsageError(f"cannot write {final}: {e.strerror}; choose a writable path") from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
