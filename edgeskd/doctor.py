"""``edgeskd doctor``: what this machine has for the GPU paths, and which backend each command uses.

Probes, each independent and none fatal: the platform (Jetson / L4T), the NVIDIA driver and its GPUs
(through ``libcuda`` with ctypes, so it works without any Python CUDA package), cuda-python (layout,
version, driver compatibility), pycuda, NVRTC, nvcc, TensorRT, torch (CUDA build, AMP, NCCL) and
ONNX Runtime. Then the decisions the commands take from them — ``build-engine --backend auto``,
running a ``.engine``, ``stream --preprocess auto``, ``train --device auto`` — each with the reason
the other choice was not taken. Works (and reports "no GPU") on a CPU-only machine.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from edgeskd.errors import BackendUnavailable

_CC_MAJOR, _CC_MINOR = 75, 76     # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR


def _dist_version(*names: str) -> str | None:
    for n in names:
        try:
            return importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def probe_platform(tegra: Path = Path("/etc/nv_tegra_release"),
                   model: Path = Path("/proc/device-tree/model")) -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version(), "system": platform.system(),
                           "machine": platform.machine(), "jetson": False}
    if tegra.is_file():
        text = tegra.read_text(errors="replace")
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
        out["jetson"] = True
        out["l4t"] = f"{m.group(1)}.{m.group(2)}" if m else text.strip().splitlines()[0]
        out["jetpack"] = "6" if m and m.group(1) == "36" else ("5" if m and m.group(1) == "35" else "unknown")
    if model.is_file():
        out["board"] = model.read_bytes().rstrip(b"\0").decode(errors="replace")
    return out


def _driver_version_string() -> str | None:
    proc = Path("/proc/driver/nvidia/version")
    if proc.is_file():
        m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", proc.read_text(errors="replace"))
        if m:
            return m.group(1)
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None


def probe_driver() -> dict[str, Any]:
    """The driver and its GPUs through libcuda (ctypes): no Python CUDA package needed."""
    try:
        cu = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return {"ok": False, "reason": f"no NVIDIA driver ({_first_line(e)})", "gpus": []}
    if cu.cuInit(0) != 0:
        return {"ok": False, "reason": "the NVIDIA driver is installed but cuInit failed (no usable GPU?)",
                "gpus": [], "version": _driver_version_string()}
    v, n = ctypes.c_int(0), ctypes.c_int(0)
    cu.cuDriverGetVersion(ctypes.byref(v))
    cu.cuDeviceGetCount(ctypes.byref(n))
    gpus = []
    for i in range(n.value):
        dev, major, minor = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
        cu.cuDeviceGet(ctypes.byref(dev), i)
        name = ctypes.create_string_buffer(256)
        cu.cuDeviceGetName(name, 256, dev)
        cu.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev)
        cu.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev)
        mem = ctypes.c_size_t(0)
        cu.cuDeviceTotalMem_v2(ctypes.byref(mem), dev)
        gpus.append({"index": i, "name": name.value.decode(errors="replace"),
                     "compute_capability": f"{major.value}.{minor.value}", "memory_gib": round(mem.value / 2**30, 1)})
    cuda = f"{v.value // 1000}.{v.value % 1000 // 10}"
    return {"ok": bool(gpus), "version": _driver_version_string(), "cuda": cuda, "cuda_int": v.value, "gpus": gpus,
            **({} if gpus else {"reason": "the driver sees no GPU"})}


def probe_cuda_python(driver: dict[str, Any]) -> dict[str, Any]:
    from edgeskd.runtime.cuda_binding import import_cuda_module

    version = _dist_version("cuda-bindings", "cuda-python")
    try:
        import_cuda_module("runtime")
    except ImportError:
        return {"ok": False, "version": version, "reason": "not installed (pip install 'edgeskd[gpu-cu12]')"}
    layout = "cuda.bindings" if importlib.util.find_spec("cuda.bindings") is not None else "cuda.cudart (old)"
    out: dict[str, Any] = {"ok": True, "version": version, "layout": layout}
    major = int(version.split(".")[0]) if version and version.split(".")[0].isdigit() else None
    if major is not None and driver.get("cuda_int") and driver["cuda_int"] < major * 1000:
        out.update(ok=False, reason=f"cuda-python {version} needs a driver with CUDA {major}.0 "
                                    f"(>= 580 for 13.x); this driver supports CUDA {driver['cuda']}: "
                                    "pip install 'edgeskd[gpu-cu12]'")
    return out


def probe_compilers() -> dict[str, Any]:
    from edgeskd.runtime import cuda_preprocess as cp

    out: dict[str, Any] = {}
    try:
        nvrtc = cp._nvrtc()
        _, major, minor = nvrtc.nvrtcVersion()
        out["nvrtc"] = {"ok": True, "version": f"{major}.{minor}"}
    except BackendUnavailable as e:
        out["nvrtc"] = {"ok": False, "reason": str(e)}
    exe = cp.find_nvcc()
    if exe is None:
        out["nvcc"] = {"ok": False, "reason": "not found (only needed without NVRTC, or for pycuda)"}
    else:
        try:
            r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
            m = re.search(r"release ([\d.]+)", r.stdout)
            out["nvcc"] = {"ok": True, "path": exe, "version": m.group(1) if m else "?"}
        except (OSError, subprocess.TimeoutExpired) as e:
            out["nvcc"] = {"ok": False, "reason": _first_line(e)}
    return out


def probe_tensorrt(plat: dict[str, Any]) -> dict[str, Any]:
    from edgeskd.runtime.tensorrt_runner import import_tensorrt

    try:
        trt = import_tensorrt()
    except BackendUnavailable as e:
        return {"ok": False, "reason": str(e)}
    out: dict[str, Any] = {"ok": True, "version": str(trt.__version__)}
    if plat.get("jetson") and str(trt.__version__).startswith("11."):
        out.update(ok=False, reason="TensorRT 11 does not support Jetson; use JetPack's TensorRT 10.3 "
                                    "(a venv with --system-site-packages)")
    return out


def probe_binding() -> dict[str, Any]:
    from edgeskd.runtime.cuda_binding import available_bindings, get_binding

    installed = available_bindings()
    try:
        cu = get_binding()
    except BackendUnavailable as e:
        return {"ok": False, "installed": installed, "reason": str(e)}
    dev = int(getattr(cu, "device", 0))
    return {"ok": True, "installed": installed, "name": cu.name, "device": cu.device_name(dev)}


def probe_torch() -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None:
        return {"ok": False, "reason": "not installed (training needs pip install 'edgeskd[train]')"}
    import torch

    out: dict[str, Any] = {"ok": True, "version": torch.__version__, "cuda_build": torch.version.cuda,
                           "cuda_available": torch.cuda.is_available(), "devices": torch.cuda.device_count()}
    base = tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2])
    out["amp_grad_scaler"] = base >= (2, 3) and hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler")
    dist = getattr(torch, "distributed", None)
    out["nccl"] = bool(dist is not None and dist.is_available() and dist.is_nccl_available())
    return out


def probe_onnxruntime() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError as e:
        return {"ok": False, "reason": _first_line(e)}
    return {"ok": True, "version": ort.__version__, "providers": list(ort.get_available_providers())}


def _kernel_builds(driver: dict[str, Any], compilers: dict[str, Any]) -> tuple[bool, str]:
    if not (compilers["nvrtc"]["ok"] or compilers["nvcc"]["ok"]):
        return False, f"no kernel compiler: {compilers['nvrtc']['reason']}; nvcc {compilers['nvcc']['reason']}"
    if not driver["gpus"]:
        return False, "no GPU"
    from edgeskd.runtime.cuda_preprocess import kernel_image

    major, minor = (int(v) for v in driver["gpus"][0]["compute_capability"].split("."))
    try:
        kernel_image((major, minor))
    except Exception as e:  # noqa: BLE001 - a report: any failure to build is the reason shown
        return False, f"the kernel does not build for {major}.{minor}: {_first_line(e)}"
    return True, f"kernel built with {'NVRTC' if compilers['nvrtc']['ok'] else 'nvcc'}"


def decide(r: dict[str, Any]) -> list[dict[str, str]]:
    """Which backend each command picks here, and why not the other."""
    trt_ok = r["tensorrt"]["ok"] and r["binding"]["ok"]
    # the whole reasons stand in the TensorRT / binding lines above: their first clause here
    why_not_trt = "; ".join(p["reason"].split(";")[0] for p in (r["tensorrt"], r["binding"]) if not p["ok"])
    rows = [
        {"what": "build-engine --backend auto", "uses": "tensorrt" if trt_ok else "onnxruntime",
         "why": "TensorRT and a CUDA device are usable" if trt_ok else f"not tensorrt: {why_not_trt}"},
        {"what": "bench / stream on a .engine", "uses": "tensorrt" if trt_ok else "unavailable",
         "why": f"binding {r['binding'].get('name')}" if trt_ok else why_not_trt},
    ]
    if not trt_ok:
        rows.append({"what": "stream --preprocess auto", "uses": "cpu", "why": "CUDA preprocessing needs a TensorRT runner"})
    else:
        ok, why = _kernel_builds(r["driver"], r["compilers"])
        rows.append({"what": "stream --preprocess auto", "uses": "cuda" if ok else "cpu", "why": why})
    t = r["torch"]
    if t["ok"] and t["cuda_available"]:
        amp = "AMP fp16 + GradScaler" if t["amp_grad_scaler"] else "AMP GradScaler missing: torch >= 2.3 needed"
        rows.append({"what": "train --device auto", "uses": "cuda", "why": f"{t['devices']} GPU(s), {amp}; DDP over "
                     + ("NCCL" if t["nccl"] else "gloo (no NCCL in this torch)")})
    else:
        why = t.get("reason") or (f"torch {t['version']} is a CPU build" if not t["cuda_build"] else "torch sees no GPU")
        rows.append({"what": "train --device auto", "uses": "cpu" if t["ok"] else "unavailable", "why": why})
    return rows


def probe_cpu() -> dict[str, Any]:
    """The CPU and the instruction sets that decide torch's and ONNX Runtime's INT8 / FP32 speed."""
    import os

    from edgeskd.bench.machine import cpu_flags, cpu_model

    return {"ok": True, "model": cpu_model(), "cores": os.cpu_count(), "flags": cpu_flags()}


def collect() -> dict[str, Any]:
    plat = probe_platform()
    driver = probe_driver()
    r: dict[str, Any] = {"platform": plat, "cpu": probe_cpu(), "driver": driver, "cuda_python": probe_cuda_python(driver),
                         "pycuda": {"ok": importlib.util.find_spec("pycuda") is not None, "version": _dist_version("pycuda")},
                         "compilers": probe_compilers(), "tensorrt": probe_tensorrt(plat), "binding": probe_binding(),
                         "torch": probe_torch(), "onnxruntime": probe_onnxruntime()}
    r["backends"] = decide(r)
    return r


def _line(name: str, p: dict[str, Any], value: str) -> str:
    mark = "ok " if p.get("ok") else "-- "
    text = value if p.get("ok") else p.get("reason", "not installed")
    text = re.sub(r" \(see `edgeskd doctor`\)|[;,] see `edgeskd doctor`", "", text)   # shared error texts point here; this is here
    return f"  {mark} {name:<12} {text}"


def render_text(r: dict[str, Any]) -> str:
    plat, drv = r["platform"], r["driver"]
    lines = [f"platform      Python {plat['python']}, {plat['system']} {plat['machine']}"
             + (f", Jetson {plat.get('board', '')} L4T {plat.get('l4t')} (JetPack {plat.get('jetpack')})"
                if plat["jetson"] else "")]
    cpu = r["cpu"]
    lines.append(f"cpu           {cpu['model']}, {cpu['cores']} core(s), {' '.join(cpu['flags']) or 'no AVX2'}")
    lines.append(_line("driver", drv, f"{drv.get('version') or '?'} (CUDA {drv.get('cuda')})"))
    for g in drv["gpus"]:
        lines.append(f"      GPU {g['index']}: {g['name']}, compute capability {g['compute_capability']}, "
                     f"{g['memory_gib']} GiB")
    cp_, comp = r["cuda_python"], r["compilers"]
    lines.append(_line("cuda-python", cp_, f"{cp_.get('version')} ({cp_.get('layout')})"))
    lines.append(_line("pycuda", {**r["pycuda"], "reason": "not installed"}, str(r["pycuda"].get("version"))))
    lines.append(_line("NVRTC", comp["nvrtc"], str(comp["nvrtc"].get("version"))))
    lines.append(_line("nvcc", comp["nvcc"], f"{comp['nvcc'].get('version')} ({comp['nvcc'].get('path')})"))
    lines.append(_line("binding", r["binding"], f"{r['binding'].get('name')} on {r['binding'].get('device')}"))
    lines.append(_line("TensorRT", r["tensorrt"], str(r["tensorrt"].get("version"))))
    t = r["torch"]
    lines.append(_line("torch", t, f"{t.get('version')} (CUDA build {t.get('cuda_build')}, "
                                   f"{t.get('devices', 0)} GPU(s) visible)"))
    o = r["onnxruntime"]
    lines.append(_line("onnxruntime", o, f"{o.get('version')} ({', '.join(o.get('providers', []))})"))
    lines.append("backends")
    for b in r["backends"]:
        lines.append(f"  {b['what']:<28} -> {b['uses']:<12} {b['why']}")
    return "\n".join(lines)
