"""Bench output: rich table, markdown, JSON, and the plot (latency vs F1; throughput vs batch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeskd.utils.io import atomic_path

COLUMNS = (
    ("name", "name"), ("backend", "backend"), ("precision", "prec"), ("size_mb", "MB"), ("params", "params"),
    ("f1", "F1"), ("accuracy", "acc"), ("auc", "AUC"), ("ece", "ECE"), ("npv", "NPV"), ("coverage", "cover"),
    ("latency_p50_ms", "p50 ms"), ("latency_p99_ms", "p99 ms"),
    ("throughput", "img/s"), ("peak_mem_mb", "mem MB"), ("flops_per_image", "MFLOP"),
    ("pct_of_gemm_peak", "% peak"), ("speedup_vs_torch_student", "× torch"), ("f1_change_vs_fp32", "ΔF1"),
    ("npv_change_vs_fp32", "ΔNPV"), ("worst_subclass_change", "worst subclass Δ"), ("status", "status"),
)


# the default table: what fits 120 columns (--wide shows every column above)
COMPACT = ("name", "backend", "precision", "f1", "accuracy", "auc", "ece", "npv", "coverage", "latency_p50_ms",
           "throughput_best", "speedup_vs_torch_student", "f1_change_vs_fp32", "status")
_COMPACT_HEADS = {"throughput_best": "best img/s"}


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return "–"
    if key == "throughput_best":
        return f"{max(v.values()):,.0f}" if v else "–"
    if key == "throughput":
        return " / ".join(f"{b}:{x:,.0f}" for b, x in v.items()) if v else "–"
    if key == "flops_per_image":
        return f"{v / 1e6:,.1f}"
    if key == "params":
        return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{v:,}"
    if key in ("f1_change_vs_fp32", "npv_change_vs_fp32"):
        return f"{v:+.2f}"
    if key == "worst_subclass_change":
        return f"{v['subclass']} {v['change']:+.1f}"
    if key == "speedup_vs_torch_student":
        return f"{v:.2f}×"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v)


def cells(row: dict[str, Any], keys: tuple[str, ...] | None = None) -> list[str]:
    keys = keys or tuple(k for k, _ in COLUMNS)
    out = [_fmt(k, row.get("throughput" if k == "throughput_best" else k)) for k in keys]
    if row.get("status") != "ok":
        out[-1] = f"failed: {row.get('error')}" if len(keys) == len(COLUMNS) else "failed"
    return out


def rich_table(result: dict[str, Any], *, wide: bool = False):
    """The bench table: by default the columns that fit 120 terminal columns (failed rows' errors
    follow the table, see ``failures``); ``wide`` = every column."""
    from rich import box
    from rich.table import Table

    m = result["machine"]
    title = f"edgeskd bench — {m.get('cpu')} · {m.get('threads')} threads"
    if m.get("gpu"):
        title += f" · {m['gpu']}"
    heads = dict(COLUMNS) | _COMPACT_HEADS
    keys = tuple(k for k, _ in COLUMNS) if wide else COMPACT
    t = Table(title=title, caption=_caption(result, wide), box=box.SIMPLE_HEAD if not wide else box.HEAVY_HEAD,
              padding=(0, 1) if wide else (0, 0, 0, 1), collapse_padding=True)
    for key in keys:
        t.add_column(heads[key], justify="left" if key in ("name", "backend", "precision", "status") else "right",
                     overflow="fold")
    for r in result["rows"]:
        t.add_row(*cells(r, keys), style=None if r.get("status") == "ok" else "red")
    return t


def failures(result: dict[str, Any]) -> list[str]:
    """One line per row that failed: its name and why."""
    return [f"{r['name']} ({r.get('backend')}): {r.get('error')}" for r in result["rows"] if r.get("status") != "ok"]


def _caption(result: dict[str, Any], wide: bool = True) -> str:
    m = result["machine"]
    parts = [f"split {result.get('split', '?')} (n={result.get('n_images', '?')})"]
    if result.get("n_polyp_images") is not None:
        parts[0] += (f"; F1, acc, AUC, ECE, NPV and cover on its {result['n_polyp_images']} polyp images (probabilities "
                     "conditional on a polyp, no presence gate), presence apart")
    if m.get("gemm_peak_gflops"):
        parts.append(f"measured fp32 GEMM peak {m['gemm_peak_gflops']:.1f} GFLOP/s (best of "
                     + ", ".join(f"{k} {v:.0f}" for k, v in (m.get("gemm_peaks_gflops") or {}).items()) + ")")
    if not wide:
        parts.append("best img/s over the batch sizes (--wide: each, latency p99, size, memory, FLOPs, per-subclass Δ)")
    parts.append("img/s per batch size; × torch = batch-1 p50 speed-up vs the torch-eager student")
    parts.append("ECE (%) of the probabilities calibrated with the artifact's temperature(s); NPV and cover (% of "
                 "those images with a call) at the artifact's threshold (argmax without one); Δ = change vs the FP32 "
                 "source in points")
    return "; ".join(parts)


def subclass_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the per-subclass table: accuracy per data subclass of every row compared
    with an FP32 source, as "accuracy (change vs FP32)"; empty when no row has such a comparison."""
    rows = [r for r in result["rows"] if r.get("status") == "ok" and r.get("subclass_change_vs_fp32")]
    if not rows:
        return [], []
    subs = list(dict.fromkeys(k for r in rows for k in r["subclass_change_vs_fp32"]))
    head = ["subclass"] + [f"{r['name']} ({r['backend']})" for r in rows]
    body = [[k] + [f"{r['per_subclass_accuracy'][k]:.1f} ({r['subclass_change_vs_fp32'][k]:+.1f})"
                   if k in r["subclass_change_vs_fp32"] else "–" for r in rows] for k in subs]
    return head, body


