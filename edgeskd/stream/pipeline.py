"""video source → crop → preprocess + infer (CPU or CUDA) → probabilities → smoothing → sinks → stats.

``run_stream(StreamConfig(...))`` is what `edgeskd stream` calls; it wires the stages:

* ``source.VideoSource`` decodes on its own thread and hands over batches of ``DecodedFrame``;
* ``FrameProcessor`` turns a batch into ``result.FrameResult``s: ``crop.FrameCrop`` observes the
  frames, ``predict.Predictor`` preprocesses and infers, ``smoothing.EmaSmoother`` smooths;
* every result goes to each sink's ``write(result)``: ``stats.StreamStats``, ``sinks.JsonlSink`` and
  ``sinks.VideoSink`` (which draws and encodes on its own thread, off the live path).

With a local runner all of it runs in one loop (``_pump``). A runner that keeps requests in flight
(``pipeline_depth`` > 1: ``--server``) gets the loop of ``inflight``: the next frame is taken,
preprocessed and sent while the previous one is on the server, and the answers are completed and
handed to the sinks in frame order, in the thread that received them.

Live latency of a frame = from the moment the decoder handed it over to the moment its (smoothed)
decision is ready; it includes waiting in the queue. The annotated video is recorded off this path:
``write`` only enqueues; in file mode the recorder's back-pressure holds back the decoder (a token
per frame, ``VideoSource.gate``) instead of letting decoded frames wait behind the encoder; in
real-time mode it never blocks (a deep queue; a frame is skipped only when it is full). The stats
report the live latency (``live_latency_ms``; ``latency_ms`` is the same figure under its old name)
and the recording apart (``recording``: frames written / skipped, queue high-water mark, lag).
Output files are renamed into place only if the whole run succeeds.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from edgeskd.errors import ArtifactError, UsageError, VideoError
from edgeskd.stream.crop import FrameCrop
from edgeskd.stream.predict import Predictor
from edgeskd.stream.result import FrameResult, Presence
from edgeskd.stream.smoothing import DEFAULT_HOLD_S, CallHold, EmaSmoother
from edgeskd.stream.source import DecodedFrame, VideoSource, frames_expected, measure_decode_fps, rate_fraction
from edgeskd.stream.stats import FpsMonitor, StreamStats


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
    hold_s: float = DEFAULT_HOLD_S            # a class call shows once it has held this long (s); 0 = at once
    start_gate: Path | None = None            # load tests: after setup touch GATE/ready-<pid>, start at GATE/go
    crop: str | Sequence[int] | None = "auto"  # "auto" | "none" | (x, y, w, h)
    crop_every: int = 30                      # frames between content-area estimates
    labels: Path | None = None
    threshold: float | None = None            # confidence a call needs, in (0.5, 1); None: the artifact's
    max_frames: int | None = None
    timeout_s: float = 10.0
    threads: int | None = 1                   # runner intra-op threads (CPU backends)
    device: str | int | None = None           # auto | cpu | cuda:N (or a GPU index); None = auto
    overwrite: bool | None = None             # False: refuse existing outputs; None: no check (library use)
    measure_ceiling: bool = True              # decode-only pass over the same file first
    ceiling_budget_s: float = 5.0
    server: str | None = None                 # grpc://HOST:PORT: infer on a Triton server (serve.remote)
    model: str | None = None                  # the server's model name


@dataclass
class StreamResult:
    stats: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    exit_code: int = 0
    error: str | None = None                  # why the stream ended early (the outputs cover the frames before)


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


def load_stream_runner(engine: str | Path, threads: int | None, device: str | int | None = None):
    """The runner of ``engine`` on ``device`` (auto | cpu | cuda:N, see ``runtime.loader.device_options``;
    TensorRT: the GPU that runs the engine, and so the CUDA preprocessing bound to it)."""
    from edgeskd.runtime.loader import load_runner

    try:
        return load_runner(engine, threads=threads, device=None if device == "auto" else device)
    except ArtifactError as e:
        if "metadata" not in str(e):
            raise
        raise ArtifactError(f"{e} (stream needs the model's class names, input size and normalisation)") from None


@dataclass
class Submitted:
    """A batch handed to the runner: its frames, the crop it was preprocessed with and the future of
    its logits (``FrameProcessor.submit``; ``complete`` turns it into results)."""

    items: Sequence[DecodedFrame]
    box: tuple[int, int, int, int] | None
    logits: Future


class FrameProcessor:
    """A batch of decoded frames → ``FrameResult``s: crop → preprocess + infer → probabilities →
    smoothing, timed (latency, fps over a sliding window).

    ``processor(items)`` is ``complete(submit(items))``. Split, ``submit`` (crop, preprocess, send) and
    ``complete`` (wait for the logits, probabilities, smoothing) may run on two threads with up to
    ``depth`` batches in between, as long as batches are completed in the order they were submitted
    (the smoother and the ordinals follow that order)."""

    def __init__(self, predictor: Predictor, crop: FrameCrop, smoother: EmaSmoother,
                 threshold: float | None = None, hold: CallHold | None = None) -> None:
        self.predictor, self.crop, self.smoother = predictor, crop, smoother
        self.threshold = threshold
        self.hold = hold if hold is not None else CallHold(0.0)
        self.presence = Presence.of(predictor.meta)   # a model with a "no polyp" class
        self.fps = FpsMonitor()
        self.processed = 0

    @property
    def depth(self) -> int:
        return self.predictor.depth

    @property
    def runner_cpu_s(self) -> float:
        """CPU seconds the runner's own threads spent on requests in flight (``Runner.async_cpu_s``)."""
        return float(getattr(self.predictor.runner, "async_cpu_s", 0.0))

    def __call__(self, items: Sequence[DecodedFrame]) -> list[FrameResult]:
        return self.complete(self.submit(items))

    def submit(self, items: Sequence[DecodedFrame]) -> Submitted:
        box = self.crop.observe(items)
        return Submitted(items, box, self.predictor.submit(items, box))

    def complete(self, sub: Submitted) -> list[FrameResult]:
        """Wait for ``sub``'s logits (its error raises here) → the frames' results, latency stamped now."""
        probs, subs = self.predictor.probabilities(sub.logits.result())
        t_done = time.perf_counter()
        self.fps.tick(len(sub.items), t_done)
        fps = self.fps.fps
        results = [
            FrameResult(frame=it, ordinal=self.processed + k, probs=probs[k], smoothed=self.smoother.update(probs[k], it.time_s),
                        subclass_probs=None if subs is None else subs[k], latency_s=t_done - it.t_decoded,
                        fps=fps, crop=sub.box, threshold=self.threshold, presence=self.presence)
            for k, it in enumerate(sub.items)
        ]
        for r in results:   # a class call shows once it has held (smoothing.CallHold)
            r.state = self.hold.update(r.state, r.frame.time_s)
        self.processed += len(sub.items)
        return results


