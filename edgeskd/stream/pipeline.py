"""video source → preprocess (CPU or CUDA) → runner → probabilities → smoothing → sinks → stats.

``run_stream(StreamConfig(...))`` is what `edgeskd stream` calls. The decoder runs on its own
thread (``source.VideoSource``); the annotated video is drawn and encoded on another
(``sinks.VideoSink``); this thread preprocesses, runs the model and records.

Latency of a frame = from the moment it left the decoder to the moment its (smoothed) prediction
is ready; it includes waiting in the queue. Output files are renamed into place only if the whole
run succeeds.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeskd.errors import ArtifactError, BackendUnavailable, UsageError, VideoError
from edgeskd.stream.crop import CropTracker, detect_content_area, scale_box
from edgeskd.stream.frames import FramePreprocessor, check_crop, thumbnail_rgb
from edgeskd.stream.smoothing import EmaSmoother
from edgeskd.stream.source import VideoSource, frames_expected, measure_decode_fps, rate_fraction
from edgeskd.stream.stats import FpsMonitor, classification_metrics, stats_dict


@dataclass
class StreamConfig:
    video: str
    engine: str | Path | None = None          # artifact path (or pass runner= to run_stream)
    out: Path | None = None                   # annotated video
    jsonl: Path | None = None                 # per-frame predictions
    stats: Path | None = None                 # stats JSON
    realtime: bool | None = None              # None: real-time for live sources, every frame for files
    preprocess: str = "auto"                  # auto | cpu | cuda
    batch: int = 1
    smooth: float = 0.3                       # EMA weight of the newest frame; 1 = off
    crop: str | Sequence[int] | None = "auto"  # "auto" | "none" | (x, y, w, h)
    crop_every: int = 30                      # frames between content-area estimates
    labels: Path | None = None
    max_frames: int | None = None
    timeout_s: float = 10.0
    threads: int | None = 1                   # runner intra-op threads (CPU backends)
    measure_ceiling: bool = True              # decode-only pass over the same file first
    ceiling_budget_s: float = 5.0


@dataclass
class StreamResult:
    stats: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    exit_code: int = 0


def parse_crop(value: str | Sequence[int] | None) -> str | tuple[int, int, int, int] | None:
    if value is None:
        return None
    if not isinstance(value, str):
        vals = tuple(int(v) for v in value)
    else:
        v = value.strip().lower()
        if v in ("none", ""):
            return None
        if v == "auto":
            return "auto"
        try:
            vals = tuple(int(p) for p in v.split(","))
        except ValueError:
            vals = ()
    if len(vals) != 4 or vals[2] <= 0 or vals[3] <= 0 or min(vals) < 0:
        raise UsageError(f"--crop {value!r}: give auto, none, or x,y,w,h with w,h > 0 (e.g. 200,0,880,720)")
    return vals  # type: ignore[return-value]


def load_stream_runner(engine: str | Path, threads: int | None):
    from edgeskd.runtime.loader import load_runner

    try:
        return load_runner(engine, threads=threads)
    except ArtifactError as e:
        if "metadata" not in str(e):
            raise
        raise ArtifactError(f"{e} (stream needs the model's class names, input size and normalisation)") from None


def _cuda_capable(runner: Any) -> bool:
    return all(hasattr(runner, a) for a in ("infer_device", "input_buffer", "stream", "cu"))


class _Predictor:
    """Preprocess + infer + probabilities for a batch of decoded frames (CPU or CUDA path)."""

    def __init__(self, runner: Any, mode: str) -> None:
        self.runner = runner
        self.meta = runner.metadata
        self.cpu = FramePreprocessor(self.meta)
        self.cuda = None
        if mode == "cuda" or (mode == "auto" and _cuda_capable(runner)):
            if not _cuda_capable(runner):
                raise BackendUnavailable(
                    f"--preprocess cuda needs a GPU runner (a TensorRT .engine); {runner.backend} runs on the CPU — "
                    "use --preprocess cpu"
                )
            from edgeskd.runtime.cuda_preprocess import CudaPreprocessor

            self.cuda = CudaPreprocessor.for_runner(runner)
        self.path = "cuda" if self.cuda is not None else "cpu"

    def __call__(self, items: list[Any], crop) -> np.ndarray:
        if self.cuda is not None:
            for i, it in enumerate(items):
                rgb = it.rgb if it.rgb is not None else it.frame.to_ndarray(format="rgb24")
                self.cuda.run_into_runner(rgb, crop, i)
            return self.runner.infer_device(len(items))
        x = self.cpu([it.frame for it in items], crop, [it.rgb for it in items])
        return self.runner.infer(x)


def _render_factory(meta: Any) -> Callable[[Any, Any], np.ndarray]:
    from edgeskd.stream.overlay import draw_annotation

    def render(item: Any, ann: Any) -> np.ndarray:
        rgb = item.rgb if item.rgb is not None else item.frame.to_ndarray(format="rgb24")
        return draw_annotation(rgb, ann)

    return render


def run_stream(
    cfg: StreamConfig,
    *,
    runner: Any = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> StreamResult:
    warnings: list[str] = []

    def _warn(msg: str) -> None:
        warnings.append(msg)
        if warn is not None:
            warn(msg)

    # -- validate options before any heavy work -------------------------------------------------
    if cfg.batch < 1 or cfg.batch > 256:
        raise UsageError(f"--batch {cfg.batch} must be between 1 and 256")
    if cfg.preprocess not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--preprocess {cfg.preprocess!r} must be auto, cpu or cuda")
    if cfg.max_frames is not None and cfg.max_frames < 1:
        raise UsageError(f"--max-frames {cfg.max_frames} must be >= 1")
    if cfg.crop_every < 1:
        raise UsageError("--crop-every must be >= 1")
    crop_opt = parse_crop(cfg.crop)
    smoother = EmaSmoother(cfg.smooth)
    if cfg.out is not None:
        from edgeskd.data.video_writer import check_video_path

        check_video_path(cfg.out)
    outs = [p for p in (cfg.out, cfg.jsonl, cfg.stats) if p is not None]
    from edgeskd.utils.io import check_output_file

    for p in outs:
        check_output_file(p)
    if len({Path(p).resolve() for p in outs}) != len(outs):
        raise UsageError("--out, --jsonl and --stats must be different files")
    if Path(cfg.video).exists() and any(Path(p).resolve() == Path(cfg.video).resolve() for p in outs):
        raise UsageError("an output path is the input video; choose another output name")

    own_runner = runner is None
    if runner is None:
        if cfg.engine is None:
            raise UsageError("give --engine ARTIFACT (.onnx, .engine or .pt)")
        runner = load_stream_runner(cfg.engine, cfg.threads)
    meta = runner.metadata
    if getattr(runner, "max_batch", None) and cfg.batch > int(runner.max_batch):
        raise UsageError(f"--batch {cfg.batch} exceeds this artifact's max batch {runner.max_batch}; "
                         "lower --batch or rebuild the engine with a larger --max-batch")
    gt: dict[int, int] | None = None
    if cfg.labels is not None:
        from edgeskd.stream.labels import read_frame_labels

        gt = read_frame_labels(cfg.labels, list(meta.class_names))

    with contextlib.ExitStack() as stack:
        if own_runner:
            stack.enter_context(runner)
        else:
            runner.activate()
        predictor = _Predictor(runner, cfg.preprocess)
        realtime = cfg.realtime
        source = VideoSource(cfg.video, realtime=realtime, max_frames=cfg.max_frames, timeout_s=cfg.timeout_s)
        stack.callback(source.close)
        info = source.info
        if source.realtime and cfg.batch > 1:
            raise UsageError("--batch > 1 needs --no-realtime: in real-time mode only the newest frame is processed")
        source.want_rgb = predictor.path == "cuda"

        if crop_opt is None or crop_opt == "auto":
            fixed_crop = None
        else:
            fixed_crop = check_crop(crop_opt, info.width, info.height)
        tracker = CropTracker(info.width, info.height, every=cfg.crop_every) if crop_opt == "auto" else None

        # -- sinks (temporary files, renamed on success) -------------------------------------------
        from edgeskd.utils.io import atomic_path

        sink = jsonl = None
        out_paths: dict[str, str] = {}
        if cfg.out is not None:
            from edgeskd.stream.sinks import VideoSink

            tmp = stack.enter_context(atomic_path(cfg.out))
            sink = stack.enter_context(
                VideoSink(tmp, info.width, info.height, rate_fraction(info.fps), _render_factory(meta),
                          block=not source.realtime)
            )
            out_paths["video"] = str(cfg.out)
        if cfg.jsonl is not None:
            from edgeskd.stream.sinks import JsonlSink

            jsonl = stack.enter_context(JsonlSink(stack.enter_context(atomic_path(cfg.jsonl))))
            out_paths["jsonl"] = str(cfg.jsonl)
        stats_tmp = stack.enter_context(atomic_path(cfg.stats)) if cfg.stats is not None else None

        # decode-only ceiling of the same file, measured before the stream starts (not during it)
        ceiling = None
        ceiling_method = None
        ceiling_cpu = None
        if cfg.measure_ceiling and not info.live:
            m = measure_decode_fps(cfg.video, max_frames=cfg.max_frames, time_budget_s=cfg.ceiling_budget_s)
            ceiling = m["fps"]
            ceiling_cpu = m["cpu_ms_per_frame"]
            ceiling_method = (f"decode-only pass over {m['frames']} frames of the same file, best of FFmpeg "
                              f"threading {m['per_setting']}")

        # -- main loop ----------------------------------------------------------------------------
        names = list(meta.class_names)
        sub_names = list(meta.subclass_names)
        pos = int(meta.positive_class)
        latencies: list[float] = []
        fps_mon = FpsMonitor()
        processed = 0
        y_true: list[int] = []
        y_raw: list[int] = []
        y_smooth: list[int] = []
        crop = fixed_crop
        disp = (0.0, 0.0, -1)   # (fps, latency ms, frame) shown on the annotated video
        from edgeskd.stream.overlay import Annotation
        from edgeskd.runtime.postprocess import class_probabilities, subclass_probabilities

        t_start = time.perf_counter()
        cpu_start = time.thread_time()
        last_progress = 0.0
        source.start()
        interrupted = False
        try:
            while True:
                items = source.get_batch(cfg.batch)
                if not items:
                    break
                if tracker is not None:
                    for it in items:
                        if tracker.due():
                            thumb, sx, sy = thumbnail_rgb(it.frame, rgb=it.rgb)
                            est = detect_content_area(thumb)
                            tracker.update(None if est is None else scale_box(est, sx, sy, it.frame.width, it.frame.height))
                        tracker.step()
                    crop = tracker.box
                frame_w, frame_h = items[0].frame.width, items[0].frame.height
                if (frame_w, frame_h) != (info.width, info.height):
                    # resolution changed mid-stream (some live sources do): re-validate the crop
                    if tracker is not None:
                        tracker = CropTracker(frame_w, frame_h, every=cfg.crop_every)
                        crop = None
                    elif fixed_crop is not None:
                        crop = check_crop(fixed_crop, frame_w, frame_h)
                logits = predictor(items, crop)
                probs = class_probabilities(logits, meta)
                subs = subclass_probabilities(logits, meta)
                t_done = time.perf_counter()
                fps_mon.tick(len(items), t_done)
                for k, it in enumerate(items):
                    p = probs[k]
                    ps = smoother.update(p)
                    lat = t_done - it.t_decoded
                    latencies.append(lat)
                    raw_c, sm_c = int(np.argmax(p)), int(np.argmax(ps))
                    top_sub = int(np.argmax(subs[k])) if subs is not None else None
                    if gt is not None and it.index in gt:
                        y_true.append(gt[it.index])
                        y_raw.append(raw_c)
                        y_smooth.append(sm_c)
                    if jsonl is not None:
                        rec = {
                            "frame": it.index,
                            "time": round(it.time_s, 6),
                            "probs": [round(float(v), 6) for v in p],
                            "smoothed": [round(float(v), 6) for v in ps],
                            "class": names[raw_c],
                            "smoothed_class": names[sm_c],
                            "latency_ms": round(lat * 1000.0, 3),
                        }
                        if subs is not None:
                            rec["subclass"] = sub_names[top_sub]  # type: ignore[index]
                            rec["subclass_probs"] = [round(float(v), 6) for v in subs[k]]
                        if crop is not None:
                            rec["crop"] = list(crop)
                        jsonl.write(rec)
                    if sink is not None:
                        if processed + k - disp[2] >= 8 or disp[2] < 0:   # the numbers on screen update ~4x/s
                            disp = (fps_mon.fps, lat * 1000.0, processed + k)
                        sink.put(it, Annotation(
                            class_name=names[sm_c], prob=float(ps[sm_c]), raw_class_name=names[raw_c],
                            raw_prob=float(p[raw_c]),
                            subclass=sub_names[top_sub] if top_sub is not None else None,
                            subclass_prob=float(subs[k][top_sub]) if subs is not None else None,
                            positive_prob=float(ps[pos]) if pos < len(ps) else 0.0,
                            fps=disp[0], latency_ms=disp[1], crop=crop, is_positive=sm_c == pos,
                        ))
                processed += len(items)
                if on_progress is not None and t_done - last_progress > 0.25:
                    last_progress = t_done
                    on_progress({
                        "processed": processed, "decoded": source.frames_decoded, "dropped": source.frames_dropped,
                        "fps": fps_mon.fps, "latency_ms": latencies[-1] * 1000.0,
                        "class": names[int(np.argmax(smoother.state))] if smoother.state is not None else "-",
                        "prob": float(np.max(smoother.state)) if smoother.state is not None else 0.0,
                    })
        except KeyboardInterrupt:
            # Ctrl-C is how a live stream (camera, RTSP) ends: finish the outputs for the frames
            # processed so far. A second Ctrl-C while they are written aborts and removes them.
            interrupted = True
        t_end = time.perf_counter()
        main_cpu = time.thread_time() - cpu_start
        source.close()

        # -- end of stream: what was lost, and is anything left to write? -------------------------
        if processed == 0:
            why = f": {source.error}" if source.error is not None else ""
            raise VideoError(f"no frame of {cfg.video} could be decoded{why}; is it a complete, supported video?")
        expected = frames_expected(info)
        lost = 0
        if cfg.max_frames is None and expected is not None and source.frames_decoded < expected:
            lost = expected - source.frames_decoded
            if info.frames is None and lost <= max(1, expected // 100):
                lost = 0   # estimated from duration x fps: a frame or two of rounding is not a loss
        if interrupted:
            lost = 0
            _warn(f"stopped by Ctrl-C after {processed} processed frames; the outputs cover those frames")
        elif source.ended_early or lost or source.decode_errors:
            parts = []
            if lost:
                parts.append(f"{lost} of {expected} frames could not be decoded")
            if source.decode_errors:
                parts.append(f"{source.decode_errors} packets failed to decode")
            if source.error is not None:
                parts.append(str(source.error))
            what = "stream ended with an error" if info.live else "looks truncated or damaged"
            _warn(f"{cfg.video} {what}: " + "; ".join(parts)
                  + f"; processed the {source.frames_decoded} frames that decoded (exit status 0: the outputs "
                  "are complete for those frames)")

        wall = t_end - t_start
        labels_block = None
        if gt is not None:
            labels_block = {
                "frames_labelled": len(gt),
                "frames_evaluated": len(y_true),
                "raw": classification_metrics(np.array(y_true), np.array(y_raw), len(names), pos),
                "smoothed": classification_metrics(np.array(y_true), np.array(y_smooth), len(names), pos),
                "positive_class": names[pos],
            }
            if not y_true:
                _warn(f"no processed frame has a label in {cfg.labels}; check its frame numbers")
        src_d = info.to_dict()
        src_d.update({
            "realtime": source.realtime,
            "paced": source.pace,
            "decode_threads": source.decode_threads,
            "frames_expected": expected,
            "frames_lost": lost,
            "interrupted": interrupted,
            "decode_errors": source.decode_errors,
            "ceiling_method": ceiling_method or "decoder thread busy time",
            "preprocess": predictor.path,
            "batch": cfg.batch,
            "crop": list(crop) if crop is not None else None,
            "crop_mode": "auto" if tracker is not None else ("fixed" if fixed_crop else "none"),
            "smooth_alpha": smoother.alpha,
            "engine": str(cfg.engine) if cfg.engine is not None else getattr(runner, "backend", "?"),
            "backend": getattr(runner, "backend", "?"),
            "wall_s": round(wall, 4),
            "video_frames_skipped": sink.frames_skipped if sink is not None else 0,
            # CPU time per frame of each thread: where the time goes, independent of machine load
            # (FFmpeg's own frame threads, with decode threading AUTO, are not included)
            "cpu_ms_per_frame": {
                "decoder_thread": round(source.decoder_cpu_s * 1000.0 / max(source.frames_decoded, 1), 3),
                "inference_thread": round(main_cpu * 1000.0 / max(processed, 1), 3),
                "decode_only_pass": ceiling_cpu,
            },
        })
        if ceiling is None and source.decode_busy_s > 0:
            ceiling = source.frames_decoded / source.decode_busy_s
        stats = stats_dict(
            frames_decoded=source.frames_decoded, frames_processed=processed,
            frames_dropped=source.frames_dropped, fps=processed / wall if wall > 0 else 0.0,
            latencies_s=latencies, decode_fps_ceiling=ceiling, source=src_d, labels=labels_block,
        )
        if stats_tmp is not None:
            import json

            stats_tmp.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
            out_paths["stats"] = str(cfg.stats)
        if jsonl is not None:
            jsonl.close()
        if sink is not None:
            sink.close()
    return StreamResult(stats=stats, warnings=warnings, outputs=out_paths)