def subclass_table(result: dict[str, Any]):
    from rich.table import Table

    head, body = subclass_rows(result)
    t = Table(title="accuracy per subclass (%), change vs FP32 in points")
    for i, h in enumerate(head):
        t.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for b in body:
        t.add_row(*b)
    return t


def machine_line(m: dict[str, Any]) -> str:
    """Where the figures were measured: CPU, its SIMD flags, threads (and the GPU)."""
    flags = " ".join(m.get("cpu_flags") or []) or "no AVX2/AVX-512 flags found"
    return f"{m.get('cpu')} ({flags}) · {m.get('threads')} threads" + (f" · {m['gpu']}" if m.get("gpu") else "")


def markdown(result: dict[str, Any]) -> str:
    heads = [h for _, h in COLUMNS]
    m = result.get("machine") or {}
    lines = ([f"Measured on {machine_line(m)}.", ""] if m.get("cpu") else []) + [
        "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in result["rows"]]
    out = "\n".join(lines) + "\n\n" + _caption(result) + "\n"
    head, body = subclass_rows(result)
    if head:
        out += ("\nAccuracy per subclass (%), change vs FP32 in points:\n\n| " + " | ".join(head) + " |\n|"
                + "---|" * len(head) + "\n" + "".join("| " + " | ".join(b) + " |\n" for b in body))
    return out


def plot(result: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("status") == "ok"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8))
    for r in rows:
        if r.get("latency_p50_ms") and r.get("f1") is not None:
            a.scatter(r["latency_p50_ms"], r["f1"], s=40)
            a.annotate(f"{r['name']} ({r['backend']})", (r["latency_p50_ms"], r["f1"]), fontsize=7,
                       xytext=(4, 3), textcoords="offset points")
        if r.get("throughput"):
            bs = sorted(r["throughput"], key=int)
            b.plot([int(x) for x in bs], [r["throughput"][x] for x in bs], marker="o", label=f"{r['name']}")
    a.set_xscale("log")
    a.set_xlabel("latency p50 at batch 1 (ms, log)")
    a.set_ylabel(f"F1 (%) on {result.get('split', '?')}")
    a.set_title("accuracy vs latency")
    a.grid(alpha=0.3)
    b.set_xscale("log", base=2)
    b.set_yscale("log")
    b.set_xlabel("batch size")
    b.set_ylabel("images / s (log)")
    b.set_title("throughput vs batch size")
    b.grid(alpha=0.3)
    if rows:
        b.legend(fontsize=7)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out
