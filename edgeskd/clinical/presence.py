"""The presence threshold of a model with a "no polyp" (background) class, chosen on validation.

A frame is "no polyp" when P(background) (softmax of the raw class logits, T = 1) reaches the
threshold t. Lower t: more frames called "no polyp" — fewer false presences on polyp-free frames,
but fewer polyp frames called present. The rule:

    t = min(0.5, the largest t at which at most ``FALSE_PRESENCE_TARGET`` (1 %) of the validation
        frames without a polyp would get a class call: called present AND confident at the artifact's
        call threshold (HP-vs-adenoma threshold; without one every present frame is a call))

Why this rule: a false presence on bare mucosa is what turns into a false alarm (a confident class
call where there is no polyp — the failure the stream showed minute after minute), while a polyp
frame called "no polyp" only withholds the HP-vs-adenoma call for that frame (like "low confidence";
finding polyps is the detector's job, CADe). So the false-presence rate is capped, and within the
cap the threshold is as high as possible — most polyp frames keep their call — but never above 0.5:
a frame the model finds more likely empty than not is never called present. The HP-vs-adenoma
threshold (``operating_point``) is chosen separately, on the polyp frames.

Fewer than ``MIN_NO_POLYP`` validation frames without a polyp: no threshold (None; the runtime then
uses 0.5) and a reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgeskd.runtime.polyp_view import presence_figures
from edgeskd.runtime.postprocess import DEFAULT_PRESENCE_THRESHOLD

FALSE_PRESENCE_TARGET = 0.01    # at most this share of polyp-free validation frames called present
MIN_NO_POLYP = 20               # fewer polyp-free validation frames: no threshold chosen


@dataclass(frozen=True)
class PresenceChoice:
    threshold: float | None        # None: not chosen (``reason``); the runtime uses 0.5
    reason: str | None
    n_polyp: int
    n_no_polyp: int
    target: float = FALSE_PRESENCE_TARGET
    sensitivity: float | None = None      # on validation, at the threshold in effect
    false_presence: float | None = None
    capped: bool = False                  # the cap of 0.5 was the binding limit

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_presence_threshold(p_background: Any, has_polyp: Any, *, target: float = FALSE_PRESENCE_TARGET,
                              min_no_polyp: int = MIN_NO_POLYP, confident: Any | None = None) -> PresenceChoice:
    """The presence threshold by the rule above, from validation P(background) and the truth.

    ``confident`` (per frame, optional): the frame's HP-vs-adenoma probabilities reach the call
    threshold, so it gets a class call whenever it is called present. Then the cap counts only
    the polyp-free frames that would become a class call — what the stream shows as a false alarm —
    not every false presence (a present frame below the call threshold shows "low confidence")."""
    p = np.asarray(p_background, dtype=np.float64)
    pos = np.asarray(has_polyp, dtype=bool)
    if p.shape != pos.shape or p.ndim != 1:
        raise ValueError(f"P(background) {p.shape} and truth {pos.shape} must be the same 1-D shape")
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_neg < min_no_polyp:
        fig = presence_figures(p, pos, DEFAULT_PRESENCE_THRESHOLD)
        return PresenceChoice(None, f"validation has {n_neg} frames without a polyp, fewer than the {min_no_polyp} "
                                    f"a presence threshold needs; {DEFAULT_PRESENCE_THRESHOLD} is used",
                              n_pos, n_neg, target, fig["sensitivity"], fig["false_presence"])
    calls = np.ones(len(p), bool) if confident is None else np.asarray(confident, dtype=bool)
    neg = np.sort(p[~pos & calls])           # the polyp-free frames that would be a class call if present
    k = int(np.floor(target * n_neg))        # false class calls allowed (a share of all polyp-free frames)
    # called present: p < t; the largest t with at most k negatives below it is the (k+1)-th smallest
    t_cap = float(neg[k]) if k < len(neg) else 1.0
    t = min(DEFAULT_PRESENCE_THRESHOLD, t_cap)
    fig = presence_figures(p, pos, t)
    return PresenceChoice(t, None, n_pos, n_neg, target, fig["sensitivity"], fig["false_presence"],
                          capped=t_cap >= DEFAULT_PRESENCE_THRESHOLD)
