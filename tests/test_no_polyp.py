"""The "no polyp" (background) class: metadata round trips, presence and conditional probabilities,
evaluation on polyp cases with presence apart, the presence threshold, and a 3-class run through
training end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeskd.errors import ArtifactError
from edgeskd.meta import ModelMeta

BG_META = ModelMeta(class_names=["hyperplastic", "adenoma", "no_polyp"],
                    subclass_names=["hp_a", "hp_b", "ad_a", "ad_b", "mucosa_plain", "mucosa_fold"],
                    subclass_to_class=[0, 0, 1, 1, 2, 2], input_size=(32, 32), background_class=2,
                    temperature=1.5, threshold=0.7, presence_threshold=0.4, arch="tiny-test")


# -- metadata ---------------------------------------------------------------------------------------
def test_meta_round_trips_and_old_artifacts_load_without_background(tmp_path):
    assert ModelMeta.from_dict(BG_META.to_dict()) == BG_META
    assert ModelMeta.from_props(BG_META.to_props()) == BG_META
    old = BG_META.to_dict()
    for k in ("background_class", "presence_threshold"):
        old.pop(k)
    m = ModelMeta.from_dict(old)
    assert m.background_class is None and m.presence_threshold is None and m.polyp_only() is m

    from edgeskd.runtime.engine_file import EngineHeader, read_engine_header, write_engine

    p = write_engine(tmp_path / "m.engine", b"\0" * 16, EngineHeader(BG_META, "10.3.0", (8, 7)))
    assert read_engine_header(p).meta == BG_META


def test_meta_round_trips_through_checkpoint_and_onnx(tmp_path):
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from edgeskd.export.onnx_export import attach_metadata
    from edgeskd.models.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "m.pt", torch.nn.Linear(2, 6), BG_META)
    assert load_checkpoint(tmp_path / "m.pt")["meta"] == BG_META
    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    attach_metadata(model, BG_META)
    assert ModelMeta.from_props({p.key: p.value for p in model.metadata_props}) == BG_META


@pytest.mark.parametrize("change, needle", [
    ({"background_class": 3}, "not a class index"),
    ({"background_class": 1}, "positive_class cannot be the background"),
    ({"presence_threshold": 1.0}, "presence_threshold"),
    ({"background_class": None}, "presence_threshold needs a background_class"),
])
def test_bad_background_metadata_is_refused(change, needle):
    with pytest.raises(ArtifactError, match=needle):
        BG_META.replace(**change)


def test_two_classes_cannot_have_a_background():
    with pytest.raises(ArtifactError, match="at least 2 other classes"):
        ModelMeta(class_names=["a", "b"], subclass_names=["a", "b"], subclass_to_class=[0, 1], input_size=(8, 8),
                  positive_class=0, background_class=1)


def test_polyp_only_meta_drops_the_background_block():
    m = BG_META.replace(subclass_temperatures=[1.0, 2.0, 3.0, 4.0, 9.0, 9.0])
    p = m.polyp_only()
    assert p.class_names == ["hyperplastic", "adenoma"] and p.subclass_to_class == [0, 0, 1, 1]
    assert p.subclass_temperatures == [1.0, 2.0, 3.0, 4.0] and p.positive_class == 1
    assert p.threshold == 0.7 and p.background_class is None
    first = BG_META.replace(class_names=["no_polyp", "hyperplastic", "adenoma"], subclass_names=["m", "h", "a"],
                            subclass_to_class=[0, 1, 2], background_class=0, positive_class=2)
    assert first.polyp_only().positive_class == 1 and first.polyp_outputs() == [1, 2]


# -- probabilities ------------------------------------------------------------------------------------
def test_presence_and_conditional_probabilities_by_hand():
    from edgeskd.runtime.postprocess import (background_probability, class_probabilities,
                                             conditional_probabilities, softmax)

    x = np.array([[2.0, 0.0, 1.0, 1.0, 3.0, 0.5]], np.float32)
    z = np.log(np.exp(x.reshape(3, 2)).sum(axis=1))                 # class logits: logsumexp per block
    p_bg = softmax(z[None].astype(np.float64))[0, 2]
    cond = softmax(z[None, :2] / 1.5)[0]                             # conditional, with the temperature
    assert background_probability(x, BG_META)[0] == pytest.approx(p_bg, rel=1e-5)
    np.testing.assert_allclose(conditional_probabilities(x, BG_META)[0], cond, rtol=1e-5)
    full = class_probabilities(x, BG_META)[0]
    np.testing.assert_allclose(full, [*(1 - p_bg) * cond, p_bg], rtol=1e-5)
    assert full.sum() == pytest.approx(1.0, abs=1e-6)


# -- evaluation ---------------------------------------------------------------------------------------
def _logits_for(labels: np.ndarray, rng, strength: float = 4.0) -> np.ndarray:
    """Subclass logits that favour each case's own class block (noisy)."""
    x = rng.normal(0, 1, (len(labels), 6)).astype(np.float32)
    for c in range(3):
        x[labels == c, 2 * c:2 * c + 2] += strength
    return x


