"""`edgeskd doctor`: GPU, driver, CUDA, TensorRT, NVRTC, bindings — and which backend each command uses."""

from __future__ import annotations

import json

import typer

from edgeskd.cli.common import JsonOpt, cli_command


@cli_command
def doctor(json_out: JsonOpt = False) -> None:
    """What this machine has for the GPU paths, which backend each command will use, and why not the others."""
    from edgeskd.doctor import collect, render_text

    report = collect()
    typer.echo(json.dumps(report, indent=2) if json_out else render_text(report))
