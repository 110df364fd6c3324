"""`edgeskd quickstart`: the whole job on the embedded synthetic default, one command.

synth data → train (teacher + plain / KD / SKD students) → export the SKD student → build the
INT8 artifact (TensorRT with a GPU, else ONNX Runtime) → bench → synthetic endoscopy video →
stream it with the INT8 artifact and the video's ground truth → a summary table.

Each step runs the same CLI command a user would type (printed before it runs, so any step can be
repeated by hand), in this process, writing into ``WORKDIR``; the summary reads the files the
steps wrote (metrics.json, bench.json, stream.json). The steps come from the command table in
``edgeskd.cli.commands``, not from the app that registers this command.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable

import typer

from edgeskd.cli.commands import steps_app
from edgeskd.cli.common import cli_command, console
from edgeskd.errors import EdgeSKDError, UsageError


class StepFailed(EdgeSKDError):
    """A quickstart step failed; its own message was printed above."""

    exit_code = 8


@dataclass(frozen=True)
class Profile:
    synth_n: int
    synth_size: int
    train_preset: str
    calib_size: int
    bench_iters: int
    bench_batches: str
    video_seconds: float
    video_size: str
    train_extra: tuple[str, ...] = ()
    video_extra: tuple[str, ...] = ()


PROFILES = {
    "fast": Profile(synth_n=7800, synth_size=48, train_preset="fast", calib_size=300, bench_iters=50,
                    bench_batches="1,8", video_seconds=55.0, video_size="640x360",
                    video_extra=("--fps", "15")),  # 22 polyps (figures with an interval worth reading), 825 frames
    "full": Profile(synth_n=3000, synth_size=128, train_preset="default", calib_size=512, bench_iters=200,
                    bench_batches="1,8,32", video_seconds=55.0, video_size="1280x720"),
    # the test suite's end-to-end check: every step, tiny sizes
    "smoke": Profile(synth_n=160, synth_size=32, train_preset="fast", calib_size=64, bench_iters=3,
                     bench_batches="1", video_seconds=1.0, video_size="192x128",
                     train_extra=("--epochs", "1", "--teacher-epochs", "1", "--img-size", "32"),
                     video_extra=("--render-size", "64")),
}


@dataclass
class StepRecord:
    name: str
    argv: list[str]
    seconds: float
    exit_code: int


@dataclass
class QuickstartResult:
    workdir: Path
    steps: list[StepRecord] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _invoke(argv: list[str]) -> int:
    """Run one edgeskd step command in-process, exactly as the CLI would (errors printed the same
    way); returns its exit code."""
    import sys

    saved = sys.argv   # what a step records as its command (train's report.md) is the step's own
    sys.argv = ["edgeskd", *argv]
    try:
        typer.main.get_command(steps_app()).main(args=argv, prog_name="edgeskd", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def run_quickstart(workdir: str | Path, *, profile: str = "fast",
                   say: Callable[[str], None] = print, seed: int = 0) -> QuickstartResult:
    if profile not in PROFILES:
        raise UsageError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    p = PROFILES[profile]
    wd = Path(workdir)
    from edgeskd.utils.io import ensure_writable_dir

    marker = wd / ".edgeskd-quickstart"   # written first: a stopped or failed quickstart's folder is ours too
    others = [e for e in wd.iterdir() if e.name != "data"] if wd.is_dir() else []   # data/ has a check of its own
    if others and not (marker.is_file() or (wd / "quickstart.json").is_file()):
        raise UsageError(f"{wd} holds files and is not a quickstart folder; quickstart writes and replaces data/, "
                         "run/, engines/ and more there: give a new --workdir")
    ensure_writable_dir(wd)
    marker.write_text("a folder edgeskd quickstart writes and replaces\n", encoding="utf-8")
    res = QuickstartResult(workdir=wd)
    data, run, eng = wd / "data", wd / "run", wd / "engines"
    onnx = eng / "student-skd.onnx"
    video = wd / "video.mp4"

    def step(name: str, argv: list[str], ok_codes: tuple[int, ...] = (0,)) -> int:
        say(f"\n[bold]== {len(res.steps) + 1}. {name}[/]  [dim]$ edgeskd {' '.join(shlex.quote(a) for a in argv)}[/]")
        t0 = time.perf_counter()
        code = _invoke(argv)
        res.steps.append(StepRecord(name, argv, time.perf_counter() - t0, code))
        if code == 130:   # the step was stopped with Ctrl-C: stop here too, as an interruption
            raise KeyboardInterrupt
        if code not in ok_codes:
            raise StepFailed(f"quickstart step '{name}' failed (exit {code}); fix the problem above and "
                             f"re-run it with: edgeskd {' '.join(shlex.quote(a) for a in argv)}")
        return code

    t_all = time.perf_counter()
    want = {"n": p.synth_n, "size": p.synth_size, "seed": seed}
    have = _synth_params(data)
    if have == want:
        say(f"\n[bold]== synthetic data[/]: reusing {data} (same n, size and seed)")
    else:
        synth = ["synth", str(data), "--n", str(p.synth_n), "--img-size", str(p.synth_size), "--seed", str(seed)]
        if data.exists() and any(data.iterdir()):
            if have is None:
                raise UsageError(f"{data} exists and is not a synthetic set written by quickstart; "
                                 "give another --workdir or remove it")
            synth.append("--overwrite")   # our own earlier set, for another profile or seed
        step("synthetic data", synth)
    step("train teacher + students", ["train", "--data", str(data), "--preset", p.train_preset, "--out", str(run),
                                      "--seed", str(seed), "--overwrite", *p.train_extra])
    step("export SKD student to ONNX", ["export", str(run / "student-skd.pt"), "--out", str(onnx),
                                         "--overwrite"])
    t_build = time.time()
    code = step("build INT8 artifact", ["build-engine", str(onnx), "--precision", "int8",
                                        "--calib-size", str(p.calib_size),
                                        "--calib-dir", str(wd / "calibration"), "--data", str(data),
                                        "--overwrite"], ok_codes=(0, 6))
    built = _built_artifact(eng, since=t_build) if code == 0 else None
    stream_engine = built if built is not None else onnx
    if code == 6:
        res.notes.append("the INT8 artifact failed the accuracy gate; streaming with the FP32 ONNX")
    step("benchmark", ["bench", str(run), str(eng), "--out", str(wd / "bench.json"), "--iters", str(p.bench_iters),
                       "--batch-sizes", p.bench_batches, "--max-seconds", "3", "--threads", "2", "--overwrite"])
    step("synthetic endoscopy video", ["synth-video", str(video), "--seconds", str(p.video_seconds),
                                       "--resolution", p.video_size, "--seed", str(seed), "--overwrite",
                                       *p.video_extra])
    step("stream the video", ["stream", str(video), "--engine", str(stream_engine), "--overwrite",
                              "--labels", str(wd / "video.labels.csv"), "--crop", "auto",
                              "--out", str(wd / "annotated.mp4"), "--jsonl", str(wd / "predictions.jsonl"),
                              "--stats", str(wd / "stream.json")])
    res.summary = summarize(wd, stream_engine)
    res.summary["total_seconds"] = time.perf_counter() - t_all
    from edgeskd.utils.io import write_json_atomic

    write_json_atomic(wd / "quickstart.json", {
        "profile": profile, "summary": res.summary, "notes": res.notes,
        "steps": [{"name": s.name, "argv": ["edgeskd", *s.argv], "seconds": round(s.seconds, 2),
                   "exit_code": s.exit_code} for s in res.steps],
    })
    return res


def _synth_params(data: Path) -> dict[str, int] | None:
    """n, size and seed of a synthetic set written by `edgeskd synth` (its dataset.json), else None."""
    gen = _load(data / "dataset.json").get("generator")
    if not isinstance(gen, dict):
        return None
    return {k: gen.get(k) for k in ("n", "size", "seed")}


def _built_artifact(eng: Path, since: float) -> Path | None:
    """The artifact this build-engine run wrote, read from the report it writes beside it
    (``<artifact>.json``; a CPU artifact is named after the precision that won). Reports older
    than this run are ignored, so an artifact left by an earlier run is never picked."""
    for report in sorted(eng.glob("*.json")):
        if report.stat().st_mtime < since - 1:
            continue
        art = _load(report).get("artifact")
        if art and Path(art).is_file():
            return Path(art)
    return None


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _video_summary(video: dict[str, Any], polyp: dict[str, Any]) -> dict[str, Any]:
    """The stream's video figures beside the model's image-test figures (fractions)."""
    pf, npf = video.get("polyp_frames") or {}, video.get("no_polyp_frames") or {}
    img = video.get("image_test") or {}
    return {
        "polyp_frame_accuracy": pf.get("accuracy"), "polyp_frame_accuracy_ci95": pf.get("accuracy_ci95"),
        "presence_sensitivity": pf.get("presence_sensitivity"),
        "image_test_accuracy": img.get("accuracy"),
        "per_polyp_accuracy": polyp.get("accuracy_argmax"), "per_polyp_accuracy_ci95": polyp.get("accuracy_argmax_ci95"),
        "no_polyp_frames": npf.get("n"), "class_call_share_no_polyp": npf.get("class_call_share"),
        "false_alarms": npf.get("false_alarms"), "false_alarms_per_minute": npf.get("false_alarms_per_minute"),
        "episode_rule": npf.get("episode_rule"),
        "negative_polyps_called": video.get("negative_polyps_called"),
    }


_STREAM_RATES = ("frame_f1_raw", "frame_f1_smoothed", "frame_accuracy_smoothed", "frame_accuracy_raw",
                 "polyp_accuracy_argmax", "polyp_accuracy_called", "polyp_coverage", "polyp_frame_accuracy",
                 "polyp_frame_accuracy_ci95", "presence_sensitivity", "image_test_accuracy", "per_polyp_accuracy",
                 "per_polyp_accuracy_ci95", "class_call_share_no_polyp")


def _stream_percent(d: dict[str, Any]) -> dict[str, Any]:
    """The stream's rates (fractions in stream.json) in percent, as the training figures are: one unit
    in quickstart.json."""
    def pct(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [pct(x) for x in v]
        return None if v is None else round(100.0 * float(v), 2)

    out = {k: (pct(v) if k in _STREAM_RATES else v) for k, v in d.items()}
    if isinstance(out.get("video"), dict):
        out["video"] = {k: (pct(v) if k in _STREAM_RATES else v) for k, v in out["video"].items()}
    return out


def summarize(wd: Path, stream_engine: Path) -> dict[str, Any]:
    metrics = _load(wd / "run" / "metrics.json")
    bench = _load(wd / "bench.json")
    stream = _load(wd / "stream.json")
    models = {}
    for name, m in (metrics.get("models") or {}).items():
        cal, op = m.get("calibration") or {}, m.get("operating_point") or {}
        models[name] = {"f1": m.get("f1"), "accuracy": m.get("accuracy"), "balanced_accuracy": m.get("balanced_accuracy"),
                        "sensitivity": m.get("recall"), "specificity": m.get("specificity"), "auc": m.get("auc"),
                        "params": m.get("params"), "ece": cal.get("ece"),
                        "ece_calibrated": cal.get("ece_calibrated"), "ece_one_temperature": cal.get("ece_one_temperature"),
                        "calibration_method": cal.get("method"), "threshold": op.get("threshold"),
                        "coverage": op.get("coverage"), "npv": op.get("npv"), "npv_ci95": op.get("npv_ci95")}
    rows = bench.get("rows") or bench.get("results") or []
    bench_rows = [{"name": r.get("name"), "backend": r.get("backend"), "precision": r.get("precision"),
                   "f1": r.get("f1"), "latency_p50_ms": r.get("latency_p50_ms"), "status": r.get("status")}
                  for r in rows if isinstance(r, dict)]
    lab = stream.get("labels") or {}
    comparisons = {k: {f: c.get(f) for f in ("mean", "ci95", "excludes_zero", "n_seeds")}
                   for k, c in (metrics.get("comparisons") or {}).items() if k in ("skd-kd", "skd-none")}
    polyp = lab.get("per_polyp") or {}
    video = lab.get("video") or {}
    return {
        "units": {"rates": "percent (F1, accuracy, AUC, ECE, NPV, coverage, shares; 95 % intervals too)",
                  "latency": "ms", "false_alarms_per_minute": "per minute of polyp-free video",
                  "threshold": "probability (0-1)", "seconds": "s"},
        "models": models,
        "comparisons": comparisons,
        "bench": bench_rows,
        "stream": _stream_percent({
            "engine": str(stream_engine),
            "fps": stream.get("fps"),
            "decode_fps_ceiling": stream.get("decode_fps_ceiling"),
            "latency_ms": stream.get("latency_ms"),
            "live_latency_ms": stream.get("live_latency_ms") or stream.get("latency_ms"),
            "frames_dropped": stream.get("frames_dropped"),
            "recording": stream.get("recording"),
            "video": _video_summary(video, polyp),
            "frame_f1_raw": (lab.get("raw") or {}).get("f1"),
            "frame_f1_smoothed": (lab.get("smoothed") or {}).get("f1"),
            "frame_accuracy_smoothed": (lab.get("smoothed") or {}).get("accuracy"),
            "frame_accuracy_raw": (lab.get("raw") or {}).get("accuracy"),
            "polyp_accuracy_argmax": polyp.get("accuracy_argmax"),
            "polyp_accuracy_called": polyp.get("accuracy"),
            "polyp_coverage": polyp.get("coverage"),
            "threshold": lab.get("threshold"),
        }),
        "artifacts": {
            "data": str(wd / "data"), "run": str(wd / "run"), "engines": str(wd / "engines"),
            "bench": str(wd / "bench.json"), "video": str(wd / "video.mp4"),
            "annotated_video": str(wd / "annotated.mp4"), "stream_stats": str(wd / "stream.json"),
        },
    }

@cli_command
def quickstart(
    workdir: Annotated[Path, typer.Option("--workdir", help="Where every artifact goes.")] = Path("quickstart"),
    fast: Annotated[bool, typer.Option("--fast/--full", help="fast: the few-minute CPU run; full: the full recipe.")] = True,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed for data, training and video.")] = 0,
) -> None:
    """synth data → train → export → build-engine → bench → synth-video → stream, then a summary."""
    from rich.table import Table

    res = run_quickstart(workdir, profile="fast" if fast else "full", say=console.print, seed=seed)
    s = res.summary
    table = Table(title=f"quickstart summary ({'fast' if fast else 'full'}, {s['total_seconds'] / 60:.1f} min)",
                  title_justify="left")
    for col in ("what", "F1", "latency p50 ms", "fps"):
        table.add_column(col, justify="left" if col == "what" else "right")

    def f(v, fmt="{:.2f}"):
        return "—" if v is None else fmt.format(v)

    for name, m in s["models"].items():
        table.add_row(f"{name} (test split; accuracy {f(m.get('accuracy'), '{:.1f}')}, balanced "
                      f"{f(m.get('balanced_accuracy'), '{:.1f}')}, AUC {f(m.get('auc'), '{:.1f}')})", f(m["f1"]), "", "")
    for key, label in (("skd-kd", "SKD − KD"), ("skd-none", "SKD − plain")):
        c = s.get("comparisons", {}).get(key)
        if c and c.get("ci95"):
            lo, hi = c["ci95"]
            table.add_row(f"{label} (test F1, paired bootstrap 95 % CI over test images"
                          f"{'; one seed' if c.get('n_seeds') == 1 else ''})",
                          f"{c['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]", "", "")
    for r in s["bench"]:
        if r.get("precision") == "int8" or str(r.get("name", "")).endswith(("int8", ".engine")):
            table.add_row(f"{r['name']} [{r['backend']} {r['precision']}]", f(r["f1"]), f(r["latency_p50_ms"]), "")
    st = s["stream"]
    lat = (st.get("live_latency_ms") or {}).get("p50")
    frame_f1 = st.get("frame_f1_smoothed")
    table.add_row(f"stream {Path(st['engine']).name} (frame F1 smoothed; live latency, the annotated video "
                  "recorded off the live path)",
                  f(frame_f1), f(lat), f(st["fps"], "{:.1f}"))
    console.print(table)
    _print_clinical(s)
    for note in res.notes:
        console.print(f"[yellow]note:[/] {note}")
    for k, v in s["artifacts"].items():
        console.print(f"{k}: {v}")
    console.print(f"steps and summary: {Path(workdir) / 'quickstart.json'}")


def _print_video(st: dict) -> None:
    """Live latency apart from the recording, and the video figures beside the image test."""
    def pct(v):   # quickstart.json holds percent
        return "—" if v is None else f"{v:.1f} %"

    def ci(c):
        return "" if not c else f" [{c[0]:.1f}, {c[1]:.1f}]"

    lat, rec = st.get("live_latency_ms") or {}, st.get("recording") or {}
    if lat.get("p50") is not None:
        console.print(f"stream live latency (frame decoded → decision): p50 {lat['p50']} / p99 {lat['p99']} ms, "
                      f"{st.get('frames_dropped')} frames dropped"
                      + (f"; recording apart: {rec.get('frames_written')} frames written, {rec.get('frames_skipped')} "
                         f"skipped, lag p50 {(rec.get('lag_ms') or {}).get('p50')} ms" if rec else ""), soft_wrap=True)
    v = st.get("video") or {}
    if v.get("polyp_frame_accuracy") is not None:
        console.print(f"stream video: polyp-frame accuracy {pct(v['polyp_frame_accuracy'])}"
                      f"{ci(v.get('polyp_frame_accuracy_ci95'))} vs image test {pct(v.get('image_test_accuracy'))}; "
                      f"per polyp {pct(v.get('per_polyp_accuracy'))}{ci(v.get('per_polyp_accuracy_ci95'))}", soft_wrap=True)
    if v.get("no_polyp_frames"):
        fa = v.get("false_alarms_per_minute")
        console.print(f"stream video without a polyp ({v['no_polyp_frames']} frames): class call on "
                      f"{pct(v.get('class_call_share_no_polyp'))}; {v.get('false_alarms')} false alarms "
                      f"({'—' if fa is None else f'{fa:.2f}'} per minute; {v.get('episode_rule')})", soft_wrap=True)


def _print_clinical(s: dict) -> None:
    """Calibration, operating points and per-polyp accuracy (figures on the synthetic set, not a clinical validation)."""
    def pct(v, scale=1.0):
        return "—" if v is None else f"{scale * v:.1f} %"

    for name, m in s["models"].items():
        if m.get("ece_calibrated") is None:
            continue
        thr = "no threshold" if m["threshold"] is None else (
            f"threshold {m['threshold']:.3f}: coverage {pct(m['coverage'])}, NPV {pct(m['npv'])}"
            + (f" [{m['npv_ci95'][0]:.1f}, {m['npv_ci95'][1]:.1f}]" if m.get("npv_ci95") else ""))
        how = ("per-subclass temperatures" if m.get("calibration_method") == "subclass_temperatures"
               else "temperature scaling")
        console.print(f"{name}: ECE {pct(m['ece'])} → {pct(m['ece_calibrated'])} after {how}; {thr}", soft_wrap=True)
    st = s["stream"]
    _print_video(st)
    if st.get("polyp_accuracy_argmax") is not None:
        console.print(f"stream per polyp: accuracy {pct(st['polyp_accuracy_argmax'])} (argmax) vs frame-level "
                      f"{pct(st['frame_accuracy_raw'])}; at the threshold: coverage {pct(st['polyp_coverage'])}, "
                      f"accuracy of calls {pct(st['polyp_accuracy_called'])}", soft_wrap=True)
