"""What the numbers were measured on: CPU, cores, GPU, library versions, and a measured GEMM peak."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import numpy as np

_LIBS = ("numpy", "onnxruntime", "onnx", "torch", "torchvision", "tensorrt", "av", "cuda-python", "cuda-bindings")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "fma"})
    except OSError:
        pass
    return []


def gpu_name() -> str | None:
    try:
        import torch  # optional
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    i = torch.cuda.current_device()
    cc = torch.cuda.get_device_capability(i)
    return f"{torch.cuda.get_device_name(i)} (sm_{cc[0]}{cc[1]})"


def library_versions() -> dict[str, str]:
    out = {}
    for name in _LIBS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _gemm_gflops(matmul: Any, n: int, repeats: int) -> float:
    """GFLOP/s of the fastest of ``repeats`` calls of an n x n x n ``matmul`` (after one warm-up)."""
    from edgeskd.runtime.timing import time_call

    best_s = time_call(matmul, warmup=1, iters=repeats).min_ms / 1e3
    return 2.0 * n**3 / best_s / 1e9


def gemm_peak_gflops(threads: int, n: int = 1024, repeats: int = 5) -> float:
    """Measured float32 GEMM throughput (numpy BLAS, ``threads`` threads): the CPU 'roofline' here."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)

    def run() -> float:
        return _gemm_gflops(lambda: a @ b, n, repeats)

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return run()
    with threadpool_limits(limits=threads):
        return run()


def ort_gemm_peak_gflops(threads: int, n: int = 1024, repeats: int = 5) -> float | None:
    """float32 GEMM throughput of ONNX Runtime's MLAS (constant, pre-packed B, as a model's weights
    are): on CPUs with AVX-512 it is about twice numpy's OpenBLAS where OPENBLAS_CORETYPE pins it
    to AVX2, and ORT's own convolutions otherwise seem to beat the 'peak'. None without onnxruntime."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    b = helper.make_tensor("b", TensorProto.FLOAT, [n, n], rng.standard_normal(n * n, dtype=np.float32))
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = rng.standard_normal((n, n), dtype=np.float32)
    return _gemm_gflops(lambda: sess.run(None, {"a": a}), n, repeats)


def machine_info(threads: int, *, measure_peak: bool = True) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "threads": threads,
        "gpu": gpu_name(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
    }
    if measure_peak:
        # the roofline: the best float32 GEMM this machine ran in this process (numpy / MLAS)
        peaks = {"numpy": gemm_peak_gflops(threads), "onnxruntime": ort_gemm_peak_gflops(threads)}
        info["gemm_peaks_gflops"] = {k: round(v, 2) for k, v in peaks.items() if v is not None}
        info["gemm_peak_gflops"] = max(info["gemm_peaks_gflops"].values())
    return info
