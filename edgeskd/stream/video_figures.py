"""Figures of a model on a labelled video (numpy only): what `stream --labels` reports beside the
same model's image-test figures.

* polyp frames: frame accuracy of the class (argmax; with a "no polyp" class, of the probabilities
  conditional on a polyp) with its interval, raw and smoothed; presence sensitivity
  (frames the model does not call "no polyp") for a model with a background class;
* per subtype (the labels' ``subclass`` column): frame accuracy per subtype, and its polyps;
* frames without a polyp: the share with a class call (a displayed class state — not "low
  confidence", not "no polyp"), with its interval, and **false alarms per minute** of polyp-free
  video. Episode rule (``ALARM_MIN_FRAMES``): a run of at least 3 consecutive processed frames
  without a polyp whose displayed (smoothed) state is a class call counts as one alarm; any other
  frame (no call, "no polyp", or a polyp frame) ends the run. Minutes = the labelled polyp-free
  frames between the first and the last processed frame / the video's frame rate;
* per polyp: the share of polyps of the non-positive class (hyperplastic) that get a confident
  non-positive call (displayed state) on at least one of their frames;
* the image-test figures the artifact carries (``meta.extra["image_test"]``, written by training).

Rates are fractions with 95 % intervals. The frames of one polyp are not independent cases (a
polyp the model gets wrong is wrong on most of its frames), so a rate over frames gets its
interval from the polyps: a bootstrap that resamples whole polyps (``cluster_rate_ci``; bare-wall
frames: whole runs of consecutive polyp-free frames), never narrower than the frames' Wilson
interval, and with fewer than 20 polyps never narrower than the Wilson interval of the polyps as
cases. Without polyp ids the interval is the frames' Wilson interval, and says so: it is too
narrow for video. Where only some polyp frames lack an id, each run of consecutive id-less frames
counts as one polyp (``StreamStats._clusters``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from edgeskd.clinical.operating_point import wilson_interval

ALARM_MIN_FRAMES = 3
EPISODE_RULE = (f"a run of >= {ALARM_MIN_FRAMES} consecutive processed frames without a polyp whose displayed "
                "(smoothed) state is a class call is one false alarm; a low-confidence, no-polyp or polyp frame "
                "ends the run")


def rate_ci(k: int, n: int) -> tuple[float | None, list[float] | None]:
    """(k / n, its 95 % Wilson interval), (None, None) for n = 0."""
    if n == 0:
        return None, None
    lo, hi = wilson_interval(k, n)  # type: ignore[misc]
    return k / n, [lo, hi]


BOOTSTRAP_RESAMPLES = 2000


MIN_BOOTSTRAP_CLUSTERS = 20      # fewer clusters: the bootstrap is too narrow; each cluster counts as one case


def cluster_rate_ci(hits: Sequence[bool], clusters: Sequence[Any] | None, *, n_boot: int = BOOTSTRAP_RESAMPLES,
                    seed: int = 0) -> tuple[float | None, list[float] | None, str]:
    """(rate, 95 % interval, how the interval was made) of ``hits`` whose cases come in ``clusters``
    (a polyp id per frame; None: no clusters known). Percentile bootstrap over clusters (seeded),
    widened to the frame-level Wilson interval where that is wider. With fewer than
    ``MIN_BOOTSTRAP_CLUSTERS`` clusters a bootstrap over them is too narrow (and with every cluster
    all hits it has no spread at all): the interval is then also widened to the Wilson interval of
    the clusters as cases (m clusters, rate x m hits), so 58 right calls from 2 polyps read
    [34, 100] %, not the frames' [94, 100] %."""
    h = np.asarray(hits, dtype=bool)
    rate, wilson = rate_ci(int(h.sum()), len(h))
    if rate is None:
        return None, None, "no cases"
    if clusters is None or any(c is None for c in clusters):
        return rate, wilson, "frames as independent cases (no polyp ids): too narrow for video"
    assert wilson is not None
    _, inv = np.unique(np.asarray([str(c) for c in clusters]), return_inverse=True)
    k, n = np.bincount(inv, weights=h), np.bincount(inv).astype(np.float64)
    m = len(n)
    lo, hi = wilson
    if m >= 2:
        rng = np.random.default_rng(seed)
        pick = rng.integers(0, m, (int(n_boot), m))
        boot = k[pick].sum(1) / n[pick].sum(1)
        b_lo, b_hi = (float(x) for x in np.percentile(boot, [2.5, 97.5]))
        lo, hi = min(lo, b_lo), max(hi, b_hi)
    if m < MIN_BOOTSTRAP_CLUSTERS:
        c_lo, c_hi = _wilson_real(rate * m, m)
        return rate, [min(lo, c_lo), max(hi, c_hi)], f"{m} cluster(s), fewer than {MIN_BOOTSTRAP_CLUSTERS}: Wilson over the clusters as cases"
    return rate, [lo, hi], f"bootstrap over {m} clusters"


def _wilson_real(k: float, n: int) -> tuple[float, float]:
    """Wilson score interval for a (possibly fractional) k of n cases."""
    from edgeskd.clinical.operating_point import Z95

    p, z2 = k / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 / (1 + z2 / n) * np.sqrt(max(0.0, p * (1 - p) / n + z2 / (4 * n * n)))
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def run_clusters(ordinals: Sequence[int]) -> np.ndarray:
    """Cluster id of each frame: runs of consecutive ordinals share one (a stretch of bare wall)."""
    o = np.asarray(ordinals, dtype=np.int64)
    order = np.argsort(o, kind="stable")
    ids = np.empty(len(o), np.int64)
    ids[order] = np.cumsum(np.concatenate([[0], np.diff(o[order]) != 1])) if len(o) else []
    return ids


