"""`edgeskd stream` — classify a video file / URL / camera in real time."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgeskd.cli.common import (DEFAULT_THREADS, DeviceOpt, OverwriteOpt, ThreadsOpt, cli_command, console, err_console,
                                fail, parse_device, warn)
from edgeskd.errors import UsageError
from edgeskd.stream.smoothing import DEFAULT_HOLD_S


class PreprocessMode(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@cli_command
def stream(
    source: Annotated[Optional[str], typer.Argument(
        metavar="SRC", help="Video file, rtsp/http(s) URL, or V4L2 device (/dev/video0).", show_default=False)] = None,
    engine: Annotated[Optional[Path], typer.Option("--engine", help="Model artifact: .onnx, .engine (TensorRT) or .pt.")] = None,
    video: Annotated[Optional[str], typer.Option("--video", help="The same as SRC (for older scripts).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the annotated video here (.mp4/.mkv/.mov/.avi).")] = None,
    jsonl: Annotated[Optional[Path], typer.Option("--jsonl", help="Write per-frame predictions as JSON lines.")] = None,
    stats: Annotated[Optional[Path], typer.Option("--stats", help="Write run statistics (fps, latency, drops) as JSON.")] = None,
    realtime: Annotated[
        Optional[bool],
        typer.Option("--realtime/--no-realtime",
                     help="Keep only the newest frame (bounded latency, drops counted). Default: on for live "
                          "sources, off for files (every frame; a file in --realtime is played at its frame rate)."),
    ] = None,
    preprocess: Annotated[PreprocessMode, typer.Option("--preprocess", help="auto = CUDA kernel when the runner is on a GPU.")] = PreprocessMode.auto,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Frames per inference call (file mode).")] = 1,
    smooth: Annotated[float, typer.Option("--smooth", help="EMA weight of the newest frame's probabilities at 30 fps, in (0, 1]; 1 = off. Scaled by the time between frames, so the average spans the same time at any frame rate (0.3 at 30 fps = 0.51 at 15 fps).")] = 0.3,
    start_gate: Annotated[Optional[Path], typer.Option("--start-gate", hidden=True, help="Load tests: after setup touch DIR/ready-<pid> and start when DIR/go exists.")] = None,
    hold: Annotated[float, typer.Option("--hold", metavar="SECONDS", help="A class call is shown once it has held this long (seconds of video); until then the frame shows low confidence. 0 = every call at once.")] = DEFAULT_HOLD_S,
    crop: Annotated[str, typer.Option("--crop", help="Endoscope content area: auto (detect the lit field; black border and overlay text excluded), none, or x,y,w,h.")] = "auto",
    crop_every: Annotated[int, typer.Option("--crop-every", help="With --crop auto: frames between re-estimates.")] = 30,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Ground truth CSV (frame,class[,polyp_id]): adds accuracy/F1, NPV and coverage to the stats; with polyp_id also per-polyp decisions.")] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Confidence (highest calibrated class probability) a frame or polyp needs for a call, in (0.5, 1); below it: low confidence. Default: the artifact's threshold (none: every frame gets its argmax).")] = None,
    max_frames: Annotated[Optional[int], typer.Option("--max-frames", help="Stop after this many decoded frames.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for a URL / device to answer.")] = 10.0,
    threads: ThreadsOpt = DEFAULT_THREADS,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    ceiling: Annotated[bool, typer.Option("--ceiling/--no-ceiling", help="Measure decode-only fps of the file first (stats: decode_fps_ceiling).")] = True,
    server: Annotated[Optional[str], typer.Option("--server", help="Infer on a Triton server instead of --engine: grpc://HOST:PORT (`edgeskd serve`, or tritonserver on an exported repository).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="With --server: the model name on the server (`edgeskd serve` prints it). Default: the only model of "
                                                      "a Triton server whose repository index it may read.")] = None,
) -> None:
    """Run a model on video: per-frame class, smoothed class, fps and latency."""
    from edgeskd.stream.pipeline import StreamConfig, run_stream

    if source is not None and video is not None and source != video:
        raise UsageError(f"two sources given ({source} and --video {video}); give one")
    src = source if source is not None else video
    if src is None:
        raise UsageError("no video source; give one: edgeskd stream SRC --engine ARTIFACT")
    if engine is None and server is None:
        raise UsageError("no model; give --engine ARTIFACT (.onnx, .engine or .pt) or --server grpc://HOST:PORT")
    dev = parse_device(device)
    if dev == "cpu" and engine is not None and engine.suffix.lower() in (".engine", ".plan", ".trt"):
        raise UsageError(f"{engine} is a TensorRT engine, which runs on a GPU; drop --device cpu or stream the ONNX")
    if dev == "cpu" and preprocess is PreprocessMode.cuda:
        raise UsageError("--preprocess cuda needs a GPU; drop --device cpu or use --preprocess cpu")
    cfg = StreamConfig(
        video=src, engine=engine, out=out, jsonl=jsonl, stats=stats, realtime=realtime,
        preprocess=preprocess.value, batch=batch_size, smooth=smooth, hold_s=hold, start_gate=start_gate, crop=crop, crop_every=crop_every,
        labels=labels, threshold=threshold, max_frames=max_frames, timeout_s=timeout, threads=threads, measure_ceiling=ceiling,
        device=dev, overwrite=overwrite, server=server, model=model,
    )
    live = None
    on_progress = None
    if err_console.is_terminal:
        from rich.live import Live
        from rich.text import Text

        live = Live(Text("opening…"), console=err_console, transient=True, refresh_per_second=8)

        def on_progress(p: dict) -> None:
            live.update(Text(
                f"frame {p['processed']}/{p['decoded']} decoded  dropped {p['dropped']}  "
                f"{p['fps']:6.1f} fps  {p['latency_ms']:6.1f} ms  {p['class']} {p['prob']:.2f}"
            ))

    if live is not None:
        with live:
            result = run_stream(cfg, on_progress=on_progress, warn=warn)
    else:
        result = run_stream(cfg, warn=warn)
    _print_summary(result)
    if result.error is not None:   # e.g. the server died mid-stream: outputs complete up to that frame
        raise fail(result.error, result.exit_code or 1)


def _print_summary(result) -> None:
    stats = result.stats
    source, latency, ceiling = stats["source"], stats["latency_ms"], stats["decode_fps_ceiling"]
    if source["paced"]:
        ratio = f" (paced at the file's {source['fps']:g} fps, as a live camera)"
    else:
        ratio = f" = {stats['fps'] / ceiling:.2f}x decode-only ({ceiling:.1f} fps)" if ceiling else ""
    console.print(
        f"processed {stats['frames_processed']} of {stats['frames_decoded']} decoded frames "
        f"(dropped {stats['frames_dropped']}) at {stats['fps']:.1f} fps{ratio}; "
        f"live latency p50 {latency['p50']} / p95 {latency['p95']} / p99 {latency['p99']} ms "
        f"[{source['preprocess']} preprocessing, {source['backend']}]",
        markup=False, soft_wrap=True,   # the brackets are text, not a rich style tag
    )
    rec = stats.get("recording")
    if rec:
        lag = rec["lag_ms"]
        console.print(f"recording (off the live path): {rec['frames_written']} frames written, "
                      f"{rec['frames_skipped']} skipped; queue max {rec['queue_max']} of {rec['queue_size']}; "
                      f"lag p50 {lag['p50']} / p99 {lag['p99']} ms", soft_wrap=True)
    if "labels" in stats and stats["labels"]["frames_evaluated"]:
        labels = stats["labels"]
        raw, smoothed = labels["raw"], labels["smoothed"]
        console.print(
            f"frame-level ({labels['frames_evaluated']} labelled frames): accuracy raw {raw['accuracy']:.3f} / "
            f"smoothed {smoothed['accuracy']:.3f}; F1({labels['positive_class']}) raw {raw['f1']:.3f} / "
            f"smoothed {smoothed['f1']:.3f}",
            soft_wrap=True,
        )
    if "labels" in stats:
        _print_clinical(stats["labels"])
        _print_video(stats["labels"].get("video"))
    for kind, path in result.outputs.items():
        console.print(f"{kind}: {path}")


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


def _ci(ci) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _print_video(video: dict | None) -> None:
    """The video figures beside the artifact's image-test figures (figures on this video, not a clinical validation)."""
    if not video:
        return
    img = video.get("image_test") or {}
    pf = video["polyp_frames"]
    if pf["n"]:
        of = f", its {str(img['precision']).upper()} checkpoint" if img.get("precision") else ""
        beside = f" (image test {_pct(img.get('accuracy'))}{of})" if img else ""
        pres = (f"; presence {_pct(pf['presence_sensitivity'])}{_ci(pf.get('presence_sensitivity_ci95'))} of them"
                if "presence_sensitivity" in pf else "")
        console.print(f"video, {pf['n']} polyp frames: accuracy {_pct(pf['accuracy'])}{_ci(pf['accuracy_ci95'])}"
                      f"{beside}{pres} (intervals: {pf.get('interval', 'Wilson over frames')})", soft_wrap=True)
    for name, sub in (video.get("per_subtype") or {}).items():
        beside = f" (image test {_pct(sub['image_test_accuracy'])})" if sub.get("image_test_accuracy") is not None else ""
        of = f" of {sub['polyps']} polyp(s)" if sub.get("polyps") else ""
        console.print(f"  {name}: {sub['n']} frames{of}, accuracy {_pct(sub['accuracy'])}{_ci(sub.get('accuracy_ci95'))}"
                      f"{beside}", soft_wrap=True)
    if video.get("per_subtype_note"):
        console.print(f"  per subtype: {video['per_subtype_note']}", soft_wrap=True)
    npf = video["no_polyp_frames"]
    if npf["n"]:
        per_min = npf["false_alarms_per_minute"]
        console.print(f"video, {npf['n']} frames without a polyp: class call on {_pct(npf['class_call_share'])}"
                      f"{_ci(npf['class_call_share_ci95'])}; {npf['false_alarms']} false alarms"
                      f" ({'—' if per_min is None else f'{per_min:.2f}'} per minute; {npf['episode_rule']})",
                      soft_wrap=True)
    neg = video.get("negative_polyps_called")
    if neg and neg["n_polyps"]:
        console.print(f"non-positive polyps with a confident non-positive call on some frame: {neg['with_negative_call']} "
                      f"of {neg['n_polyps']}", soft_wrap=True)
    if video.get("image_test_note"):
        console.print(f"image test: {video['image_test_note']}", soft_wrap=True)


