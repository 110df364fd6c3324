"""The table of edgeskd's step commands (name → typer function), shared by the app and quickstart.

``cli/app.py`` registers these (and ``quickstart``) on the ``edgeskd`` app; ``cli/quickstart.py``
runs them in-process through ``steps_app()``, so it never needs the app that registers it.
"""

from __future__ import annotations

from typing import Any, Callable

import typer

from edgeskd.cli import bench, build_engine, export, frames, info, qat, stream, synth, synth_video, train

# in the order `edgeskd --help` lists them
COMMANDS: dict[str, Callable[..., Any]] = {
    "synth": synth.synth,
    "synth-video": synth_video.synth_video,
    "frames": frames.frames,
    "info": info.info,
    "train": train.train,
    "export": export.export,
    "build-engine": build_engine.build_engine,
    "qat": qat.qat,
    "bench": bench.bench,
    "stream": stream.stream,
}


def new_app(**kw: Any) -> typer.Typer:
    """A typer app with edgeskd's settings (no completion, no pretty tracebacks, rich markup)."""
    return typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                       rich_markup_mode="rich", **kw)


def register(app: typer.Typer) -> typer.Typer:
    for name, fn in COMMANDS.items():
        app.command(name)(fn)
    return app


def steps_app() -> typer.Typer:
    """The step commands alone, as an app that ``edgeskd quickstart`` invokes in-process."""
    return register(new_app(name="edgeskd"))
