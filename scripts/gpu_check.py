"""Everything only a GPU can show, in one run, with one JSON summary (run by scripts/gpu-check.sh).

Sections (each timed, each "passed" / "failed" / "skipped" with the reason; the whole run keeps to
--budget seconds, 480 by default: a section that does not fit in what is left is skipped, saying so):

  doctor        what `edgeskd doctor` finds (GPU, driver, CUDA, TensorRT, NVRTC, bindings, backends)
  pytest_gpu    `pytest -m gpu`: counts, failures, skip reasons
  preprocess    the CUDA kernel vs the CPU paths on real decoded 1080p frames, max |Δ| (RGB input vs
                runtime/preprocess.py; decoder YUV planes vs the stream's FramePreprocessor; float32
                and float16; every installed binding), what the old swscale-RGB CUDA stream path
                differed by, and ms/frame on GPU vs CPU
  train_amp     a 1-epoch AMP training run on the GPU (teacher + SKD student, synthetic data)
  tensorrt      FP32 / FP16 / INT8 engines built and run vs ONNX Runtime (max |Δ| logits, ms), where
                TensorRT is importable — else skipped with the reason
  stream_1080p  a 1080p synthetic video streamed with --preprocess cuda vs cpu on the FP16 engine
                (fps, p50/p99 latency), and ONNX Runtime + CPU preprocessing as the reference
  triton_plan   the FP16 engine as a Triton repository (tensorrt_plan), served by `edgeskd serve --device
                cuda` (PyTriton + the TensorRT runner), streamed with `stream --server`: probabilities vs
                the same engine run locally (needs the serve extra)
  gpu_timings   fp16/bf16 matmul TFLOP/s and pinned host→device GB/s (torch)

On a machine without an NVIDIA GPU it writes {"status": "nothing to check", ...} and exits 0.
Exit status: 1 if any section failed, else 0.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class Skip(Exception):
    """A section that cannot run here; the message says why."""


def _cli(args: list[str], timeout: float, cwd: Path) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "edgeskd", *args], capture_output=True, text=True,
                       timeout=max(timeout, 1), cwd=cwd)
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
def section_pytest(ctx: dict[str, Any], timeout: float) -> dict[str, Any]:
    junit = ctx["work"] / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"pytest -m gpu did not finish in {timeout:.0f} s"}
    if not junit.is_file():
        return {"status": "failed", "error": (p.stdout + p.stderr).strip()[-2000:]}
    cases = ET.parse(junit).getroot().iter("testcase")
    out: dict[str, Any] = {"passed": [], "failed": {}, "skipped": {}}
    for c in cases:
        name = f"{c.get('classname', '').split('.')[-1]}::{c.get('name')}"
        bad = c.find("failure") if c.find("failure") is not None else c.find("error")
        if bad is not None:
            out["failed"][name] = (bad.get("message") or "")[:400]
        elif c.find("skipped") is not None:
            out["skipped"][name] = (c.find("skipped").get("message") or "")[:200]
        else:
            out["passed"].append(name)
    out["counts"] = {k: len(v) for k, v in out.items()}
    out["status"] = "failed" if out["failed"] or p.returncode not in (0, 5) else "passed"
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


def section_preprocess(ctx: dict[str, Any], timeout: float) -> dict[str, Any]:
    from edgeskd.runtime.cuda_binding import available_bindings
    from edgeskd.runtime.cuda_preprocess import CudaPreprocessor
    from edgeskd.runtime.preprocess import preprocess_for
    from edgeskd.stream.frames import FramePreprocessor

    frames = _decoded(ctx["video"], 16)
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
            with CudaPreprocessor(meta, binding=binding, dtype=dtype) as pre:
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
            out[key] = {"rgb_vs_runtime_preprocess_max_abs": float(d_rgb), "yuv_vs_stream_cpu_max_abs": float(d_yuv),
                        "gpu_ms_per_frame_yuv_upload_kernel_sync": ms}
    if not available_bindings():
        raise Skip("no CUDA binding installed (cuda-python or pycuda)")
    tol = {"float32": 1e-5, "float16": 2e-2}
    bad = [k for k, v in out.items() if isinstance(v, dict) and
           max(v["rgb_vs_runtime_preprocess_max_abs"], v["yuv_vs_stream_cpu_max_abs"]) > tol[k.split("/")[1]]]
    out["tolerance"] = tol
    out["status"] = "failed" if bad else "passed"
    if bad:
        out["error"] = f"beyond tolerance: {bad}"
    return out


def section_train(ctx: dict[str, Any], timeout: float) -> dict[str, Any]:
    out_dir = ctx["work"] / "train"
    t0 = time.perf_counter()
    _cli(["train", "--synthetic-n", "600", "--img-size", "96", "--epochs", "1", "--teacher-epochs", "1",
          "--students", "skd", "--device", "cuda", "--batch-size", "64", "--out", str(out_dir)], timeout, ROOT)
    wall = time.perf_counter() - t0
    m = json.loads((out_dir / "metrics.json").read_text())
    log = [json.loads(ln) for ln in (out_dir / "log.jsonl").read_text().splitlines()]
    losses = [r.get("train_loss") for r in log]
    ctx["checkpoint"] = out_dir / "student-skd.pt"
    ok = m["device"].startswith("cuda") and all(v is not None and np.isfinite(v) for v in losses)
    return {"status": "passed" if ok else "failed", "device": m["device"], "amp": m["config"].get("amp"),
            "train_losses": losses, "epoch_s": [r.get("time_s") for r in log], "wall_s": round(wall, 1),
            "f1": {k: v["f1"] for k, v in m["models"].items()}}


def _runner_delta(engine: Path, onnx: Path, x: np.ndarray) -> dict[str, Any]:
    from edgeskd.runtime.loader import load_runner

    ref = load_runner(onnx, threads=4).infer(x)
    with load_runner(engine) as r:
        got = r.infer(x)
        p50_b1 = _median_ms(lambda: r.infer(x[:1]), 50)
        p50_b8 = _median_ms(lambda: r.infer(x[:8]), 50)
    return {"max_abs_logits_vs_onnxruntime": float(np.abs(got - ref).max()), "ms_batch1": p50_b1, "ms_batch8": p50_b8}


def section_tensorrt(ctx: dict[str, Any], timeout: float) -> dict[str, Any]:
    from edgeskd.errors import BackendUnavailable
    from edgeskd.runtime.tensorrt_runner import import_tensorrt

    try:
        trt = import_tensorrt()
    except BackendUnavailable as e:
        raise Skip(str(e)) from None
    if "checkpoint" not in ctx:
        raise Skip("needs the model trained by train_amp")
    deadline = time.monotonic() + timeout
    onnx = ctx["work"] / "student.onnx"
    _cli(["export", str(ctx["checkpoint"]), "--out", str(onnx)], deadline - time.monotonic(), ROOT)
    from edgeskd.runtime.loader import load_runner

    meta = load_runner(onnx, threads=1).metadata
    x = np.random.default_rng(0).normal(size=(8, 3, *meta.input_size)).astype(np.float32)
    out: dict[str, Any] = {"version": str(trt.__version__)}
    for prec in ("fp32", "fp16", "int8"):
        engine = ctx["work"] / f"student.{prec}.engine"
        t0 = time.perf_counter()
        p = _cli(["build-engine", str(onnx), "--backend", "tensorrt", "--precision", prec, "--out", str(engine),
                  "--calib-size", "256", "--max-batch", "8", "--force", "--json",
                  "--calib-dir", str(ctx["work"] / "calib")], deadline - time.monotonic(), ROOT)
        rep = json.loads(p.stdout)
        out[prec] = {"build_s": round(time.perf_counter() - t0, 1), "winner": rep.get("winner"),
                     "f1": {c["name"]: c["f1"] for c in rep.get("candidates", [])}, **_runner_delta(engine, onnx, x)}
        ctx[f"engine_{prec}"] = engine
    ctx["onnx"] = onnx
    out["status"] = "passed" if out["fp32"]["max_abs_logits_vs_onnxruntime"] < 1e-2 else "failed"
    return out


def _stream(ctx: dict[str, Any], engine: Path, preprocess: str, timeout: float) -> dict[str, Any]:
    import av

    stats = ctx["work"] / f"stream.{engine.suffix[1:]}.{preprocess}.json"
    with av.open(str(ctx["video"])) as c:
        crop = _crop(c.streams.video[0].width, c.streams.video[0].height)
    _cli(["stream", "--video", str(ctx["video"]), "--engine", str(engine), "--preprocess", preprocess, "--no-realtime",
          "--no-ceiling", "--crop", ",".join(map(str, crop)), "--stats", str(stats)], timeout, ROOT)
    s = json.loads(stats.read_text())
    return {"fps": s["fps"], "latency_ms": s["latency_ms"], "frames": s["frames_processed"],
            "preprocess": s["source"]["preprocess"], "backend": s["source"]["backend"]}


def section_stream(ctx: dict[str, Any], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    out: dict[str, Any] = {"video": f"{ctx['video'].name} (1920x1080 synthetic)"}
    if "onnx" not in ctx and "checkpoint" in ctx:
        ctx["onnx"] = ctx["work"] / "student.onnx"
        _cli(["export", str(ctx["checkpoint"]), "--out", str(ctx["onnx"])], deadline - time.monotonic(), ROOT)
    if "onnx" in ctx:
        out["onnxruntime_cpu"] = _stream(ctx, ctx["onnx"], "cpu", deadline - time.monotonic())
    engine = ctx.get("engine_fp16")
    if engine is None:
        out["tensorrt"] = "skipped: --preprocess cuda needs a TensorRT engine (see the tensorrt section)"
        if "onnx" not in ctx:
            raise Skip("no model: train_amp did not run")
        out["status"] = "passed"
        return out
    for mode in ("cuda", "cpu"):
        out[f"tensorrt_fp16_{mode}"] = _stream(ctx, engine, mode, deadline - time.monotonic())
    ok = out["tensorrt_fp16_cuda"]["preprocess"] == "cuda" and out["tensorrt_fp16_cuda"]["frames"] > 0
    out["status"] = "passed" if ok else "failed"
    return out


def section_triton_plan(ctx: dict[str, Any], timeout: float) -> dict[str, Any]:
    import importlib.util

    if importlib.util.find_spec("pytriton") is None:
        raise Skip("the serve extra is not installed (pip install -e '.[serve]')")
    engine = ctx.get("engine_fp16")
    if engine is None:
        raise Skip("no TensorRT engine (see the tensorrt section)")
    from edgeskd.serve.server import free_port

    deadline = time.monotonic() + timeout
    repo, work = ctx["work"] / "triton-repo", ctx["work"]
    _cli(["export", str(engine), "--format", "triton", "--out", str(repo), "--model-name", "plan"], 60, ROOT)
    ports = [str(free_port()) for _ in range(3)]
    srv = subprocess.Popen([sys.executable, "-m", "edgeskd", "serve", str(repo), "--device", "cuda", "--http-port",
                            ports[0], "--grpc-port", ports[1], "--metrics-port", ports[2]], cwd=ROOT, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        head = []
        for line in srv.stdout:
            head.append(line)
            if line.startswith("ready") or time.monotonic() > deadline:
                break
        if not any(x.startswith("ready") for x in head):
            raise RuntimeError("edgeskd serve did not start: " + "".join(head)[-1500:])
        runs = {}
        for name, extra in (("server", ["--server", f"grpc://127.0.0.1:{ports[1]}", "--model", "plan"]),
                            ("local", ["--engine", str(engine)])):
            jl = work / f"triton.{name}.jsonl"
            _cli(["stream", "--video", str(ctx["video"]), *extra, "--no-realtime", "--no-ceiling", "--preprocess", "cpu",
                  "--jsonl", str(jl), "--stats", str(work / f"triton.{name}.json")], deadline - time.monotonic(), ROOT)
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


def section_timings(ctx: dict[str, Any], timeout: float) -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        raise Skip("torch sees no GPU")
    dev = torch.device("cuda:0")
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(dev)}
    n = 8192
    for dt in (torch.float16, torch.bfloat16):
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


# (name, function, seconds it needs at least, seconds it may take at most)
SECTIONS: list[tuple[str, Callable[[dict[str, Any], float], dict[str, Any]], float, float]] = [
    ("pytest_gpu", section_pytest, 60, 180),
    ("preprocess", section_preprocess, 20, 90),
    ("train_amp", section_train, 40, 150),
    ("tensorrt", section_tensorrt, 60, 200),
    ("stream_1080p", section_stream, 30, 120),
    ("triton_plan", section_triton_plan, 30, 120),
    ("gpu_timings", section_timings, 10, 30),
]


def _run_section(fn: Callable, ctx: dict[str, Any], timeout: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        res = fn(ctx, timeout)
    except Skip as e:
        res = {"status": "skipped", "reason": str(e)}
    except subprocess.TimeoutExpired as e:
        res = {"status": "failed", "error": f"timed out after {e.timeout:.0f} s"}
    except Exception as e:  # noqa: BLE001 - a report: the failure is recorded, the other sections still run
        res = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000],
               "traceback": traceback.format_exc()[-3000:]}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def run(out_path: Path, budget_s: float, only: list[str] | None) -> int:
    from edgeskd.doctor import collect, probe_driver
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
    summary["doctor"] = collect()
    summary["sections"] = {}
    with tempfile.TemporaryDirectory(prefix="edgeskd-gpu-check-") as work:
        ctx: dict[str, Any] = {"work": Path(work), "video": Path(work) / "v1080.mp4"}
        _cli(["synth-video", str(ctx["video"]), "--seconds", "3", "--size", "1920x1080", "--fps", "30"], 120, ROOT)
        for name, fn, least, most in SECTIONS:
            if only and name not in only:
                continue
            left = budget_s - (time.monotonic() - start)
            if left < least:
                res = {"status": "skipped", "reason": f"time budget: {left:.0f} s left, needs >= {least:.0f} s"}
            else:
                print(f"gpu-check: {name} ...", flush=True)
                res = _run_section(fn, ctx, min(most, left))
            summary["sections"][name] = res
            print(f"gpu-check: {name}: {res['status']} ({res.get('seconds', 0)} s) "
                  f"{res.get('reason') or res.get('error') or ''}".rstrip(), flush=True)
    states = [s["status"] for s in summary["sections"].values()]
    summary["status"] = "failed" if "failed" in states else "passed"
    summary["seconds"] = round(time.monotonic() - start, 1)
    write_json_atomic(out_path, summary)
    print(f"gpu-check: {summary['status']} in {summary['seconds']} s; wrote {out_path}")
    return 1 if summary["status"] == "failed" else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("gpu-check.json"), help="JSON summary (default gpu-check.json)")
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for the whole run (default 480)")
    ap.add_argument("--only", default=None, help="comma-separated sections: " + ",".join(s[0] for s in SECTIONS))
    a = ap.parse_args(argv)
    only = [s.strip() for s in a.only.split(",")] if a.only else None
    unknown = sorted(set(only or []) - {s[0] for s in SECTIONS})
    if unknown:
        ap.error(f"unknown section(s) {unknown}")
    return run(a.out.resolve(), a.budget, only)


if __name__ == "__main__":
    sys.exit(main())
