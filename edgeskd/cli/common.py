"""What every command shares: the error table, console, and Annotated option aliases."""

from __future__ import annotations

import functools
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Callable, TypeVar

import typer
from rich.console import Console

from edgeskd.errors import EdgeSKDError



def _width(stream: Any) -> int | None:
    """Rich assumes 80 columns when output is not a terminal: the wide tables (bench, build-engine)
    then fold into one-character columns in logs and CI. Give pipes and files 200 columns; a
    terminal, or an explicit COLUMNS, keeps its own width."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return None if tty or os.environ.get("COLUMNS") else 200


console = Console(highlight=False, width=_width(sys.stdout))
err_console = Console(stderr=True, highlight=False, width=_width(sys.stderr))

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print a one-line error and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    return typer.Exit(code)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", soft_wrap=True)


def cli_command(fn: F) -> F:
    """Map library errors to one-line messages and exit codes (no traceback for user mistakes)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except EdgeSKDError as e:
            raise fail(str(e), e.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted; completed artifacts were kept, partial ones removed", 130) from None
        except MemoryError:
            raise fail("out of memory; lower --batch-size or --img-size", 12) from None

    return wrapper  # type: ignore[return-value]


class DataFormat(str, Enum):
    auto = "auto"
    mhist = "mhist"
    folder = "folder"
    manifest = "manifest"
    synthetic = "synthetic"


# Shared options (Annotated aliases, huggingface_hub style).
DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="Data set: MHIST root, folder tree, manifest CSV. Default: the synthetic set."),
]
FormatOpt = Annotated[DataFormat, typer.Option("--format", help="Data format; auto detects it.")]
SeedOpt = Annotated[int, typer.Option("--seed", min=0, help="Random seed (>= 0).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def is_tty() -> bool:
    return sys.stdout.isatty()


# -- one vocabulary across commands (README "CLI conventions") --------------------------------------
def parse_device(text: str | None) -> str:
    """``--device`` of every command that runs a model: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns the normalised text (``cuda`` → ``cuda:0``); a malformed value is a UsageError in one
    line. Whether that GPU exists is checked by the backend that uses it."""
    from edgeskd.errors import UsageError

    d = (text or "auto").strip().lower()
    if d in ("auto", "cpu"):
        return d
    if d == "cuda":
        return "cuda:0"
    if d.startswith("cuda:") and d[5:].isdigit():
        return f"cuda:{int(d[5:])}"
    if d.isdigit():
        return f"cuda:{int(d)}"
    raise UsageError(f"--device {text!r}: use auto, cpu, cuda or cuda:N (N = the GPU index)")


def parse_img_size(text: str | int | None, *, option: str = "--img-size") -> tuple[int, int] | None:
    """``--img-size``: one name and one syntax for an image size everywhere: ``N`` (square) or
    ``HxW`` (height × width, as the models' input_size). None stays None."""
    from edgeskd.errors import UsageError

    if text is None:
        return None
    if isinstance(text, int):
        parts = [text]
    else:
        try:
            parts = [int(v) for v in str(text).lower().replace(",", "x").split("x")]
        except ValueError:
            raise UsageError(f"{option} {text!r} must be N or HxW, e.g. 224 or 224x224") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 8:
        raise UsageError(f"{option} {text!r} must be N or HxW with both >= 8")
    return parts[0], parts[1]


DEFAULT_THREADS = 1   # CPU inference threads: the same default in every command (decode has its own)

DeviceOpt = Annotated[str, typer.Option(
    "--device", help="Where the model runs: auto (a GPU when there is one), cpu, cuda or cuda:N.")]
OverwriteOpt = Annotated[bool, typer.Option(
    "--overwrite", help="Replace outputs that already exist (without it, existing outputs are refused).")]
ThreadsOpt = Annotated[int, typer.Option(
    "--threads", min=1, help="CPU inference threads (decoding and data loading have their own).")]
