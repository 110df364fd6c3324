"""Regression: compiling the kernel must not write into shared immutable bytes objects."""

from __future__ import annotations

import pytest


def test_nvrtc_compile_leaves_cached_bytes_intact():
    pytest.importorskip("cuda.bindings.nvrtc")
    from edgeskd.runtime.cuda_preprocess import compile_nvrtc

    ptx = compile_nvrtc("compute_75")
    assert isinstance(ptx, bytes) and b".entry" in ptx
    # b" " * 1 is CPython's cached one-byte object; NVRTC once wrote its empty log (a NUL) into it.
    # Compare by value: bytes([32]) would be that same cached object, corrupted or not.
    assert list(b" " * 1) == [32] and list(b" ") == [32]
