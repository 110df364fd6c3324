"""Training pieces without a training run: the paired bootstrap, the --tune choice, the
augmentation policies and their options."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edgeskd.distill.config import AUGMENT_POLICIES, resolve_config
from edgeskd.distill.stats import f1_from_counts, paired_bootstrap_f1
from edgeskd.distill.tune import cell_name, choose
from edgeskd.errors import UsageError


# -- paired bootstrap --------------------------------------------------------------------------------
def test_bootstrap_enumerating_every_resample_of_a_tiny_case():
    """Two positive test images; model a finds the first, b finds neither. Every resample of 2
    indices: (0,0) → F1(a) 100, (0,1) and (1,0) → 66.67, (1,1) → 0; F1(b) is always 0. Sorted
    differences [0, 66.67, 66.67, 100]; numpy's linear percentiles: 2.5 % at position 0.075 →
    0.075·66.67 = 5.0, 97.5 % at 2.925 → 66.67 + 0.925·33.33 = 97.5."""
    every = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    r = paired_bootstrap_f1([np.array([1, 1])], [np.array([1, 0])], [np.array([0, 0])], indices=every)
    assert r["mean"] == pytest.approx(200 / 3, abs=1e-3) and r["per_seed"] == [pytest.approx(66.6667, abs=1e-3)]
    assert r["ci95"] == [pytest.approx(5.0), pytest.approx(97.5)]
    assert r["excludes_zero"] and r["n_resamples"] == 4 and r["n_images"] == 2 and r["n_seeds"] == 1


def test_bootstrap_pools_seeds_with_the_same_indices():
    """Seed 2 mirrors seed 1 (a and b swap), so every resample's seed-averaged difference is 0: the
    statistic averages over seeds on the same resampled images."""
    y = np.array([1, 0, 1, 1, 0, 1])
    a, b = np.array([1, 0, 0, 1, 0, 1]), np.array([1, 1, 1, 0, 0, 0])
    r = paired_bootstrap_f1([y, y], [a, b], [b, a], n_resamples=500, seed=3)
    assert r["mean"] == 0.0 and r["ci95"] == [0.0, 0.0] and not r["excludes_zero"]
    assert r["per_seed"][0] == pytest.approx(-r["per_seed"][1])
    # a fixed seed gives the same interval; another seed another one
    one = paired_bootstrap_f1([y], [a], [b], n_resamples=500, seed=3)
    assert one == paired_bootstrap_f1([y], [a], [b], n_resamples=500, seed=3)
    assert one["ci95"] != paired_bootstrap_f1([y], [a], [b], n_resamples=500, seed=4)["ci95"]


def test_bootstrap_on_a_clear_difference_excludes_zero_and_checks_inputs():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.where(rng.random(400) < 0.9, y, 1 - y)      # 90 % right
    poor = np.where(rng.random(400) < 0.6, y, 1 - y)      # 60 % right
    r = paired_bootstrap_f1([y], [good], [poor])
    assert r["ci95"][0] > 0 and r["excludes_zero"] and r["ci95"][0] < r["mean"] < r["ci95"][1]
    assert f1_from_counts(np.array([0, 3]), np.array([0, 1]), np.array([0, 1])).tolist() == [0.0, 75.0]
    with pytest.raises(ValueError, match="same n"):
        paired_bootstrap_f1([y], [good[:-1]], [poor])
    with pytest.raises(ValueError, match="one array per seed"):
        paired_bootstrap_f1([], [], [])


# -- --tune --------------------------------------------------------------------------------------------
def _run(val_f1, test_f1, val_auc=50.0):
    return SimpleNamespace(val={"f1": val_f1, "auc": val_auc}, test={"f1": test_f1, "auc": 50.0})


def test_tuner_chooses_on_validation_only():
    """Test F1 ranks the cells the other way round; the choice follows validation F1 (mean over
    seeds), then validation AUC on a tie, then grid order."""
    grid = {(1.0, 0.5): [_run(70, 95), _run(72, 96)],      # best on test, worst on validation
            (2.0, 0.5): [_run(80, 60), _run(78, 61)],      # best on validation
            (4.0, 0.9): [_run(75, 90), _run(77, 91)]}
    chosen, rows = choose(grid)
    assert chosen == (2.0, 0.5)
    assert [r["val_f1"] for r in rows] == [71.0, 79.0, 76.0] and rows[1]["val_f1_per_seed"] == [80, 78]
    assert all("test" not in k for r in rows for k in r)   # the grid records validation only
    tie = {(1.0, 0.5): [_run(80, 99, val_auc=60)], (2.0, 0.5): [_run(80, 10, val_auc=70)],
           (4.0, 0.5): [_run(80, 99, val_auc=70)]}
    assert choose(tie)[0] == (2.0, 0.5)
    assert cell_name("skd", 2.0, 0.5) == "student-skd@T2-a0.5"


def test_tune_grid_options():
    cfg = resolve_config({"tune": True})
    assert cfg.tune_grid == [(1.0, 0.5), (1.0, 0.9), (2.0, 0.5), (2.0, 0.9), (4.0, 0.5), (4.0, 0.9)]
    cfg = resolve_config({"tune": True, "tune_temperatures": "1.5, 3", "tune_alphas": "0.7"})
    assert cfg.tune_grid == [(1.5, 0.7), (3.0, 0.7)]
    one = resolve_config({"temperature": 2.0, "alpha": 0.3})
    assert one.cells_for("kd") == one.cells_for("skd") == [(2.0, 0.3)]   # no --tune: one cell per mode
    for bad, needle in [({"tune_temperatures": "0,1"}, "every T must be a finite number > 0"),
                        ({"tune_temperatures": "-1"}, "finite number > 0"),
                        ({"tune_alphas": "0.5,1.2"}, r"1.2 is outside \[0, 1\]"),
                        ({"tune_alphas": "-0.1"}, r"outside \[0, 1\]"),
                        ({"tune_alphas": "half"}, "comma-separated numbers"),
                        ({"tune": True, "students": "none"}, "neither")]:
        with pytest.raises(UsageError, match=needle):
            resolve_config(bad)


# -- augmentation policies ----------------------------------------------------------------------------
def test_augment_policies_and_older_settings(tmp_path):
    assert list(AUGMENT_POLICIES) == ["endoscopy", "flip", "none"]
    assert resolve_config({}).augment == "endoscopy"
    assert resolve_config({"augment": False}).augment == "none" and resolve_config({"augment": True}).augment == "endoscopy"
    f = tmp_path / "old.yaml"
    f.write_text("augment: false\n")                        # a config file from before the policies
    assert resolve_config({}, f).augment == "none"
    f.write_text("augment: flip\n")
    assert resolve_config({}, f).augment == "flip"
    f.write_text("augment: sideways\n")
    with pytest.raises(UsageError, match="--augment 'sideways': choose from endoscopy, flip, none"):
        resolve_config({}, f)


def test_augment_policies_change_what_the_model_sees():
    """none: the un-augmented preprocessing; flip: only the four flips of the image; endoscopy:
    also 90° rotations and colour jitter (images outside the flip set)."""
    pytest.importorskip("torch")
    from edgeskd.data.base import LabeledSet
    from edgeskd.data.torch_dataset import ImageDataset
    from edgeskd.distill.loop import AUGMENT_ARGS
    from edgeskd.runtime.preprocess import preprocess

    img = np.random.default_rng(0).integers(0, 256, (1, 16, 16, 3), dtype=np.uint8)
    ls = LabeledSet("t", "synthetic", ["a", "b"], ["a0", "b0"], [0, 1], np.array([0]), np.array([0]),
                    np.array(["train"]), images=img)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    flips = [preprocess(np.ascontiguousarray(v), (16, 16), mean, std)[0]
             for v in (img[0], img[0][:, ::-1], img[0][::-1], img[0][::-1, ::-1])]

    def seen(policy: str) -> list[np.ndarray]:
        ds = ImageDataset(ls, 16, mean, std, seed=5, **AUGMENT_ARGS[policy])
        out = []
        for epoch in range(24):
            ds.set_epoch(epoch)
            out.append(ds[0][0].numpy())
        return out

    assert all(np.array_equal(x, flips[0]) for x in seen("none"))
    flip = seen("flip")
    assert all(any(np.array_equal(x, f) for f in flips) for x in flip)
    assert len({x.tobytes() for x in flip}) == 4                    # every flip occurs over 24 epochs
    assert any(not any(np.allclose(x, f) for f in flips) for x in seen("endoscopy"))
