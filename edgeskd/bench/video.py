"""The bench's video rows (``bench --video SRC --labels CSV``): every artifact streamed over one
labelled video, file mode (every frame, in order, no drops), with the figures of ``stream --labels``
beside the same artifact's image-test figures.

Per artifact: polyp-frame accuracy (95 % interval by polyp, ``stream.video_figures.cluster_rate_ci``)
beside the image-test accuracy it carries, per-polyp accuracy at argmax, the share of polyp-free frames with a class call and false alarms per
minute (``stream.video_figures.EPISODE_RULE``), the share of non-positive polyps with a confident
non-positive call, NPV of the displayed calls at the artifact's threshold (interval), and the
processing rate. The stream's own code computes every figure; this module only runs it and
collects them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

VIDEO_COLUMNS = (   # fits 120 terminal columns
    ("name", "model"), ("frame_accuracy", "frame acc %"), ("image_accuracy", "image %"),
    ("polyp_accuracy", "polyp %"), ("no_polyp_call_share", "calls no-polyp %"),
    ("false_alarms_per_minute", "alarms/min"), ("negative_polyps_called", "neg. called"),
    ("npv", "NPV % of calls"),
)


def check_video_inputs(video: Path | None, labels: Path | None) -> None:
    """Both or neither; the video opens and the labels file parses — before any benching."""
    from edgeskd.errors import UsageError

    if video is None and labels is None:
        return
    if video is None or labels is None:
        raise UsageError("--video and --labels go together: the video rows need a video and its per-frame labels "
                         "CSV (frame,class[,subclass],polyp_id)")
    from edgeskd.stream.labels import check_labels_file
    from edgeskd.stream.source import open_container

    check_labels_file(labels)
    open_container(str(video)).close()


def _pct(x: Any) -> float | None:
    return None if x is None else round(100.0 * float(x), 2)


def _pct_ci(ci: Sequence[float] | None) -> list[float] | None:
    return None if ci is None else [round(100.0 * float(v), 2) for v in ci]


def figures_of(stats: dict[str, Any]) -> dict[str, Any]:
    """The row's figures (percent) out of a stream's stats with labels."""
    lab = stats.get("labels") or {}
    vid = lab.get("video") or {}
    pf, npf = vid.get("polyp_frames") or {}, vid.get("no_polyp_frames") or {}
    neg = vid.get("negative_polyps_called") or {}
    states = (lab.get("frame_states") or {}).get("smoothed") or {}
    pp = lab.get("per_polyp") or {}
    return {
        "frame_accuracy": _pct(pf.get("accuracy")), "frame_accuracy_ci95": _pct_ci(pf.get("accuracy_ci95")),
        "image_accuracy": _pct((vid.get("image_test") or {}).get("accuracy")),
        "polyp_accuracy": _pct(pp.get("accuracy_argmax")), "n_polyps": pp.get("n_polyps"),
        "no_polyp_call_share": _pct(npf.get("class_call_share")),
        "false_alarms_per_minute": npf.get("false_alarms_per_minute"),
        "negative_polyps_called": (f"{neg['with_negative_call']}/{neg['n_polyps']}" if neg.get("n_polyps") else None),
        "negative_polyps_called_share": _pct(neg.get("share")),
        "npv": _pct(states.get("npv")), "npv_ci95": _pct_ci(states.get("npv_ci95")),
        "threshold": lab.get("threshold"), "fps": stats.get("fps"),
    }


def video_row(name: str, path: Path, video: Path, labels: Path, *, threads: int, device: str | None) -> dict[str, Any]:
    """Stream one artifact over the labelled video; a failure is the row's status, not the bench's end."""
    from edgeskd.errors import EdgeSKDError
    from edgeskd.stream import StreamConfig, run_stream

    cfg = StreamConfig(video=str(video), engine=path, labels=labels, realtime=False, measure_ceiling=False,
                       threads=threads, device=device)
    try:
        res = run_stream(cfg)
    except EdgeSKDError as e:
        return {"name": name, "path": str(path), "status": "failed", "error": str(e)}
    return {"name": name, "path": str(path), "backend": (res.stats.get("source") or {}).get("backend"),
            "status": "ok" if res.exit_code == 0 else "failed", "error": res.error, **figures_of(res.stats)}


def video_rows(artifacts: Sequence[Any], video: Path, labels: Path, *, threads: int, device: str | None,
               on_row: Any = None) -> dict[str, Any]:
    rows = []
    for a in artifacts:
        rows.append(video_row(a.name, a.path, video, labels, threads=threads, device=device))
        if on_row is not None:
            on_row(rows[-1])
    from edgeskd.stream.video_figures import EPISODE_RULE

    return {"video": str(video), "labels": str(labels), "mode": "file (every frame, in order)",
            "episode_rule": EPISODE_RULE, "rows": rows}


def _cell(row: dict[str, Any], key: str) -> str:
    v = row.get(key)
    if v is None:
        return "—" if row.get("status") == "ok" else ("failed" if key == "frame_accuracy" else "")
    ci = row.get(f"{key}_ci95")   # frame_accuracy, npv
    if ci:
        return f"{v:.1f} [{ci[0]:.0f}–{ci[1]:.0f}]"
    if isinstance(v, float):
        return f"{v:.2f}" if key == "false_alarms_per_minute" else f"{v:.1f}"
    return str(v)


def video_table(block: dict[str, Any]):
    from rich import box
    from rich.table import Table

    t = Table(title=f"on video {Path(block['video']).name} (labels {Path(block['labels']).name}, every frame)",
              caption=("frame acc: polyp frames ([95 % interval, by polyp]), image: the artifact's image test; polyp: per-polyp "
                       "accuracy; no-polyp calls: polyp-free frames with a class call; neg. called: non-positive "
                       "polyps with a confident non-positive call; NPV of the displayed calls at the artifact's "
                       f"threshold. False alarm: {block['episode_rule']}"), box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1),
              collapse_padding=True)
    for key, head in VIDEO_COLUMNS:
        t.add_column(head, justify="left" if key == "name" else "right", no_wrap=True)
    for r in block["rows"]:
        t.add_row(*(_cell(r, k) for k, _ in VIDEO_COLUMNS), style=None if r.get("status") == "ok" else "red")
    return t
