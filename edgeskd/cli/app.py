"""The edgeskd command line: one module per command, joined here. Commands are thin wrappers."""

from __future__ import annotations

from typing import Annotated

import typer

from edgeskd import __version__
from edgeskd.cli import doctor, quickstart
from edgeskd.cli.commands import new_app, register

app = new_app(
    name="edgeskd",
    help="Subclass Knowledge Distillation for endoscopy classifiers, from training to real-time video.",
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


register(app)
app.command("quickstart")(quickstart.quickstart)
app.command("doctor")(doctor.doctor)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
