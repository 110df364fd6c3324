"""Everything only a GPU can show, in one run, with one JSON summary (run by scripts/gpu-check.sh).

Sections (each timed, each "passed" / "failed" / "skipped" with the reason):

  doctor        what `edgeskd doctor` finds (GPU, driver, CUDA, TensorRT, NVRTC, bindings, backends)
  synth_video   the 3 s 1920x1080 synthetic video the preprocess and stream sections read
  pytest_gpu    `pytest -m gpu`: counts, failures, skip reasons (no test passed on a GPU machine = failed)
  preprocess    the CUDA kernel vs the CPU paths on real decoded 1080p frames, max |Δ| (RGB input vs
                runtime/preprocess.py; decoder YUV planes vs the stream's FramePreprocessor; float32
                and float16; every installed binding), what the old swscale-RGB CUDA stream path
                differed by, and ms/frame on GPU vs CPU
  train_amp     a 1-epoch AMP training run on the GPU (teacher + SKD student, synthetic data)
  tensorrt      FP32 / FP16 / INT8 engines built and run vs ONNX Runtime (max |Δ| logits, ms), where
                TensorRT is importable — else skipped with the reason (INT8 without PTQ recovery)
  stream_1080p  a 1080p synthetic video streamed with --preprocess cuda vs cpu on the FP16 engine
                (fps, p50/p99 latency), and ONNX Runtime + CPU preprocessing as the reference
  triton_plan   the FP16 engine as a Triton repository (tensorrt_plan), served by `edgeskd serve --device
                cuda` (Triton + the TensorRT runner), streamed with `stream --server`: probabilities vs
                the same engine run locally (needs the serve extra)
  gpu_timings   fp16/bf16 matmul TFLOP/s and pinned host→device GB/s (torch)

Time: the whole run keeps to --budget seconds (420 by default, leaving a minute of an 8-minute slot).
Every section runs in a child process of its own session, killed with everything it started when it
reaches its cap (the smaller of its own cap and what is left of the budget, less a reserve for the
summary); a section that does not fit in what is left is skipped, saying so. A section that hangs,
crashes or times out is recorded as failed and the next one runs. The JSON summary is rewritten after
every section and once more at the end, also when the run is interrupted (Ctrl-C, SIGTERM).

On a machine without an NVIDIA GPU it writes {"status": "nothing to check", ...} and exits 0.
Exit status: 1 if any section failed (or the run was interrupted), else 0.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 420.0
RESERVE_S = 8.0          # kept back from every section's cap: the kill, the summary, the exit
CHILD_MARGIN_S = 3.0     # a section's own deadline ends this much before its process is killed


class Skip(Exception):
    """A section that cannot run here; the message says why."""


class SectionTimeout(Exception):
    """A section reached its deadline between two steps; the message says before which."""


class Deadline:
    """When a section must be done: ``left()`` seconds for a subprocess, ``check(step)`` between steps."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.end = time.monotonic() + self.seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, step: str) -> None:
        if self.left() <= 0:
            raise SectionTimeout(f"its {self.seconds:.0f} s deadline passed before {step}")