def alarm_episodes(ordinals: Sequence[int], called: Sequence[bool], min_frames: int = ALARM_MIN_FRAMES) -> int:
    """Runs of >= ``min_frames`` consecutive ordinals (processed-frame positions) that all have a class call."""
    order = np.argsort(np.asarray(ordinals, dtype=np.int64), kind="stable")
    ords = np.asarray(ordinals, dtype=np.int64)[order]
    calls = np.asarray(called, dtype=bool)[order]
    episodes, run, prev = 0, 0, None
    for o, c in zip(ords, calls):
        if c and prev is not None and o == prev + 1 and run > 0:
            run += 1
        else:
            if run >= min_frames:
                episodes += 1
            run = 1 if c else 0
        prev = o
    return episodes + (1 if run >= min_frames else 0)


def polyp_frame_figures(y_true: Sequence[int], y_raw: Sequence[int], y_smooth: Sequence[int],
                        present: Sequence[bool] | None, polyps: Sequence[Any] | None = None) -> dict[str, Any]:
    """Frame accuracy on polyp frames; ``polyps``: each frame's polyp id (intervals by polyp)."""
    y, r, s = (np.asarray(v, dtype=np.int64) for v in (y_true, y_raw, y_smooth))
    acc, acc_ci, how = cluster_rate_ci(y == r, polyps)
    out: dict[str, Any] = {"n": int(len(y)), "accuracy": acc, "accuracy_ci95": acc_ci,
                           "accuracy_smoothed": rate_ci(int(np.sum(y == s)), len(y))[0], "interval": how}
    if present is not None:
        out["presence_sensitivity"], out["presence_sensitivity_ci95"], _ = cluster_rate_ci(np.asarray(present), polyps)
    return out


def per_subtype(subtypes: Sequence[str | None], y_true: Sequence[int], y_raw: Sequence[int],
                image: dict[str, float] | None, polyps: Sequence[Any] | None = None) -> dict[str, Any]:
    """Frame accuracy per subtype, its interval by polyp (``polyps``: each frame's polyp id), the
    number of polyps, and the image-test accuracy of the same subtype where known."""
    y, r = np.asarray(y_true, dtype=np.int64), np.asarray(y_raw, dtype=np.int64)
    names = np.asarray([s or "" for s in subtypes], dtype=object)
    ids = None if polyps is None else np.asarray([str(p) if p is not None else None for p in polyps], dtype=object)
    out: dict[str, Any] = {}
    for name in sorted(set(names) - {""}):
        m = names == name
        acc, ci, _ = cluster_rate_ci(y[m] == r[m], None if ids is None else list(ids[m]))
        out[name] = {"n": int(m.sum()), "polyps": None if ids is None else len(set(ids[m]) - {None}),
                     "accuracy": acc, "accuracy_ci95": ci, "image_test_accuracy": (image or {}).get(name)}
    return out


def no_polyp_figures(ordinals: Sequence[int], states: Sequence[int], raw_states: Sequence[int],
                     n_labelled_in_range: int, fps: float | None, background: bool) -> dict[str, Any]:
    """Class calls and false alarms on frames without a polyp (``states``: displayed decisions)."""
    st, raw = np.asarray(states, dtype=np.int64), np.asarray(raw_states, dtype=np.int64)
    n = int(len(st))
    share, ci, _ = cluster_rate_ci(st >= 0, list(run_clusters(ordinals)))   # by stretch of bare wall
    alarms = alarm_episodes(ordinals, st >= 0)
    minutes = n_labelled_in_range / fps / 60.0 if fps and n_labelled_in_range else None
    out: dict[str, Any] = {
        "n": n, "minutes": minutes, "class_call_share": share, "class_call_share_ci95": ci,
        "class_call_share_raw": rate_ci(int(np.sum(raw >= 0)), n)[0],
        "false_alarms": alarms, "false_alarms_per_minute": alarms / minutes if minutes else None,
        "episode_rule": EPISODE_RULE,
    }
    if background:
        from edgeskd.clinical.operating_point import NO_POLYP_CALL

        out["no_polyp_state_share"] = rate_ci(int(np.sum(st == NO_POLYP_CALL)), n)[0]
    return out


def negative_polyps_called(polyp_states: dict[int, tuple[int, list[int]]], positive: int) -> dict[str, Any]:
    """Of the polyps whose class is not ``positive`` (label, displayed states of their frames): how many
    get a confident non-positive call on at least one frame."""
    neg = {pid: states for pid, (label, states) in polyp_states.items() if label >= 0 and label != positive}
    k = sum(1 for states in neg.values() if any(s >= 0 and s != positive for s in states))
    share, ci = rate_ci(k, len(neg))
    return {"n_polyps": len(neg), "with_negative_call": k, "share": share, "share_ci95": ci}


def image_test_block(meta: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(the image-test figures the artifact carries, None) or (None, why there are none)."""
    fig = (getattr(meta, "extra", None) or {}).get("image_test")
    if not isinstance(fig, dict):
        return None, ("the artifact carries no image-test figures (written by `edgeskd train` into each "
                      "student's metadata); retrain, export and build it to see them beside the video figures")
    return fig, None
