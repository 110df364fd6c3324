"""`edgeskd train` end to end on tiny generated data (32×32, a few dozen images, 1 thread)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgeskd.distill.config import PRESETS, resolve_config  # noqa: E402
from edgeskd.errors import UsageError  # noqa: E402

TINY = ["--synthetic-n", "120", "--img-size", "32", "--batch-size", "8", "--device", "cpu"]


def _lines(r) -> list[str]:
    return [ln for ln in r.output.strip().splitlines() if ln.strip()]


def _assert_one_line_error(r, *needles: str) -> None:
    """Non-zero exit, no traceback, and the error is one line (the last one printed)."""
    assert r.exit_code not in (0, None), r.output
    assert "Traceback" not in r.output
    lines = _lines(r)
    errors = [ln for ln in lines if ln.startswith("error:") or ln.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.output
    for n in needles:
        assert n in errors[0], (n, r.output)


@pytest.fixture(scope="module")
def known_run(tmp_path_factory):
    """One tiny known-subclass run through the CLI, shared by the checks below."""
    from typer.testing import CliRunner

    from edgeskd.cli.app import app

    out = tmp_path_factory.mktemp("run") / "out"
    r = CliRunner().invoke(app, ["train", *TINY, "--epochs", "1", "--teacher-epochs", "1", "--out", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out, r


def test_cli_run_writes_every_output(known_run):
    out, r = known_run
    for f in ("teacher.pt", "student-none.pt", "student-kd.pt", "student-skd.pt", "metrics.json", "report.md",
              "log.jsonl", "curves.png", "confusion.png", "dark_knowledge.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    assert not list(out.glob("*.last.pt")) and not list(out.glob(".*.tmp*"))
    m = json.loads((out / "metrics.json").read_text())
    ds = m["dataset"]
    assert ds["n_train"] + ds["n_val"] + ds["n_test"] == 120 and ds["n_train"] > 0 and ds["n_test"] > 0
    assert ds["label_bits"] > 0
    assert set(m["models"]) == {"teacher", "student-none", "student-kd", "student-skd"}
    for name, mm in m["models"].items():
        for k in ("f1", "accuracy", "precision", "recall", "params", "per_subclass_accuracy"):
            assert k in mm, (name, k)
        assert 0.0 <= mm["f1"] <= 100.0 and 0.0 <= mm["accuracy"] <= 100.0
        assert set(mm["per_subclass_accuracy"]) <= set(ds["subclass_names"])
    assert m["models"]["teacher"]["params"] > 10 * m["models"]["student-skd"]["params"]
    # one log line per epoch per model
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [rec["model"] for rec in log] == ["teacher", "student-none", "student-kd", "student-skd"]
    assert all("val_f1" in rec and "train_loss" in rec for rec in log)
    assert {"train_kd", "train_ce"} <= set(log[3])
    report = (out / "report.md").read_text()
    assert "| student-skd |" in report and "H(S) - H(C)" in report
    assert "student-skd" in r.output  # the summary table
    # one seed: the paired bootstrap still runs over test images, and the report says what it ignores
    assert set(m["comparisons"]) == {"skd-kd", "skd-none", "kd-none"}
    assert m["comparisons"]["skd-kd"]["n_seeds"] == 1 and "ignores the variance between training seeds" in report
    assert m["augment"]["policy"] == "endoscopy" and "augmentation `endoscopy`" in report
    assert m["tuning"] is None and "## T and α chosen" not in report


def test_checkpoints_load_weights_only_with_metadata(known_run):
    out, _ = known_run
    from edgeskd.models.checkpoint import model_from_checkpoint

    expect = {"teacher": ("resnet18", "subclass_logits"), "student-none": ("tiny_cnn", "class_logits"),
              "student-kd": ("tiny_cnn", "class_logits"), "student-skd": ("tiny_cnn", "subclass_logits")}
    for name, (arch, kind) in expect.items():
        raw = torch.load(out / f"{name}.pt", map_location="cpu", weights_only=True)
        assert raw["format"] == "edgeskd-checkpoint" and "state_dict" in raw
        assert raw["config"]["train"]["img_size"] == 32 and "test" in raw["metrics"]
        model, meta, _ = model_from_checkpoint(out / f"{name}.pt")
        assert (meta.arch, meta.output, meta.model_name) == (arch, kind, name)
        assert meta.input_size == (32, 32) and meta.class_names == ["hyperplastic", "adenoma", "no_polyp"]
        assert meta.subclass_to_class == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2] and meta.background_class == 2
        with torch.no_grad():
            assert model(torch.zeros(2, 3, 32, 32)).shape == (2, meta.num_outputs)


def test_evaluate_model_reproduces_reported_f1(known_run):
    """What bench does: rebuild the data, run the checkpoint through preprocess_for → same numbers."""
    out, _ = known_run
    from edgeskd.distill.evaluate import evaluate_model
    from edgeskd.distill.train import load_training_data_for
    from edgeskd.models.checkpoint import model_from_checkpoint

    m = json.loads((out / "metrics.json").read_text())
    for name in ("teacher", "student-skd", "student-none"):
        model, meta, ckpt = model_from_checkpoint(out / f"{name}.pt")
        ls = load_training_data_for(ckpt)
        got = evaluate_model(model, meta, ls.split("test"))
        assert got["f1"] == pytest.approx(m["models"][name]["f1"], abs=1e-6)
        assert got["accuracy"] == pytest.approx(m["models"][name]["accuracy"], abs=1e-6)


def test_invented_subclasses_run(cli, tmp_path):
    out = tmp_path / "inv"
    r = cli("train", *TINY, "--epochs", "1", "--teacher-epochs", "1", "--subclasses", "invent:3",
            "--students", "skd", "--seeds", "2", "--out", out)
    assert r.exit_code == 0, r.output
    from edgeskd.models.checkpoint import load_checkpoint

    t = load_checkpoint(out / "teacher.pt")["meta"]
    s = load_checkpoint(out / "student-skd.pt")["meta"]
    assert t.subclass_names == [f"{c}/inv{k}" for c in ("hyperplastic", "adenoma", "no_polyp") for k in range(3)]
    assert s.subclass_names == t.subclass_names and s.num_outputs == 9 and s.output == "subclass_logits"
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert "train_aux" in log[0]  # CE on LSE class logits + β·L_aux
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["models"]) == {"teacher", "student-skd"}
    # two seeds: per-seed directories, the first seed's checkpoints at the top, mean ± std
    assert m["seeds"] == [0, 1] and len(m["models"]["student-skd"]["per_seed_f1"]) == 2
    f1s = m["models"]["student-skd"]["per_seed_f1"]
    assert m["models"]["student-skd"]["f1"] == pytest.approx(np.mean(f1s), abs=1e-3)
    assert m["models"]["student-skd"]["f1_std"] == pytest.approx(np.std(f1s, ddof=1), abs=1e-3)
    for d in ("seed-0", "seed-1"):
        assert (out / d / "teacher.pt").is_file() and (out / d / "student-skd.pt").is_file()
    assert (out / "teacher.pt").read_bytes() == (out / "seed-0" / "teacher.pt").read_bytes()
    assert "±" in (out / "report.md").read_text()


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted_two_epochs(tmp_path_factory):
    """The run the resume tests interrupt, trained in one go (the reference)."""
    from typer.testing import CliRunner

    from edgeskd.cli.app import app

    out = tmp_path_factory.mktemp("ref") / "ref"
    r = CliRunner().invoke(app, ["train", *TINY, "--epochs", "2", "--teacher-epochs", "1", "--students", "none,kd",
                                 "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out


def test_two_seed_tuned_run_reports_paired_comparisons(cli, tmp_path):
    """--tune with a 2-cell grid over 2 seeds, --augment flip: per-seed F1, paired comparisons with a
    bootstrap interval, the grid and the choice (made on validation), the chosen students in place."""
    out = tmp_path / "two"
    r = cli("train", *TINY, "--epochs", "1", "--teacher-epochs", "1", "--seeds", "2", "--augment", "flip",
            "--tune", "--tune-temperatures", "1,4", "--tune-alphas", "0.5", "--out", out)
    assert r.exit_code == 0, r.output
    assert "the choice is noisy" in r.output                  # 8 validation images
    m = json.loads((out / "metrics.json").read_text())
    report = (out / "report.md").read_text()
    for name, mm in m["models"].items():
        assert len(mm["per_seed_f1"]) == 2, name
    assert set(m["comparisons"]) == {"skd-kd", "skd-none", "kd-none"}
    for key, c in m["comparisons"].items():
        a, b = m["models"][c["a"]], m["models"][c["b"]]
        assert c["mean"] == pytest.approx(np.mean(c["per_seed"]), abs=1e-3)
        assert c["per_seed"] == pytest.approx([x - y for x, y in zip(a["per_seed_f1"], b["per_seed_f1"])], abs=1e-3)
        lo, hi = c["ci95"]
        assert lo <= hi and c["excludes_zero"] == (lo > 0 or hi < 0) and c["n_seeds"] == 2, key
    for mode in ("kd", "skd"):
        t = m["tuning"]["modes"][mode]
        assert [(g["temperature"], g["alpha"]) for g in t["grid"]] == [(1.0, 0.5), (4.0, 0.5)]
        best = max(g["val_f1"] for g in t["grid"])
        ch = t["chosen"]
        assert ch["val_f1"] == best                               # chosen on validation F1
        assert (m["models"][f"student-{mode}"]["temperature"], m["models"][f"student-{mode}"]["alpha"]) == \
            (ch["temperature"], ch["alpha"])
        for seed in (0, 1):
            d = out / f"seed-{seed}"
            assert (d / f"student-{mode}.pt").read_bytes() == (d / "tune" / f"{ch['name']}.pt").read_bytes()
    assert json.loads((out / "train-config.json").read_text())["augment"] == "flip"
    for text in ("augmentation `flip`", "## Paired comparisons", "| SKD − KD |", "## Test F1 per seed",
                 "## T and α chosen on validation", "The test split is not used", "the choice is noisy"):
        assert text in report, text
    logged = {x["model"] for x in map(json.loads, (out / "log.jsonl").read_text().splitlines())}
    assert {"student-kd@T1-a0.5", "student-kd@T4-a0.5", "student-skd@T1-a0.5", "student-skd@T4-a0.5"} <= logged


def test_tune_never_looks_at_test(cli, tmp_path, monkeypatch):
    """A rigged evaluation where validation prefers T = 1 and test prefers T = 4 for every cell:
    --tune chooses T = 1 and reports that cell's (poor) test F1."""
    from edgeskd.distill import context, loop

    cell_of: dict[int, str] = {}
    real_build, real_evaluate = loop._build, context.RunContext.evaluate

    def build(ctx, spec, *a, **k):
        made = real_build(ctx, spec, *a, **k)
        cell_of[id(made.model)] = spec.name
        return made

    def evaluate(self, model, split, meta):
        metrics, logits = real_evaluate(self, model, split, meta)
        name = cell_of.get(id(model), "")
        if "@" in name:
            good = name.startswith(("student-kd@T1-", "student-skd@T1-")) == (split == "val")
            metrics = {**metrics, "f1": 90.0 if good else 10.0}
        return metrics, logits

    monkeypatch.setattr(loop, "_build", build)
    monkeypatch.setattr(context.RunContext, "evaluate", evaluate)
    out = tmp_path / "rigged"
    r = cli("train", *TINY, "--epochs", "1", "--teacher-epochs", "1", "--tune", "--tune-temperatures", "1,4",
            "--tune-alphas", "0.5", "--out", out)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    for mode in ("kd", "skd"):
        assert m["tuning"]["modes"][mode]["chosen"]["temperature"] == 1.0
        assert [g["val_f1"] for g in m["tuning"]["modes"][mode]["grid"]] == [90.0, 10.0]
        assert m["models"][f"student-{mode}"]["f1"] == 10.0 and m["models"][f"student-{mode}"]["temperature"] == 1.0


