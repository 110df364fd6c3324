"""Clinical operating points: ECE/NLL, temperature scaling, NPV threshold, Wilson intervals,
per-polyp decisions, reliability diagram, and temperature/threshold inside the artifacts."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from edgeskd.clinical import (
    LOW_CONFIDENCE,
    PPV_TARGET,
    aggregate_polyps,
    calibrated_probabilities,
    canonical_polyp_id,
    class_logits,
    decide,
    ece,
    evaluate_operating_point,
    fit_subclass_temperatures,
    fit_temperature,
    nll,
    operating_point,
    polyp_summary,
    reliability_bins,
    select_threshold,
    state_names,
    validate_threshold,
    wilson_interval,
)
from edgeskd.clinical.calibration import softmax
from edgeskd.errors import ArtifactError, DataError, UsageError
from edgeskd.meta import ModelMeta
from edgeskd.runtime.postprocess import class_probabilities


def _binary(conf, pred):
    """(N, 2) probabilities with the given confidence on the predicted class."""
    conf, pred = np.asarray(conf, dtype=np.float64), np.asarray(pred)
    return np.where(pred[:, None] == 1, np.stack([1 - conf, conf], 1), np.stack([conf, 1 - conf], 1))


def _meta(output="subclass_logits", **kw):
    subs, s2c = (list("abcde"), [0, 0, 1, 1, 1]) if output == "subclass_logits" else (["hp", "ssa"], [0, 1])
    return ModelMeta(class_names=["hp", "ssa"], subclass_names=subs, subclass_to_class=s2c, input_size=(16, 16),
                     output=output, **kw)


# -- ECE, NLL ------------------------------------------------------------------------------------
def test_ece_hand_computed():
    # bins of width 1/15: 0.95, 0.97 → (14/15, 1]; 0.70, 0.72 → (10/15, 11/15]; 0.55 → (8/15, 9/15]
    conf = [0.95, 0.97, 0.70, 0.72, 0.55]
    pred = [1, 1, 0, 1, 0]
    labels = [1, 0, 0, 1, 1]          # right, wrong, right, right, wrong
    # 2/5·|0.5 − 0.96| + 2/5·|1 − 0.71| + 1/5·|0 − 0.55| = 0.184 + 0.116 + 0.11
    assert ece(_binary(conf, pred), labels) == pytest.approx(0.41, abs=1e-12)
    bins = reliability_bins(_binary(conf, pred), labels)
    assert bins.counts.sum() == 5 and bins.counts[14] == 2 and bins.counts[10] == 2 and bins.counts[8] == 1
    assert bins.accuracy[14] == 0.5 and np.isnan(bins.accuracy[0])
    # right-closed bins: a confidence on an edge falls in the bin below it
    edge = float(bins.edges[12])
    assert reliability_bins(_binary([edge], [1]), [1]).counts[11] == 1
    # perfectly calibrated in each bin → 0
    assert ece(_binary([0.75] * 4, [1] * 4), [1, 1, 1, 0]) == pytest.approx(0.0, abs=1e-12)


def test_nll_hand_computed():
    z = np.array([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    assert nll(z, [1, 1]) == pytest.approx(-(math.log(0.75) + math.log(0.25)) / 2)
    s3 = math.sqrt(3.0)
    assert nll(z[:1], [1], temperature=2.0) == pytest.approx(-math.log(s3 / (1 + s3)))


# -- temperature scaling -------------------------------------------------------------------------
def _synthetic_logits(t_true, n=20000, c=3, seed=0):
    """Labels drawn from softmax(z); the 'model' reports z·t_true, so the right temperature is t_true."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, (n, c))
    p = softmax(z, axis=1)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return z * t_true, y


@pytest.mark.parametrize("t_true", [2.5, 0.4])
def test_temperature_recovers_known_value(t_true):
    logits, y = _synthetic_logits(t_true)
    fit = fit_temperature(logits, y)
    assert fit.ok and fit.reason is None
    assert fit.temperature == pytest.approx(t_true, rel=0.05)
    assert fit.nll_after < fit.nll_before
    before, after = softmax(logits, axis=1), softmax(logits / fit.temperature, axis=1)
    assert np.array_equal(before.argmax(1), after.argmax(1))
    assert ece(after, y) < 0.02 < ece(before, y)


