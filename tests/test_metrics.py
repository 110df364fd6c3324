"""edgeskd.metrics (and evaluate_logits, a model's raw output → those metrics): hand-computed cases,
sklearn on random cases, and the percent presentation."""

from __future__ import annotations

import numpy as np
import pytest

from edgeskd import metrics
from edgeskd.meta import ModelMeta
from edgeskd.runtime.evaluate import evaluate_logits


def _meta(output="subclass_logits", names=("a", "b", "c")):
    s2c = [0] + [1] * (len(names) - 1)
    return ModelMeta(class_names=["hp", "ssa"], subclass_names=list(names), subclass_to_class=s2c,
                     input_size=(32, 32), output=output)


# -- hand-computed ----------------------------------------------------------------------------------
def test_binary_counts_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 2])
    p = np.array([1, 1, 0, 1, 0, 0, 2, 2])
    # class 1: TP 2, FP 1, FN 1 → P = R = 2/3, F1 = 4/6
    assert metrics.precision_recall_f1(y, p, 1) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    # class 0: TP 2, FP 1 (sample 2), FN 2 (samples 3, 6) → P 2/3, R 1/2, F1 4/7
    assert metrics.precision_recall_f1(y, p, 0) == pytest.approx((2 / 3, 1 / 2, 4 / 7))
    # class 2: TP 1, FP 1, FN 0 → F1 2/3; macro = mean(4/7, 2/3, 2/3)
    assert metrics.macro_f1(y, p, 3) == pytest.approx((4 / 7 + 2 / 3 + 2 / 3) / 3)
    assert metrics.accuracy(y, p) == 5 / 8
    assert metrics.confusion_matrix(y, p, 3).tolist() == [[2, 1, 1], [1, 2, 0], [0, 0, 1]]


def test_undefined_cases_are_zero_or_none():
    y, p = np.array([0, 0]), np.array([0, 0])
    assert metrics.precision_recall_f1(y, p, 1) == (0.0, 0.0, 0.0)   # no positive at all
    assert metrics.macro_f1(y, p, 2) == 1.0                         # only class 0 present, perfect
    assert metrics.roc_auc(np.array([True, True]), np.array([0.1, 0.9])) is None
    assert metrics.label_metrics([], [], 2, 1) == {"accuracy": None, "f1": None, "f1_macro": None}
    assert metrics.macro_f1(np.array([], int), np.array([], int), 2) is None
    assert metrics.accuracy([], []) == 0.0


def test_roc_auc_by_hand_with_ties():
    # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8 > 0.4), (0.8 > 0.1), (0.4 = 0.4 → ½), (0.4 > 0.1)
    auc = metrics.roc_auc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.4, 0.1]))
    assert auc == pytest.approx(3.5 / 4)


def test_per_subclass_and_subclass_accuracy_by_hand():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0, 1, 1, 1, 0])
    s = np.array([0, 0, 2, 2, 1])
    assert metrics.per_subclass_accuracy(y, p, s, ["a", "b", "c"]) == {"a": 0.5, "b": 0.0, "c": 1.0}
    assert metrics.per_subclass_accuracy(y, p, s) == {"0": 0.5, "1": 0.0, "2": 1.0}
    assert metrics.subclass_accuracy(np.array([0, 1, 2, 2, 0]), s) == 3 / 5