def test_resume_continues_after_interrupt(tmp_path, monkeypatch, cli, uninterrupted_two_epochs):
    """Ctrl-C in the middle of the students' second epoch keeps the teacher and each student's last
    finished epoch; --resume continues both students after epoch 1, does not retrain the teacher,
    and ends with the same weights as the uninterrupted run."""
    import edgeskd.distill.train as T

    out = tmp_path / "res"
    real_make_task = T.make_task
    calls = {"n": 0}

    def interrupting(kind, cfg, tmeta):
        task = real_make_task(kind, cfg, tmeta)
        if kind != "kd":
            return task
        loss = task.loss

        def wrapped(*a):
            calls["n"] += 1
            if calls["n"] > 7:  # batch 2 of the second epoch (54 training images: 6 batches of 8, last dropped)
                raise KeyboardInterrupt
            return loss(*a)

        task.loss = wrapped
        return task

    monkeypatch.setattr(T, "make_task", interrupting)
    args = ["train", *TINY, "--epochs", "2", "--teacher-epochs", "1", "--students", "none,kd", "--out", out]
    r = cli(*args)
    assert r.exit_code == 130 and "interrupted" in r.output
    assert (out / "teacher.pt").is_file()
    for name in ("student-none", "student-kd"):    # the students train together: both mid-epoch 2
        assert (out / f"{name}.last.pt").is_file() and not (out / f"{name}.pt").exists()
        assert torch.load(out / f"{name}.last.pt", weights_only=True)["epoch"] == 0  # epoch 1 finished
    assert not list(out.glob(".*.tmp*"))
    teacher_bytes = (out / "teacher.pt").read_bytes()

    monkeypatch.setattr(T, "make_task", real_make_task)
    r = cli("train", "--out", out, "--resume", "--img-size", "48")   # a setting that changes the result
    assert r.exit_code == 2 and "img-size=32" in r.output
    r = cli("train", "--out", out, "--resume")   # the run's own settings come from OUT/train-config.json
    assert r.exit_code == 0, r.output
    assert "resuming after epoch 1" in r.output
    assert (out / "student-kd.pt").is_file() and not (out / "student-kd.last.pt").exists()
    assert (out / "teacher.pt").read_bytes() == teacher_bytes  # not retrained
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    assert [(x["model"], x["epoch"]) for x in log] == [
        ("teacher", 1), ("student-none", 1), ("student-kd", 1), ("student-none", 2), ("student-kd", 2)]
    for name in ("student-none", "student-kd"):
        ref = _state(uninterrupted_two_epochs / f"{name}.pt")
        assert all(torch.equal(v, ref[k]) for k, v in _state(out / f"{name}.pt").items()), name
    # resuming with different settings is refused
    r = cli(*[a if a != "2" else "3" for a in args], "--resume")
    _assert_one_line_error(r, "--resume")