@pytest.mark.parametrize("scale,shift", [(0.7, 0.3), (2.0, 1.5), (4.0, 3.0), (0.3, 0.05)])
def test_temperature_is_the_nll_minimum(scale, shift):
    """The fitted T is where the validation NLL stops falling: a hair either side is worse."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 1300)
    z = rng.normal(0.0, 1.0, (1300, 2)) * scale
    z[np.arange(1300), y] += shift
    fit = fit_temperature(z, y)
    assert fit.ok
    t = fit.temperature
    assert nll(z, y, t) < nll(z, y, t * 1.001) and nll(z, y, t) < nll(z, y, t / 1.001)


def test_temperature_interval_narrows_with_more_validation():
    from edgeskd.clinical import temperature_interval

    logits, y = _synthetic_logits(2.0, n=4000, c=2, seed=6)
    small, big = temperature_interval(logits[:250], y[:250]), temperature_interval(logits, y)
    assert small[0] < 2.0 < small[1] and big[0] < 2.0 < big[1]
    assert big[1] - big[0] < 0.5 * (small[1] - small[0])
    assert temperature_interval(logits[:30], y[:30]) is None          # too few cases to fit at all


def test_temperature_on_logsumexp_class_logits_of_subclass_outputs():
    cls_logits, y = _synthetic_logits(3.0, c=2, seed=1)
    # subclass blocks (2 + 3) whose logsumexp is the class logit: z_c + log w_j with Σ_j w_j = 1
    w0, w1 = np.log([0.3, 0.7]), np.log([0.2, 0.5, 0.3])
    sub = np.concatenate([cls_logits[:, :1] + w0, cls_logits[:, 1:] + w1], axis=1).astype(np.float32)
    meta = _meta()
    assert np.allclose(class_logits(sub, meta), cls_logits, atol=1e-4)
    fit = fit_temperature(class_logits(sub, meta), y)
    assert fit.temperature == pytest.approx(3.0, rel=0.05)


def test_temperature_refuses_without_inventing():
    logits, y = _synthetic_logits(2.0, n=400)
    small = fit_temperature(logits[:30], y[:30])
    assert not small.ok and small.temperature is None and "30 cases" in small.reason
    one = fit_temperature(logits[y == 0][:100], y[y == 0][:100])
    assert not one.ok and "one class" in one.reason
    lopsided = np.concatenate([np.flatnonzero(y == 0)[:100], np.flatnonzero(y == 1)[:2], np.flatnonzero(y == 2)[:50]])
    assert "one-sided" in fit_temperature(logits[lopsided], y[lopsided]).reason
    # no validation errors: NLL falls all the way to T → 0; no finite temperature exists
    sep_y = np.arange(100) % 2
    sep = np.where(sep_y[:, None] == 1, [[-1.0, 1.0]], [[1.0, -1.0]])
    fit = fit_temperature(sep, sep_y)
    assert not fit.ok and "too few errors (0 of 100)" in fit.reason
    bad = logits[:100].copy()
    bad[3, 1] = np.nan
    assert "NaN" in fit_temperature(bad, y[:100]).reason
    assert "same for every class" in fit_temperature(np.zeros((100, 3)), y[:100]).reason


def test_ece_sampling_floor():
    from edgeskd.clinical import ece_sampling_floor

    # certain predictions: no sampling noise at all
    assert ece_sampling_floor(_binary([1.0] * 50, [1] * 50)) == {"mean": 0.0, "p95": 0.0}
    # one bin, confidence 0.8, n cases: ECE = |k/n - 0.8| with k ~ Binomial(n, 0.8); E ≈ sqrt(2/π)·sqrt(0.16/n)
    for n in (100, 400):
        f = ece_sampling_floor(_binary([0.8] * n, [1] * n), n_sims=4000)
        assert f["mean"] == pytest.approx(math.sqrt(2 / math.pi) * math.sqrt(0.16 / n), rel=0.1) and f["p95"] > f["mean"]
    # truly calibrated labels give an observed ECE inside the floor's range; seeded: the same twice
    logits, y = _synthetic_logits(1.0, n=300, c=2, seed=4)
    p = softmax(logits, axis=1)
    f = ece_sampling_floor(p)
    assert f == ece_sampling_floor(p) and ece(p, y) < f["p95"]


def test_paired_difference():
    from edgeskd.clinical import paired_difference

    a = np.array([1, 1, 1, 0] * 50)
    b = np.array([1, 0, 0, 0] * 50)
    d = paired_difference(a, b)
    assert d["difference"] == 0.5 and d["n"] == 200 and d["ci95"][0] < 0.5 < d["ci95"][1]
    assert 0.35 < d["ci95"][0] and d["ci95"][1] < 0.65 and d == paired_difference(a, b)
    same = paired_difference(a, a)
    assert same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError):
        paired_difference(a, b[:-1])


# -- calibrated probabilities from an artifact's metadata ----------------------------------------
@pytest.mark.parametrize("output", ["subclass_logits", "class_logits"])
def test_calibrated_probabilities_keep_argmax(output):
    rng = np.random.default_rng(0)
    meta = _meta(output)
    logits = rng.normal(0, 3, (500, meta.num_outputs)).astype(np.float32)
    plain = class_probabilities(logits, meta)
    assert np.allclose(calibrated_probabilities(logits, meta), plain, atol=1e-6)    # T = 1 by default
    hot = meta.replace(temperature=2.5)
    cal = calibrated_probabilities(logits, hot)
    assert np.allclose(cal.sum(1), 1.0)
    assert np.array_equal(cal.argmax(1), plain.argmax(1))
    assert np.allclose(cal, softmax(class_logits(logits, meta) / 2.5, axis=1))
    assert cal.max(1).mean() < plain.max(1).mean()    # T > 1 softens
    assert np.allclose(calibrated_probabilities(logits, meta, temperature=2.5), cal)


def test_runtime_probabilities_apply_the_artifact_temperature(tmp_path):
    """What users see (runtime post-processing, evaluation, the stream's per-frame probabilities) is
    softmax(class logits / meta.temperature); predicted classes and F1 do not change."""
    from edgeskd.runtime.evaluate import evaluate_logits, predict_proba
    from edgeskd.runtime.fake import FakeRunner

    rng = np.random.default_rng(5)
    meta = _meta()
    logits = rng.normal(0, 3, (300, meta.num_outputs)).astype(np.float32)
    labels = (class_logits(logits, meta).argmax(1) ^ (rng.random(300) < 0.2)).astype(np.int64)
    hot = meta.replace(temperature=2.5)
    cal = class_probabilities(logits, hot)
    assert np.allclose(cal, softmax(class_logits(logits, meta) / 2.5, axis=1), atol=1e-6)
    assert np.allclose(class_probabilities(logits, hot, temperature=1.0), class_probabilities(logits, meta))
    assert np.array_equal(cal.argmax(1), class_probabilities(logits, meta).argmax(1))
    plain, scaled = evaluate_logits(logits, meta, labels), evaluate_logits(logits, hot, labels)
    for k in ("f1", "accuracy", "precision", "recall", "confusion"):
        assert plain[k] == scaled[k]
    assert scaled["auc"] == pytest.approx(plain["auc"], abs=1e-12)     # binary: P(positive) keeps its order
    with FakeRunner(hot, lambda b: logits[: len(b)]) as runner:
        probs, subs = predict_proba(runner, np.zeros((4, 3, 16, 16), np.float32))
    assert np.allclose(probs, cal[:4], atol=1e-6) and np.allclose(subs, softmax(logits[:4], axis=1), atol=1e-6)


def test_stream_frames_carry_calibrated_probabilities(tmp_path):
    from edgeskd.runtime.fake import FakeRunner
    from edgeskd.stream import StreamConfig, run_stream
    from helpers_stream import META, make_video

    video = make_video(tmp_path / "in.mp4", n=6, w=96, h=64)
    out = np.array([[2.0, 0.5, 1.0, -1.0]], np.float32)
    runner = FakeRunner(META.replace(temperature=2.0), lambda b: np.repeat(out, len(b), 0))
    run_stream(StreamConfig(video=str(video), jsonl=tmp_path / "p.jsonl", measure_ceiling=False, smooth=1.0),
               runner=runner)
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    want = softmax(class_logits(out, META) / 2.0, axis=1)[0]
    assert len(rows) == 6 and all(np.allclose(r["probs"], want, atol=1e-6) for r in rows)


# -- Wilson intervals, thresholds ----------------------------------------------------------------
def test_wilson_interval_matches_published_values():
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (score interval)
    for (k, n), (lo, hi) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605),
                             (0, 20): (0.0, 0.1611), (1, 29): (0.0061, 0.1718)}.items():
        got = wilson_interval(k, n)
        assert got[0] == pytest.approx(lo, abs=5e-5) and got[1] == pytest.approx(hi, abs=5e-5)
    assert wilson_interval(0, 0) is None
    assert wilson_interval(20, 20)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


@pytest.mark.parametrize("bad", [0.5, 1.0, 1.2, 0.3, -1, "abc", float("nan"), None])
def test_threshold_validator_one_line(bad):
    with pytest.raises(UsageError) as e:
        validate_threshold(bad)
    msg = str(e.value)
    assert "\n" not in msg and "(0.5, 1)" in msg and msg.startswith("--threshold")
    assert e.value.exit_code == 2


def test_threshold_validator_accepts_inside():
    assert validate_threshold("0.9") == 0.9 and validate_threshold(0.51, option="--min-confidence") == 0.51


def _tiers(tiers):
    """(pred, conf, n, n_right) tiers → probabilities and labels (binary, positive = 1)."""
    conf, pred, y = [], [], []
    for p, c, n, right in tiers:
        conf += [c] * n
        pred += [p] * n
        y += [p] * right + [1 - p] * (n - right)
    return _binary(conf, pred), np.array(y)


BASE = [(0, 0.95, 10, 10), (0, 0.85, 10, 9), (0, 0.65, 10, 5),     # negative calls
        (1, 0.95, 10, 10), (1, 0.75, 10, 8), (1, 0.60, 10, 5)]     # positive calls


def test_threshold_search_constructed_case():
    # t = 0.60 or 0.65: NPV 24/30 = 0.80; t = 0.75: NPV 19/20 = 0.95, PPV 18/20 = 0.90, 40 of 60 called
    probs, y = _tiers(BASE)
    c = select_threshold(probs, y)
    assert c.threshold == 0.75 and c.reason is None and c.note is None and not c.ppv_target_met
    assert (c.npv, c.ppv, c.coverage) == (0.95, 0.9, pytest.approx(40 / 60))
    assert (c.n_negative_calls, c.n_positive_calls) == (20, 20)
    # PPV 17/20 at 0.75: by default the NPV alone decides (PPV reported, 0.85), still 0.75 ...
    probs, y = _tiers(BASE[:4] + [(1, 0.75, 10, 7), BASE[5]])
    c = select_threshold(probs, y)
    assert c.threshold == 0.75 and c.ppv == pytest.approx(17 / 20)
    # ... asking for PPV >= 90 % too: both targets first at 0.85 (NPV 19/20, PPV 10/10), coverage 30/60
    c = select_threshold(probs, y, ppv_target=PPV_TARGET)
    assert c.threshold == 0.85 and c.coverage == 0.5 and c.ppv_target_met
    # PPV never reaches 90 %: the NPV target alone, said so
    probs, y = _tiers(BASE[:3] + [(1, 0.95, 10, 8), (1, 0.75, 10, 7), BASE[5]])
    c = select_threshold(probs, y, ppv_target=PPV_TARGET)
    assert c.threshold == 0.75 and not c.ppv_target_met and "PPV >= 90 %" in c.note
    # NPV never reaches 90 %: no threshold, and why
    probs, y = _tiers([(0, 0.95, 10, 8), (0, 0.85, 10, 9)] + BASE[2:])
    c = select_threshold(probs, y)
    assert c.threshold is None and "not reached" in c.reason and "85.0 %" in c.reason


def test_threshold_search_needs_enough_calls_and_both_sides():
    probs, y = _tiers(BASE)
    # at min_calls = 25 only thresholds with >= 25 negative calls count, and those have NPV 0.8
    assert select_threshold(probs, y, min_calls=25).threshold is None
    assert "10 cases" in select_threshold(probs[:10], y[:10]).reason
    assert "one side" in select_threshold(probs[y == 0], y[y == 0]).reason


def test_threshold_search_is_the_best_threshold_by_brute_force():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    score = np.clip(0.5 + (y - 0.5) * rng.uniform(0.0, 0.9, 400) + rng.normal(0, 0.15, 400), 0.01, 0.99)
    probs = np.stack([1 - score, score], 1)
    c = select_threshold(probs, y, ppv_target=None)
    conf = probs.max(1)
    best = None
    for t in sorted(set(conf[(conf > 0.5) & (conf < 1)])):
        r = evaluate_operating_point(probs, y, t)
        if r["n_negative_calls"] >= 10 and r["npv"] >= 0.9:
            best = t
            break
    assert c.threshold == best and c.threshold is not None


def test_operating_point_on_test_with_intervals():
    probs, y = _tiers(BASE)
    r = evaluate_operating_point(probs, y, 0.75)
    assert r["coverage"] == pytest.approx(40 / 60) and r["n_called"] == 40
    assert r["npv"] == 0.95 and r["npv_ci95"] == list(wilson_interval(19, 20))
    assert r["ppv"] == 0.9 and r["ppv_ci95"] == list(wilson_interval(18, 20))
    assert (r["tn"], r["fn"], r["tp"], r["fp"]) == (19, 1, 18, 2)
    assert r["sensitivity"] == 18 / 19 and r["specificity"] == 19 / 21 and r["accuracy"] == 37 / 40
    assert r["npv_lower_clears_90"] is False           # 19/20: lower bound 0.764
    big, yb = _tiers([(0, 0.9, 300, 294), (1, 0.9, 100, 95)])
    assert evaluate_operating_point(big, yb, 0.8)["npv_lower_clears_90"] is True   # 294/300: lower 0.957
    argmax = evaluate_operating_point(probs, y, None)
    assert argmax["coverage"] == 1.0 and argmax["npv"] == 24 / 30
    json.dumps(r)


def test_operating_point_block():
    probs, y = _tiers(BASE)
    r = operating_point(probs, y, probs, y)
    assert r["threshold"] == 0.75 and r["threshold_source"] == "validation" and r["reason"] is None
    assert r["validation"]["coverage"] == pytest.approx(40 / 60) and r["argmax"]["coverage"] == 1.0
    unreachable, yu = _tiers([(0, 0.95, 10, 8), (0, 0.85, 10, 9)] + BASE[2:])
    r = operating_point(unreachable, yu, probs, y)
    assert r["threshold"] is None and r["npv"] is None and r["coverage"] is None and "not reached" in r["reason"]
    assert r["npv_lower_clears_90"] is False and r["argmax"]["npv"] == 24 / 30
    r = operating_point(unreachable, yu, probs, y, threshold=0.9)
    assert r["threshold_source"] == "given" and r["coverage"] == pytest.approx(20 / 60)
    with pytest.raises(UsageError):
        operating_point(probs, y, probs, y, threshold=1.5)
    json.dumps(r)


def test_decisions_and_states():
    probs = _binary([0.95, 0.6, 0.8, 0.51], [1, 0, 0, 1])
    assert decide(probs, None).tolist() == [1, 0, 0, 1]
    d = decide(probs, 0.8)
    assert d.tolist() == [1, -1, 0, -1]
    assert state_names(d, ["hyperplastic", "adenoma"]) == ["adenoma", LOW_CONFIDENCE, "hyperplastic", LOW_CONFIDENCE]


# -- per polyp ----------------------------------------------------------------------------------
def _video():
    """40 frames: polyp 7 (adenoma) frames 5–14 with flickering frame calls, polyp 3 (hyperplastic)
    frames 20–29, polyp 9 (adenoma) frames 33–38, ambiguous; background elsewhere; frames 4 and 15
    show a sliver of polyp 7 (id, no class)."""
    n = 40
    p_ad = np.full(n, 0.5)
    ids = np.full(n, -1)
    labels = np.full(n, -1)
    p_ad[5:15] = [0.9, 0.4, 0.95, 0.45, 0.9, 0.85, 0.4, 0.9, 0.92, 0.83]   # 7 of 10 frames right, mean 0.75
    ids[4:16], labels[5:15] = 7, 1
    p_ad[4] = p_ad[15] = 0.01                                             # unlabelled slivers: not counted
    p_ad[20:30] = [0.1, 0.2, 0.6, 0.1, 0.15, 0.05, 0.7, 0.1, 0.2, 0.1]     # 8 of 10 right, mean 0.23
    ids[20:30], labels[20:30] = 3, 0
    p_ad[33:39] = [0.7, 0.3, 0.65, 0.4, 0.55, 0.5]                        # mean 0.5167: no call at 0.7
    ids[33:39], labels[33:39] = 9, 1
    return np.stack([1 - p_ad, p_ad], 1), ids, labels


def test_per_polyp_decisions_on_a_short_video():
    probs, ids, labels = _video()
    ds = aggregate_polyps(probs, ids, 0.7, labels=labels, frames=np.arange(100, 140))
    assert [d.polyp_id for d in ds] == [7, 3, 9]
    p7, p3, p9 = ds
    assert (p7.n_frames, p7.first_frame, p7.last_frame) == (10, 105, 114)
    assert p7.probabilities[1] == pytest.approx(0.75) and p7.decision == 1 and p7.label == 1
    assert p3.probabilities[0] == pytest.approx(0.77) and p3.decision == 0 and p3.label == 0
    assert p9.argmax == 1 and p9.decision == -1 and p9.to_dict(["hp", "adenoma"])["decision"] == LOW_CONFIDENCE
    s = polyp_summary(ds, positive=1, class_names=["hp", "adenoma"])
    assert (s["n_polyps"], s["n_labelled"], s["n_called"]) == (3, 3, 2)
    assert s["coverage"] == pytest.approx(2 / 3) and s["accuracy"] == 1.0 and s["accuracy_argmax"] == 1.0
    assert s["npv"] == 1.0 and s["npv_ci95"] == list(wilson_interval(1, 1)) and s["ppv"] == 1.0
    assert s["polyps"][0]["correct"] is True and s["polyps"][2]["correct"] is None
    # per polyp beats per frame on the same frames (frame calls flicker)
    labelled = labels >= 0
    frame_acc = np.mean(probs[labelled].argmax(1) == labels[labelled])
    assert s["accuracy_argmax"] > frame_acc
    # without a threshold every polyp gets its argmax
    assert [d.decision for d in aggregate_polyps(probs, ids, None, labels=labels)] == [1, 0, 1]
    # without labels the id alone decides which frames count (slivers included)
    assert aggregate_polyps(probs, ids, None)[0].n_frames == 12
    json.dumps(s)


def test_per_polyp_bad_ids_and_labels():
    # a labels file's polyp ids are names: integers written as floats are one polyp, -1 / empty none
    assert [canonical_polyp_id(v) for v in ("3", " 12 ", "", None, -1, "-1", 0, "3.0", 2.0, "case3_p1", "3.5")] == [
        "3", "12", None, None, None, None, "0", "3", "2", "case3_p1", "3.5"]
    probs, ids, labels = _video()
    with pytest.raises(DataError, match="must be integers"):
        aggregate_polyps(probs, ids.astype(float), 0.7)
    labels[6] = 0
    with pytest.raises(DataError, match="polyp 7 has frames labelled with different classes"):
        aggregate_polyps(probs, ids, 0.7, labels=labels)


# -- reliability diagram ------------------------------------------------------------------------
def test_reliability_diagram_png(tmp_path):
    from edgeskd.clinical.reliability import write_reliability_diagram

    logits, y = _synthetic_logits(2.0, n=2000)
    fit = fit_temperature(logits, y)
    out = write_reliability_diagram(tmp_path / "rel.png", softmax(logits, 1), y,
                                    calibrated=softmax(logits / fit.temperature, 1), title="student-skd",
                                    calibrated_label=f"temperature-scaled (T = {fit.temperature:.3g})")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rel.png"]        # no temporary left behind
    with pytest.raises(UsageError):
        write_reliability_diagram(tmp_path, softmax(logits, 1), y)     # a directory: one-line error


def test_clinical_imports_without_heavy_libraries():
    code = ("import sys, edgeskd.clinical, edgeskd.clinical.reliability;"
            "bad=[m for m in ('torch','sklearn','scipy','matplotlib','tensorrt') if m in sys.modules];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- per-subclass temperatures --------------------------------------------------------------------
S2C4 = [0, 0, 1, 1]


def _subclass_logits(temps, n_per=1500, seed=0):
    """Subclass logits whose top subclass is k with class margin m (the other class's two subclasses sit
    at a − m − log 2, the sibling far below). The label is drawn from softmax(z / T) with 1/T = q · (1 / temps),
    q = the subclass probabilities: the model ``fit_subclass_temperatures`` fits, with temperatures ``temps``."""
    rng = np.random.default_rng(seed)
    k = np.repeat(np.arange(len(temps)), n_per)
    m = np.abs(rng.normal(0.0, 2.0, len(k)))
    s = np.full((len(k), 4), -30.0)
    s[np.arange(len(k)), k] = 3.0
    other = np.array([[2, 3], [2, 3], [0, 1], [0, 1]])[k]
    for j in (0, 1):
        s[np.arange(len(k)), other[:, j]] = 3.0 - m - math.log(2.0)
    beta = softmax(s, axis=1) @ (1.0 / np.asarray(temps, dtype=np.float64))
    cls = np.asarray(S2C4)[k]
    right = rng.random(len(k)) < 1.0 / (1.0 + np.exp(-beta * m))
    return s, np.where(right, cls, 1 - cls)


def test_subclass_temperatures_recover_known_values():
    temps = [0.5, 1.0, 2.0, 4.0]
    s, y = _subclass_logits(temps)
    z = class_logits(s, _meta4())
    t0 = fit_temperature(z, y).temperature
    fit = fit_subclass_temperatures(s, y, S2C4, t0)
    assert fit.ok and fit.own == [True] * 4 and fit.reason is None
    assert np.allclose(fit.temperatures, temps, rtol=0.2), fit.temperatures
    assert fit.heldout_nll["subclass"] < fit.heldout_nll["global"]
    # deployed: each case divided by its own T (1/T = subclass probabilities · 1/T_k); argmax never moves
    meta = _meta4(temperature=t0, subclass_temperatures=fit.temperatures)
    p = calibrated_probabilities(s, meta)
    assert (p.argmax(1) == z.argmax(1)).all()
    row_t = 1.0 / (softmax(s, axis=1) @ (1.0 / np.asarray(fit.temperatures)))
    assert np.allclose(p, softmax(z / row_t[:, None], axis=1))
    assert nll(z, y, row_t) < nll(z, y, t0)
    assert np.allclose(class_probabilities(s.astype(np.float32), meta), p, atol=1e-5)   # the runtime's path
    assert np.allclose(calibrated_probabilities(s, meta, temperature=1.0), softmax(z, axis=1))   # T = 1 override


def test_subclass_temperatures_not_used_when_one_temperature_fits():
    """Every subclass has the same true T: the out-of-sample check keeps the one temperature in most
    draws (the per-subclass fits only add noise; 4 of 20 seeded draws pass the check by chance)."""
    kept = []
    for seed in range(10):
        s, y = _subclass_logits([1.5] * 4, seed=seed)
        z = class_logits(s, _meta4())
        fit = fit_subclass_temperatures(s, y, S2C4, fit_temperature(z, y).temperature)
        kept.append(not fit.ok)
        if not fit.ok:
            assert fit.temperatures is None and "did not lower" in fit.reason
            assert fit.heldout_nll["subclass"] >= fit.heldout_nll["global"]
        else:
            assert np.allclose(fit.temperatures, 1.5, rtol=0.15)    # and when it passes, it costs nothing
    assert sum(kept) >= 7, kept


def test_subclass_temperatures_small_groups_keep_the_global_one():
    s, y = _subclass_logits([0.5, 1.0, 3.0, 1.0], n_per=400)
    keep = np.r_[np.arange(0, 400), np.arange(800, 1200)]     # top subclass 0 or 2 only
    s, y = s[keep].copy(), y[keep]
    s[:, [1, 3]] = -30.0                                       # subclasses 1 and 3 carry no weight
    fit = fit_subclass_temperatures(s, y, S2C4, 1.7)
    assert fit.own == [True, False, True, False]
    assert fit.ok and fit.temperatures[1] == fit.temperatures[3] == 1.7 and fit.temperatures[0] < 1.0 < fit.temperatures[2]
    few = fit_subclass_temperatures(s[:45], y[:45], S2C4, 1.7)          # no subclass reaches a weight of 50
    assert not few.ok and "no subclass has" in few.reason and few.heldout_nll is None
    with pytest.raises(ValueError):
        fit_subclass_temperatures(s[:, :3], y, S2C4, 1.0)


def _meta4(**kw):
    return ModelMeta(class_names=["hp", "ssa"], subclass_names=list("abcd"), subclass_to_class=S2C4,
                     **{"input_size": (16, 16), **kw})


# -- temperature and threshold inside the artifacts ----------------------------------------------
def test_meta_carries_temperature_and_threshold():
    m = _meta(temperature=1.83, threshold=0.87)
    back = ModelMeta.from_props(m.to_props())
    assert back.temperature == 1.83 and back.threshold == 0.87 and back.to_dict() == m.to_dict()
    assert back.replace(precision="int8").threshold == 0.87           # what INT8 / engine builds do
    old = {k: v for k, v in m.to_props().items() if k not in ("edgeskd.temperature", "edgeskd.threshold")}
    legacy = ModelMeta.from_props(old)
    assert legacy.temperature == 1.0 and legacy.threshold is None and "temperature" not in legacy.extra
    assert ModelMeta.from_props(_meta().to_props()).threshold is None    # null round-trips
    for bad in (dict(temperature=0), dict(temperature=-1.0), dict(temperature=float("inf")),
                dict(threshold=1.2), dict(threshold=0.5), dict(temperature="warm"),
                dict(subclass_temperatures=[1.0, 2.0]), dict(subclass_temperatures=[1.0, 0.0, 1.0, 1.0, 1.0]),
                dict(subclass_temperatures=[1.0, float("nan"), 1.0, 1.0, 1.0])):
        with pytest.raises(ArtifactError):
            ModelMeta.from_dict({**m.to_dict(), **bad})
    with pytest.raises(ArtifactError, match="subclass_logits"):    # a class-logit model has no subclass to pick T
        _meta("class_logits", subclass_temperatures=[1.0, 2.0])
    per_sub = m.replace(subclass_temperatures=[0.5, 0.6, 0.7, 0.8, 0.9])
    back = ModelMeta.from_props(per_sub.to_props())
    assert back.subclass_temperatures == [0.5, 0.6, 0.7, 0.8, 0.9] and back.to_dict() == per_sub.to_dict()
    assert legacy.subclass_temperatures is None


def test_temperature_and_threshold_round_trip_onnx(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    meta = _meta("class_logits", temperature=2.25, threshold=0.9)
    w = np.array([[1.0, -1.0]], dtype=np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["input", "w"], ["class_logits"])], "tiny",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1])],
                          [helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    helper.set_model_props(m, meta.to_props())
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    back = ModelMeta.from_props(dict(sess.get_modelmeta().custom_metadata_map))
    assert back.temperature == 2.25 and back.threshold == 0.9
    logits = sess.run(None, {"input": np.array([[2.0], [-0.1]], dtype=np.float32)})[0]
    probs = calibrated_probabilities(logits, back)
    assert np.allclose(probs[0], softmax(np.array([2.0, -2.0]) / 2.25))
    assert decide(probs, back.threshold).tolist() == [-1, -1]           # softened below 0.9
    # the runtime's probabilities are the calibrated ones; uncalibrated (T = 1) the first case is called
    assert np.allclose(class_probabilities(logits, back), probs, atol=1e-6)
    assert decide(class_probabilities(logits, back, temperature=1.0), back.threshold).tolist() == [0, -1]


def test_temperature_and_threshold_round_trip_engine_header(tmp_path):
    from edgeskd.runtime.engine_file import EngineHeader, read_engine_header, write_engine

    meta = _meta(temperature=0.8, threshold=0.95, subclass_temperatures=[0.5, 0.6, 0.7, 0.8, 1.2])
    path = write_engine(tmp_path / "m.engine", b"plan", EngineHeader(meta=meta, trt_version="10.3.0",
                                                                     compute_capability=(8, 7)))
    back = read_engine_header(path).meta
    assert back.temperature == 0.8 and back.threshold == 0.95
    assert back.subclass_temperatures == [0.5, 0.6, 0.7, 0.8, 1.2]
    logits = np.array([[3.0, 0.0, 1.0, 0.5, 0.0], [0.0, 0.0, 0.1, 0.2, 2.0]], dtype=np.float32)
    z = class_logits(logits, back)
    beta = softmax(logits.astype(np.float64), axis=1) @ (1.0 / np.array([0.5, 0.6, 0.7, 0.8, 1.2]))
    assert np.allclose(class_probabilities(logits, back), softmax(z * beta[:, None], axis=1), atol=1e-6)
    assert 1 / beta[0] < 0.6 and 1 / beta[1] > 0.9          # each case mostly takes its top subclass's T
    # a header written before these keys existed still loads, with T = 1 and no threshold
    header = EngineHeader(meta=meta, trt_version="10.3.0", compute_capability=(8, 7)).to_dict()
    for k in ("temperature", "threshold", "subclass_temperatures"):
        del header["meta"][k]
    legacy = EngineHeader.from_dict(header, source="old.engine").meta
    assert legacy.temperature == 1.0 and legacy.threshold is None and legacy.subclass_temperatures is None


# -- the stream: frame states and per-polyp decisions --------------------------------------------
@pytest.fixture(scope="module")
def synth_video(tmp_path_factory):
    """8 s at 10 fps: 3 polyps (ids 0, 1, 2) with their labelled frames, bare wall between them."""
    from edgeskd.data.synthvideo import write_synth_video

    d = tmp_path_factory.mktemp("video")
    info = write_synth_video(d / "v.mp4", seconds=8, fps=10, size=(192, 128), render_size=64, seed=3)
    return d / "v.mp4", d / "v.labels.csv", info


def _truth(labels_csv):
    import csv

    rows = list(csv.DictReader(labels_csv.open()))
    cls = {"hyperplastic": 0, "adenoma": 1}
    y = np.array([cls.get(r["class"], -1) for r in rows])
    pid = np.array([int(r["polyp_id"]) if r["polyp_id"] else -1 for r in rows])
    return y, pid


def _flicker_runner(y, pid, threshold=None):
    """A runner that 'sees' the video's truth: labelled frames of polyps 0 and 2 are called right 3
    times in 4 (confidently), polyp 1 is called right every other frame; other frames are 50/50."""
    from edgeskd.runtime.fake import FakeRunner

    meta = ModelMeta(class_names=["hyperplastic", "adenoma"], subclass_names=["hp", "ad"], subclass_to_class=[0, 1],
                     input_size=(16, 16), output="class_logits", threshold=threshold)
    seen = [0]

    def fn(batch):
        out = np.zeros((len(batch), 2), np.float32)
        for k in range(len(batch)):
            i = seen[0] + k
            if y[i] >= 0:
                wrong = (i % 2 == 1) if pid[i] == 1 else (i % 4 == 1)
                out[k, y[i] ^ int(wrong)] = 4.0
        seen[0] += len(batch)
        return out

    return FakeRunner(meta, fn)


def test_stream_states_and_per_polyp_decisions_on_a_synthetic_video(tmp_path, synth_video):
    from edgeskd.stream import StreamConfig, run_stream

    video, labels_csv, info = synth_video
    y, pid = _truth(labels_csv)
    assert set(pid[y >= 0]) == {0, 1, 2} and info["frames"] == len(y) == 80
    res = run_stream(StreamConfig(video=str(video), labels=labels_csv, jsonl=tmp_path / "p.jsonl",
                                  stats=tmp_path / "s.json", measure_ceiling=False, crop="none",
                                  hold_s=0.0),   # the smoothed state as is (the hold has its own tests)
                     runner=_flicker_runner(y, pid, threshold=0.65))
    lb = json.loads((tmp_path / "s.json").read_text())["labels"]
    assert lb == json.loads(json.dumps(res.stats["labels"]))
    assert lb["threshold"] == 0.65 and lb["threshold_source"] == "artifact"
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    # frame states: unlabelled frames are 50/50 → low confidence; labelled ones are called (p = 0.982)
    assert all((r["raw_state"] == LOW_CONFIDENCE) == (y[r["frame"]] < 0) for r in rows)
    assert all(r["state"] == (r["smoothed_class"] if max(r["smoothed"]) >= 0.65 else LOW_CONFIDENCE) for r in rows)
    frame_probs = np.array([r["probs"] for r in rows])
    lab = y >= 0
    frame_acc = float(np.mean(frame_probs[lab].argmax(1) == y[lab]))
    assert lb["raw"]["accuracy"] == pytest.approx(frame_acc, abs=1e-6) and 0.6 < frame_acc < 0.8
    fs = lb["frame_states"]["raw"]
    assert fs["coverage"] == 1.0 and fs["accuracy"] == pytest.approx(frame_acc, abs=1e-6)
    # per polyp: the mean of each polyp's labelled frames; polyps 0 and 2 (about 3 in 4 right, mean
    # ~0.7) are called right, polyp 1 (1 in 2 right, mean ~0.5) abstains
    pp = lb["per_polyp"]
    assert [p["polyp_id"] for p in pp["polyps"]] == [0, 1, 2] and pp["n_labelled"] == 3
    for p in pp["polyps"]:
        m = (pid == p["polyp_id"]) & lab
        assert p["n_frames"] == int(m.sum())
        assert p["probabilities"] == pytest.approx(frame_probs[m].mean(0).tolist(), abs=1e-5)
    states = [p["decision"] for p in pp["polyps"]]
    truth = {k: int(y[(pid == k) & lab][0]) for k in (0, 1, 2)}   # each polyp's class, from the labels
    names = ["hyperplastic", "adenoma"]
    assert states == [names[truth[0]], LOW_CONFIDENCE, names[truth[2]]]
    assert pp["coverage"] == pytest.approx(2 / 3, abs=1e-6) and pp["accuracy"] == 1.0
    negatives = sum(truth[k] == 0 for k in (0, 2))          # called polyps of the negative class
    if negatives:
        assert pp["npv"] == 1.0
        assert pp["npv_ci95"] == pytest.approx(list(wilson_interval(negatives, negatives)), abs=1e-6)
    else:
        assert pp["npv"] is None and pp["ppv"] == 1.0
    assert pp["accuracy_argmax"] >= frame_acc                           # per polyp ≥ per frame here


def test_stream_threshold_override_and_labels_without_ids(tmp_path, synth_video):
    from edgeskd.stream import StreamConfig, run_stream

    video, labels_csv, _ = synth_video
    y, pid = _truth(labels_csv)
    cfg = dict(video=str(video), measure_ceiling=False, crop="none")
    # --threshold replaces the artifact's: at 0.6 polyp 1 (mean 0.5) still abstains; without any, all are called
    s = run_stream(StreamConfig(**cfg, labels=labels_csv, threshold=0.6), runner=_flicker_runner(y, pid, 0.9)).stats
    assert s["labels"]["threshold"] == 0.6 and s["labels"]["threshold_source"] == "--threshold"
    assert s["source"]["threshold"] == 0.6
    s = run_stream(StreamConfig(**cfg, labels=labels_csv), runner=_flicker_runner(y, pid)).stats
    assert s["labels"]["threshold"] is None and "no threshold" in s["labels"]["threshold_source"]
    assert s["labels"]["per_polyp"]["coverage"] == 1.0 and s["labels"]["frame_states"]["raw"]["coverage"] == 1.0
    # labels without a polyp_id column: frame-level figures, and the stats say why there are no polyps
    plain = tmp_path / "plain.csv"
    plain.write_text("\n".join(",".join(line.split(",")[:2]) for line in labels_csv.read_text().splitlines()) + "\n")
    s = run_stream(StreamConfig(**cfg, labels=plain), runner=_flicker_runner(y, pid, 0.7)).stats
    assert s["labels"]["per_polyp"] is None and "no polyp_id column" in s["labels"]["per_polyp_note"]
    assert s["labels"]["frames_evaluated"] == int((y >= 0).sum())


def test_stream_bad_threshold_and_polyp_ids(tmp_path, cli, synth_video):
    from helpers_stream import make_onnx

    video, labels_csv, _ = synth_video
    onnx_path = make_onnx(tmp_path / "m.onnx")
    out = tmp_path / "out"
    out.mkdir()
    for bad in ("0.5", "1", "1.2", "0.3"):
        r = cli("stream", video, "--engine", onnx_path, "--threshold", bad, "--stats", out / "s.json")
        assert r.exit_code == 2 and "(0.5, 1)" in r.output and "Traceback" not in r.output, r.output
    # polyp ids are names: "P3" is a polyp like 3, and "3.0" (a spreadsheet's 3) is polyp 3
    from edgeskd.data.synthetic import POLYP_CLASS_NAMES
    from helpers_stream import META

    named = make_onnx(tmp_path / "named.onnx", meta=META.replace(class_names=list(POLYP_CLASS_NAMES)))
    lines = labels_csv.read_text().splitlines()
    head = lines[0].split(",")
    assert head[-1] == "polyp_id"

    def with_ids(fmt: str, name: str):
        rows = [lines[0]] + [",".join(r.split(",")[:-1] + [fmt.format(r.split(",")[-1]) if r.split(",")[-1] else ""])
                             for r in lines[1:]]
        path = tmp_path / name
        path.write_text("\n".join(rows) + "\n")
        return path

    per_polyp = []
    for path in (labels_csv, with_ids("P{}", "names.csv"), with_ids("{}.0", "floats.csv")):
        r = cli("stream", video, "--engine", named, "--labels", path, "--stats", tmp_path / "s.json", "--overwrite")
        assert r.exit_code == 0, r.output
        pp = json.loads((tmp_path / "s.json").read_text())["labels"]["per_polyp"]
        per_polyp.append((pp["n_labelled"], pp["accuracy_argmax"]))
        if path.name == "names.csv":   # the stats name each polyp as the labels do
            assert all(str(d["polyp_id"]).startswith("P") for d in pp["polyps"])
    assert per_polyp[0][0] >= 2 and per_polyp[1] == per_polyp[0] and per_polyp[2] == per_polyp[0]
    dup = tmp_path / "dup.csv"
    dup.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[1] + "\n")
    r = cli("stream", video, "--engine", named, "--labels", dup, "--stats", out / "s.json")
    assert r.exit_code != 0 and "listed twice" in r.output and "dup.csv:3" in r.output and not list(out.iterdir())
    mixed = tmp_path / "mixed.csv"
    mixed.write_text("frame,class,polyp_id\n0,hyperplastic,4\n1,adenoma,4\n")
    r = cli("stream", video, "--engine", named, "--labels", mixed, "--stats", out / "s.json")
    assert r.exit_code != 0 and "polyp 4" in r.output and "one class" in r.output and not list(out.iterdir())


def test_overlay_shows_low_confidence():
    from edgeskd.stream.overlay import LOW_CONFIDENCE_COLOUR, Annotation, draw_annotation

    kw = dict(raw_class_name="adenoma", raw_prob=0.78, subclass=None, subclass_prob=None, positive_prob=0.71,
              fps=30.0, latency_ms=4.0, is_positive=True, threshold=0.87)
    low = Annotation("adenoma", 0.71, low_confidence=True, **kw)
    assert low.headline() == "low confidence: adenoma 0.71 < 0.87  (raw adenoma 0.78)"
    assert Annotation("adenoma", 0.91, **kw).headline() == "adenoma 0.91  (raw adenoma 0.78)"
    img = draw_annotation(np.zeros((120, 320, 3), np.uint8), low)
    amber = np.all(np.abs(img[:20].astype(int) - LOW_CONFIDENCE_COLOUR) < 40, axis=-1)
    assert amber.sum() > 20                                         # the headline is drawn in amber


# -- build-engine and bench: ECE / NPV / coverage per artifact ---------------------------------------
def _redness_onnx(path, meta):
    """Conv1x1 → GAP → Gemm: the class logit difference grows with the red−green level; noisy images
    near the middle are misclassified, so ECE, NPV and coverage are not trivial."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[[[1.0]], [[-1.0]], [[0.0]]]], np.float32)
    fc = np.array([[-1.5], [1.5]], np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "fc"], ["class_logits"], transB=1)],
        "red", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    helper.set_model_props(m, meta.to_props())
    onnx.save(m, str(path))
    return path


