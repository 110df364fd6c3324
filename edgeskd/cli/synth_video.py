"""`edgeskd synth-video` — a synthetic endoscopy video with per-frame ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeskd.cli.common import OverwriteOpt, cli_command, console, err_console
from edgeskd.errors import UsageError


def parse_size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().replace("×", "x").split("x"))
    except ValueError:
        raise UsageError(f"--resolution {value!r}: give WIDTHxHEIGHT, e.g. 1280x720") from None
    return w, h


@cli_command
def synth_video(
    out: Annotated[Path, typer.Argument(help="Output video (.mp4/.mkv/.mov/.avi); labels go to OUT.labels.csv.")],
    seconds: Annotated[float, typer.Option("--seconds", help="Length in seconds.")] = 10.0,
    fps: Annotated[float, typer.Option("--fps", help="Frame rate.")] = 30.0,
    resolution: Annotated[str, typer.Option("--resolution", help="Video frame size WIDTHxHEIGHT (as video tools write it).")] = "1280x720",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed (same seed = same video).")] = 0,
    render_size: Annotated[int, typer.Option("--render-size", help="Pixels across the rendered field before scaling to the frame.")] = 192,
    overwrite: OverwriteOpt = False,
) -> None:
    """Render a camera moving over a colon wall with polyps of known class/subclass (H.264)."""
    from edgeskd.data.synthvideo import write_synth_video

    from edgeskd.data.synthvideo import labels_path_for
    from edgeskd.data.video_writer import check_video_path
    from edgeskd.utils.io import check_output_file

    w, h = parse_size(resolution)
    check_video_path(out)
    for p in (out, labels_path_for(out)):
        check_output_file(p, overwrite=overwrite)
    if not 64 <= render_size <= 1024:
        raise UsageError(f"--render-size {render_size} must be between 64 and 1024")
    progress = None
    if err_console.is_terminal:
        from rich.progress import Progress

        prog = Progress(console=err_console, transient=True)
        task = prog.add_task("rendering", total=max(1, int(round(seconds * fps))))

        def progress(i: int, n: int) -> None:
            prog.update(task, completed=i + 1)

        with prog:
            info = write_synth_video(out, seconds=seconds, fps=fps, size=(w, h), seed=seed,
                                     render_size=render_size, progress=progress)
    else:
        info = write_synth_video(out, seconds=seconds, fps=fps, size=(w, h), seed=seed, render_size=render_size)
    console.print(
        f"wrote {info['video']}: {info['frames']} frames {w}x{h} @ {fps:g} fps, {info['polyps']} polyps, "
        f"{info['frames_with_polyp']} frames with a polyp / {info['frames_without_polyp']} without",
        soft_wrap=True,
    )
    console.print(f"labels: {info['labels']} (frame,class,subclass,has_polyp,visible,polyp_id)")
