"""The edgeskd command line: one module per command, joined here. Commands are thin wrappers."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from edgeskd import __version__
from edgeskd.cli import doctor, quickstart
from edgeskd.cli.commands import new_app, register, tidy_help

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


def run() -> Any:
    """The app as the console script runs it (its click command, flags shown as flags)."""
    return tidy_help(typer.main.get_command(app)).main(prog_name="edgeskd", standalone_mode=False)


def main() -> None:
    """The console script: click's usage errors (an unknown option, a value outside an option's
    choices or range) become one line on stderr with exit code 2, like edgeskd's own errors."""
    import sys

    from typer import Abort   # click's Abort in older typer, typer's own in newer

    try:
        from typer._click import exceptions as ex   # newer typer carries its own click
    except ImportError:
        from click import exceptions as ex

    try:
        rv = run()
    except ex.UsageError as e:
        message = e.format_message().replace("Value error, ", "")
        if message:   # (empty: no command given, the help was printed)
            cmd = e.ctx.command_path if e.ctx is not None else "edgeskd"
            print(f"error: {message} ({cmd} --help lists the options)", file=sys.stderr)
        sys.exit(e.exit_code)
    except Abort:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