def _red_set(n=240, seed=0):
    from edgeskd.data.base import LabeledSet

    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    shift = np.where(labels == 1, 1.0, -1.0) * rng.uniform(-0.3, 1.0, n)          # some on the wrong side
    imgs = np.full((n, 16, 16, 3), 128.0)
    imgs[..., 0] += 40 * shift[:, None, None]
    imgs[..., 1] -= 40 * shift[:, None, None]
    imgs = np.clip(imgs + rng.normal(0, 8, imgs.shape), 0, 255).astype(np.uint8)
    splits = np.array(["train", "val", "test"])[np.arange(n) % 3]
    return LabeledSet("red", "synthetic", ["hyperplastic", "adenoma"], ["hp", "ad"], [0, 1], labels, labels, splits,
                      images=imgs)


RED_META = ModelMeta(class_names=["hyperplastic", "adenoma"], subclass_names=["hp", "ad"], subclass_to_class=[0, 1],
                     input_size=(16, 16), output="class_logits", arch="handmade", model_name="student-skd",
                     temperature=1.7, threshold=0.8)


def _figures(path, ls):
    from edgeskd.clinical.artifact import as_percent, clinical_figures
    from edgeskd.runtime.evaluate import predict
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path, threads=1) as r:
        return as_percent(clinical_figures(predict(r, ls), r.metadata, ls.labels))


