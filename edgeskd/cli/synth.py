"""`edgeskd synth OUT`: write the synthetic endoscopy data set in the folder, MHIST or manifest format."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgeskd.cli.common import OverwriteOpt, SeedOpt, cli_command, console, warn


class WriteFormat(str, Enum):
    folder = "folder"
    mhist = "mhist"
    manifest = "manifest"


@cli_command
def synth(
    out: Annotated[Path, typer.Argument(help="Output directory (must be new or empty unless --overwrite).")],
    n: Annotated[int, typer.Option("--n", help="Number of frames (>= 20: both classes in all three splits).",
                                   min=20)] = 3000,
    img_size: Annotated[int, typer.Option("--img-size", help="Frame size in pixels (square).", min=16, max=1024)] = 128,
    seed: SeedOpt = 0,
    format: Annotated[WriteFormat, typer.Option("--format", help="Layout to write.")] = WriteFormat.folder,
    overwrite: OverwriteOpt = False,
) -> None:
    """Write the synthetic endoscopy set: 2 classes × 4 subtypes, 7 annotator votes, splits 50/10/40.

    Written atomically (a temporary directory renamed to OUT when complete). Subclasses are the
    visual subclasses; in the MHIST layout they come back as the vote bins 0|1,2|3|4|5,6|7, which
    hold exactly the same images, so `edgeskd info OUT` gives the same counts for every layout.
    """
    from edgeskd.data.stats import label_bits
    from edgeskd.data.synthetic import make_synthetic
    from edgeskd.data.writers import check_output_dir, write_dataset

    check_output_dir(out, overwrite=overwrite)  # refuse before spending time on rendering
    t0 = time.perf_counter()
    size = img_size
    ls = make_synthetic(n, size, seed)
    t1 = time.perf_counter()
    write_dataset(ls, out, format.value, overwrite=overwrite)
    t2 = time.perf_counter()
    console.print(
        f"wrote {len(ls)} frames {size}x{size} to [bold]{out}[/] ({format.value}); "
        f"rendered in {t1 - t0:.1f} s ({len(ls) / max(t1 - t0, 1e-9):.0f} frames/s), written in {t2 - t1:.1f} s"
    )
    sizes = {s: int((ls.splits == s).sum()) for s in ("train", "val", "test")}
    console.print(
        f"splits train/val/test = {sizes['train']}/{sizes['val']}/{sizes['test']}; "
        f"label noise (majority vote ≠ true class) {ls.info['label_noise_rate']:.1%}; "
        f"extra label bits H(S|C) = {label_bits(ls):.4f}"
    )
    if format is WriteFormat.mhist:
        warn("MHIST has no val partition: val is written as train and carved again (same counts) on load")
