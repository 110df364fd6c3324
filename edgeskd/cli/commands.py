"""The table of edgeskd's step commands (name → typer function), shared by the app and quickstart.

``cli/app.py`` registers these (and ``quickstart``) on the ``edgeskd`` app; ``cli/quickstart.py``
runs them in-process through ``steps_app()``, so it never needs the app that registers it.
"""

from __future__ import annotations

from typing import Any, Callable

import typer

from edgeskd.cli import (bench, build_engine, export, frames, info, loadtest, predict, qat, serve, stream, synth,
                         synth_video, train)

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
    "predict": predict.predict,
    "stream": stream.stream,
    "serve": serve.serve,
    "loadtest": loadtest.loadtest,
}


def new_app(**kw: Any) -> typer.Typer:
    """A typer app with edgeskd's settings (no completion, no pretty tracebacks, rich markup)."""
    return typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                       rich_markup_mode="rich", **kw)


def register(app: typer.Typer) -> typer.Typer:
    for name, fn in COMMANDS.items():
        app.command(name)(fn)
    return app


def tidy_help(command: Any) -> Any:
    """The click command of an app, with flags shown as flags: typer labels an on/off option with
    its Python type (``<bool>``), which reads like a value to type."""
    def help_option(get: Any) -> Any:
        def wrapped(ctx: Any) -> Any:
            opt = get(ctx)
            if opt is not None:
                opt.metavar = ""
            return opt
        return wrapped

    for cmd in [command, *getattr(command, "commands", {}).values()]:
        for param in getattr(cmd, "params", []):
            if getattr(param, "is_flag", False) and getattr(param, "metavar", None) is None:
                param.metavar = ""
        cmd.get_help_option = help_option(cmd.get_help_option)   # --help is made per call
    return command


def steps_app() -> typer.Typer:
    """The step commands alone, as an app that ``edgeskd quickstart`` invokes in-process."""
    return register(new_app(name="edgeskd"))