def test_resume_when_one_student_saved_an_epoch_more(tmp_path, monkeypatch, cli, uninterrupted_two_epochs):
    """Ctrl-C between two students' end-of-epoch saves: the one saved further on waits while the
    other catches up, on the same batches as without the interruption."""
    from edgeskd.distill.checkpointing import ModelFiles

    out = tmp_path / "res"
    real_save_last = ModelFiles.save_last

    def interrupting(self, model, meta, epoch, val, train_state):
        if self.last.name == "student-kd.last.pt" and epoch == 1:
            raise KeyboardInterrupt
        return real_save_last(self, model, meta, epoch, val, train_state)

    monkeypatch.setattr(ModelFiles, "save_last", interrupting)
    r = cli("train", *TINY, "--epochs", "2", "--teacher-epochs", "1", "--students", "none,kd", "--out", out)
    assert r.exit_code == 130
    assert torch.load(out / "student-none.last.pt", weights_only=True)["epoch"] == 1
    assert torch.load(out / "student-kd.last.pt", weights_only=True)["epoch"] == 0
    monkeypatch.setattr(ModelFiles, "save_last", real_save_last)
    r = cli("train", "--out", out, "--resume")
    assert r.exit_code == 0, r.output
    log = [(x["model"], x["epoch"]) for x in map(json.loads, (out / "log.jsonl").read_text().splitlines())]
    assert log[-1] == ("student-kd", 2) and log.count(("student-none", 2)) == 1   # none did not train again
    for name in ("student-none", "student-kd"):
        ref = _state(uninterrupted_two_epochs / f"{name}.pt")
        assert all(torch.equal(v, ref[k]) for k, v in _state(out / f"{name}.pt").items()), name


