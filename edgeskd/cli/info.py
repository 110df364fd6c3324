"""`edgeskd info DATA`: counts per split × class × subclass, votes, extra label bits H(S|C)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeskd.cli.common import DataFormat, FormatOpt, JsonOpt, SeedOpt, cli_command, console, warn


@cli_command
def info(
    data: Annotated[Optional[Path], typer.Argument(
        help="MHIST root, folder tree or manifest CSV. Omit for the synthetic default.")] = None,
    format: FormatOpt = DataFormat.auto,
    json_out: JsonOpt = False,
    vote_bins: Annotated[Optional[str], typer.Option(
        "--vote-bins", help='MHIST subclasses as vote bins, e.g. "0|1,2|3|4|5,6|7" (the default).')] = None,
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Skip (and count) unreadable images instead of stopping at the first.")] = False,
    seed: SeedOpt = 0,
    group_by: Annotated[Optional[str], typer.Option(
        "--group-by", metavar="COL", help="Manifest column holding each image's group (as `train --group-by`): "
        "splits keep groups whole. \\[default: the 'group' column when present]")] = None,
) -> None:
    """Describe a data set. Every image is decoded once, so a corrupt file is named here."""
    from edgeskd.data import load_dataset
    from edgeskd.data.stats import dataset_summary

    extra = {"group_by": group_by} if group_by is not None else {}
    ls = load_dataset(data, format.value, seed=seed, skip_bad=skip_bad, vote_bins=vote_bins, verify=True, **extra)
    summary = dataset_summary(ls)
    for w in summary["warnings"]:
        warn(w)
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
        return
    _print_tables(summary)


def _print_tables(s: dict) -> None:
    from rich.table import Table

    splits = list(s["split_sizes"])
    console.print(f"[bold]{s['name']}[/]  format {s['format']}  ·  {s['num_images']} images  ·  "
                  f"splits: {s['split_source']}  ·  positive class: {s['positive_class']} (F1, AUC, NPV; "
                  "\"positive_class\" in dataset.json to change)")
    t = Table(title="images per split × class × subclass", title_justify="left")
    t.add_column("class")
    t.add_column("subclass")
    for sp in splits:
        t.add_column(sp, justify="right")
    t.add_column("total", justify="right")
    for c, subs in s["counts"][splits[0]].items():
        for i, sub in enumerate(subs):
            row = [s["counts"][sp][c][sub] for sp in splits]
            t.add_row(c if i == 0 else "", sub, *map(str, row), str(sum(row)))
        tot = [s["class_counts"][sp][c] for sp in splits]
        t.add_row("", f"[bold]all {c}[/]", *[f"[bold]{v}[/]" for v in tot], f"[bold]{sum(tot)}[/]",
                  end_section=True)
    t.add_row("", "[bold]all[/]", *[f"[bold]{s['split_sizes'][sp]}[/]" for sp in splits],
              f"[bold]{s['num_images']}[/]")
    console.print(t)
    console.print(f"subclasses: {s['subclass_definition']}")
    if s.get("background_class"):
        console.print(f"no-polyp class: {s['background_class']} (frames with no polyp in view; votes unknown)")
    if "groups" in s:
        g = s["groups"]
        per = " / ".join(f"{sp} {n}" for sp, n in g["per_split"].items())
        leaks = g["in_several_splits"]
        line = f"groups: {g['n_groups']} ({per}); in more than one split: {len(leaks)}"
        if leaks:
            shown = "; ".join(f"{k} ({'/'.join(v)})" for k, v in list(leaks.items())[:5])
            line += f" — {shown}" + (" ..." if len(leaks) > 5 else "")
        console.print(line, soft_wrap=True)
    if "votes" in s:
        v = s["votes"]
        vt = Table(title=f"annotator votes for {s['positive_class']} (of {v['n_annotators']})", title_justify="left")
        for k in v["histogram"]:
            vt.add_column(k, justify="right")
        vt.add_row(*map(str, v["histogram"].values()))
        console.print(vt)
        line = f"non-unanimous: {v['non_unanimous_share']:.1%}"
        if "disagree_with_label" in v:
            line += f"  ·  votes disagreeing with the label: {v['disagree_with_label']}"
        if v["unknown"]:
            line += f"  ·  unknown: {v['unknown']}"
        console.print(line)
    if "label_noise_rate" in s:
        console.print(f"label noise: {s['label_noise_rate']:.1%} ({s['label_noise_source']})")
    if s.get("skipped_bad"):
        console.print(f"skipped unreadable images: {len(s['skipped_bad'])}")
    console.print(f"extra label bits per sample: [bold]{s['label_bits']:.4f}[/] bits = {s['label_bits_formula']}")