def test_evaluate_logits_by_hand_in_fractions():
    meta = _meta()
    # class logits via logsumexp: sample 0 → ssa (b, c), 1 → hp, 2 → ssa, 3 → hp
    logits = np.array([[0, 1, 1], [3, 0, 0], [0, 0, 2], [1, -1, -1]], np.float32)
    labels, subs = np.array([1, 0, 0, 1]), np.array([1, 0, 0, 2])
    m = evaluate_logits(logits, meta, labels, subs, ["a", "b", "c"])
    # TP = 1 (sample 0), FP = 1 (sample 2), FN = 1 (sample 3) → P = R = F1 = 0.5
    assert (m["f1"], m["precision"], m["recall"], m["accuracy"], m["auc"]) == (0.5, 0.5, 0.5, 0.5, 0.5)
    assert m["per_subclass_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert m["confusion"] == [[1, 1], [1, 1]] and m["n"] == 4
    assert m["subclass_accuracy"] == 0.5
    # a model with other subclasses than the data's: no subclass accuracy
    assert "subclass_accuracy" not in evaluate_logits(logits, meta, labels, subs, ["x", "y", "z"])
    with pytest.raises(ValueError, match="columns"):
        evaluate_logits(logits[:, :2], meta, labels)
    with pytest.raises(ValueError, match="do not match"):
        evaluate_logits(logits, meta, labels[:3])


def test_presentation():
    m = {"n": 3, "f1": 2 / 3, "auc": None, "confusion": [[1, 0], [1, 1]], "per_subclass_accuracy": {"a": 0.5}}
    pct = metrics.as_percent(m)
    assert pct == {"n": 3, "f1": 66.6667, "auc": None, "confusion": [[1, 0], [1, 1]],
                   "per_subclass_accuracy": {"a": 50.0}}
    assert m["f1"] == 2 / 3   # the input is not changed
    assert metrics.present(m, scale=1.0, digits=6)["f1"] == 0.666667


def test_stream_frame_metrics_use_the_shared_module():
    from edgeskd.stream.stats import StreamStats

    y, p = np.array([0, 1, 1, 0, 1]), np.array([0, 1, 0, 0, 0])
    stats = StreamStats(["a", "b"], positive=1)
    stats.y_true = list(y)
    expect = metrics.present(metrics.label_metrics(y, p, 2, 1), scale=1.0, digits=6)
    assert stats._metrics(list(p)) == expect == {"accuracy": 0.6, "f1": 0.5, "f1_macro": 0.583333}


# -- against sklearn ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_against_sklearn_on_random_cases(seed):
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(5, 300)), int(rng.integers(2, 5))
    y = rng.integers(0, c, n)
    p = np.where(rng.random(n) < 0.6, y, rng.integers(0, c, n))
    pos = int(rng.integers(0, c))
    assert metrics.accuracy(y, p) == pytest.approx(sk.accuracy_score(y, p), abs=1e-12)
    prec, rec, f1 = metrics.precision_recall_f1(y, p, pos)
    yb, pb = y == pos, p == pos
    assert prec == pytest.approx(sk.precision_score(yb, pb, zero_division=0), abs=1e-12)
    assert rec == pytest.approx(sk.recall_score(yb, pb, zero_division=0), abs=1e-12)
    assert f1 == pytest.approx(sk.f1_score(yb, pb, zero_division=0), abs=1e-12)
    assert metrics.macro_f1(y, p, c) == pytest.approx(sk.f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    assert metrics.confusion_matrix(y, p, c).tolist() == sk.confusion_matrix(y, p, labels=list(range(c))).tolist()
    # scores with ties (rounded) and without
    for scores in (rng.random(n), np.round(rng.random(n), 1)):
        if 0 < yb.sum() < n:
            assert metrics.roc_auc(yb, scores) == pytest.approx(sk.roc_auc_score(yb, scores), abs=1e-12)


@pytest.mark.parametrize("output, k", [("subclass_logits", 5), ("class_logits", 2)])
def test_evaluate_logits_against_sklearn(output, k):
    sk = pytest.importorskip("sklearn.metrics")
    from edgeskd.runtime.postprocess import class_probabilities

    names = ["a", "b", "c", "d", "e"]
    meta = ModelMeta(class_names=["hp", "ssa"], subclass_names=names, subclass_to_class=[0, 0, 1, 1, 1],
                     input_size=(32, 32), output=output)
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(200, k)).astype(np.float32)
    subs = rng.integers(0, 5, 200)
    labels = (subs >= 2).astype(np.int64)
    m = evaluate_logits(logits, meta, labels, subs, names)
    probs = class_probabilities(logits, meta)
    pred = probs.argmax(1)
    assert m["f1"] == pytest.approx(sk.f1_score(labels, pred), abs=1e-12)
    assert m["precision"] == pytest.approx(sk.precision_score(labels, pred), abs=1e-12)
    assert m["recall"] == pytest.approx(sk.recall_score(labels, pred), abs=1e-12)
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(labels, pred), abs=1e-12)
    assert m["auc"] == pytest.approx(sk.roc_auc_score(labels, probs[:, 1]), abs=1e-12)
    assert m["confusion"] == sk.confusion_matrix(labels, pred).tolist()
    for i, name in enumerate(names):
        sel = subs == i
        assert m["per_subclass_accuracy"][name] == pytest.approx(sk.accuracy_score(labels[sel], pred[sel]), abs=1e-12)
    if output == "subclass_logits":
        assert m["subclass_accuracy"] == pytest.approx(sk.accuracy_score(subs, logits.argmax(1)), abs=1e-12)
    else:
        assert "subclass_accuracy" not in m


def test_stream_clusters_are_worked_out_once_per_state():
    """A stats write reads the clusters three times; they are computed once while no frame comes in,
    and again (with the new frame) after one does."""
    from edgeskd.stream.stats import StreamStats

    stats = StreamStats(["a", "b"], positive=1, polyp_ids={0: 7})
    stats.frame_polyps, stats.label_frames = [7, None, None, 7], [0, 1, 2, 4]
    calls = []
    real = stats._cluster_ids
    stats._cluster_ids = lambda: calls.append(1) or real()
    first = stats._clusters()
    assert first == [7, "frames without a polyp id, run 0", "frames without a polyp id, run 0", 7]
    assert stats._clusters() is first and len(calls) == 1
    stats.frame_polyps.append(None)
    stats.label_frames.append(9)
    assert stats._clusters()[-1] == "frames without a polyp id, run 1" and len(calls) == 2