def test_students_share_each_batch_and_one_teacher_pass(tmp_path, monkeypatch, cli):
    """The plain, KD and SKD students of a seed step on the same batch objects, and the teacher's
    forward pass runs once per batch for both distilled students."""
    from edgeskd.distill import tasks

    student_steps: list[tuple[str, object]] = []
    teacher_passes: list[object] = []   # the batch inputs themselves (kept alive: ids stay unique)
    real_call, real_prepare = tasks.Task.__call__, tasks.TeacherOutputs.__call__

    def call(self, batch):
        if teacher_passes:   # the students' phase (the teacher trains first, without a teacher pass)
            student_steps.append((type(self).__name__, batch.x))
        return real_call(self, batch)

    def prepare(self, batch):
        teacher_passes.append(batch.x)
        return real_prepare(self, batch)

    monkeypatch.setattr(tasks.Task, "__call__", call)
    monkeypatch.setattr(tasks.TeacherOutputs, "__call__", prepare)
    r = cli("train", *TINY, "--epochs", "2", "--teacher-epochs", "1", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    per_batch: dict[int, list[str]] = {}
    for kind, x in student_steps:
        per_batch.setdefault(id(x), []).append(kind)
    n_train = json.loads((tmp_path / "o" / "metrics.json").read_text())["dataset"]["n_train"]
    assert len(teacher_passes) == len(per_batch) == 2 * (n_train // 8)   # 2 epochs of full batches, one pass each
    assert {id(x) for x in teacher_passes} == set(per_batch)
    assert all(kinds == ["CrossEntropyTask", "KDTask", "SKDTask"] for kinds in per_batch.values())


@pytest.mark.parametrize("targets", ["clean", "augmented"])
def test_teacher_targets_clean_is_one_pass_augmented_sees_each_view(tmp_path, monkeypatch, cli, targets):
    """clean (default): one teacher pass over the un-augmented training images, before the
    students, and no teacher forward while they train; augmented: the teacher sees the batches'
    augmented views, each (image, flip/rotation) at most once."""
    from edgeskd.distill import tasks

    made: list[tasks.TeacherOutputs] = []
    real_init = tasks.TeacherOutputs.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        made.append(self)

    monkeypatch.setattr(tasks.TeacherOutputs, "__init__", init)
    out = tmp_path / "o"
    extra = [] if targets == "clean" else ["--teacher-targets", "augmented"]
    r = cli("train", *TINY, "--epochs", "3", "--teacher-epochs", "1", *extra, "--out", out)
    assert r.exit_code == 0, r.output
    (prep,) = made
    log = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    distilled = [rec for rec in log if rec["model"] in ("student-kd", "student-skd")]
    n_train = json.loads((out / "metrics.json").read_text())["dataset"]["n_train"]
    seen = 3 * (n_train // 8) * 8          # 3 epochs of full batches of 8 (drop_last)
    if targets == "clean":
        assert prep.forwarded == 0 and prep.table is not None and prep.table.shape[0] == n_train
        assert len(distilled) == 6 and all(rec["teacher_pass_s"] == distilled[0]["teacher_pass_s"] > 0
                                           for rec in distilled)   # the one-off pass, on every epoch's record
        # its 1/3 share is in each epoch's teacher time (both recorded to the millisecond)
        assert all(rec["group_teacher_s"] >= rec["teacher_pass_s"] / 3 - 0.001 for rec in distilled)
    else:
        assert prep.table is None and not any("teacher_pass_s" in rec for rec in log)
        assert 0 < prep.forwarded <= min(seen, 8 * n_train)
    cfg = json.loads((out / "train-config.json").read_text())
    assert cfg["teacher_targets"] == targets


def test_teacher_checkpoint_reuse_and_mismatch(known_run, cli, tmp_path):
    out, _ = known_run
    r = cli("train", *TINY, "--epochs", "1", "--students", "skd", "--teacher-checkpoint", out / "teacher.pt",
            "--out", tmp_path / "reuse")
    assert r.exit_code == 0, r.output
    assert not [ln for ln in (tmp_path / "reuse" / "log.jsonl").read_text().splitlines() if '"teacher"' in ln]
    # a teacher with other subclasses than the data
    r = cli("train", *TINY, "--subclasses", "invent:2", "--teacher-checkpoint", out / "teacher.pt",
            "--out", tmp_path / "bad")
    _assert_one_line_error(r, "subclasses")
    # a student checkpoint is not a teacher
    r = cli("train", *TINY, "--teacher-checkpoint", out / "student-none.pt", "--out", tmp_path / "bad2")
    _assert_one_line_error(r, "teacher")
    # a teacher trained at another size
    r = cli("train", *[a if a != "32" else "48" for a in TINY], "--teacher-checkpoint", out / "teacher.pt",
            "--out", tmp_path / "bad3")
    _assert_one_line_error(r, "--img-size 32")


@pytest.mark.parametrize("extra, needle", [
    (["--teacher", "vgg99"], "unknown teacher model 'vgg99'"),
    (["--student", "nope"], "unknown student model 'nope'"),
    (["--students", "none,distil"], "unknown --students mode 'distil'"),
    (["--alpha", "1.5"], "--alpha 1.5 is outside [0, 1]"),
    (["--alpha", "-0.1"], "outside [0, 1]"),
    (["--temperature", "0"], "--temperature 0.0 must be a finite number > 0"),
    (["--temperature", "-2"], "must be a finite number > 0"),
    (["--temperature", "inf"], "--temperature inf must be a finite number > 0"),
    (["--seed", "-1"], "--seed"),
    (["--subclasses", "invent:1"], "K must be >= 2"),
    (["--subclasses", "sometimes"], "use 'known' or 'invent:K'"),
    (["--tune", "--tune-temperatures", "0,2"], "--tune-temperatures: 0.0 is not a temperature"),
    (["--tune", "--tune-temperatures", "two"], "must be comma-separated numbers"),
    (["--tune", "--tune-alphas", "0.5,1.5"], "--tune-alphas: 1.5 is outside [0, 1]"),
    (["--tune", "--students", "none"], "--tune picks T and α of the kd and skd students"),
    (["--augment", "flip", "--no-augment"], "contradict each other"),
])
def test_bad_options_are_one_line_errors(cli, tmp_path, extra, needle):
    out = tmp_path / "never"
    r = cli("train", *TINY, *extra, "--out", out)
    _assert_one_line_error(r, needle)
    assert not out.exists()  # nothing written


def test_choice_options_rejected_by_the_parser(cli, tmp_path):
    for extra in (["--preset", "turbo"], ["--device", "tpu"], ["--format", "zip"], ["--augment", "sideways"]):
        r = cli("train", *TINY, *extra, "--out", tmp_path / "o")
        assert r.exit_code == 2 and "Traceback" not in r.output and extra[1] in r.output
        assert not (tmp_path / "o").exists()
    assert all(choice in r.output for choice in ("endoscopy", "flip", "none"))   # the choices are listed


@pytest.mark.parametrize("argv, needle", [
    (["train", "--augment", "sideways"], "'sideways' is not one of 'endoscopy', 'flip', 'none'"),
    (["train", "--teacher-targets", "teacher"], "'teacher' is not one of 'clean', 'augmented'"),
    (["train", "--no-such-flag"], "No such option: --no-such-flag"),
])
def test_console_script_usage_errors_are_one_line(argv, needle, monkeypatch, capsys, tmp_path):
    """Through the console script (edgeskd.cli.app.main): a value outside an option's choices or an
    unknown option is one line on stderr, exit 2, nothing written."""
    import sys

    from edgeskd.cli.app import main

    monkeypatch.setattr(sys, "argv", ["edgeskd", *argv, "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "o").exists()


def test_console_script_passes_other_errors_through(monkeypatch, capsys):
    """An error that is not a usage error leaves main() as itself (the except clauses that do not
    match must still be valid: a missing exception class there once masked it), and an abort is one
    line with exit 130."""
    import sys

    import typer

    from edgeskd.cli import app as app_module

    def boom(**kw):
        raise ZeroDivisionError("inner")

    monkeypatch.setattr(sys, "argv", ["edgeskd", "info"])
    monkeypatch.setattr(app_module, "run", boom)
    with pytest.raises(ZeroDivisionError, match="inner"):
        app_module.main()

    def abort(**kw):
        raise typer.Abort()

    monkeypatch.setattr(app_module, "run", abort)
    with pytest.raises(SystemExit) as e:
        app_module.main()
    assert e.value.code == 130 and capsys.readouterr().err.strip() == "error: interrupted"


def test_cuda_without_cuda_is_one_line_error(cli, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = cli("train", *[a if a != "cpu" else "cuda" for a in TINY], "--out", tmp_path / "o")
    _assert_one_line_error(r, "--device cuda", "CUDA")


def test_corrupt_or_foreign_teacher_checkpoint(cli, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage, not a zip")
    r = cli("train", *TINY, "--teacher-checkpoint", junk, "--out", tmp_path / "o1")
    _assert_one_line_error(r, "junk.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    r = cli("train", *TINY, "--teacher-checkpoint", foreign, "--out", tmp_path / "o2")
    _assert_one_line_error(r, "not an edgeskd checkpoint")
    r = cli("train", *TINY, "--teacher-checkpoint", tmp_path / "missing.pt", "--out", tmp_path / "o3")
    _assert_one_line_error(r, "does not exist")


@pytest.fixture
def warnings_to_stderr(monkeypatch):
    """Show every Python warning on (the current) sys.stderr, as a plain `edgeskd` process would,
    instead of pytest's recorder: a library warning then shows up in the command's output."""
    import sys
    import warnings

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", show)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        yield


def test_unreadable_checkpoint_is_exactly_one_line(cli, tmp_path, warnings_to_stderr):
    """A plain pickle makes torch warn about its pickle protocol before weights_only loading
    fails; the user sees only the one-line error (export, and train --teacher-checkpoint)."""
    import pickle

    not_ckpt = tmp_path / "some-non-checkpoint.pt"
    not_ckpt.write_bytes(pickle.dumps({"a": np.zeros(3)}, protocol=4))
    for args in (["export", not_ckpt, "--out", tmp_path / "m.onnx"],
                 ["train", *TINY, "--teacher-checkpoint", not_ckpt, "--out", tmp_path / "o"]):
        r = cli(*args)
        assert r.exit_code == 4, r.output
        assert _lines(r) == [f"error: {not_ckpt} is not a readable checkpoint (UnpicklingError); give a "
                             "student-*.pt or teacher.pt written by `edgeskd train`"], r.output
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "o").exists()


def test_bad_data_path_creates_nothing(cli, tmp_path):
    r = cli("train", "--data", tmp_path / "nope", *TINY, "--out", tmp_path / "o")
    _assert_one_line_error(r, "does not exist")
    assert not (tmp_path / "o").exists()


def test_out_not_writable(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli("train", *TINY, "--out", blocker / "sub")
    _assert_one_line_error(r, "output directory")
    r = cli("train", *TINY, "--resume", "--out", tmp_path / "empty")
    _assert_one_line_error(r, "--resume")


def test_an_earlier_run_is_never_mixed_in(cli, tmp_path):
    """OUT holding a run: refused without --resume/--overwrite; --overwrite clears that run's files
    (not the user's other files, not a teacher reused from the same folder) before training."""
    out = tmp_path / "run"
    one = ["--epochs", "1", "--teacher-epochs", "1", "--out", out]
    assert cli("train", *TINY, *one).exit_code == 0
    r = cli("train", *TINY, *one)
    _assert_one_line_error(r, "already holds a training run", "--overwrite")
    _assert_one_line_error(cli("train", *TINY, *one, "--resume", "--overwrite"), "give one of them")
    (out / "notes.txt").write_text("mine")
    (out / "student-old.pt").write_bytes(b"an earlier run's student")
    r = cli("train", *TINY, *one, "--overwrite", "--students", "skd", "--teacher-checkpoint", out / "teacher.pt")
    assert r.exit_code == 0, r.output
    assert (out / "notes.txt").read_text() == "mine" and not (out / "student-old.pt").exists()
    assert sorted(p.name for p in out.glob("*.pt")) == ["student-skd.pt", "teacher.pt"]
    assert list(json.loads((out / "metrics.json").read_text())["models"]) == ["teacher", "student-skd"]


def test_config_files_yaml_toml_and_flags_win(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("preset: fast\nepochs: 3\nimg-size: 48\nstudents: [kd, skd]\nalpha: 0.25\n")
    cfg = resolve_config({"epochs": 5}, y)
    assert (cfg.epochs, cfg.img_size, cfg.students, cfg.alpha, cfg.preset) == (5, 48, ["kd", "skd"], 0.25, "fast")
    assert cfg.teacher_epochs == PRESETS["fast"]["teacher_epochs"]  # from the fast preset
    t = tmp_path / "c.toml"
    t.write_text('[train]\nteacher = "resnet50"\ntemperature = 2\nstudents = "none"\n')
    cfg = resolve_config({}, t)
    assert (cfg.teacher, cfg.temperature, cfg.students, cfg.preset) == ("resnet50", 2.0, ["none"], "default")
    bad = tmp_path / "bad.yaml"
    for text, needle in [("epochs: ten\n", "integer"), ("learning_rate: 1\n", "unknown key"),
                         ("alpha: 2\n", r"outside \[0, 1\]"), ("- a\n- b\n", "mapping"),
                         ("!!python/object/apply:os.system ['true']\n", "not valid YAML"),
                         ("amp: 'False'\n", "true or false")]:
        bad.write_text(text)
        with pytest.raises(UsageError, match=needle):
            resolve_config({}, bad)
    with pytest.raises(UsageError, match="does not exist"):
        resolve_config({}, tmp_path / "nope.yaml")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(UsageError, match="yaml"):
        resolve_config({}, tmp_path / "c.json")


def test_paths_are_recorded_absolute(tmp_path, monkeypatch):
    """A run records where its data is; export/bench read it back from any directory."""
    monkeypatch.chdir(tmp_path)
    cfg = resolve_config({"data": "sets/s", "teacher_checkpoint": "r/teacher.pt"})
    assert cfg.data == str(tmp_path / "sets" / "s")
    assert cfg.teacher_checkpoint == str(tmp_path / "r" / "teacher.pt")
    assert resolve_config({}).data is None   # the synthetic default stays the default


def test_config_file_through_cli(cli, tmp_path):
    cfg = tmp_path / "t.yaml"
    cfg.write_text("alpha: 7\n")
    r = cli("train", *TINY, "--config", cfg, "--out", tmp_path / "o")
    _assert_one_line_error(r, "outside [0, 1]")


def test_evaluate_logits_by_hand():
    from edgeskd.distill.evaluate import evaluate_logits
    from edgeskd.meta import ModelMeta

    meta = ModelMeta(class_names=["hp", "ssa"], subclass_names=["a", "b", "c"], subclass_to_class=[0, 1, 1],
                     input_size=(32, 32), output="subclass_logits")
    # class logits via logsumexp: sample 0 → ssa (b, c), 1 → hp, 2 → ssa, 3 → hp
    logits = np.array([[0, 1, 1], [3, 0, 0], [0, 0, 2], [1, -1, -1]], np.float32)
    labels = np.array([1, 0, 0, 1])
    subs = np.array([1, 0, 0, 2])
    m = evaluate_logits(logits, meta, labels, subs, ["a", "b", "c"])
    # TP = 1 (sample 0), FP = 1 (sample 2), FN = 1 (sample 3) → P = R = F1 = 50 %
    assert (m["f1"], m["precision"], m["recall"], m["accuracy"]) == (50.0, 50.0, 50.0, 50.0)
    assert m["per_subclass_accuracy"] == {"a": 50.0, "b": 100.0, "c": 0.0}
    assert m["confusion"] == [[1, 1], [1, 1]]
    assert m["subclass_accuracy"] == 50.0  # argmax subclass == true subclass for samples 0 and 1
    # P(ssa) ranks: positives 0 (p≈.84), 3 (p≈.21); negatives 1 (p≈.09), 2 (p≈.93) → AUC = 2/4
    assert m["auc"] == 50.0


def test_label_bits_is_conditional_entropy():
    from edgeskd.data.base import LabeledSet
    from edgeskd.distill.train import label_bits

    # class 0 split evenly over 2 subclasses, class 1 has one subclass: H(S|C) = P(C=0) · 1 bit = 0.5
    sub = np.array([0, 1, 0, 1, 2, 2, 2, 2])
    ls = LabeledSet("t", "synthetic", ["a", "b"], ["a0", "a1", "b0"], [0, 0, 1], (sub == 2).astype(int), sub,
                    np.array(["train"] * 8), images=np.zeros((8, 8, 8, 3), np.uint8))
    assert label_bits(ls) == pytest.approx(0.5)


@pytest.mark.gpu
def test_cuda_amp_run(cli, tmp_path):
    """On a GPU: the same tiny run with --device cuda (AMP fp16 + GradScaler by default)."""
    out = tmp_path / "gpu"
    r = cli("train", *[a if a != "cpu" else "cuda" for a in TINY], "--epochs", "1", "--teacher-epochs", "1",
            "--out", out)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["device"].startswith("cuda") and m["config"]["amp"] is None
    assert set(m["models"]) == {"teacher", "student-none", "student-kd", "student-skd"}


def test_temperature_defaults_per_mode_and_one_value_for_both():
    from edgeskd.distill.config import DEFAULT_TEMPERATURES, TrainConfig
    from edgeskd.distill.tasks import make_task
    from edgeskd.meta import ModelMeta

    tmeta = ModelMeta(class_names=["a", "b"], subclass_names=["a0", "a1", "b0"], subclass_to_class=[0, 0, 1],
                      input_size=(32, 32))
    cfg = TrainConfig()
    assert cfg.temperature is None and DEFAULT_TEMPERATURES == {"kd": 2.0, "skd": 2.0}
    with pytest.MonkeyPatch.context() as mp:   # the modes' defaults are looked up per mode
        mp.setitem(DEFAULT_TEMPERATURES, "kd", 4.0)
        assert make_task("kd", cfg, tmeta).temperature == 4.0 and make_task("skd", cfg, tmeta).temperature == 2.0
        assert cfg.cells_for("skd") == [(2.0, 0.5)] and cfg.cells_for("kd") == [(4.0, 0.5)]
    given = TrainConfig(temperature=3.0)
    assert make_task("kd", given, tmeta).temperature == make_task("skd", given, tmeta).temperature == 3.0
    tuned = TrainConfig(tune=True, tune_temperatures=[1.0, 2.0], tune_alphas=[0.5])
    assert tuned.cells_for("kd") == tuned.cells_for("skd") == [(1.0, 0.5), (2.0, 0.5)]
