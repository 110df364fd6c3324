"""Regression: compiling the kernel must not write into shared immutable bytes objects."""

from __future__ import annotations

import pytest


def test_nvrtc_compile_leaves_cached_bytes_intact():
    pytest.importorskip("cuda.bindings.nvrtc")
    from edgeskd.runtime.cuda_preprocess import compile_nvrtc

    space = bytes([32])
    ptx = compile_nvrtc("compute_75")
    assert isinstance(ptx, bytes) and b".entry" in ptx
    # b" " * 1 is CPython's cached one-byte object; NVRTC once wrote its empty log (a NUL) into it.
    assert b" " * 1 == space and b" ".decode() == " "
