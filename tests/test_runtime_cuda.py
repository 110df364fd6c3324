"""The CUDA binding adapter: names checked on CPU against the installed cuda-python, a clean
BackendUnavailable without a GPU, and a real round trip on a GPU."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from edgeskd.errors import BackendUnavailable
from edgeskd.runtime.cuda_binding import available_bindings, get_binding

CUDART_NAMES = ("cudaGetDeviceCount", "cudaSetDevice", "cudaDeviceGetAttribute", "cudaDeviceAttr",
                "cudaGetDeviceProperties", "cudaMalloc", "cudaFree", "cudaMallocHost", "cudaFreeHost",
                "cudaMemcpyAsync", "cudaMemcpyKind", "cudaStreamCreate", "cudaStreamSynchronize",
                "cudaStreamDestroy", "cudaError_t")


def _has_cuda_python() -> bool:
    return importlib.util.find_spec("cuda") is not None and importlib.util.find_spec("cuda.bindings") is not None


DRIVER_NAMES = ("cuInit", "cuDeviceGet", "cuDevicePrimaryCtxRetain", "cuDevicePrimaryCtxRelease", "cuCtxSetCurrent",
                "cuModuleLoadData", "cuModuleGetFunction", "cuModuleUnload", "cuLaunchKernel", "CUstream", "CUresult")
NVRTC_NAMES = ("nvrtcVersion", "nvrtcGetSupportedArchs", "nvrtcCreateProgram", "nvrtcCompileProgram",
               "nvrtcGetProgramLogSize", "nvrtcGetProgramLog", "nvrtcGetCUBINSize", "nvrtcGetCUBIN",
               "nvrtcGetPTXSize", "nvrtcGetPTX", "nvrtcDestroyProgram", "nvrtcResult")


def _attrs_on(path, owners: set[str]) -> set[str]:
    """Attribute names used on ``owner.X`` / ``self.owner.X`` in a source file."""
    import ast
    from pathlib import Path

    out = set()
    for n in ast.walk(ast.parse(Path(path).read_text())):
        if isinstance(n, ast.Attribute):
            v = n.value
            name = v.id if isinstance(v, ast.Name) else (v.attr if isinstance(v, ast.Attribute) else None)
            if name in owners:
                out.add(n.attr)
    return out


@pytest.mark.skipif(not _has_cuda_python(), reason="cuda-python not installed")
def test_cuda_python_driver_and_nvrtc_names_exist():
    """Every driver / NVRTC name the kernel loader uses exists in the installed cuda-python."""
    import edgeskd.runtime.cuda_preprocess as cp
    from edgeskd.runtime.cuda_binding import import_cuda_module

    drv, nvrtc = import_cuda_module("driver"), import_cuda_module("nvrtc")
    assert not [n for n in DRIVER_NAMES if not hasattr(drv, n)]
    assert not [n for n in NVRTC_NAMES if not hasattr(nvrtc, n)]
    assert hasattr(drv.CUresult, "CUDA_SUCCESS") and hasattr(nvrtc.nvrtcResult, "NVRTC_SUCCESS")
    used_drv = _attrs_on(cp.__file__, {"driver"}) - {"CUDA_SUCCESS"}
    used_nvrtc = _attrs_on(cp.__file__, {"nvrtc"}) - {"NVRTC_SUCCESS"}
    assert used_drv and used_drv <= set(DRIVER_NAMES), used_drv - set(DRIVER_NAMES)
    assert used_nvrtc and used_nvrtc <= set(NVRTC_NAMES), used_nvrtc - set(NVRTC_NAMES)


@pytest.mark.skipif(not _has_cuda_python(), reason="cuda-python not installed")
def test_cuda_python_names_exist():
    from cuda.bindings import runtime as rt

    missing = [n for n in CUDART_NAMES if not hasattr(rt, n)]
    assert not missing, missing
    assert hasattr(rt.cudaMemcpyKind, "cudaMemcpyHostToDevice") and hasattr(rt.cudaMemcpyKind, "cudaMemcpyDeviceToHost")
    assert hasattr(rt.cudaDeviceAttr, "cudaDevAttrComputeCapabilityMajor")
    # every cudart name the adapter calls is in the list above
    import ast
    from pathlib import Path

    import edgeskd.runtime.cuda_binding as cb

    used = {n.attr for n in ast.walk(ast.parse(Path(cb.__file__).read_text()))
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and n.value.attr == "rt"}
    assert used and used <= set(CUDART_NAMES), used - set(CUDART_NAMES)


def test_unknown_binding_name():
    with pytest.raises(ValueError, match="unknown CUDA binding"):
        get_binding("cupy")


def test_no_gpu_is_backend_unavailable():
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    except ImportError:
        pass
    if not available_bindings():
        with pytest.raises(BackendUnavailable):
            get_binding()
        return
    with pytest.raises(BackendUnavailable, match="no usable CUDA device|not installed"):
        get_binding()


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["cuda-python", "pycuda"])
def test_round_trip_on_gpu(name):
    if name not in available_bindings():
        pytest.skip(f"{name} not installed")
    cu = get_binding(name)
    assert cu.device_count() >= 1 and cu.compute_capability()[0] >= 5
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    host = cu.host_empty(x.shape, np.float32)
    s = cu.stream_create()
    with cu.malloc(x.nbytes) as a, cu.malloc(x.nbytes) as b:
        cu.memcpy_htod_async(a.ptr, x, s)
        cu.memcpy_dtod_async(b.ptr, a.ptr, x.nbytes, s)
        cu.memcpy_dtoh_async(host, b.ptr, s)
        cu.stream_synchronize(s)
    cu.stream_destroy(s)
    np.testing.assert_array_equal(host, x)


@pytest.mark.gpu
def test_pycuda_binding_exits_cleanly():
    """pycuda aborts at exit when its context stack is not empty; the binding pops at exit."""
    if "pycuda" not in available_bindings():
        pytest.skip("pycuda not installed")
    import subprocess
    import sys

    code = ("from edgeskd.runtime.cuda_binding import get_binding\n"
            "cu = get_binding('pycuda'); b = cu.malloc(64); s = cu.stream_create(); cu.stream_synchronize(s)\n"
            "cu.stream_destroy(s); b.free()\n"
            "print('done')\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "done" in p.stdout, p.stderr[-2000:]
    assert "context stack was not empty" not in p.stderr