def test_build_engine_reports_clinical_figures_per_artifact(tmp_path):
    from edgeskd.engine.build import build_engine

    onnx_path = _redness_onnx(tmp_path / "red.onnx", RED_META)
    ls = _red_set()
    rep = build_engine(onnx_path, precision="int8", backend="onnxruntime", dataset=ls, threads=1, calib_size=60,
                       calib_dir=tmp_path / "calib", time_seconds=0.2)
    want = _figures(onnx_path, ls.split("val"))
    assert rep.fp32_clinical == want and want["threshold"] == 0.8 and want["temperature"] == 1.7
    assert 0 < want["ece"] < 100 and 0 < want["coverage"] < 100 and want["npv"] is not None
    saved = json.loads((tmp_path / (rep.artifact.name + ".json")).read_text())
    assert saved["fp32_clinical"] == want
    by_name = {c["name"]: c for c in saved["candidates"]}
    assert by_name["fp32"]["ece"] == want["ece"] and by_name["fp32"]["clinical_change"] == {}
    for name in ("s8s8", "u8s8", "fp32-opt"):
        c = by_name[name]
        assert c["threshold"] == 0.8 and c["ece"] is not None and c["coverage"] is not None
        assert c["clinical_change"] == {k: round(c[k] - want[k], 4) for k in ("ece", "npv", "coverage")}
    assert by_name["fp32-opt"]["clinical_change"] == {"ece": 0.0, "npv": 0.0, "coverage": 0.0}
    s8 = _figures(tmp_path / "red.int8.qdq.onnx", ls.split("val"))      # the kept Q/DQ ONNX, measured again
    assert (s8["ece"], s8["npv"], s8["coverage"]) == (by_name["s8s8"]["ece"], by_name["s8s8"]["npv"],
                                                      by_name["s8s8"]["coverage"])