def _print_clinical(labels: dict) -> None:
    """Frame states and per-polyp decisions at the threshold (figures on this video, not a clinical validation)."""
    thr = labels.get("threshold")
    at = f"threshold {thr:.3f} ({labels.get('threshold_source')})" if thr is not None else "no threshold (argmax)"
    fs = labels["frame_states"]["raw"]
    console.print(f"frame states at {at}: coverage {_pct(fs['coverage'])}{_ci(fs.get('coverage_ci95'))}, accuracy of "
                  f"calls {_pct(fs['accuracy'])}, NPV {_pct(fs['npv'])}{_ci(fs.get('npv_ci95'))} "
                  f"({fs['n_negative_calls']} negative calls), PPV {_pct(fs['ppv'])}{_ci(fs.get('ppv_ci95'))}",
                  soft_wrap=True)
    pp = labels.get("per_polyp")
    if pp is None:
        console.print(f"per polyp: {labels.get('per_polyp_note')}", soft_wrap=True)
        return
    console.print(f"per polyp ({pp['n_labelled']} polyps): accuracy at argmax {_pct(pp['accuracy_argmax'])}"
                  f"{_ci(pp.get('accuracy_argmax_ci95'))} vs frame-level {_pct(labels['raw']['accuracy'])}; coverage "
                  f"{_pct(pp['coverage'])}, accuracy of calls {_pct(pp['accuracy'])}, NPV {_pct(pp['npv'])}"
                  f"{_ci(pp.get('npv_ci95'))} ({pp['n_negative_calls']} negative calls)", soft_wrap=True)
