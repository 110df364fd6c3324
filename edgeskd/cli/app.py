"""The edgeskd command line: one module per command, joined here. Commands are thin wrappers."""

from __future__ import annotations

from typing import Annotated

import typer

from edgeskd import __version__
from edgeskd.cli import bench, build_engine, export, info, quickstart, stream, synth, synth_video, train

app = typer.Typer(
    name="edgeskd",
    help="Subclass Knowledge Distillation for endoscopy classifiers, from training to real-time video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeskd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """edgeskd: train → export → INT8 engine → bench → stream."""


app.command("synth")(synth.synth)
app.command("synth-video")(synth_video.synth_video)
app.command("info")(info.info)
app.command("train")(train.train)
app.command("export")(export.export)
app.command("build-engine")(build_engine.build_engine)
app.command("bench")(bench.bench)
app.command("stream")(stream.stream)
app.command("quickstart")(quickstart.quickstart)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
