"""Reliability diagram (PNG): accuracy against confidence per bin, before and after calibration.

matplotlib is imported here only, when a diagram is drawn (it is a training extra; the edge runtime
never needs it), through its object API and the Agg canvas: no pyplot state, no display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeskd.clinical.calibration import N_BINS, ReliabilityBins, reliability_bins
from edgeskd.errors import UsageError
from edgeskd.utils.io import atomic_path


def _panel(ax: Any, bins: ReliabilityBins, title: str) -> None:
    width = bins.edges[1] - bins.edges[0]
    full = bins.counts > 0
    centres = bins.edges[:-1] + width / 2
    ax.bar(centres[full], bins.accuracy[full], width=width, edgecolor="black", linewidth=0.5,
           color="#4c72b0", label="accuracy")
    ax.bar(centres[full], bins.confidence[full] - bins.accuracy[full], bottom=bins.accuracy[full], width=width,
           color="#dd8452", alpha=0.5, edgecolor="#dd8452", linewidth=0.5, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (highest class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {100 * bins.ece:.2f} % · {int(bins.counts.sum())} cases", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)


def write_reliability_diagram(path: str | Path, probs: Any, labels: Any, *, calibrated: Any | None = None,
                              title: str = "", n_bins: int = N_BINS, calibrated_label: str | None = None) -> Path:
    """Write a reliability diagram of ``probs`` (and, beside it, of ``calibrated`` probabilities of
    the same cases, titled ``calibrated_label``) to ``path`` atomically. Returns the path."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError("the reliability diagram needs matplotlib: pip install 'edgeskd[train]'") from None
    panels = [(reliability_bins(probs, labels, n_bins), "uncalibrated")]
    if calibrated is not None:
        panels.append((reliability_bins(calibrated, labels, n_bins), calibrated_label or "calibrated"))
    fig = Figure(figsize=(4.2 * len(panels), 4.4), dpi=110)
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (bins, name) in zip(axes, panels):
        _panel(ax, bins, name)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
