"""`edgeskd synth OUT`: write the synthetic endoscopy data set in the folder, MHIST or manifest format."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from edgeskd.cli.common import OverwriteOpt, SeedOpt, cli_command, console, warn


class Layout(str, Enum):
    clips = "clips"
    images = "images"


class WriteFormat(str, Enum):
    folder = "folder"
    mhist = "mhist"
    manifest = "manifest"


@cli_command
def synth(
    out: Annotated[Path, typer.Argument(help="Output directory (must be new or empty unless --overwrite).")],
    n: Annotated[int, typer.Option("--n", help="Number of frames (>= 40; from ~60 on both polyp classes are in "
                                   "every split).", min=40)] = 3000,
    img_size: Annotated[int, typer.Option("--img-size", help="Frame size in pixels (square).", min=16, max=1024)] = 128,
    seed: SeedOpt = 0,
    format: Annotated[WriteFormat, typer.Option("--format", help="Layout to write.")] = WriteFormat.folder,
    overwrite: OverwriteOpt = False,
    layout: Annotated[Layout, typer.Option(
        "--layout", help="clips: frames of synthetic camera visits (the default data set); images: the earlier "
        "still images (one centred polyp each, no polyp-free frames; for comparison).")] = Layout.clips,
) -> None:
    """Write the synthetic endoscopy set: frames of synthetic clips (the camera of synth-video) —
    ~70 % show a polyp (hyperplastic or adenoma, 4 subtypes each, 1 frame per polyp; 7 annotator
    votes), ~30 % bare wall (class no_polyp: plain, lumen, blurred; votes unknown). Every frame
    carries its group (clip/polyp); splits keep clips whole, 1/2 train : 1/6 val : 1/3 test of
    the clips, stratified by subtype (--n 7800: 3,923 / 1,284 / 2,593 frames, 1,820 test polyp frames).

    Written atomically (a temporary directory renamed to OUT when complete). Groups go to the
    manifest's group column (folder: dataset.json). MHIST is HP vs SSA: that layout holds the
    polyp frames only, their subclasses as the vote bins 0|1,2|3|4|5,6|7.
    """
    from edgeskd.data.stats import label_bits
    from edgeskd.data.synthetic import make_synthetic, make_synthetic_images
    from edgeskd.data.writers import check_output_dir, write_dataset

    check_output_dir(out, overwrite=overwrite)  # refuse before spending time on rendering
    t0 = time.perf_counter()
    size = img_size
    ls = (make_synthetic if layout is Layout.clips else make_synthetic_images)(n, size, seed)
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
    if ls.background_class is not None:
        bg = ls.labels == ls.background_class
        from edgeskd.data.splits import straddling_groups

        console.print(f"{int((~bg).sum())} polyp frames ({int(((ls.splits == 'test') & ~bg).sum())} in test), "
                      f"{int(bg.sum())} without a polyp; {len(set(ls.groups))} groups (clip/polyp), "
                      f"{len(straddling_groups(ls.groups, ls.splits))} in two splits")
    if format is WriteFormat.mhist and ls.background_class is not None:
        warn("MHIST holds HP vs SSA only: the polyp-free frames were not written")
    if format is WriteFormat.mhist:
        warn("MHIST has no val partition: val is written as train and carved again (same counts) on load")