def test_clinical_moves_beyond_the_gate_are_reported():
    from edgeskd.engine.report import Candidate, add_clinical, clinical_summary

    ref = {"ece": 3.0, "npv": 92.0, "npv_ci95": [85.0, 96.0], "coverage": 70.0, "threshold": 0.8}
    c = Candidate("u8s8", "int8", "")
    warnings: list[str] = []
    add_clinical(c, {**ref, "npv": 89.5, "coverage": 70.5}, ref, 1.0, warnings)
    assert c.clinical_change == {"ece": 0.0, "npv": -2.5, "coverage": 0.5}
    assert len(warnings) == 1 and "u8s8: NPV -2.50 pts vs FP32" in warnings[0] and "not gated" in warnings[0]
    assert clinical_summary(c) == "ECE 3.00 (+0.00), NPV 89.50 (-2.50), coverage 70.50 (+0.50)"


def test_bench_rows_show_clinical_figures(tmp_path):
    from edgeskd.bench.discover import Artifact
    from edgeskd.bench.measure import BenchOptions, Row, add_comparisons, run_bench
    from edgeskd.bench.report import markdown

    ls = _red_set().split("test")
    a = _redness_onnx(tmp_path / "a.onnx", RED_META)
    b = _redness_onnx(tmp_path / "b.onnx", RED_META.replace(threshold=None, temperature=1.0))
    res = run_bench([Artifact("student-skd", a), Artifact("student-skd", b)], ls,
                    BenchOptions(batch_sizes=(1,), threads=1, warmup=1, iters=3), machine={})
    ra, rb = res["rows"]
    want = _figures(a, ls)
    assert (ra["ece"], ra["npv"], ra["npv_ci95"], ra["coverage"], ra["threshold"]) == (
        want["ece"], want["npv"], want["npv_ci95"], want["coverage"], 0.8)
    # without a threshold: every image gets its argmax; the same F1, another ECE (no temperature)
    assert rb["coverage"] == 100.0 and rb["threshold"] is None and rb["f1"] == ra["f1"] and rb["ece"] != ra["ece"]
    assert "| ECE | NPV | cover |" in markdown(res) and "ΔNPV" in markdown(res)
    rows = [Row("s", "s.onnx", backend="onnxruntime", precision="fp32", model_name="s", f1=80.0, ece=3.0, npv=92.0,
                coverage=70.0),
            Row("s.int8", "s.int8.onnx", backend="onnxruntime", precision="int8", model_name="s", f1=79.0, ece=3.5,
                npv=91.0, coverage=72.0)]
    add_comparisons(rows, None)
    assert (rows[1].ece_change_vs_fp32, rows[1].npv_change_vs_fp32, rows[1].coverage_change_vs_fp32) == (0.5, -1.0, 2.0)