def test_evaluation_is_on_polyp_cases_with_presence_apart():
    from edgeskd.runtime.evaluate import evaluate_logits
    from edgeskd.runtime.postprocess import conditional_probabilities

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = _logits_for(y, rng)
    m = evaluate_logits(x, BG_META, y)
    polyp = y != 2
    pred = conditional_probabilities(x[polyp], BG_META).argmax(axis=1)
    assert m["n"] == int(polyp.sum()) and m["n_no_polyp"] == int((~polyp).sum())
    assert m["accuracy"] == pytest.approx(float(np.mean(pred == y[polyp])))
    assert np.asarray(m["confusion"]).shape == (2, 2)
    pres = m["presence"]
    p_bg = _p_bg(x)
    assert pres["threshold"] == 0.4
    assert pres["sensitivity"] == pytest.approx(float(np.mean(p_bg[polyp] < 0.4)))
    assert pres["false_presence"] == pytest.approx(float(np.mean(p_bg[~polyp] < 0.4)))
    from edgeskd.metrics import as_percent

    assert as_percent(m)["presence"]["sensitivity"] == pytest.approx(100 * pres["sensitivity"], abs=1e-3)


def test_int8_recovery_scores_plans_with_the_gates_f1():
    """PTQ recovery ranks layers and passes plans by F1: for a model with a "no polyp" class that is
    the gate's F1 (polyp images, conditional probabilities), not a 3-way argmax over every image."""
    from edgeskd.metrics import precision_recall_f1
    from edgeskd.quantize.sensitivity import f1_of
    from edgeskd.runtime.evaluate import evaluate_logits
    from edgeskd.runtime.postprocess import class_probabilities

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 400)
    x = _logits_for(y, rng, strength=1.5)
    gate = 100 * evaluate_logits(x, BG_META, y)["f1"]
    assert f1_of(x, BG_META, y) == pytest.approx(gate)
    three_way = 100 * precision_recall_f1(y, class_probabilities(x, BG_META).argmax(1), 1)[2]
    assert abs(three_way - gate) > 0.5   # what it computed before: another number


def _p_bg(x: np.ndarray) -> np.ndarray:
    from edgeskd.runtime.postprocess import background_probability

    return background_probability(x, BG_META)


def test_without_background_the_view_is_the_input():
    from edgeskd.runtime.polyp_view import polyp_view

    meta = BG_META.replace(class_names=["a", "b", "c"], background_class=None, presence_threshold=None)
    x = np.zeros((4, 6), np.float32)
    v = polyp_view(x, meta, np.array([0, 1, 2, 1]))
    assert v.meta is meta and v.mask.all() and v.p_background is None and v.labels.tolist() == [0, 1, 2, 1]


def test_presence_threshold_caps_false_presence_on_validation():
    from edgeskd.clinical.presence import select_presence_threshold

    rng = np.random.default_rng(1)
    neg = rng.uniform(0.2, 1.0, 400)          # polyp-free frames: P(background) spread out, some low
    pos = rng.uniform(0.0, 0.3, 600)
    p = np.concatenate([neg, pos])
    truth = np.concatenate([np.zeros(400, bool), np.ones(600, bool)])
    c = select_presence_threshold(p, truth)
    assert c.threshold is not None and c.threshold <= 0.5
    assert c.false_presence <= 0.01 and np.mean(neg < c.threshold) <= 0.01
    # the largest such threshold: one more polyp-free frame would be called present above it
    assert np.mean(neg <= c.threshold) > 0.01 - 1e-12 or c.threshold == 0.5
    easy = select_presence_threshold(np.concatenate([np.full(50, 0.99), np.full(50, 0.01)]),
                                     np.concatenate([np.zeros(50, bool), np.ones(50, bool)]))
    assert easy.threshold == 0.5 and easy.capped and easy.sensitivity == 1.0
    few = select_presence_threshold(np.array([0.9, 0.1]), np.array([False, True]))
    assert few.threshold is None and "fewer than" in few.reason


