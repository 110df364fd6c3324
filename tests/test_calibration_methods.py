"""Calibration methods really differ: entropy (TensorRT's KL search) and percentile clip ranges that
min/max keeps whole, and the cache file names the settings it was computed with."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgeskd.quantize.calibration import entropy_amax, select_calibration


def _entropy_amax_loop(hist, edges, nq=128, start=128):
    """Reference: the per-candidate loop of TensorRT's / pytorch-quantization's entropy calibrator."""
    bins = np.asarray(hist, np.float64).copy()
    bins[0] = bins[1]
    best, best_i = np.inf, len(bins)
    for i in range(start, len(bins) + 1):
        ref = bins[:i].copy()
        ref[-1] += bins[i:].sum()
        chunk = np.minimum(np.arange(i) * nq // i, nq - 1)
        nz = bins[:i] > 0
        q = np.zeros(i)
        for k in range(nq):
            m = (chunk == k) & nz
            if m.any():
                q[m] = bins[:i][m].sum() / m.sum()
        p, q = ref / ref.sum(), q / q.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = float(np.sum(np.where(p > 0, p * np.log(p / q), 0.0)))
        if kl <= best:
            best, best_i = kl, i
    return float(edges[best_i])


def test_entropy_threshold_matches_the_reference_loop():
    rng = np.random.default_rng(0)
    for t, n_bins in ((3, 512), (5, 300)):
        x = np.abs(rng.standard_t(t, size=20000))
        x[:5000] = 0.0                                  # a ReLU's zeros
        hist, edges = np.histogram(x, bins=n_bins)
        got = entropy_amax(hist, edges)
        assert np.isclose(got, _entropy_amax_loop(hist, edges))
        assert got < edges[-1] * 0.8                    # heavy tail: clipped well inside the max
    # a narrow uniform histogram: nothing to clip
    hist, edges = np.histogram(np.linspace(0, 1, 1000), bins=256)
    assert np.isclose(entropy_amax(hist, edges), 1.0)


def test_entropy_and_percentile_ranges_differ_from_minmax(tmp_path):
    """ONNX Runtime's quantize_static runs its entropy calibrator with 128 bins and 128 quantized
    bins — one candidate, the full range — so 'entropy' used to give exactly the min/max model."""
    from onnxruntime.quantization.calibrate import load_tensors_data
    from test_export import make_checkpoint, tiny_set

    from edgeskd.export.onnx_export import export_onnx
    from edgeskd.quantize.calibration import cache_path
    from edgeskd.quantize.qdq import quantize_qdq

    ckpt, _ = make_checkpoint(tmp_path / "s.pt")
    ls = tiny_set(90)
    res = export_onnx(ckpt, tmp_path / "s.onnx", dataset=ls, parity_samples=8)
    cs = select_calibration(ls, res.meta, size=30, batch_size=10)
    ranges, scales = {}, {}
    for method in ("minmax", "entropy", "percentile"):
        cache = cache_path(res.path.read_bytes(), cs, method, directory=tmp_path / "calib")
        q = quantize_qdq(res.path, tmp_path / f"{method}.onnx", res.meta, calib=cs, cache=cache, method=method)
        assert cache.is_file() and cache.name.endswith({"minmax": "-minmax.json", "entropy": "-entropy-trt2048.json",
                                                        "percentile": "-percentile.json"}[method])
        ranges[method] = {k: (float(np.max(v.range_value[0])), float(np.max(v.range_value[1])))
                          for k, v in load_tensors_data(cache).items()}
        m = onnx.load(str(q))
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        scales[method] = sorted(float(inits[n.input[1]]) for n in m.graph.node
                                if n.op_type == "QuantizeLinear" and inits[n.input[1]].size == 1)
    assert ranges["minmax"].keys() == ranges["entropy"].keys()
    width = {m: {k: hi - lo for k, (lo, hi) in r.items()} for m, r in ranges.items()}
    narrower = [k for k in width["minmax"] if width["entropy"][k] < 0.95 * width["minmax"][k]]
    assert narrower, "entropy calibration clipped no tensor: it reproduces min/max"
    # entropy never widens a range past the observed min/max
    assert all(width["entropy"][k] <= width["minmax"][k] * (1 + 1e-6) for k in width["minmax"])
    assert scales["entropy"] != scales["minmax"] and scales["percentile"] != scales["minmax"]