# -- training: temperature, threshold, metrics.json, report, checkpoints --------------------------------
def _student(tmp_path, name, meta, t_true, seed):
    """A saved student whose 'predictions' are synthetic logits with a known temperature."""
    from types import SimpleNamespace

    import torch

    from edgeskd.distill.loop import TrainedModel
    from edgeskd.models import create_model
    from edgeskd.models.checkpoint import save_checkpoint

    cls, y = _synthetic_logits(t_true, n=3000, c=2, seed=seed)
    if meta.output == "subclass_logits":     # blocks (2 + 3) whose logsumexp is the class logit
        cls = np.concatenate([cls[:, :1] + np.log([0.3, 0.7]), cls[:, 1:] + np.log([0.2, 0.5, 0.3])], axis=1)
    logits = cls.astype(np.float32)
    torch.manual_seed(0)
    model = create_model("tiny_cnn", meta.num_outputs).eval()
    path = save_checkpoint(tmp_path / f"{name}.pt", model, meta, config={"train": {}}, metrics={"test": {"f1": 1.0}})
    r = TrainedModel(model, meta, {}, {}, 0, [], 0, logits[1500:], path)
    ls = SimpleNamespace(labels=y[1500:])
    return r, logits[:1500], y[:1500], ls


def test_training_calibrates_students_and_reports_them(tmp_path):
    from types import SimpleNamespace

    from edgeskd.distill import clinical_report
    from edgeskd.distill.ddp import DistContext
    from edgeskd.models.checkpoint import load_checkpoint

    base = dict(class_names=["hp", "ssa"], input_size=(32, 32), arch="tiny_cnn")
    skd_meta = ModelMeta(subclass_names=list("abcde"), subclass_to_class=[0, 0, 1, 1, 1], output="subclass_logits",
                         model_name="student-skd", **base)
    plain_meta = ModelMeta(subclass_names=["hp", "ssa"], subclass_to_class=[0, 1], output="class_logits",
                           model_name="student-none", **base)
    skd, skd_val, y_val, test = _student(tmp_path, "student-skd", skd_meta, 2.5, seed=1)
    plain, plain_val, y_val2, _ = _student(tmp_path, "student-none", plain_meta, 0.6, seed=1)
    assert np.array_equal(y_val, y_val2)
    for r, val_logits in ((skd, skd_val), (plain, plain_val)):
        ctx = SimpleNamespace(val_split=SimpleNamespace(labels=y_val), test_split=test, dist=DistContext(),
                              predict=lambda model, split, meta, v=val_logits: v)
        clinical_report.calibrate_student(ctx, r)
    assert skd.meta.temperature == pytest.approx(2.5, rel=0.1) and plain.meta.temperature == pytest.approx(0.6, rel=0.1)
    assert skd.meta.threshold is not None and 0.5 < skd.meta.threshold < 1
    # the checkpoints (and so the exported ONNX) carry temperature and threshold
    ck = load_checkpoint(skd.path)
    assert ck["meta"].temperature == skd.meta.temperature and ck["meta"].threshold == skd.meta.threshold
    assert ck["metrics"]["test"] == {"f1": 1.0} and ck["metrics"]["clinical"]["temperature_fit"]["n"] == 1500
    from edgeskd.export.onnx_export import export_onnx
    from edgeskd.runtime.onnxrt import load_onnx

    exported = export_onnx(skd.path, tmp_path / "skd.onnx", parity_samples=8)
    onnx_meta = load_onnx(exported.path).meta
    assert (onnx_meta.temperature, onnx_meta.threshold) == (skd.meta.temperature, skd.meta.threshold)

    teacher = SimpleNamespace(test_logits=skd.test_logits, meta=skd_meta, extra={})
    metrics = {"models": {"teacher": {}, "student-none": {}, "student-skd": {}},
               "dataset": {"name": "synthetic logits", "n_test": 1500, "n_val": 1500}}
    data = SimpleNamespace(split=lambda name: test)
    per_seed = {0: {"teacher": teacher, "student-none": plain, "student-skd": skd}}
    clinical_report.add_to_metrics(metrics, per_seed, data)
    m = metrics["models"]
    cal = m["student-skd"]["calibration"]
    assert cal["temperature"] == pytest.approx(skd.meta.temperature, abs=1e-6) and cal["n_bins"] == 15
    assert cal["temperature_ci95"][0] < 2.5 < cal["temperature_ci95"][1]
    assert cal["ece"] > 5 and cal["ece_calibrated"] < 3 and cal["nll_calibrated"] < cal["nll"]      # percent
    assert cal["ece"] == pytest.approx(100 * ece(softmax(class_logits(skd.test_logits, skd_meta), 1), test.labels),
                                       abs=1e-3)
    assert "temperature" not in m["teacher"]["calibration"] and "operating_point" not in m["teacher"]
    op = m["student-skd"]["operating_point"]
    want = operating_point(calibrated_probabilities(skd_val, skd.meta), y_val,
                           calibrated_probabilities(skd.test_logits, skd.meta), test.labels)
    assert op["threshold"] == want["threshold"] == skd.meta.threshold
    assert op["npv"] == pytest.approx(100 * want["npv"], abs=1e-3) and op["coverage"] == pytest.approx(
        100 * want["coverage"], abs=1e-3)
    assert op["npv_ci95"] == pytest.approx([100 * v for v in want["npv_ci95"]], abs=1e-3)
    assert op["coverage_ci95"][0] < op["coverage"] < op["coverage_ci95"][1] and op["argmax"]["coverage"] == 100.0
    assert 0 < cal["ece_sampling_floor"]["mean"] < cal["ece_sampling_floor"]["p95"] < 10
    (key, diff), = metrics["coverage_differences"].items()
    called = {n: calibrated_probabilities(r.test_logits, r.meta).max(1) >= r.meta.threshold for n, r in
              (("none", plain), ("skd", skd))}
    assert key == "student-skd - student-none" and diff["difference"] == pytest.approx(
        100 * (called["skd"].mean() - called["none"].mean()), abs=1e-3)
    json.dumps(metrics)
    two = {"models": {"student-skd": {}}, "dataset": metrics["dataset"]}      # two seeds: means and each seed's
    clinical_report.add_to_metrics(two, {3: per_seed[0], 7: per_seed[0]}, data)
    c2, o2 = two["models"]["student-skd"]["calibration"], two["models"]["student-skd"]["operating_point"]
    assert [e["seed"] for e in c2["per_seed"]] == [3, 7] and c2["ece_calibrated"] == pytest.approx(cal["ece_calibrated"])
    assert o2["seed"] == 3 and [e["seed"] for e in o2["per_seed"]] == [3, 7] and o2["per_seed"][1]["npv"] == op["npv"]
    plots = clinical_report.write_plots(tmp_path, per_seed, data)
    assert plots == ["reliability_student-none.png", "reliability_student-skd.png"]
    assert (tmp_path / plots[1]).read_bytes()[:4] == b"\x89PNG"
    metrics["files"] = plots
    text = "\n".join(clinical_report.section(metrics))
    assert "not a clinical validation" in text and "| student-skd |" in text and "| SKD |" in text
    assert "| plain |" in text and "reliability_student-skd.png" in text and "Lower 95 % NPV bound" in text
    assert "paired bootstrap" in text and "ECE from sampling alone" in text


