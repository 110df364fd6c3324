"""Losses against hand-computed values (the SKD / KD / Subclass Distillation formulas written out
with math, not torch), and the task objects the training loop calls."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from edgeskd.distill.losses import (  # noqa: E402
    invented_teacher_loss,
    kd_loss,
    skd_loss,
    soft_cross_entropy,
    subclass_aux_loss,
    subclass_to_class_logits,
)


def _lse(xs):
    return math.log(sum(math.exp(x) for x in xs))


def _softmax(xs):
    z = _lse(xs)
    return [math.exp(x - z) for x in xs]


def test_lse_class_logits_unequal_blocks():
    x = torch.tensor([[1.0, 2.0, 0.5, -1.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    out = subclass_to_class_logits(x, [0, 0, 1, 1, 1])
    expected = [[_lse([1.0, 2.0]), _lse([0.5, -1.0, 3.0])], [math.log(2), math.log(3)]]
    torch.testing.assert_close(out, torch.tensor(expected))
    # softmax over class logits == sum of subclass probabilities within each block
    p_sub = _softmax([1.0, 2.0, 0.5, -1.0, 3.0])
    torch.testing.assert_close(out[0].softmax(0), torch.tensor([sum(p_sub[:2]), sum(p_sub[2:])]))
    # three classes, block sizes 1 / 3 / 2
    y = subclass_to_class_logits(torch.tensor([[5.0, 1.0, 2.0, 3.0, -2.0, 0.0]]), [0, 1, 1, 1, 2, 2])
    torch.testing.assert_close(y, torch.tensor([[5.0, _lse([1, 2, 3]), _lse([-2, 0])]]))


def test_lse_is_stable_for_large_logits():
    out = subclass_to_class_logits(torch.tensor([[1000.0, 1000.0, -1000.0]]), [0, 0, 1])
    torch.testing.assert_close(out, torch.tensor([[1000.0 + math.log(2), -1000.0]]))


def test_lse_rejects_bad_index():
    with pytest.raises(ValueError):
        subclass_to_class_logits(torch.zeros(2, 3), [0, 1, 0])
    with pytest.raises(ValueError):
        subclass_to_class_logits(torch.zeros(2, 3), [0, 1])


def test_skd_loss_hand_computed():
    s, t, T, a = [0.0, 1.0, 2.0], [2.0, 0.0, 0.0], 2.0, 0.3
    idx, y = [0, 0, 1], 1
    p_t = _softmax([v / T for v in t])
    log_p_s = [v / T - _lse([w / T for w in s]) for v in s]
    kd = -sum(p * lp for p, lp in zip(p_t, log_p_s)) * T * T
    cls = [_lse(s[:2]), _lse(s[2:])]
    ce = -(cls[y] - _lse(cls))
    out = skd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), idx, alpha=a, temperature=T)
    assert out["kd"].item() == pytest.approx(kd, rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["loss"].item() == pytest.approx(a * kd + (1 - a) * ce, rel=1e-5)


def test_skd_batch_mean_and_teacher_gets_no_gradient():
    torch.manual_seed(0)
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0, 1, 1, 0])
    idx = [0, 0, 1, 1, 1]
    full = skd_loss(s, t, y, idx)["loss"]
    per = [skd_loss(s[i:i + 1], t[i:i + 1], y[i:i + 1], idx)["loss"] for i in range(4)]
    assert full.item() == pytest.approx(sum(p.item() for p in per) / 4, rel=1e-5)
    full.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None  # the soft target is detached


def test_kd_loss_hand_computed():
    s, t, T, a, y = [0.5, -0.5], [3.0, 1.0], 4.0, 0.5, 0
    p_t = _softmax([v / T for v in t])
    kd = -sum(p * (v / T - _lse([w / T for w in s])) for p, v in zip(p_t, s)) * T * T
    ce = -(s[y] - _lse(s))
    out = kd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), alpha=a, temperature=T)
    assert out["loss"].item() == pytest.approx(a * kd + (1 - a) * ce, rel=1e-5)
    # alpha = 0 is plain CE; alpha = 1 is pure distillation
    assert kd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]), alpha=0.0)["loss"].item() == \
        pytest.approx(ce, rel=1e-5)


def test_soft_ce_and_alpha_validation():
    with pytest.raises(ValueError):
        soft_cross_entropy(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)
    with pytest.raises(ValueError):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([0]), alpha=1.5)
    # identical logits: CE equals the teacher's entropy, here log(2) for uniform
    assert soft_cross_entropy(torch.zeros(1, 2), torch.zeros(1, 2), 1.0).item() == pytest.approx(math.log(2))


def test_aux_loss_hand_computed():
    # [1, -1] and [-1, 1] normalise to themselves; scaled by 1/sqrt(T*S) = 1/sqrt(2) → G = [[1,-1],[-1,1]]
    x = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    expected = _lse([1.0, -1.0]) - 1.0 - math.log(2)
    assert subclass_aux_loss(x, 1.0).item() == pytest.approx(expected, abs=1e-4)
    # T = 2: G = [[.5, -.5], [-.5, .5]]
    assert subclass_aux_loss(x, 2.0).item() == pytest.approx(_lse([0.5, -0.5]) - 0.5 - math.log(2), abs=1e-4)
    # identical vectors: exactly 0; invariant to shift and scale of each row
    same = torch.tensor([[1.0, 2.0, 4.0]] * 3)
    assert subclass_aux_loss(same).item() == pytest.approx(0.0, abs=1e-5)
    assert subclass_aux_loss(same * 3 + 7).item() == pytest.approx(0.0, abs=1e-5)


def test_aux_loss_rewards_spread():
    torch.manual_seed(0)
    collapsed = torch.randn(1, 6).repeat(8, 1) + 1e-3 * torch.randn(8, 6)
    spread = torch.randn(8, 6)
    assert subclass_aux_loss(spread).item() < subclass_aux_loss(collapsed).item()


def test_invented_teacher_loss_parts():
    x = torch.tensor([[1.0, -1.0, 0.0, 2.0], [-1.0, 1.0, 3.0, 0.0]])
    y = torch.tensor([1, 0])
    idx = [0, 0, 1, 1]
    out = invented_teacher_loss(x, y, idx, beta=0.5)
    cls = subclass_to_class_logits(x, idx)
    ce = torch.nn.functional.cross_entropy(cls, y)
    torch.testing.assert_close(out["ce"], ce)
    torch.testing.assert_close(out["loss"], ce + 0.5 * subclass_aux_loss(x))


def test_tasks_return_the_loss_and_its_parts():
    """``parts = task(batch)``: each task calls its bound forward and returns the pure loss's dict."""
    from edgeskd.distill.config import TrainConfig
    from edgeskd.distill.tasks import (Batch, CrossEntropyTask, InventedSubclassTask, KDTask, SKDTask,
                                       TeacherOutputs, make_task)
    from edgeskd.meta import ModelMeta

    torch.manual_seed(0)
    idx = [0, 0, 1, 1, 1]
    tmeta = ModelMeta(class_names=["a", "b"], subclass_names=list("vwxyz"), subclass_to_class=idx,
                      input_size=(8, 8))
    cfg = TrainConfig(alpha=0.25, temperature=2.0)
    teacher = torch.nn.Linear(4, 5)
    x, y, s = torch.randn(6, 4), torch.tensor([0, 1, 1, 0, 1, 0]), torch.tensor([0, 2, 4, 1, 3, 1])
    batch = TeacherOutputs(teacher)(Batch(x, y, s))
    assert batch.teacher_logits.shape == (6, 5) and not batch.teacher_logits.requires_grad
    torch.testing.assert_close(batch.teacher_logits, teacher(x).detach())
    assert isinstance(make_task("teacher", cfg, tmeta), CrossEntropyTask)
    assert isinstance(make_task("teacher", TrainConfig(subclasses="invent:2"), tmeta), InventedSubclassTask)
    for kind, n_out, expect in (
        ("skd", 5, lambda out: skd_loss(out, batch.teacher_logits, y, idx, alpha=0.25, temperature=2.0)),
        ("kd", 2, lambda out: kd_loss(out, subclass_to_class_logits(batch.teacher_logits, idx), y, alpha=0.25,
                                      temperature=2.0)),
        ("none", 2, lambda out: {"loss": torch.nn.functional.cross_entropy(out, y)}),
    ):
        student = torch.nn.Linear(4, n_out)
        task = make_task(kind, cfg, tmeta).bind(student)
        assert isinstance(task, {"skd": SKDTask, "kd": KDTask, "none": CrossEntropyTask}[kind])
        parts = task(batch)
        want = expect(student(x))
        assert set(want) <= set(parts) and "loss" in parts
        for k in want:
            torch.testing.assert_close(parts[k], want[k])
        parts["loss"].backward()   # the teacher's logits (computed in inference mode) can feed a backward pass
        assert student.weight.grad is not None and teacher.weight.grad is None
    with pytest.raises(RuntimeError, match="teacher_logits"):
        make_task("skd", cfg, tmeta).bind(torch.nn.Linear(4, 5))(Batch(x, y, s))


