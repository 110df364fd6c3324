"""Bench building blocks: timing statistics on a fake clock, FLOPs from an ONNX graph, peak memory."""

from __future__ import annotations

import numpy as np
import pytest

from edgeskd.runtime.timing import TimingStats, throughput, time_call


class FakeClock:
    """Each call to fn() advances time by the next duration; the clock reads the current time."""

    def __init__(self, durations_ns):
        self.t = 0
        self.durations = list(durations_ns)
        self.calls = 0

    def __call__(self):
        return self.t

    def fn(self):
        self.t += self.durations[self.calls]
        self.calls += 1


def test_time_call_statistics_on_fake_clock():
    durations = [10_000_000] * 5 + [1_000_000 * (i + 1) for i in range(100)]  # 5 warm-ups of 10 ms, then 1..100 ms
    clk = FakeClock(durations)
    st = time_call(clk.fn, warmup=5, iters=100, clock=clk)
    assert clk.calls == 105 and st.n == 100
    assert st.min_ms == pytest.approx(1.0) and st.max_ms == pytest.approx(100.0)
    assert st.p50_ms == pytest.approx(50.5)
    assert st.p99_ms == pytest.approx(np.percentile(np.arange(1, 101), 99))
    assert st.mean_ms == pytest.approx(50.5)
    assert throughput(st, 8) == pytest.approx(8 / 0.0505)


def test_time_call_respects_time_budget():
    clk = FakeClock([1_000_000_000] * 50)  # 1 s per call
    st = time_call(clk.fn, warmup=0, iters=50, clock=clk, max_seconds=3)
    assert 5 <= st.n < 50  # at least 5 samples, stopped early


def test_timing_rejects_bad_counts():
    with pytest.raises(ValueError):
        time_call(lambda: None, warmup=0, iters=0)
    with pytest.raises(ValueError):
        TimingStats.from_ns([])


def test_onnx_flops_conv_and_gemm(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from edgeskd.bench.flops import onnx_flops_per_image

    w = numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w")
    g = numpy_helper.from_array(np.zeros((5, 8), np.float32), "g")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "g"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], [w, g])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    conv = 2 * 8 * 8 * 8 * 3 * 3 * 3  # 2 * (Cout*Ho*Wo) * (Cin*kh*kw)
    gemm = 2 * 1 * 8 * 5
    assert onnx_flops_per_image(model) == conv + gemm

    # the same model as ONNX Runtime saves it optimized (build-engine's fp32-opt CPU artifact):
    # Conv+Relu becomes com.microsoft FusedConv, whose shapes ONNX shape inference does not know
    ort = pytest.importorskip("onnxruntime")
    relu = helper.make_graph(
        nodes[:1] + [helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"])]
        + nodes[2:], "t", list(graph.input), list(graph.output), [w, g])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(relu, opset_imports=[helper.make_opsetid("", 17)]), src)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    fused = onnx.load(str(tmp_path / "opt.onnx"))
    assert "FusedConv" in {n.op_type for n in fused.graph.node}
    assert onnx_flops_per_image(fused) == onnx_flops_per_image(src) == conv + gemm


def test_peak_memory_sees_a_large_allocation():
    from edgeskd.bench.memory import track_peak_memory

    with track_peak_memory() as pm:
        a = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
        del a
    if pm.peak_mb is None:
        pytest.skip("peak RSS reset not supported on this kernel")
    assert pm.peak_mb >= 50


def test_peak_memory_is_not_hidden_by_memory_an_earlier_block_freed():
    """Rows are measured one after another in one process: memory an earlier artifact freed must
    not make a later one look free (glibc keeps freed heap memory for reuse)."""
    from edgeskd.bench.memory import track_peak_memory

    # 96 MiB of small (heap, not mmap) blocks, then a block above them that stays: freeing the 96
    # MiB leaves a hole glibc keeps for reuse instead of returning it to the OS
    chunks = [np.ones(32 * 1024 // 8) for _ in range(96 * 32)]
    keep = np.ones(32 * 1024 // 8)
    del chunks
    with track_peak_memory() as pm:
        chunks = [np.ones(32 * 1024 // 8) for _ in range(64 * 32)]   # 64 MiB, reusing the hole
        del chunks
    del keep
    if pm.peak_mb is None:
        pytest.skip("peak RSS reset not supported on this kernel")
    assert pm.peak_mb >= 50