def test_training_deploys_subclass_temperatures(tmp_path):
    """An SKD student whose subclasses need different temperatures: training stores one per predicted
    subclass in its checkpoint and the exported ONNX, metrics.json reports ECE after one T and after
    the deployed ones, and report.md lists them."""
    from types import SimpleNamespace

    import torch

    from edgeskd.distill import clinical_report
    from edgeskd.distill.ddp import DistContext
    from edgeskd.distill.loop import TrainedModel
    from edgeskd.export.onnx_export import export_onnx
    from edgeskd.models import create_model
    from edgeskd.models.checkpoint import load_checkpoint, save_checkpoint
    from edgeskd.runtime.onnxrt import load_onnx

    meta = _meta4(input_size=(32, 32), arch="tiny_cnn", model_name="student-skd")
    logits, y = _subclass_logits([0.4, 1.0, 2.5, 1.0], n_per=1000, seed=5)
    order = np.random.default_rng(0).permutation(len(y))
    logits, y = logits[order].astype(np.float32), y[order]
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "student-skd.pt", create_model("tiny_cnn", 4).eval(), meta,
                           config={"train": {}}, metrics={"test": {"f1": 1.0}})
    r = TrainedModel(create_model("tiny_cnn", 4).eval(), meta, {}, {}, 0, [], 0, logits[2000:], path)
    test = SimpleNamespace(labels=y[2000:])
    ctx = SimpleNamespace(val_split=SimpleNamespace(labels=y[:2000]), test_split=test, dist=DistContext(),
                          predict=lambda model, split, meta: logits[:2000])
    clinical_report.calibrate_student(ctx, r)
    ts = r.meta.subclass_temperatures
    assert ts is not None and ts[0] < 0.6 and ts[2] > 1.8
    fit = r.extra["clinical"]["fit"]["subclass"]
    assert fit["own"] == [True] * 4 and fit["heldout_nll"]["subclass"] < fit["heldout_nll"]["global"]
    assert load_checkpoint(path)["meta"].subclass_temperatures == ts
    assert load_onnx(export_onnx(path, tmp_path / "s.onnx", parity_samples=4).path).meta.subclass_temperatures == ts
    metrics = {"models": {"student-skd": {}}, "dataset": {"name": "synthetic logits", "n_test": 2000, "n_val": 2000}}
    clinical_report.add_to_metrics(metrics, {0: {"student-skd": r}}, SimpleNamespace(split=lambda name: test))
    cal = metrics["models"]["student-skd"]["calibration"]
    assert cal["method"] == "subclass_temperatures" and cal["per_seed"][0]["subclass_temperatures"] == ts
    assert cal["ece_calibrated"] < cal["ece_one_temperature"] and cal["nll_calibrated"] < cal["nll_one_temperature"]
    assert cal["ece_calibrated"] == pytest.approx(100 * ece(calibrated_probabilities(logits[2000:], r.meta), test.labels),
                                                  abs=1e-3)
    text = "\n".join(clinical_report.section(metrics))
    assert "T per subclass [" in text and "out-of-sample validation NLL" in text


