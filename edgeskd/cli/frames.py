"""`edgeskd frames VIDEO... --labels CSV [--labels CSV ...] --out DIR`: annotated videos → a grouped training set."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeskd.cli.common import cli_command, console


class SplitChoice(str, Enum):
    train = "train"
    val = "val"
    test = "test"


class CropChoice(str, Enum):
    auto = "auto"
    none = "none"


@cli_command
def frames(
    videos: Annotated[list[Path], typer.Argument(help="Annotated videos (any format FFmpeg decodes).")],
    labels: Annotated[list[Path], typer.Option(
        "--labels", help="Per-frame labels CSV of each video: once per video, in the videos' order "
        "(--labels A.csv --labels B.csv). Columns "
        "frame,class[,subclass],polyp_id (what synth-video writes). Class empty or no_polyp = no polyp in view.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (new or empty unless --overwrite).")],
    every: Annotated[int, typer.Option("--every", help="Keep every K-th frame (frames of one polyp are "
                                       "near-duplicates; K spaces them).", min=1)] = 1,
    split: Annotated[Optional[SplitChoice], typer.Option(
        "--split", help="Put every frame in this split (e.g. a held-out video as test). "
        "Default: no split column; `train` then splits by group.")] = None,
    classes: Annotated[Optional[str], typer.Option(
        "--classes", help="Comma-separated polyp classes the labels may use; another class is an error.")] = None,
    crop: Annotated[CropChoice, typer.Option(
        "--crop", help="auto: keep the endoscope's content area (as `stream --crop auto`); none: whole frames.")]
        = CropChoice.auto,
    positive: Annotated[Optional[str], typer.Option(
        "--positive", help="The positive class (F1, AUC, NPV are about it), e.g. adenoma. Default: a class "
        "named adenoma / SSA / SSL when there is one, else the last class by name.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty OUT.")] = False,
) -> None:
    """Write frames of annotated videos and a manifest (path,class,subclass,group[,split]) that
    `edgeskd train --data OUT/manifest.csv` reads. group = video stem + polyp id (polyp-free frames:
    video stem + stretch), so training splits by polyp: no polyp lands in two splits."""
    from edgeskd.data.video_frames import write_frames

    allowed = [c.strip() for c in classes.split(",") if c.strip()] if classes is not None else None
    info = write_frames(videos, labels, out, every=every, split=split.value if split else None,
                        classes=allowed, positive=positive, crop=crop is CropChoice.auto, overwrite=overwrite)
    per = ", ".join(f"{c} {n}" for c, n in info["per_class"].items())
    console.print(f"wrote {info['frames']} frames of {info['videos']} video(s) to [bold]{out}[/] "
                  f"({per}; {info['groups']} groups)", soft_wrap=True)
    console.print(f"positive class: {info['positive_class']} ({info['positive_reason']})", soft_wrap=True)
    for note in info["notes"]:
        console.print(f"note: {note}", soft_wrap=True)
    console.print(f"manifest: {info['manifest']} — train with: edgeskd train --data {info['manifest']}",
                  soft_wrap=True)
