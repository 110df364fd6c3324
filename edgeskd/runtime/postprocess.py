"""Logits → probabilities, torch-free. Class logit = logsumexp over the class's subclass block.

Class probabilities are calibrated: softmax(class logits / T) with T = the artifact's
``meta.temperature`` (temperature scaling fitted on validation by ``edgeskd train``; 1.0 for an
artifact without one), or, for a subclass-logit artifact with ``meta.subclass_temperatures`` (T_k),
each case's own T with 1/T = Σ_k q_k / T_k, q = its subclass probabilities (``case_temperatures``). Dividing by T > 0 never
changes the argmax, so predicted classes, accuracy and F1 are those of the raw logits. Subclass
probabilities are the plain softmax of the subclass logits (temperatures act on class logits only).

A model with a background ("no polyp") class (``meta.background_class``) is read in two parts:

* presence: P(background) = softmax of the raw class logits (T = 1) at the background column, and
  presence = 1 − P(background); a frame is "no polyp" when P(background) ≥ ``presence_threshold``
  (the artifact's, None: ``DEFAULT_PRESENCE_THRESHOLD``). The threshold is chosen on validation on
  this very quantity, so it needs no calibration of its own;
* the class **conditional on a polyp**: softmax over the polyp classes' logits only, with the
  artifact's temperature(s) (those were fitted on this conditional), i.e. ``class_probabilities``
  of the polyp-only view (``meta.polyp_only()``, ``polyp_logits``).

``class_probabilities`` then returns the whole distribution: P(background) at the background column
and (1 − P(background)) × the conditional at the polyp classes (rows sum to 1).
"""

from __future__ import annotations

import math

import numpy as np


def _logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def subclass_to_class_logits(sub_logits: np.ndarray, subclass_to_class: list[int] | np.ndarray) -> np.ndarray:
    """(N, S) subclass logits → (N, C) class logits (logsumexp within each class block)."""
    idx = np.asarray(subclass_to_class)
    C = int(idx.max()) + 1
    x = np.asarray(sub_logits, dtype=np.float64)
    return np.stack([_logsumexp(x[:, idx == c], axis=1) for c in range(C)], axis=1).astype(np.float32)


def case_temperatures(logits: np.ndarray, meta, temperature: float | None = None) -> float | np.ndarray:
    """The temperature of each case of a model's raw output: ``temperature`` if given (1.0:
    uncalibrated); else, for a subclass-logit model with ``meta.subclass_temperatures`` (T_k), an
    (N, 1) array with 1/T = Σ_k q_k / T_k, q = the case's subclass probabilities; else ``meta.temperature``."""
    if temperature is None:
        per_sub = getattr(meta, "subclass_temperatures", None)
        if per_sub is not None and meta.output == "subclass_logits":
            q = softmax(np.asarray(logits, dtype=np.float64), axis=1)
            return 1.0 / (q @ (1.0 / np.asarray(per_sub, dtype=np.float64)))[:, None]
        temperature = getattr(meta, "temperature", 1.0)
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature {t} must be a finite number > 0")
    return t


def class_probabilities(logits: np.ndarray, meta, temperature: float | None = None) -> np.ndarray:
    """(N, C) calibrated class probabilities from a model's raw output, whichever kind it emits:
    softmax(class logits / T), T from ``case_temperatures`` (``temperature`` if given, 1.0:
    uncalibrated). The argmax does not depend on T. With a background class: P(background) there and
    (1 − P(background)) × ``conditional_probabilities`` at the polyp classes."""
    bg = getattr(meta, "background_class", None)
    if bg is not None:
        p_bg, cond = _presence_parts(logits, meta, temperature)
        return _compose(p_bg, cond, bg)
    return _scaled_softmax(_class_logits(logits, meta), case_temperatures(logits, meta, temperature))


def _class_logits(logits: np.ndarray, meta) -> np.ndarray:
    if meta.output == "subclass_logits":
        return subclass_to_class_logits(logits, meta.subclass_to_class)
    return np.asarray(logits, dtype=np.float32)


def _scaled_softmax(z: np.ndarray, t: float | np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float32)
    if isinstance(t, float):
        return softmax(z if t == 1.0 else z / np.float32(t), axis=1)
    return softmax(z / t.astype(np.float32), axis=1)


def _presence_parts(logits: np.ndarray, meta, temperature: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(P(background) (N,), conditional probabilities (N, C')) from one pass over the class logits:
    the polyp classes' logsumexp logits are the same with or without the background block."""
    z = _class_logits(logits, meta)
    p_bg = softmax(z.astype(np.float64), axis=1)[:, meta.background_class]
    t = case_temperatures(polyp_logits(logits, meta), meta.polyp_only(), temperature)
    return p_bg, _scaled_softmax(z[:, meta.polyp_classes], t)


DEFAULT_PRESENCE_THRESHOLD = 0.5   # "no polyp" when P(background) >= this and the artifact names none


def polyp_logits(logits: np.ndarray, meta) -> np.ndarray:
    """The output columns of the polyp classes (the input to ``meta.polyp_only()``); the output
    itself without a background class."""
    x = np.asarray(logits)
    if getattr(meta, "background_class", None) is None:
        return x
    return x[:, meta.polyp_outputs()]


def background_probability(logits: np.ndarray, meta) -> np.ndarray | None:
    """(N,) P(background) = softmax of the raw class logits (T = 1) at the background class; None for
    a model without one."""
    bg = getattr(meta, "background_class", None)
    if bg is None:
        return None
    return softmax(_class_logits(logits, meta).astype(np.float64), axis=1)[:, bg]


def presence_threshold(meta) -> float:
    """P(background) at which a frame is "no polyp": the artifact's, else ``DEFAULT_PRESENCE_THRESHOLD``."""
    t = getattr(meta, "presence_threshold", None)
    return DEFAULT_PRESENCE_THRESHOLD if t is None else float(t)


def conditional_probabilities(logits: np.ndarray, meta, temperature: float | None = None) -> np.ndarray:
    """(N, C') calibrated class probabilities conditional on a polyp, over ``meta.polyp_classes``
    (C' = C − 1; all C classes, i.e. ``class_probabilities``, without a background class)."""
    if getattr(meta, "background_class", None) is None:
        return class_probabilities(logits, meta, temperature)
    return _presence_parts(logits, meta, temperature)[1]


def _compose(p_bg: np.ndarray, cond: np.ndarray, bg: int) -> np.ndarray:
    p_bg = p_bg.astype(np.float32)[:, None]
    return np.insert(cond * (1 - p_bg), bg, p_bg[:, 0], axis=1)


def subclass_probabilities(logits: np.ndarray, meta) -> np.ndarray | None:
    """(N, S) subclass probabilities, or None for a class-logit model."""
    if meta.output != "subclass_logits":
        return None
    return softmax(np.asarray(logits, dtype=np.float32), axis=1)