def test_training_run_with_a_tiny_validation_split_stores_no_threshold(tmp_path, cli):
    """60 images: 9 for validation, too few to fit a temperature or choose a threshold; the run says
    so in metrics.json and report.md, and the checkpoints carry T = 1 and no threshold."""
    from edgeskd.models.checkpoint import load_checkpoint

    out = tmp_path / "run"
    r = cli("train", "--synthetic-n", "60", "--img-size", "32", "--batch-size", "8", "--device", "cpu",
            "--epochs", "1", "--teacher-epochs", "1", "--students", "none,skd", "--out", out)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    import re

    n_val = m["dataset"]["n_val"]
    for name in ("student-none", "student-skd"):
        cal, op = m["models"][name]["calibration"], m["models"][name]["operating_point"]
        # calibration and threshold are fitted on the polyp images of validation (the no_polyp ones apart)
        n_fit = int(re.search(r"has (\d+) cases", cal["temperature_note"]).group(1))
        assert cal["temperature"] is None and 0 < n_fit <= n_val
        assert cal["ece_calibrated"] == cal["ece"] and 0 <= cal["ece"] <= 100
        assert op["threshold"] is None and f"{n_fit} cases" in op["reason"] and op["argmax"]["coverage"] == 100.0
        ck = load_checkpoint(out / f"{name}.pt")
        assert ck["meta"].temperature == 1.0 and ck["meta"].threshold is None
        assert (out / f"reliability_{name}.png").is_file()
    assert "temperature" not in m["models"]["teacher"]["calibration"]
    report = (out / "report.md").read_text()
    assert "## Calibration and operating points" in report and "no threshold stored" in report
    assert "not a clinical validation" in report and "reliability_student-skd.png" in report


def test_quickstart_summary_reads_the_clinical_figures(tmp_path):
    from edgeskd.cli.quickstart import summarize

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"models": {"student-skd": {
        "f1": 75.0, "calibration": {"ece": 6.0, "ece_calibrated": 2.0},
        "operating_point": {"threshold": 0.8, "coverage": 60.0, "npv": 93.0, "npv_ci95": [88.0, 96.0]}}}}))
    (tmp_path / "stream.json").write_text(json.dumps({"labels": {
        "raw": {"accuracy": 0.7}, "threshold": 0.8, "per_polyp": {"accuracy_argmax": 0.9, "accuracy": 1.0,
                                                                  "coverage": 0.5}}}))
    s = summarize(tmp_path, tmp_path / "m.onnx")
    assert s["models"]["student-skd"]["ece_calibrated"] == 2.0 and s["models"]["student-skd"]["npv_ci95"] == [88.0, 96.0]
    # stream.json's fractions come out in percent: quickstart.json has one unit (its "units" says which)
    assert (s["stream"]["polyp_accuracy_argmax"], s["stream"]["frame_accuracy_raw"], s["stream"]["polyp_coverage"]) == (
        90.0, 70.0, 50.0)
    assert s["units"]["rates"].startswith("percent")