def test_teacher_outputs_cache_computes_each_item_once():
    """Without augmentation an item's input is the same every epoch: its teacher logits are computed
    the first time it is seen and reused (only the missing rows of a batch go through the teacher)."""
    from edgeskd.distill.tasks import Batch, TeacherOutputs

    torch.manual_seed(0)
    teacher = torch.nn.Linear(4, 5)
    data = torch.randn(10, 4)
    prep = TeacherOutputs(teacher, cache=True)
    for idx in ([0, 1, 2, 3], [2, 3, 4, 5], [9, 0, 5, 6], [6, 0, 1, 2]):
        i = torch.tensor(idx)
        out = prep(Batch(data[i], torch.zeros(4), torch.zeros(4), indices=i))
        torch.testing.assert_close(out.teacher_logits, teacher(data[i]).detach())
    assert prep.forwarded == 8          # items 0-6 and 9, once each
    plain = TeacherOutputs(teacher)
    i = torch.tensor([0, 1])
    plain(Batch(data[i], None, None, indices=i))
    plain(Batch(data[i], None, None, indices=i))
    assert plain.forwarded == 4         # no cache: every batch goes through the teacher


def test_teacher_outputs_cache_is_keyed_by_item_and_view():
    """With flips / rotations an item's input differs by view: each (item, view) goes through the
    teacher once; the same item in another view is computed again."""
    from edgeskd.distill.tasks import Batch, TeacherOutputs

    torch.manual_seed(0)
    teacher = torch.nn.Linear(4, 3)
    data = torch.randn(5, 8, 4)                      # item × view → input
    prep = TeacherOutputs(teacher, cache=True)
    for idx, views in (([0, 1, 2], [0, 0, 0]), ([0, 1, 2], [3, 0, 7]), ([4, 0, 1], [7, 3, 0])):
        i, v = torch.tensor(idx), torch.tensor(views)
        out = prep(Batch(data[i, v], None, None, indices=i, views=v))
        torch.testing.assert_close(out.teacher_logits, teacher(data[i, v]).detach())
    assert prep.forwarded == 3 + 2 + 1               # new: (0,3) (2,7), then (4,7)


def test_teacher_outputs_table_looks_rows_up_by_index():
    """--teacher-targets clean: the teacher's logits of the clean training images, computed once; a
    batch gets its items' rows (whatever view the students see) and nothing goes through the teacher."""
    from edgeskd.distill.tasks import Batch, TeacherOutputs

    table = torch.arange(12.0).reshape(6, 2)
    teacher = torch.nn.Linear(4, 2)
    prep = TeacherOutputs(teacher, table=table, setup_s=1.5)
    i = torch.tensor([5, 0, 3])
    out = prep(Batch(torch.randn(3, 4), None, None, indices=i, views=torch.tensor([1, 7, 0])))
    torch.testing.assert_close(out.teacher_logits, table[i])
    assert prep.forwarded == 0 and prep.setup_s == 1.5