# -- processes ------------------------------------------------------------------------------------------------
def _own_group() -> dict[str, Any]:
    """Popen arguments that put a command in a process group of its own (within the section's session)."""
    return {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


def _run(cmd: list[str], timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``subprocess.run`` whose timeout kills the command's whole process group (and cannot hang on
    the pipes of something the command started)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, **_own_group())
    try:
        out, err = p.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        _kill_group(p.pid)
        p.communicate()
        raise subprocess.TimeoutExpired(cmd, max(timeout, 1)) from None
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _session_members(sid: int) -> list[int]:
    """Processes of session ``sid`` (Linux /proc; field 6 of /proc/PID/stat)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if len(fields) > 3 and int(fields[3]) == sid:
            pids.append(int(d.name))
    return pids


def _kill_session(sid: int) -> None:
    """Kill every process left in session ``sid``: a section's child and everything it started."""
    for pid in _session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _cli(args: list[str], timeout: float, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    p = _run([sys.executable, "-m", "edgeskd", *args], timeout, cwd)
    if p.returncode != 0:
        raise RuntimeError(f"edgeskd {args[0]} exited {p.returncode}: {(p.stderr or p.stdout).strip()[-1500:]}")
    return p


def _median_ms(fn: Callable[[], Any], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return round(float(np.median(times)), 3)


# -- sections -------------------------------------------------------------------------------------------------
def section_doctor(ctx: dict[str, Any], deadline: Deadline) -> dict[str, Any]:
    from edgeskd.doctor import collect

    report = collect()
    ctx["torch"] = report.get("torch", {})
    return {"status": "passed", "report": report}


def section_video(ctx: dict[str, Any], deadline: Deadline) -> dict[str, Any]:
    video = Path(ctx["work"]) / "v1080.mp4"
    _cli(["synth-video", str(video), "--seconds", "3", "--resolution", "1920x1080", "--fps", "30",
          "--overwrite"], deadline.left())
    ctx["video"] = str(video)
    return {"status": "passed", "video": video.name}


def pytest_verdict(counts: dict[str, int], returncode: int, torch_info: dict[str, Any] | None) -> tuple[str, str]:
    """(status, why) of `pytest -m gpu` on a machine whose driver sees a GPU: failures fail it, and so
    does a run in which no test passed (everything skipped: the GPU was not usable from Python)."""
    if counts.get("failed"):
        return "failed", f"{counts['failed']} GPU test(s) failed"
    if returncode not in (0, 5):
        return "failed", f"pytest exited {returncode}"
    if counts.get("passed", 0) == 0:
        t = torch_info or {}
        why = (f"no GPU test passed although the driver sees a GPU ({counts.get('skipped', 0)} skipped, "
               "see 'skipped' for the reasons)")
        if t.get("ok") and not t.get("cuda_available"):
            why += (f"; torch {t.get('version')} (CUDA build {t.get('cuda_build')}) sees no GPU: install the torch "
                    "build for this stack's CUDA line (README, Install: cu12x index for gpu-cu12, cu130 for gpu-cu13)")
        return "failed", why
    return "passed", ""


def section_pytest(ctx: dict[str, Any], deadline: Deadline) -> dict[str, Any]:
    junit = Path(ctx["work"]) / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    p = _run(cmd, deadline.left())
    if not junit.is_file():
        return {"status": "failed", "error": (p.stdout + p.stderr).strip()[-2000:]}
    out: dict[str, Any] = {"passed": [], "failed": {}, "skipped": {}}
    for c in ET.parse(junit).getroot().iter("testcase"):
        name = f"{c.get('classname', '').split('.')[-1]}::{c.get('name')}"
        bad = c.find("failure") if c.find("failure") is not None else c.find("error")
        if bad is not None:
            out["failed"][name] = (bad.get("message") or "")[:400]
        elif c.find("skipped") is not None:
            out["skipped"][name] = (c.find("skipped").get("message") or "")[:200]
        else:
            out["passed"].append(name)
    out["counts"] = {k: len(v) for k, v in out.items()}
    out["status"], why = pytest_verdict(out["counts"], p.returncode, ctx.get("torch"))
    if why:
        out["error"] = why
    return out


def _check_meta():
    from edgeskd.meta import ModelMeta

    return ModelMeta(class_names=["hp", "ssa"], subclass_names=["hp0", "ssa0"], subclass_to_class=[0, 1],
                     input_size=(224, 224), arch="gpu-check")


def _crop(w: int, h: int) -> tuple[int, int, int, int]:
    """A content-area crop: the middle 3/4 of the width (1920x1080 → 240,0,1440,1080)."""
    return (w // 8, 0, w - w // 4, h)


def _decoded(video: Path, n: int) -> list[Any]:
    import av

    out = []
    with av.open(str(video)) as c:
        for f in c.decode(video=0):
            out.append(f)
            if len(out) == n:
                break
    return out


def _needs_video(ctx: dict[str, Any]) -> Path:
    if not ctx.get("video"):
        raise Skip("needs the video of synth_video")
    return Path(ctx["video"])


def _binding_deltas(binding: str, dtype: Any, frames: list[Any], rgb: np.ndarray, crop, ref_rgb, ref_yuv) -> dict:
    from edgeskd.runtime.cuda_preprocess import CudaPreprocessor

    with CudaPreprocessor(_check_meta(), binding=binding, dtype=dtype) as pre:
        d_rgb = np.abs(pre.to_host(rgb, crop).astype(np.float32) - ref_rgb).max()
        d_yuv = np.abs(pre.frames_to_host(frames, crop).astype(np.float32) - ref_yuv).max()
        stream = pre.cu.stream_create()
        with pre.cu.malloc(pre.image_nbytes) as dst:
            def one_frame() -> None:
                pre.run_frame(frames[0], crop, dst.ptr, stream)
                pre.cu.stream_synchronize(stream)

            one_frame()
            ms = _median_ms(one_frame, 50)
        pre.cu.stream_destroy(stream)
    return {"rgb_vs_runtime_preprocess_max_abs": float(d_rgb), "yuv_vs_stream_cpu_max_abs": float(d_yuv),
            "gpu_ms_per_frame_yuv_upload_kernel_sync": ms}


def section_preprocess(ctx: dict[str, Any], deadline: Deadline) -> dict[str, Any]:
    from edgeskd.runtime.cuda_binding import available_bindings
    from edgeskd.runtime.preprocess import preprocess_for
    from edgeskd.stream.frames import FramePreprocessor

    video = _needs_video(ctx)
    if not available_bindings():
        raise Skip("no CUDA binding installed (cuda-python or pycuda)")
    frames = _decoded(video, 16)
    rgb = np.stack([f.to_ndarray(format="rgb24") for f in frames])
    meta = _check_meta()
    crop = _crop(frames[0].width, frames[0].height)
    cpu = FramePreprocessor(meta)
    ref_yuv = np.stack([cpu.one(f, crop) for f in frames])
    ref_rgb = preprocess_for(meta, rgb, crop=crop)
    out: dict[str, Any] = {"frames": f"{len(frames)} decoded {frames[0].width}x{frames[0].height} "
                                     f"{frames[0].format.name}, crop {crop}, output 224x224",
                           "old_cuda_stream_path_vs_cpu_max_abs": float(np.abs(ref_rgb - ref_yuv).max()),
                           "cpu_ms_per_frame": _median_ms(lambda: cpu.one(frames[0], crop), 20)}
    for binding in available_bindings():
        for dtype in (np.float32, np.float16):
            key = f"{binding}/{np.dtype(dtype).name}"
            deadline.check(key)
            out[key] = _binding_deltas(binding, dtype, frames, rgb, crop, ref_rgb, ref_yuv)
    tol = {"float32": 1e-5, "float16": 2e-2}
    bad = [k for k, v in out.items() if isinstance(v, dict) and
           max(v["rgb_vs_runtime_preprocess_max_abs"], v["yuv_vs_stream_cpu_max_abs"]) > tol[k.split("/")[1]]]
    out["tolerance"] = tol
    out["status"] = "failed" if bad else "passed"
    if bad:
        out["error"] = f"beyond tolerance: {bad}"
    return out


def section_train(ctx: dict[str, Any], deadline: Deadline) -> dict[str, Any]:
    out_dir = Path(ctx["work"]) / "train"
    t0 = time.perf_counter()
    _cli(["train", "--synthetic-n", "600", "--img-size", "96", "--epochs", "1", "--teacher-epochs", "1",
          "--students", "skd", "--device", "cuda", "--batch-size", "64", "--out", str(out_dir)], deadline.left())
    wall = time.perf_counter() - t0
    m = json.loads((out_dir / "metrics.json").read_text())
    log = [json.loads(ln) for ln in (out_dir / "log.jsonl").read_text().splitlines()]
    losses = [r.get("train_loss") for r in log]
    ctx["checkpoint"] = str(out_dir / "student-skd.pt")
    ok = m["device"].startswith("cuda") and all(v is not None and np.isfinite(v) for v in losses)
    return {"status": "passed" if ok else "failed", "device": m["device"], "amp": m["config"].get("amp"),
            "train_losses": losses, "epoch_s": [r.get("time_s") for r in log], "wall_s": round(wall, 1),
            "f1": {k: v["f1"] for k, v in m["models"].items()}}


def _runner_delta(engine: Path, onnx: Path, x: np.ndarray, deadline: Deadline) -> dict[str, Any]:
    from edgeskd.runtime.loader import load_runner

    deadline.check(f"running {engine.name}")
    ref = load_runner(onnx, threads=4).infer(x)
    with load_runner(engine) as r:
        got = r.infer(x)
        deadline.check(f"timing {engine.name}")
        p50_b1 = _median_ms(lambda: r.infer(x[:1]), 50)
        p50_b8 = _median_ms(lambda: r.infer(x[:8]), 50)
    return {"max_abs_logits_vs_onnxruntime": float(np.abs(got - ref).max()), "ms_batch1": p50_b1, "ms_batch8": p50_b8}


def _export(ctx: dict[str, Any], deadline: Deadline) -> Path:
    onnx = Path(ctx["work"]) / "student.onnx"
    if not onnx.is_file():
        _cli(["export", str(ctx["checkpoint"]), "--out", str(onnx), "--overwrite"], deadline.left())
    ctx["onnx"] = str(onnx)
    return onnx


def section_tensorrt(ctx: dict[str, Any], deadline: Deadline) -> dict[str, Any]:
    from edgeskd.errors import BackendUnavailable
    from edgeskd.runtime.tensorrt_runner import import_tensorrt

    try:
        trt = import_tensorrt()
    except BackendUnavailable as e:
        raise Skip(str(e)) from None
    if not ctx.get("checkpoint"):
        raise Skip("needs the model trained by train_amp")
    onnx = _export(ctx, deadline)
    from edgeskd.runtime.loader import load_runner

    meta = load_runner(onnx, threads=1).metadata
    x = np.random.default_rng(0).normal(size=(8, 3, *meta.input_size)).astype(np.float32)
    out: dict[str, Any] = {"version": str(trt.__version__)}
    for prec in ("fp32", "fp16", "int8"):
        deadline.check(f"the {prec} build")
        engine = Path(ctx["work"]) / f"student.{prec}.engine"
        t0 = time.perf_counter()
        # --no-recovery: PTQ recovery (its own 600 s default budget) cannot fit in this section's cap
        p = _cli(["build-engine", str(onnx), "--backend", "tensorrt", "--precision", prec, "--out", str(engine),
                  "--calib-size", "256", "--max-batch-size", "8", "--force", "--no-recovery", "--overwrite", "--json",
                  "--calib-dir", str(Path(ctx["work"]) / "calib")], deadline.left())
        rep = json.loads(p.stdout)
        out[prec] = {"build_s": round(time.perf_counter() - t0, 1), "winner": rep.get("winner"),
                     "f1": {c["name"]: c["f1"] for c in rep.get("candidates", [])},
                     **_runner_delta(engine, onnx, x, deadline)}
        ctx[f"engine_{prec}"] = str(engine)
    out["status"] = "passed" if out["fp32"]["max_abs_logits_vs_onnxruntime"] < 1e-2 else "failed"
    return out


def _stream(ctx: dict[str, Any], engine: Path, preprocess: str, deadline: Deadline) -> dict[str, Any]:
    import av

    deadline.check(f"streaming {engine.name} with --preprocess {preprocess}")
    video = Path(ctx["video"])
    stats = Path(ctx["work"]) / f"stream.{engine.suffix[1:]}.{preprocess}.json"
    with av.open(str(video)) as c:
        crop = _crop(c.streams.video[0].width, c.streams.video[0].height)
    _cli(["stream", str(video), "--engine", str(engine), "--overwrite", "--preprocess", preprocess, "--no-realtime",
          "--no-ceiling", "--crop", ",".join(map(str, crop)), "--stats", str(stats)], deadline.left())
    s = json.loads(stats.read_text())
    return {"fps": s["fps"], "latency_ms": s["latency_ms"], "frames": s["frames_processed"],
            "preprocess": s["source"]["preprocess"], "backend": s["source"]["backend"]}


def section_stream(ctx: dict[str, Any], deadline: Deadline) -> dict[str, Any]:
    video = _needs_video(ctx)
    out: dict[str, Any] = {"video": f"{video.name} (1920x1080 synthetic)"}
    if not ctx.get("onnx") and not ctx.get("checkpoint"):
        raise Skip("no model: train_amp did not run")
    onnx = Path(ctx["onnx"]) if ctx.get("onnx") else _export(ctx, deadline)
    out["onnxruntime_cpu"] = _stream(ctx, onnx, "cpu", deadline)
    engine = ctx.get("engine_fp16")
    if engine is None:
        out["tensorrt"] = "skipped: --preprocess cuda needs a TensorRT engine (see the tensorrt section)"
        out["status"] = "passed"
        return out
    for mode in ("cuda", "cpu"):
        out[f"tensorrt_fp16_{mode}"] = _stream(ctx, Path(engine), mode, deadline)
    ok = out["tensorrt_fp16_cuda"]["preprocess"] == "cuda" and out["tensorrt_fp16_cuda"]["frames"] > 0
    out["status"] = "passed" if ok else "failed"
    return out


def section_triton_plan(ctx: dict[str, Any], deadline: Deadline) -> dict[str, Any]:
    import importlib.util

    if importlib.util.find_spec("pytriton") is None:
        raise Skip("the serve extra is not installed (pip install -e '.[serve]')")
    engine = ctx.get("engine_fp16")
    if engine is None:
        raise Skip("no TensorRT engine (see the tensorrt section)")
    from edgeskd.serve.server import free_port

    work = Path(ctx["work"])
    repo = work / "triton-repo"
    _cli(["export", str(engine), "--format", "triton", "--out", str(repo), "--model-name", "plan"],
         min(60.0, deadline.left()), ROOT)
    ports = [str(free_port()) for _ in range(3)]
    srv = subprocess.Popen([sys.executable, "-m", "edgeskd", "serve", str(repo), "--device", "cuda", "--http-port",
                            ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]], cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        head = []
        for line in srv.stdout:
            head.append(line)
            if line.startswith("ready") or deadline.left() <= 0:
                break
        if not any(x.startswith("ready") for x in head):
            raise RuntimeError("edgeskd serve did not start: " + "".join(head)[-1500:])
        runs = {}
        for name, extra in (("server", ["--server", f"grpc://127.0.0.1:{ports[1]}", "--model", "plan"]),
                            ("local", ["--engine", str(engine)])):
            jl = work / f"triton.{name}.jsonl"
            deadline.check(f"streaming through the {name}")
            _cli(["stream", str(ctx["video"]), *extra, "--no-realtime", "--no-ceiling", "--preprocess", "cpu",
                  "--overwrite", "--jsonl", str(jl), "--stats", str(work / f"triton.{name}.json")], deadline.left(), ROOT)
            runs[name] = [json.loads(x)["probs"] for x in jl.read_text().splitlines()]
            runs[name + "_stats"] = json.loads((work / f"triton.{name}.json").read_text())
    finally:
        srv.terminate()
        rest = srv.communicate(timeout=60)[0]
    delta = float(np.max(np.abs(np.asarray(runs["server"]) - np.asarray(runs["local"]))))
    ok = srv.returncode == 0 and len(runs["server"]) == len(runs["local"]) > 0 and delta <= 1e-3
    return {"status": "passed" if ok else "failed", "frames": len(runs["server"]), "max_abs_prob_delta": delta,
            "server_fps": runs["server_stats"]["fps"], "server_latency_ms": runs["server_stats"]["latency_ms"],
            "local_fps": runs["local_stats"]["fps"], "serve_exit": srv.returncode, "serve_tail": rest[-500:]}


def section_timings(ctx: dict[str, Any], deadline: Deadline) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        raise Skip("torch sees no GPU")
    dev = torch.device("cuda:0")
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(dev)}
    n = 8192
    for dt in (torch.float16, torch.bfloat16):
        deadline.check(f"the {dt} matmul")
        a = torch.randn(n, n, device=dev, dtype=dt)
        b = torch.randn(n, n, device=dev, dtype=dt)
        torch.cuda.synchronize()
        for _ in range(3):
            a @ b
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()
        out[f"matmul_{str(dt).split('.')[1]}_tflops"] = round(2 * n**3 * 20 / (time.perf_counter() - t0) / 1e12, 1)
    deadline.check("the host-to-device copy")
    host = torch.empty(256 * 2**20, dtype=torch.uint8).pin_memory()
    gpu = torch.empty_like(host, device=dev)
    gpu.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        gpu.copy_(host, non_blocking=True)
    torch.cuda.synchronize()
    out["h2d_pinned_gb_s"] = round(10 * host.numel() / (time.perf_counter() - t0) / 1e9, 1)
    out["status"] = "passed"
    return out


@dataclass(frozen=True)
class Section:
    name: str
    func: str            # "module:function", resolved in the section's own process
    least: float         # seconds it needs at least (skipped when less is left)
    most: float          # its cap
    optional: bool = True   # False: runs whatever --only says (what the others need)


SECTIONS: list[Section] = [
    Section("doctor", "gpu_check:section_doctor", 5, 60, optional=False),
    Section("synth_video", "gpu_check:section_video", 10, 60, optional=False),
    Section("pytest_gpu", "gpu_check:section_pytest", 60, 150),
    Section("preprocess", "gpu_check:section_preprocess", 20, 60),
    Section("train_amp", "gpu_check:section_train", 40, 120),
    Section("tensorrt", "gpu_check:section_tensorrt", 60, 150),
    Section("stream_1080p", "gpu_check:section_stream", 30, 90),
    Section("triton_plan", "gpu_check:section_triton_plan", 30, 90),
    Section("gpu_timings", "gpu_check:section_timings", 10, 25),
]


# -- one section, in its own process ---------------------------------------------------------------------------
def _resolve(func: str) -> Callable[[dict[str, Any], Deadline], dict[str, Any]]:
    module, name = func.split(":")
    return getattr(importlib.import_module(module), name)


def _child(func: str, ctx_path: Path, result_path: Path, seconds: float) -> int:
    """The section's process: run ``func`` with the shared context, write {"result", "ctx"} to ``result_path``."""
    ctx = json.loads(ctx_path.read_text())
    try:
        res = _resolve(func)(ctx, Deadline(seconds))
    except Skip as e:
        res = {"status": "skipped", "reason": str(e)}
    except SectionTimeout as e:
        res = {"status": "failed", "error": f"timed out: {e}"}
    except subprocess.TimeoutExpired as e:
        res = {"status": "failed", "error": f"timed out: {Path(str(e.cmd[0])).name} {' '.join(map(str, e.cmd[1:4]))} "
                                            f"... did not finish in {e.timeout:.0f} s"}
    except Exception as e:  # noqa: BLE001 - a report: the failure is recorded, the other sections still run
        res = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000],
               "traceback": traceback.format_exc()[-3000:]}
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"result": res, "ctx": ctx}, default=str))
    os.replace(tmp, result_path)
    return 0