# -- training end to end ---------------------------------------------------------------------------
def tiny_background_set(n: int = 180, size: int = 32, seed: int = 0):
    """Three classes (hyperplastic, adenoma, no_polyp) with two subclasses each, told apart by colour
    and a blob: a stand-in for the synthetic default's layout."""
    from edgeskd.data.base import LabeledSet

    rng = np.random.default_rng(seed)
    sub = np.arange(n) % 6
    colours = np.array([[200, 60, 60], [190, 90, 60], [60, 60, 200], [80, 60, 190], [120, 120, 120],
                        [140, 110, 110]], np.float64)
    imgs = np.clip(rng.normal(110, 20, (n, size, size, 3)), 0, 255)
    yy, xx = np.mgrid[:size, :size]
    blob = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2
    for i in range(n):
        if sub[i] < 4:
            imgs[i][blob] = colours[sub[i]] + rng.normal(0, 15, 3)
        else:
            imgs[i] += (colours[sub[i]] - 110) * 0.3
    splits = np.array(["train", "train", "val", "test", "train", "test"] * (n // 6), dtype=object)
    return LabeledSet("tiny-bg", "synthetic", ["hyperplastic", "adenoma", "no_polyp"],
                      ["hp_a", "hp_b", "ad_a", "ad_b", "mucosa_plain", "mucosa_fold"], [0, 0, 1, 1, 2, 2],
                      sub // 2, sub, splits, images=imgs.astype(np.uint8), background_class=2,
                      info={"positive_class": 1})


def test_three_class_set_with_background_trains_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from edgeskd.distill import train as train_mod
    from edgeskd.distill.config import TrainConfig
    from edgeskd.models.checkpoint import load_checkpoint

    ls = tiny_background_set()
    monkeypatch.setattr(train_mod, "load_training_data", lambda cfg: ls)
    cfg = TrainConfig(out=str(tmp_path / "run"), epochs=1, teacher_epochs=1, img_size=32, batch_size=16,
                      device="cpu", progress=False)
    metrics = train_mod.run_training(cfg, argv=["test"])
    n_val_polyp = int(((ls.splits == "val") & (ls.labels != 2)).sum())
    for name, m in metrics["models"].items():
        assert np.asarray(m["confusion"]).shape == (2, 2), name     # HP vs adenoma, on polyp images
        assert set(m["presence"]) >= {"sensitivity", "false_presence", "auc", "threshold"}, name
        assert m["calibration"]["n"] == int(((ls.splits == "test") & (ls.labels != 2)).sum())
    assert n_val_polyp > 0
    ck = load_checkpoint(tmp_path / "run" / "student-skd.pt")
    meta = ck["meta"]
    assert meta.background_class == 2 and meta.class_names[2] == "no_polyp"
    assert "presence" in ck["metrics"]["clinical"]
    img = meta.extra["image_test"]
    assert img["split"] == "test" and "presence" in img and set(img["calls"]) >= {"coverage", "npv"}
    assert set(img["per_subclass_accuracy"]) <= {"hp_a", "hp_b", "ad_a", "ad_b"}
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Presence" in report
    json.loads((tmp_path / "run" / "metrics.json").read_text())


def test_clinical_figures_of_an_artifact_are_those_of_its_polyp_only_view():
    from edgeskd.clinical.artifact import clinical_figures

    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 400)
    x = _logits_for(y, rng, strength=1.5)
    full = clinical_figures(x, BG_META, y)
    polyp = y != 2
    alone = clinical_figures(x[polyp][:, :4], BG_META.polyp_only(), y[polyp])
    for k in ("ece", "nll", "coverage", "npv", "ppv", "n_negative_calls", "n_positive_calls"):
        assert full[k] == alone[k], k
    with pytest.raises(ValueError, match="no labelled case shows a polyp"):
        clinical_figures(x[~polyp], BG_META, y[~polyp])


def test_presence_cap_counts_the_frames_that_would_be_class_calls():
    """Polyp-free frames that would show "low confidence" when called present are no false alarm:
    with ``confident`` the cap counts only those whose HP-vs-adenoma call is confident."""
    import numpy as np

    from edgeskd.clinical.presence import select_presence_threshold

    rng = np.random.default_rng(0)
    p_neg = rng.uniform(0.0, 1.0, 400)            # polyp-free frames: P(background) spread over [0, 1]
    p_pos = rng.uniform(0.0, 0.2, 400)
    p = np.concatenate([p_pos, p_neg])
    truth = np.r_[np.ones(400, bool), np.zeros(400, bool)]
    plain = select_presence_threshold(p, truth)
    assert plain.threshold < 0.05                   # ≤ 1 % of 400 uniform negatives below t: t ≈ 0.01
    confident = np.r_[np.ones(400, bool), p_neg > 0.3]   # the low-P(background) empty frames are unsure
    chosen = select_presence_threshold(p, truth, confident=confident)
    # the confident empty frames all lie above 0.3: t rises to just above the 4 allowed (1 % of 400)
    assert 0.3 < chosen.threshold <= 0.5 and chosen.threshold > 10 * plain.threshold
    calls = (p < chosen.threshold) & confident & ~truth
    assert calls.sum() <= 0.01 * 400


def test_report_says_when_the_presence_threshold_was_not_chosen_on_validation():
    from edgeskd.distill.clinical_report import _presence_lines

    why = "validation has 15 frames without a polyp, fewer than the 20 a presence threshold needs; 0.5 is used"
    lines = _presence_lines({"student-skd": {"presence": {"threshold": 0.5, "sensitivity": 90.0, "false_presence": 100.0,
                                                          "auc": 60.0, "note": why}}})
    assert any("0.500 (default)" in ln for ln in lines) and any(ln == f"student-skd: {why}." for ln in lines)
    chosen = _presence_lines({"student-skd": {"presence": {"threshold": 0.31, "sensitivity": 90.0,
                                                           "false_presence": 1.0, "auc": 95.0}}})
    assert not any("default" in ln for ln in chosen)