GATE_TIMEOUT_S = 300.0


def wait_at_gate(gate: Path | str | None, timeout_s: float = GATE_TIMEOUT_S) -> None:
    """Load tests (``serve.loadtest``): say this stream is set up (``GATE/ready-<pid>``) and wait for
    ``GATE/go``, so that N streams start pacing together, not while the others still load."""
    if gate is None:
        return
    gate = Path(gate)
    (gate / f"ready-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout_s
    while not (gate / "go").exists():
        if time.monotonic() > deadline:
            raise UsageError(f"--start-gate {gate}: no 'go' file after {timeout_s:.0f} s")
        time.sleep(0.005)


def _check_config(cfg: StreamConfig) -> tuple[str | tuple[int, int, int, int] | None, EmaSmoother, CallHold]:
    """Validate the options before any heavy work; returns the parsed crop, the smoother and the hold."""
    if cfg.batch < 1 or cfg.batch > 256:
        raise UsageError(f"--batch-size {cfg.batch} must be between 1 and 256")
    if cfg.preprocess not in ("auto", "cpu", "cuda"):
        raise UsageError(f"--preprocess {cfg.preprocess!r} must be auto, cpu or cuda")
    if cfg.max_frames is not None and cfg.max_frames < 1:
        raise UsageError(f"--max-frames {cfg.max_frames} must be >= 1")
    if cfg.start_gate is not None and not Path(cfg.start_gate).is_dir():
        raise UsageError(f"--start-gate {cfg.start_gate} is not a directory")
    if cfg.crop_every < 1:
        raise UsageError("--crop-every must be >= 1")
    if cfg.threshold is not None:
        from edgeskd.clinical.operating_point import validate_threshold

        cfg.threshold = validate_threshold(cfg.threshold)
    crop_opt = parse_crop(cfg.crop)
    smoother = EmaSmoother(cfg.smooth)
    hold = CallHold(cfg.hold_s)
    if cfg.out is not None:
        from edgeskd.data.video_writer import check_video_path

        check_video_path(cfg.out)
    outs = [p for p in (cfg.out, cfg.jsonl, cfg.stats) if p is not None]
    from edgeskd.utils.io import check_output_file

    for p in outs:
        check_output_file(p, overwrite=cfg.overwrite)
    if len({Path(p).resolve() for p in outs}) != len(outs):
        raise UsageError("--out, --jsonl and --stats must be different files")
    if Path(cfg.video).exists() and any(Path(p).resolve() == Path(cfg.video).resolve() for p in outs):
        raise UsageError("an output path is the input video; choose another output name")
    return crop_opt, smoother, hold


def _open_runner(cfg: StreamConfig, runner: Any) -> Any:
    if runner is None and cfg.server is not None:
        if cfg.engine is not None:
            raise UsageError("give either --engine (run here) or --server (run on a Triton server), not both")
        from edgeskd.serve.remote import RemoteRunner

        runner = RemoteRunner(cfg.server, cfg.model, timeout_s=cfg.timeout_s)
    elif cfg.model is not None and cfg.server is None:
        raise UsageError("--model names a model on a server; give --server grpc://HOST:PORT too")
    if runner is None:
        if cfg.engine is None:
            raise UsageError("give --engine ARTIFACT (.onnx, .engine or .pt)")
        runner = load_stream_runner(cfg.engine, cfg.threads, cfg.device)
    if runner.max_batch and cfg.batch > int(runner.max_batch):
        if cfg.server is not None:
            raise UsageError(f"--batch-size {cfg.batch} exceeds the server model's max batch {runner.max_batch}; "
                             "lower --batch-size or serve it with a larger --max-batch-size")
        raise UsageError(f"--batch-size {cfg.batch} exceeds this artifact's max batch {runner.max_batch}; "
                         "lower --batch-size or rebuild the engine with a larger --max-batch-size")
    return runner


def labels_range_warnings(truth: Any, index_range: list[int] | None, *, complete: bool, slack: int = 0) -> list[str]:
    """Signs that a labels file is not this video's, or counts from 1: rows past the last frame of a
    video that played to its end, or no row for frame 0 while frame 1 has one."""
    frames = set(truth.labels) | set(truth.no_polyp)
    if not frames or not index_range:
        return []
    out = []
    last = max(frames)
    if complete and last > index_range[1] + slack:
        beyond = sum(1 for f in frames if f > index_range[1])
        out.append(f"the labels run to frame {last} but the video ended at frame {index_range[1]} ({beyond} rows "
                   "past its end): are they this video's labels?")
    if index_range[0] == 0 and 0 not in frames and 1 in frames:
        out.append("the labels have no row for frame 0 but one for frame 1: frame numbers count from 0 "
                   "(the first frame is 0)")
    return out


def stream_threshold(cfg: StreamConfig, meta: Any) -> tuple[float | None, str]:
    """(the confidence threshold of the frame states and polyp decisions, where it comes from)."""
    if cfg.threshold is not None:
        return cfg.threshold, "--threshold"
    if meta.threshold is not None:
        return float(meta.threshold), "artifact"
    return None, "none: the artifact carries no threshold; every frame and polyp gets its argmax class"


def read_ground_truth(cfg: StreamConfig, meta: Any):
    """The ``--labels`` ground truth (``labels.FrameTruth``), or None without it."""
    if cfg.labels is None:
        return None
    from edgeskd.stream.labels import read_truth

    return read_truth(cfg.labels, list(meta.class_names), getattr(meta, "background_class", None),
                      list(getattr(meta, "subclass_names", None) or []))


@dataclass
class _Outputs:
    """The sinks of the files asked for (temporary files, renamed when the run succeeds)."""

    paths: dict[str, str] = field(default_factory=dict)
    video: Any = None
    jsonl: Any = None
    stats_tmp: Path | None = None

    @classmethod
    def open(cls, cfg: StreamConfig, stack: contextlib.ExitStack, meta: Any, info: Any, realtime: bool) -> "_Outputs":
        from edgeskd.stream.sinks import JsonlSink, VideoSink
        from edgeskd.utils.io import atomic_path

        self = cls()
        if cfg.out is not None:
            tmp = stack.enter_context(atomic_path(cfg.out))
            self.video = stack.enter_context(
                VideoSink(tmp, info.width, info.height, rate_fraction(info.fps), meta, block=not realtime))
            self.paths["video"] = str(cfg.out)
        if cfg.jsonl is not None:
            self.jsonl = stack.enter_context(JsonlSink(stack.enter_context(atomic_path(cfg.jsonl)), meta))
            self.paths["jsonl"] = str(cfg.jsonl)
        if cfg.stats is not None:
            self.stats_tmp = stack.enter_context(atomic_path(cfg.stats))
        return self

    @property
    def sinks(self) -> list[Any]:
        return [s for s in (self.jsonl, self.video) if s is not None]

    def finish(self, stats: dict[str, Any], stats_path: Path | None) -> None:
        if self.stats_tmp is not None:
            import json

            self.stats_tmp.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
            self.paths["stats"] = str(stats_path)
        for sink in self.sinks:
            sink.close()


@dataclass
class _Ceiling:
    """Decode-only fps of the same file, measured before the stream starts (not during it)."""

    fps: float | None = None
    method: str | None = None
    cpu_ms_per_frame: Any = None

    @classmethod
    def measure(cls, cfg: StreamConfig, info: Any) -> "_Ceiling":
        if not cfg.measure_ceiling or info.live:
            return cls()
        best = measure_decode_fps(cfg.video, max_frames=cfg.max_frames, time_budget_s=cfg.ceiling_budget_s)
        return cls(best["fps"], f"decode-only pass over {best['frames']} frames of the same file, best of FFmpeg "
                                f"threading {best['per_setting']}", best["cpu_ms_per_frame"])


@dataclass
class _Run:
    wall_s: float
    cpu_s: float          # CPU time of the inference work: this thread (+ completing and requests elsewhere)
    interrupted: bool
    lost: Exception | None = None   # the runner's server stopped answering (ServerLost)


class _Progress:
    """``on_progress`` at most every 0.25 s: counts, fps, latency, the smoothed class."""

    def __init__(self, callback: Callable[[dict[str, Any]], None], source: VideoSource, meta: Any) -> None:
        self.callback, self.source, self.names = callback, source, list(meta.class_names)
        self.last = 0.0

    def __call__(self, r: FrameResult) -> None:
        now = time.perf_counter()
        if now - self.last <= 0.25:
            return
        self.last = now
        from edgeskd.clinical.operating_point import NO_POLYP, NO_POLYP_CALL

        no_polyp = r.state == NO_POLYP_CALL
        sm = r.smoothed if r.presence is None else r.presence.conditional_full(r.smoothed)
        self.callback({
            "processed": r.ordinal + 1, "decoded": self.source.frames_decoded, "dropped": self.source.frames_dropped,
            "fps": r.fps, "latency_ms": r.latency_s * 1000.0,
            "class": NO_POLYP if no_polyp else self.names[r.smoothed_pred],
            "prob": float(r.presence_probability(smoothed=True)) if no_polyp else float(sm.max()),
        })


def _pump(source: VideoSource, process: FrameProcessor, sinks: list[Any], batch: int,
          progress: _Progress | None) -> _Run:
    """Decode → process → every sink, until the source ends. Ctrl-C is how a live stream (camera,
    RTSP) ends: the outputs are then finished for the frames processed so far (a second Ctrl-C
    while they are written aborts and removes them). A runner with requests in flight
    (``pipeline_depth`` > 1, a remote one) gets the loop of ``stream.inflight``."""
    if process.depth > 1:
        from edgeskd.stream.inflight import pump_in_flight

        return _Run(*pump_in_flight(source, process, sinks, batch, progress))
    t_start = time.perf_counter()
    cpu_start = time.thread_time()
    source.start()
    interrupted = False
    lost: Exception | None = None
    from edgeskd.errors import ServerLost

    try:
        while items := source.get_batch(batch):
            results = process(items)
            for r in results:
                for sink in sinks:
                    sink.write(r)
            if progress is not None:
                progress(results[-1])
    except KeyboardInterrupt:
        interrupted = True
    except ServerLost as e:   # a remote runner's server died: finish the outputs up to this frame
        lost = e
    return _Run(time.perf_counter() - t_start, time.thread_time() - cpu_start, interrupted, lost)


def _frames_lost(cfg: StreamConfig, source: VideoSource, processed: int, interrupted: bool,
                 warn: Callable[[str], None], *, ended_by_server: bool = False) -> tuple[int | None, int]:
    """(frames expected, frames lost) at the end of the stream; says what was lost."""
    info = source.info
    if processed == 0:
        why = f": {source.error}" if source.error is not None else ""
        raise VideoError(f"no frame of {cfg.video} could be decoded{why}; is it a complete, supported video?")
    expected = frames_expected(info)
    lost = 0
    if cfg.max_frames is None and expected is not None and source.frames_decoded < expected:
        lost = expected - source.frames_decoded
        if info.frames is None and lost <= max(1, expected // 100):
            lost = 0   # estimated from duration x fps: a frame or two of rounding is not a loss
    if ended_by_server:   # the caller reports it (one error line)
        return expected, 0
    if interrupted:
        warn(f"stopped by Ctrl-C after {processed} processed frames; the outputs cover those frames")
        return expected, 0
    if source.ended_early or lost or source.decode_errors:
        parts = []
        if lost:
            parts.append(f"{lost} of {expected} frames could not be decoded")
        if source.decode_errors:
            parts.append(f"{source.decode_errors} packets failed to decode")
        if source.error is not None:
            parts.append(str(source.error))
        what = "stream ended with an error" if info.live else "looks truncated or damaged"
        warn(f"{cfg.video} {what}: " + "; ".join(parts)
             + f"; processed the {source.frames_decoded} frames that decoded (exit status 0: the outputs "
             "are complete for those frames)")
    return expected, lost


def _source_summary(cfg: StreamConfig, runner: Any, source: VideoSource, process: FrameProcessor, run: _Run,
                    ceiling: _Ceiling, outputs: _Outputs, expected: int | None, lost: int) -> dict[str, Any]:
    """The stats JSON's "source" block: the source, the options in effect and where the time went."""
    src = source.info.to_dict()
    crop = process.crop
    src.update({
        "realtime": source.realtime,
        "paced": source.pace,
        "decode_threads": source.decode_threads,
        "frames_expected": expected,
        "frames_lost": lost,
        "interrupted": run.interrupted,
        "decode_errors": source.decode_errors,
        "ceiling_method": ceiling.method or "decoder thread busy time",
        "preprocess": process.predictor.path,
        "pipeline_depth": process.depth,   # batches in flight at most (1: infer in the loop thread)
        "batch": cfg.batch,
        "crop": list(crop.box) if crop.box is not None else None,
        "crop_mode": crop.mode,
        "smooth_alpha": process.smoother.alpha,
        "hold_s": process.hold.hold_s,
        "threshold": process.threshold,
        "engine": str(cfg.engine) if cfg.engine is not None else runner.backend,
        "backend": runner.backend,
        "wall_s": round(run.wall_s, 4),
        "video_frames_skipped": outputs.video.frames_skipped if outputs.video is not None else 0,
        # CPU time per frame of each thread: where the time goes, independent of machine load
        # (FFmpeg's own frame threads, with decode threading AUTO, are not included); the inference
        # thread with requests in flight: submitting, the requests on the runner's threads and
        # completing, wherever they ran
        "cpu_ms_per_frame": {
            "decoder_thread": round(source.decoder_cpu_s * 1000.0 / max(source.frames_decoded, 1), 3),
            "inference_thread": round(run.cpu_s * 1000.0 / max(process.processed, 1), 3),
            "decode_only_pass": ceiling.cpu_ms_per_frame,
        },
    })
    return src


def run_stream(
    cfg: StreamConfig,
    *,
    runner: Any = None,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> StreamResult:
    """Run ``cfg`` end to end; ``runner``: an already loaded runner instead of ``cfg.engine`` (the
    caller keeps it). ``warn`` hears each warning as it happens; the result lists them too."""
    warnings: list[str] = []

    def _warn(msg: str) -> None:
        warnings.append(msg)
        if warn is not None:
            warn(msg)

    crop_opt, smoother, hold = _check_config(cfg)
    own_runner = runner is None
    runner = _open_runner(cfg, runner)
    meta = runner.metadata
    truth = read_ground_truth(cfg, meta)
    threshold, threshold_source = stream_threshold(cfg, meta)

    with contextlib.ExitStack() as stack:
        if own_runner:
            stack.enter_context(runner)
        else:
            runner.activate()
        predictor = Predictor(runner, cfg.preprocess, _warn)
        stack.callback(predictor.close)
        source = VideoSource(cfg.video, realtime=cfg.realtime, max_frames=cfg.max_frames, timeout_s=cfg.timeout_s)
        stack.callback(source.close)
        info = source.info
        if source.realtime and cfg.batch > 1:
            raise UsageError("--batch-size > 1 needs --no-realtime: in real-time mode only the newest frame is processed")
        process = FrameProcessor(predictor, FrameCrop(crop_opt, info.width, info.height, every=cfg.crop_every),
                                 smoother, threshold, hold)
        outputs = _Outputs.open(cfg, stack, meta, info, source.realtime)
        if outputs.video is not None and not source.realtime:
            source.gate = outputs.video.tokens   # the recorder holds back decoding, not decoded frames
        ceiling = _Ceiling.measure(cfg, info)
        stats = StreamStats(meta.class_names, meta.positive_class, truth.labels if truth else None,
                            polyp_ids=truth.polyp_ids if truth else None,
                            polyp_names=truth.polyp_names if truth else None, threshold=threshold,
                            threshold_source=threshold_source, no_polyp=truth.no_polyp if truth else None,
                            subclasses=truth.subclasses if truth else None, fps=info.fps, meta=meta)
        progress = _Progress(on_progress, source, meta) if on_progress is not None else None
        wait_at_gate(cfg.start_gate)
        cpu0 = time.process_time()
        run = _pump(source, process, [stats, *outputs.sinks], cfg.batch, progress)
        stream_cpu_s = time.process_time() - cpu0
        source.close()
        if run.lost is not None and stats.processed == 0:
            raise run.lost

        expected, lost = _frames_lost(cfg, source, stats.processed, run.interrupted, _warn,
                                      ended_by_server=run.lost is not None)
        if truth is not None and not stats.y_true and not stats.empty_frames:
            _warn(f"no processed frame has a label in {cfg.labels}; check its frame numbers")
        elif truth is not None:
            # real time: the last frames may be dropped, so a second of rows past the end is not a sign
            slack = int(round(info.fps or 30)) if source.realtime else 0
            complete = not (run.interrupted or cfg.max_frames or run.lost is not None)
            for msg in labels_range_warnings(truth, stats.index_range, complete=complete, slack=slack):
                _warn(msg)
        if ceiling.fps is None and source.decode_busy_s > 0:
            ceiling.fps = source.frames_decoded / source.decode_busy_s
        summary = stats.summary(
            frames_decoded=source.frames_decoded, frames_dropped=source.frames_dropped, wall_s=run.wall_s,
            decode_fps_ceiling=ceiling.fps,
            source=_source_summary(cfg, runner, source, process, run, ceiling, outputs, expected, lost),
        )
        summary["source"]["stream_cpu_s"] = round(stream_cpu_s, 4)   # this process, from the first frame on
        if run.lost is not None:
            summary["source"]["server_lost"] = str(run.lost)
        if outputs.video is not None:
            outputs.video.close()   # flushed before the stats are written: the recording figures are final
            summary["recording"] = outputs.video.recording_stats()
            if summary["recording"]["frames_skipped"]:
                _warn(f"the recorder fell more than {outputs.video.queue_size} frames behind and skipped "
                      f"{summary['recording']['frames_skipped']} frames of the annotated video (the live path "
                      "was not slowed)")
        outputs.finish(summary, cfg.stats)
    if run.lost is not None:
        return StreamResult(stats=summary, warnings=warnings, outputs=outputs.paths,
                            exit_code=getattr(run.lost, "exit_code", 1),
                            error=f"{run.lost}; the outputs cover the {stats.processed} frames before")
    return StreamResult(stats=summary, warnings=warnings, outputs=outputs.paths)