def _log_tail(log: Path, n: int = 1500) -> str:
    try:
        return log.read_text(errors="replace").strip()[-n:]
    except OSError:
        return ""


def run_section(sec: Section, ctx: dict[str, Any], cap: float, procs: list[subprocess.Popen]) -> dict[str, Any]:
    """Run one section in a child process (a session of its own) for at most ``cap`` seconds; the
    child and everything it started are killed at the cap. Updates ``ctx`` with what it learnt."""
    work = Path(ctx["work"])
    ctx_path, result_path, log = work / f"{sec.name}.ctx.json", work / f"{sec.name}.result.json", work / f"{sec.name}.log"
    ctx_path.write_text(json.dumps(ctx, default=str))
    result_path.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "scripts"), str(ROOT),
                                                         *filter(None, [os.environ.get("PYTHONPATH")])]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section-child", sec.func, str(ctx_path), str(result_path),
           f"{max(cap - CHILD_MARGIN_S, 1.0):.1f}"]
    t0 = time.perf_counter()
    with open(log, "w") as log_f:
        p = subprocess.Popen(cmd, stdout=log_f, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
        procs.append(p)
        try:
            p.wait(timeout=cap)
            killed = False
        except subprocess.TimeoutExpired:
            killed = True
        finally:
            _kill_session(p.pid)   # at the cap: the section; after it: anything it left behind
            p.wait()
            procs.remove(p)
    if killed:
        res = {"status": "failed", "error": f"killed at its {cap:.0f} s cap (did not finish)"}
    elif result_path.is_file():
        data = json.loads(result_path.read_text())
        res = data["result"]
        ctx.update(data["ctx"])
    else:
        res = {"status": "failed", "error": f"the section's process ended (exit {p.returncode}) without a result: "
                                            + (_log_tail(log) or "no output")}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


# -- the run ---------------------------------------------------------------------------------------------------
def _finish(summary: dict[str, Any], start: float, out_path: Path) -> None:
    from edgeskd.utils.io import write_json_atomic

    states = [s["status"] for s in summary.get("sections", {}).values()]
    if summary.get("status") != "interrupted":
        summary["status"] = "failed" if "failed" in states or "error" in summary else "passed"
    summary["seconds"] = round(time.monotonic() - start, 1)
    write_json_atomic(out_path, summary)


def run_sections(sections: list[Section], summary: dict[str, Any], ctx: dict[str, Any], budget_s: float,
                 start: float, out_path: Path, procs: list[subprocess.Popen]) -> None:
    from edgeskd.utils.io import write_json_atomic

    for sec in sections:
        left = budget_s - (time.monotonic() - start) - RESERVE_S
        if left < sec.least:
            res = {"status": "skipped", "reason": f"time budget: {max(left, 0):.0f} s left, needs >= {sec.least:.0f} s"}
        else:
            print(f"gpu-check: {sec.name} ...", flush=True)
            res = run_section(sec, ctx, min(sec.most, left), procs)
        summary["sections"][sec.name] = res
        summary["seconds"] = round(time.monotonic() - start, 1)
        write_json_atomic(out_path, summary)      # a summary on disk after every section
        print(f"gpu-check: {sec.name}: {res['status']} ({res.get('seconds', 0)} s) "
              f"{res.get('reason') or res.get('error') or ''}".rstrip(), flush=True)


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(out_path: Path, budget_s: float, only: list[str] | None, sections: list[Section] | None = None) -> int:
    from edgeskd.doctor import probe_driver
    from edgeskd.utils.io import write_json_atomic

    start = time.monotonic()
    summary: dict[str, Any] = {"host": platform.node(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "budget_s": budget_s}
    driver = probe_driver()
    if not driver["ok"]:
        summary.update(status="nothing to check", reason=f"no NVIDIA GPU here: {driver['reason']}")
        write_json_atomic(out_path, summary)
        print(f"gpu-check: no NVIDIA GPU here ({driver['reason']}): nothing to check. Wrote {out_path}")
        return 0
    summary["driver"] = driver
    summary["sections"] = {}
    chosen = [s for s in (sections or SECTIONS) if not s.optional or not only or s.name in only]
    procs: list[subprocess.Popen] = []
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="edgeskd-gpu-check-") as work:
            run_sections(chosen, summary, {"work": work}, budget_s, start, out_path, procs)
    except KeyboardInterrupt as e:
        summary["status"] = "interrupted"
        summary["error"] = f"interrupted ({e or 'Ctrl-C'})"
        raise
    except Exception as e:  # noqa: BLE001 - a bug of this script: still a summary, and the reason in it
        summary["error"] = f"{type(e).__name__}: {e}"[:2000]
        summary["traceback"] = traceback.format_exc()[-3000:]
        print(f"gpu-check: {summary['error']}", file=sys.stderr)
    finally:
        for p in list(procs):
            _kill_session(p.pid)
        signal.signal(signal.SIGTERM, old)
        _finish(summary, start, out_path)
        print(f"gpu-check: {summary['status']} in {summary['seconds']} s; wrote {out_path}", flush=True)
    return 0 if summary["status"] == "passed" else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--section-child"]:
        # sections (and their Skip) are imported as gpu_check: let that be this very module
        sys.modules.setdefault("gpu_check", sys.modules[__name__])
        func, ctx_path, result_path, seconds = argv[1:5]
        return _child(func, Path(ctx_path), Path(result_path), float(seconds))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-check.json"), help="JSON summary (default gpu-check.json)")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                    help=f"seconds for the whole run (default {DEFAULT_BUDGET_S:.0f})")
    ap.add_argument("--only", default=None, help="comma-separated sections: "
                    + ",".join(s.name for s in SECTIONS if s.optional) + " (doctor and synth_video always run)")
    a = ap.parse_args(argv)
    only = [s.strip() for s in a.only.split(",")] if a.only else None
    unknown = sorted(set(only or []) - {s.name for s in SECTIONS})
    if unknown:
        ap.error(f"unknown section(s) {unknown}")
    if a.budget <= RESERVE_S:
        ap.error(f"--budget must be more than {RESERVE_S:.0f} s")
    try:
        return run(a.out.resolve(), a.budget, only)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
