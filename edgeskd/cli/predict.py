"""`edgeskd predict SRC...` — class, subclass, calibrated probability and state for images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeskd.cli.common import (DEFAULT_THREADS, DeviceOpt, OverwriteOpt, ThreadsOpt, cli_command, console,
                                err_console, parse_device)
from edgeskd.errors import UsageError

SHOWN = 40   # rows printed to the console; the rest go to --out


@cli_command
def predict(
    sources: Annotated[list[str], typer.Argument(
        metavar="SRC...", help="Image files, folders (searched recursively) or glob patterns ('data/**/*.png').",
        show_default=False)],
    engine: Annotated[Path, typer.Option("--engine", help="Model artifact: .onnx, .engine (TensorRT) or .pt.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Write every prediction to a .csv or .jsonl file.")] = None,
    save: Annotated[Optional[Path], typer.Option("--save", help="Write each image with its call drawn on it (PNG) into this folder.")] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Confidence a call needs, in (0.5, 1); below it: low confidence. Default: the artifact's threshold (none: the argmax).")] = None,
    crop: Annotated[str, typer.Option("--crop", help="Content area: none, or x,y,w,h (pixels of every image).")] = "none",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=1024, help="Images per inference call.")] = 16,
    threads: ThreadsOpt = DEFAULT_THREADS,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
) -> None:
    """Predict images with any artifact: class, calibrated probability, top subclass, state."""
    from edgeskd.predict import annotate, check_outputs, expand_sources, predict_images, save_name, write_predictions
    from edgeskd.runtime.loader import load_runner
    from edgeskd.stream.pipeline import parse_crop

    dev = parse_device(device)
    if threshold is not None:
        from edgeskd.clinical.operating_point import validate_threshold

        threshold = validate_threshold(threshold)
    box = parse_crop(crop)
    if box == "auto":
        raise UsageError("--crop auto is for video; give none or x,y,w,h")
    paths = expand_sources(sources)
    check_outputs(out, save, overwrite=overwrite)
    runner = load_runner(engine, threads=threads, device=None if dev == "auto" else dev)
    with runner:
        thr = runner.metadata.threshold if threshold is None else threshold
        saved: list[tuple[str, object]] = []
        used: set[str] = set()

        def keep(i: int, pred, rgb) -> None:
            if save is not None:
                saved.append((save_name(Path(pred.path), i, used), annotate(rgb, pred, runner.metadata, thr)))
            if progress is not None:
                progress.update(task, completed=i + 1)

        progress = task = None
        if err_console.is_terminal and len(paths) > 50:
            from rich.progress import Progress

            progress = Progress(console=err_console, transient=True)
            task = progress.add_task("predicting", total=len(paths))
            progress.start()
        try:
            preds = predict_images(runner, paths, threshold=thr, batch_size=batch_size,
                                   crop=box, on_image=keep)
        finally:
            if progress is not None:
                progress.stop()
        meta = runner.metadata
    _print(preds, meta, thr)
    if out is not None:
        write_predictions(out, preds, meta.class_names)
        console.print(f"wrote {out} ({len(preds)} rows)")
    if save is not None:
        _save(save, saved, overwrite)
        console.print(f"wrote {len(saved)} annotated images to {save}")


def _print(preds, meta, thr) -> None:
    from collections import Counter

    from rich.table import Table

    t = Table(title=f"{len(preds)} image(s) — {meta.model_name or meta.arch or 'model'}, "
                    + (f"threshold {thr:.3f}" if thr is not None else "argmax (no threshold)"), title_justify="left")
    for col in ("image", "class", "p", "subclass", "state"):
        t.add_column(col, justify="right" if col == "p" else "left", overflow="fold")
    for p in preds[:SHOWN]:
        sub = "–" if p.subclass is None else f"{p.subclass} {p.subclass_prob:.2f}"
        t.add_row(p.path, p.cls, f"{p.prob:.3f}", sub, p.state)
    console.print(t)
    if len(preds) > SHOWN:
        console.print(f"(first {SHOWN} of {len(preds)} rows; --out FILE.csv keeps them all)")
    counts = Counter(p.state for p in preds)
    console.print("states: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))


def _save(folder: Path, images, overwrite: bool) -> None:
    from PIL import Image

    from edgeskd.data.writers import atomic_dir

    with atomic_dir(folder, overwrite=overwrite) as tmp:
        for name, rgb in images:
            Image.fromarray(rgb).save(tmp / name)
