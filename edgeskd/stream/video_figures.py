"""Figures of a model on a labelled video (numpy only): what `stream --labels` reports beside the
same model's image-test figures.

* polyp frames: frame accuracy of the class (argmax; with a "no polyp" class, of the probabilities
  conditional on a polyp) with a 95 % Wilson interval, raw and smoothed; presence sensitivity
  (frames the model does not call "no polyp") for a model with a background class;
* per subtype (the labels' ``subclass`` column): frame accuracy per subtype;
* frames without a polyp: the share with a class call (a displayed class state — not "low
  confidence", not "no polyp"), with its interval, and **false alarms per minute** of polyp-free
  video. Episode rule (``ALARM_MIN_FRAMES``): a run of at least 3 consecutive processed frames
  without a polyp whose displayed (smoothed) state is a class call counts as one alarm; any other
  frame (no call, "no polyp", or a polyp frame) ends the run. Minutes = the labelled polyp-free
  frames between the first and the last processed frame / the video's frame rate;
* per polyp: the share of polyps of the non-positive class (hyperplastic) that get a confident
  non-positive call (displayed state) on at least one of their frames;
* the image-test figures the artifact carries (``meta.extra["image_test"]``, written by training).

Rates are fractions; intervals are 95 % Wilson intervals.
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
                        present: Sequence[bool] | None) -> dict[str, Any]:
    y, r, s = (np.asarray(v, dtype=np.int64) for v in (y_true, y_raw, y_smooth))
    acc, acc_ci = rate_ci(int(np.sum(y == r)), len(y))
    out: dict[str, Any] = {"n": int(len(y)), "accuracy": acc, "accuracy_ci95": acc_ci,
                           "accuracy_smoothed": rate_ci(int(np.sum(y == s)), len(y))[0]}
    if present is not None:
        out["presence_sensitivity"], out["presence_sensitivity_ci95"] = rate_ci(int(np.sum(present)), len(y))
    return out


def per_subtype(subtypes: Sequence[str | None], y_true: Sequence[int], y_raw: Sequence[int],
                image: dict[str, float] | None) -> dict[str, Any]:
    """Frame accuracy per subtype (and the image-test accuracy of the same subtype where known)."""
    y, r = np.asarray(y_true, dtype=np.int64), np.asarray(y_raw, dtype=np.int64)
    names = np.asarray([s or "" for s in subtypes], dtype=object)
    out: dict[str, Any] = {}
    for name in sorted(set(names) - {""}):
        m = names == name
        acc, ci = rate_ci(int(np.sum(y[m] == r[m])), int(m.sum()))
        out[name] = {"n": int(m.sum()), "accuracy": acc, "accuracy_ci95": ci,
                     "image_test_accuracy": (image or {}).get(name)}
    return out


def no_polyp_figures(ordinals: Sequence[int], states: Sequence[int], raw_states: Sequence[int],
                     n_labelled_in_range: int, fps: float | None, background: bool) -> dict[str, Any]:
    """Class calls and false alarms on frames without a polyp (``states``: displayed decisions)."""
    st, raw = np.asarray(states, dtype=np.int64), np.asarray(raw_states, dtype=np.int64)
    n = int(len(st))
    share, ci = rate_ci(int(np.sum(st >= 0)), n)
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
