"""`edgeskd quickstart` — the whole job on the embedded synthetic default, in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeskd.cli.common import cli_command, console


@cli_command
def quickstart(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where every artifact goes.")] = Path("quickstart"),
    fast: Annotated[bool, typer.Option("--fast/--full", help="fast: the few-minute CPU run; full: the full recipe.")] = True,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed for data, training and video.")] = 0,
) -> None:
    """synth data → train → export → build-engine → bench → synth-video → stream, then a summary."""
    from rich.table import Table

    from edgeskd.quickstart import run_quickstart

    res = run_quickstart(workdir, profile="fast" if fast else "full", say=console.print, seed=seed)
    s = res.summary
    table = Table(title=f"quickstart summary ({'fast' if fast else 'full'}, {s['total_seconds'] / 60:.1f} min)",
                  title_justify="left")
    for col in ("what", "F1", "latency p50 ms", "fps"):
        table.add_column(col, justify="left" if col == "what" else "right")

    def f(v, fmt="{:.2f}"):
        return "—" if v is None else fmt.format(v)

    for name, m in s["models"].items():
        table.add_row(f"{name} (test split)", f(m["f1"]), "", "")
    for r in s["bench"]:
        if r.get("precision") == "int8" or str(r.get("name", "")).endswith(("int8", ".engine")):
            table.add_row(f"{r['name']} [{r['backend']} {r['precision']}]", f(r["f1"]), f(r["latency_p50_ms"]), "")
    st = s["stream"]
    lat = (st.get("latency_ms") or {}).get("p50")
    frame_f1 = st.get("frame_f1_smoothed")
    table.add_row(f"stream {Path(st['engine']).name} (frame F1 smoothed; fps with the annotated video)",
                  f(None if frame_f1 is None else 100.0 * frame_f1), f(lat), f(st["fps"], "{:.1f}"))
    console.print(table)
    for note in res.notes:
        console.print(f"[yellow]note:[/] {note}")
    for k, v in s["artifacts"].items():
        console.print(f"{k}: {v}")
    console.print(f"steps and summary: {Path(workdir) / 'quickstart.json'}")
