"""The clinical part of a training run (issue 12): calibration and operating points per model.

* every model: ECE (15 equal-width bins) and NLL of its class probabilities on the test split;
* every student: one temperature fitted on the validation split by NLL (for SKD students on the
  logsumexp class logits), ECE and NLL after it, a reliability diagram (``reliability_<model>.png``),
  and an operating point: the confidence threshold chosen on validation as the one with the highest
  coverage that reaches NPV ≥ 90 % (PPV is reported, it does not move the threshold), then on test NPV / PPV with
  95 % Wilson intervals, coverage, and whether the lower NPV bound clears 90 %; plus sensitivity,
  specificity, PPV and NPV at argmax;
* the student's checkpoint (and so every artifact exported from it) carries the temperature and
  the threshold (``ModelMeta.temperature`` / ``.threshold``). A validation split too small or too
  one-sided gives no temperature (1.0 is stored: no scaling) or no threshold, and the reason.

``calibrate_student`` runs in the training loop right after a student is trained;
``add_to_metrics`` fills ``metrics.json``'s ``"calibration"`` and ``"operating_point"`` per model
(rates in percent, as the rest of the file; the threshold is a probability, as in the artifact; NLL
in nats); ``write_plots`` and ``section`` give the diagrams and the report.md section. Everything
here describes the user's data set; it is not a clinical validation, and the report says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeskd.clinical import (NPV_TARGET, calibrated_probabilities, class_logits, ece, ece_sampling_floor,
                              fit_subclass_temperatures, fit_temperature, nll, operating_point, paired_difference,
                              temperature_interval, wilson_interval)
from edgeskd.runtime.polyp_view import polyp_view
from edgeskd.runtime.postprocess import case_temperatures

PCT_KEYS = ("coverage", "accuracy", "sensitivity", "specificity", "npv", "ppv")
CI_KEYS = ("npv_ci95", "ppv_ci95", "coverage_ci95")
STUDENTS = ("student-none", "student-kd", "student-skd")
LABELS = {"student-none": "plain", "student-kd": "KD", "student-skd": "SKD", "teacher": "teacher"}


# -- in the training loop -----------------------------------------------------------------------------
def _polyp(logits: np.ndarray, meta, labels: np.ndarray):
    """(logits, metadata, labels) of the cases that show a polyp, conditional on a polyp: the whole
    input for a model without a "no polyp" class (``edgeskd.runtime.polyp_view``)."""
    v = polyp_view(logits, meta, labels)
    return v.logits, v.meta, v.labels


def _full_subclass_temperatures(meta, polyp_temps: list[float] | None, t: float) -> list[float] | None:
    """Per-subclass temperatures fitted on the polyp-only view, one per subclass of ``meta``: the
    background subclasses (if any) get the global ``t`` (unused: presence is read at T = 1)."""
    if polyp_temps is None or meta.background_class is None:
        return polyp_temps
    it = iter(polyp_temps)
    return [t if c == meta.background_class else next(it) for c in meta.subclass_to_class]


def calibrate_student(ctx, r) -> None:
    """Fit ``r``'s temperature (and, for a subclass-logit student, per-subclass temperatures when they
    beat it out of sample) and its threshold on validation, evaluate them on test, and store them in
    ``r.meta`` and in its saved checkpoint (rank 0 writes). Every rank calls this (the validation
    logits are gathered over ranks). With a "no polyp" class: temperatures and threshold on the polyp
    images (conditional probabilities), the presence threshold on all validation images
    (``edgeskd.clinical.presence``); the checkpoint also carries the image-test figures
    (``meta.extra["image_test"]``) that the stream shows beside its video figures."""
    from edgeskd.distill import ddp

    val, test = ctx.val_split, ctx.test_split
    val_logits = ctx.predict(r.model, "val", r.meta)
    v_logits, v_meta, v_labels = _polyp(val_logits, r.meta, val.labels)
    z_val = class_logits(v_logits, v_meta)
    fit = fit_temperature(z_val, v_labels)
    t = fit.temperature if fit.ok else 1.0
    fit_record = {**fit.to_dict(), "temperature_ci95": temperature_interval(z_val, v_labels) if fit.ok else None}
    per_sub = None
    if fit.ok and r.meta.output == "subclass_logits":
        sub = fit_subclass_temperatures(v_logits, v_labels, v_meta.subclass_to_class, t)
        fit_record["subclass"] = sub.to_dict()
        per_sub = _full_subclass_temperatures(r.meta, sub.temperatures, t)
    r.meta = r.meta.replace(temperature=t, subclass_temperatures=per_sub)
    t_logits, t_meta, t_labels = _polyp(r.test_logits, r.meta, test.labels)
    op = operating_point(calibrated_probabilities(v_logits, r.meta.polyp_only()), v_labels,
                         calibrated_probabilities(t_logits, t_meta), t_labels, positive=int(t_meta.positive_class))
    r.meta = r.meta.replace(threshold=op["threshold"])
    r.extra["clinical"] = {"fit": fit_record, "operating_point": op}
    if r.meta.background_class is not None:
        _choose_presence(r, val_logits, val.labels, test.labels)
    r.meta = r.meta.replace(extra={**r.meta.extra, "image_test": image_test_figures(r.test_logits, r.meta, test)})
    if ctx.dist.is_main and r.path is not None:
        rewrite_checkpoint_meta(r.path, r.meta, {"temperature_fit": fit_record, "threshold": op["threshold"],
                                                 "threshold_reason": op["reason"],
                                                 "presence": r.extra["clinical"].get("presence")})
    ddp.barrier(ctx.dist)


def _choose_presence(r, val_logits: np.ndarray, val_labels: np.ndarray, test_labels: np.ndarray) -> None:
    """The presence threshold chosen on validation into ``r.meta``; its test figures into ``r.test``
    (percent, as the rest of it) and ``r.extra["clinical"]["presence"]``."""
    from edgeskd.clinical.presence import select_presence_threshold
    from edgeskd.metrics import as_percent
    from edgeskd.runtime.polyp_view import view_presence

    from edgeskd.runtime.postprocess import conditional_probabilities

    v = polyp_view(val_logits, r.meta, val_labels)
    # a polyp-free frame becomes a false alarm only if it is called present AND its HP-vs-adenoma
    # probabilities reach the call threshold: the cap counts those (clinical/presence.py)
    thr = r.meta.threshold
    confident = (None if thr is None else
                 conditional_probabilities(val_logits, r.meta).max(axis=1) >= thr)
    choice = select_presence_threshold(v.p_background, v.mask, confident=confident)
    r.meta = r.meta.replace(presence_threshold=choice.threshold)
    on_test = view_presence(polyp_view(r.test_logits, r.meta, test_labels), r.meta)
    r.test["presence"] = as_percent({"presence": on_test})["presence"]
    if choice.reason:   # not chosen on validation (too few polyp-free images): the report says so
        r.test["presence"]["note"] = choice.reason
    r.extra["clinical"]["presence"] = {"validation": choice.to_dict(), "test": on_test}


def image_test_figures(logits: np.ndarray, meta, test) -> dict[str, Any]:
    """The figures of this model on the test images (fractions), which the stream shows beside the
    same model's figures on video: accuracy, F1, AUC and per-subclass accuracy (on the images that
    show a polyp), the calls at the artifact's threshold (coverage, NPV, PPV with intervals) and, with
    a "no polyp" class, presence."""
    from edgeskd.clinical.operating_point import evaluate_operating_point
    from edgeskd.runtime.evaluate import evaluate_logits

    m = evaluate_logits(logits, meta, test.labels, getattr(test, "subclasses", None),
                        getattr(test, "subclass_names", None))
    p_logits, p_meta, p_labels = _polyp(logits, meta, test.labels)
    op = evaluate_operating_point(calibrated_probabilities(p_logits, p_meta), p_labels, meta.threshold,
                                  int(p_meta.positive_class))
    keep = ("n", "accuracy", "f1", "auc", "per_subclass_accuracy", "presence")
    return {"split": "test", "model": meta.model_name, "precision": meta.precision,   # of the trained (FP32) model
            **{k: m[k] for k in keep if k in m},
            "calls": {k: op[k] for k in ("threshold", "coverage", "accuracy", "npv", "npv_ci95", "n_negative_calls",
                                         "ppv", "ppv_ci95", "n_positive_calls")}}


def rewrite_checkpoint_meta(path: Path, meta, clinical: dict[str, Any]) -> None:
    """Replace a checkpoint's metadata (atomically) and record how its operating point was chosen."""
    import torch

    from edgeskd.models.weights import load_weights_only
    from edgeskd.utils.io import atomic_path

    ckpt = load_weights_only(path)
    ckpt["meta"] = meta.to_dict()
    ckpt["metrics"] = {**(ckpt.get("metrics") or {}), "clinical": clinical}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


# -- metrics.json ---------------------------------------------------------------------------------
def _pct(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return [round(100.0 * float(x), 4) for x in v]
    return round(100.0 * float(v), 4)


def op_percent(op: dict[str, Any]) -> dict[str, Any]:
    """An ``operating_point`` block with rates and intervals in percent (counts and threshold as is),
    and a Wilson interval for the coverage."""
    out = dict(op)
    if out.get("n") and out.get("n_called") is not None:
        out["coverage_ci95"] = list(wilson_interval(out["n_called"], out["n"]))
    for k in PCT_KEYS + CI_KEYS:
        if k in out:
            out[k] = _pct(out[k])
    if isinstance(out.get("argmax"), dict):
        out["argmax"] = op_percent(out["argmax"])
    if isinstance(out.get("validation"), dict):
        out["validation"] = {k: (_pct(v) if k in ("npv", "ppv", "coverage") else v)
                             for k, v in out["validation"].items()}
    return out


def _calibration_of(r, labels: np.ndarray) -> dict[str, Any]:
    """ECE (percent) and NLL of one seed's model on test, before and (students) after its deployed
    calibration (its temperature, or its per-subclass temperatures), and after the one temperature."""
    logits, meta, labels = _polyp(r.test_logits, r.meta, labels)
    z = class_logits(logits, meta)
    raw = calibrated_probabilities(logits, meta, 1.0)
    out: dict[str, Any] = {"n": int(len(labels)), "ece": _pct(ece(raw, labels)), "nll": round(nll(z, labels), 6)}
    clin = r.extra.get("clinical")
    deployed = raw
    if clin is not None:
        fit = clin["fit"]
        t = fit["temperature"] if fit["temperature"] is not None else 1.0
        deployed = calibrated_probabilities(logits, meta)
        one_t = calibrated_probabilities(logits, meta, t)
        sub = fit.get("subclass") or {}
        out.update(ece_calibrated=_pct(ece(deployed, labels)),
                   nll_calibrated=round(nll(z, labels, case_temperatures(logits, meta)), 6),
                   ece_one_temperature=_pct(ece(one_t, labels)), nll_one_temperature=round(nll(z, labels, t), 6),
                   method="subclass_temperatures" if r.meta.subclass_temperatures is not None else "temperature",
                   temperature=fit["temperature"], subclass_temperatures=r.meta.subclass_temperatures,
                   subclass_heldout_nll=sub.get("heldout_nll"), subclass_note=sub.get("reason"),
                   temperature_ci95=fit.get("temperature_ci95"), temperature_note=fit["reason"],
                   nll_val_before=fit["nll_before"], nll_val_after=fit["nll_after"])
    floor = ece_sampling_floor(deployed)
    out["ece_sampling_floor"] = {k: _pct(v) for k, v in floor.items()}
    return out


def _mean(values: list[Any]) -> float | None:
    v = [float(x) for x in values if x is not None]
    return round(float(np.mean(v)), 6) if v else None


def add_to_metrics(metrics: dict[str, Any], per_seed: dict[int, dict[str, Any]], dataset) -> None:
    """``metrics["models"][name]["calibration"]`` for every model and ``["operating_point"]`` for each
    student; means over seeds with the per-seed figures (the operating point is the first seed's,
    whose checkpoints sit in OUT)."""
    labels = np.asarray(dataset.split("test").labels, dtype=np.int64)
    seeds = sorted(per_seed)
    for name, m in metrics["models"].items():
        runs = [(s, per_seed[s][name]) for s in seeds if name in per_seed[s]]
        if not runs or runs[0][1].test_logits is None:
            continue
        each = [{"seed": s, **_calibration_of(r, labels)} for s, r in runs]
        cal: dict[str, Any] = {k: _mean([e.get(k) for e in each])
                               for k in ("ece", "ece_calibrated", "nll", "nll_calibrated", "ece_one_temperature",
                                         "nll_one_temperature", "temperature")
                               if any(k in e for e in each)}
        cal["ece_sampling_floor"] = {k: _mean([e["ece_sampling_floor"][k] for e in each]) for k in ("mean", "p95")}
        cal.update(n_bins=15, split="test", n=each[0]["n"])
        if "temperature" in cal:
            cal["fitted_on"] = "val"
            cal["temperature_ci95"] = each[0].get("temperature_ci95") if len(each) == 1 else None   # see per_seed
            cal["temperature_note"] = next((e["temperature_note"] for e in each if e.get("temperature_note")), None)
            methods = [e["method"] for e in each]
            cal["method"] = methods[0] if len(set(methods)) == 1 else "per seed: " + ", ".join(methods)
        else:
            cal["note"] = "not deployed: no temperature fitted"
        cal["per_seed"] = each
        m["calibration"] = cal
        clin = runs[0][1].extra.get("clinical")
        if clin is not None:
            op = op_percent(clin["operating_point"])
            op["seed"] = runs[0][0]
            op["per_seed"] = [_op_brief(s, r) for s, r in runs]
            m["operating_point"] = op
    metrics["coverage_differences"] = coverage_differences(per_seed[seeds[0]], labels)
    metrics["clinical_note"] = ("calibration and operating points describe this data set's test split, with "
                                "temperature and threshold chosen on its validation split; not a clinical validation")


def coverage_differences(models: dict[str, Any], labels: np.ndarray) -> dict[str, Any]:
    """Coverage (share of test images with a call at each student's own threshold) of each pair of
    students, as a difference in points with a 95 % paired bootstrap interval over the test images
    (with a "no polyp" class: those that show a polyp)."""
    called = {}
    for name in STUDENTS:
        r = models.get(name)
        if r is None or r.test_logits is None or r.meta.threshold is None:
            continue
        logits, meta, _ = _polyp(r.test_logits, r.meta, labels)
        called[name] = calibrated_probabilities(logits, meta).max(axis=1) >= r.meta.threshold
    out = {}
    names = list(called)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d = paired_difference(called[b], called[a])
            out[f"{b} - {a}"] = {"difference": _pct(d["difference"]), "ci95": _pct(d["ci95"]), "n": d["n"],
                                 "n_boot": d["n_boot"]}
    return out


def _op_brief(seed: int, r) -> dict[str, Any]:
    op = op_percent(r.extra["clinical"]["operating_point"])
    return {"seed": seed, **{k: op.get(k) for k in ("threshold", "coverage", "npv", "npv_ci95",
                                                      "npv_lower_clears_90", "reason")}}


# -- plots ----------------------------------------------------------------------------------------
def write_plots(out: Path, per_seed: dict[int, dict[str, Any]], dataset) -> list[str]:
    """``reliability_<student>.png`` (first seed): test reliability before and after the temperature."""
    from edgeskd.clinical.reliability import write_reliability_diagram

    labels = np.asarray(dataset.split("test").labels, dtype=np.int64)
    written = []
    for name, r in per_seed[min(per_seed)].items():
        clin = r.extra.get("clinical")
        if clin is None or r.test_logits is None:
            continue
        t = clin["fit"]["temperature"]
        logits, meta, y = _polyp(r.test_logits, r.meta, labels)
        before = calibrated_probabilities(logits, meta, 1.0)
        after = calibrated_probabilities(logits, meta) if t is not None else None
        how = None
        if r.meta.subclass_temperatures is not None:
            how = f"{sum(clin['fit']['subclass']['own'])} subclass temperatures"
        elif t is not None:
            how = f"temperature-scaled (T = {t:.3g})"
        fname = f"reliability_{name}.png"
        write_reliability_diagram(Path(out) / fname, before, y, calibrated=after, calibrated_label=how,
                                  title=f"{name}: test split ({len(y)} images)")
        written.append(fname)
    return written


# -- report.md ------------------------------------------------------------------------------------
def _f(v: Any, digits: int = 1, unit: str = "") -> str:
    return "—" if v is None else f"{v:.{digits}f}{unit}"


def _ci(ci: Any) -> str:
    return "" if not ci else f" [{ci[0]:.1f}, {ci[1]:.1f}]"


def _calibration_table(models: dict[str, Any]) -> list[str]:
    lines = ["| model | ECE (%) | ECE after one T (%) | ECE deployed (%) | ECE from sampling alone (%): mean / 95th pct | "
             "T | calibration deployed | NLL | NLL deployed |", "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
    for name, m in models.items():
        c = m.get("calibration")
        if c is None:
            continue
        floor = c.get("ece_sampling_floor") or {}
        ci = c.get("temperature_ci95")
        t = _f(c.get("temperature"), 3) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        how = {"temperature": "one T", "subclass_temperatures": "T per subclass"}.get(
            c.get("method"), c.get("method") or "none")
        lines.append(f"| {name} | {_f(c['ece'], 2)} | {_f(c.get('ece_one_temperature'), 2)} | "
                     f"{_f(c.get('ece_calibrated'), 2)} | {_f(floor.get('mean'), 2)} / {_f(floor.get('p95'), 2)} | "
                     f"{t} | {how} | {_f(c['nll'], 4)} | {_f(c.get('nll_calibrated'), 4)} |")
    for name, m in models.items():   # fitted on validation, it need not help on test: say so when it does not
        c = m.get("calibration") or {}
        if c.get("ece_calibrated") is None or c.get("ece") is None or c["ece_calibrated"] <= c["ece"]:
            continue
        floor = (c.get("ece_sampling_floor") or {}).get("mean")
        why = (f"the rise is within what sampling alone gives (mean {floor:.2f} %)"
               if floor is not None and c["ece_calibrated"] - c["ece"] <= floor
               else "validation and test disagree on its probability scale")
        lines += ["", f"Note: {name}'s deployed calibration (fitted on validation) does not lower its test ECE "
                      f"({c['ece']:.2f} → {c['ece_calibrated']:.2f} %): {why}."]
    return lines


def _subclass_notes(models: dict[str, Any]) -> list[str]:
    """Per seed: the per-subclass temperatures deployed, or why one temperature was kept."""
    out = []
    for name, m in models.items():
        for e in (m.get("calibration") or {}).get("per_seed", []):
            held = e.get("subclass_heldout_nll")
            vs = f" (out-of-sample validation NLL {held['subclass']:.4f} vs {held['global']:.4f} with one T)" if held else ""
            if e.get("subclass_temperatures") is not None:
                ts = ", ".join(f"{v:.2f}" for v in e["subclass_temperatures"])
                out.append(f"{name}, seed {e['seed']}: T per subclass [{ts}]{vs}.")
            elif e.get("subclass_note"):
                out.append(f"{name}, seed {e['seed']}: one temperature — {e['subclass_note']}.")
    return out


def _operating_table(models: dict[str, Any]) -> list[str]:
    lines = ["| student | threshold | coverage (%) | NPV (%) [95 % CI] | negative calls | PPV (%) [95 % CI] | "
             "positive calls | lower NPV bound ≥ 90 % |", "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for name in STUDENTS:
        op = models.get(name, {}).get("operating_point")
        if op is None:
            continue
        if op["threshold"] is None:
            lines.append(f"| {LABELS[name]} | none | — | — | — | — | — | no |")
            continue
        lines.append(f"| {LABELS[name]} | {op['threshold']:.3f} | {_f(op['coverage'])}{_ci(op.get('coverage_ci95'))} | "
                     f"{_f(op['npv'])}{_ci(op['npv_ci95'])} | {op['n_negative_calls']} | "
                     f"{_f(op['ppv'])}{_ci(op['ppv_ci95'])} | {op['n_positive_calls']} | "
                     f"{'yes' if op['npv_lower_clears_90'] else 'no'} |")
    lines += ["", "At argmax (every test image gets a call):", "",
              "| student | sensitivity (%) | specificity (%) | PPV (%) [95 % CI] | NPV (%) [95 % CI] |",
              "|---|---:|---:|---:|---:|"]
    for name in STUDENTS:
        a = (models.get(name, {}).get("operating_point") or {}).get("argmax")
        if a is not None:
            lines.append(f"| {LABELS[name]} | {_f(a['sensitivity'])} | {_f(a['specificity'])} | "
                         f"{_f(a['ppv'])}{_ci(a['ppv_ci95'])} | {_f(a['npv'])}{_ci(a['npv_ci95'])} |")
    return lines


def _comparison(models: dict[str, Any], diffs: dict[str, Any]) -> list[str]:
    """Which student keeps more test images above the threshold at the same NPV target, and whether
    the difference is outside its paired bootstrap interval."""
    ops = {n: models[n]["operating_point"] for n in STUDENTS if models.get(n, {}).get("operating_point")}
    called = {n: op for n, op in ops.items() if op["threshold"] is not None}
    out = []
    if len(called) >= 2:
        best = max(called, key=lambda n: called[n]["coverage"])
        rest = ", ".join(f"{LABELS[n]} {called[n]['coverage']:.1f} %" for n in called if n != best)
        pairs = []
        for key, d in diffs.items():
            b, a = key.split(" - ")
            if best in (a, b):
                sign = 1 if b == best else -1
                lo, hi = sorted(sign * v for v in d["ci95"])
                pairs.append((LABELS[a if b == best else b], sign * d["difference"], lo, hi))
        said = "; ".join(f"{LABELS[best]} − {o}: {v:+.1f} pts [{lo:+.1f}, {hi:+.1f}]" for o, v, lo, hi in pairs)
        clear = [o for o, _, lo, _ in pairs if lo > 0]
        out.append(f"At the NPV ≥ {100 * NPV_TARGET:.0f} % threshold chosen on validation, the {LABELS[best]} student "
                   f"gives a call on the largest share of test images ({called[best]['coverage']:.1f} %; {rest}). "
                   f"Coverage differences with 95 % paired bootstrap intervals over the test images: {said}. "
                   + (f"Outside the interval vs {', '.join(clear)}" if clear else "Every interval includes 0: not a result")
                   + " — on this test split, for one training run of each student (the interval does not include "
                   "seed-to-seed variation), and at the same validation target, not at equal test NPV (table above).")
    clears = [LABELS[n] for n, op in called.items() if op["npv_lower_clears_90"]]
    out.append(f"Lower 95 % NPV bound ≥ {100 * NPV_TARGET:.0f} % on test: "
               + (", ".join(clears) if clears else "no student (the intervals are too wide, or the NPV too low, "
                                                   "to show the PIVI bar on this test split)") + ".")
    for n, op in ops.items():
        if op["threshold"] is None:
            out.append(f"{LABELS[n]}: {op['reason']}")
        elif (op.get("validation") or {}).get("note"):
            out.append(f"{LABELS[n]}: {op['validation']['note']}.")
    return out


def _presence_lines(models: dict[str, Any]) -> list[str]:
    """The presence figures ("no polyp" class) apart from the HP-vs-adenoma figures above."""
    rows = [(n, m["presence"]) for n, m in models.items() if m.get("presence")]
    if not rows:
        return []
    from edgeskd.clinical.presence import FALSE_PRESENCE_TARGET

    lines = ["Presence (\"no polyp\" class): the figures above are on the test images that show a polyp, from the "
             "probabilities conditional on a polyp. A frame is \"no polyp\" when P(no polyp) reaches the presence "
             f"threshold, chosen on validation as the highest threshold (at most 0.5) that calls at most "
             f"{100 * FALSE_PRESENCE_TARGET:g} % of the polyp-free validation images present.", "",
             "| model | presence threshold | sensitivity on polyp images (%) | false presence on polyp-free images (%) "
             "| presence AUC (%) |", "|---|---:|---:|---:|---:|"]
    for name, p in rows:
        lines.append(f"| {name} | {p['threshold']:.3f}{' (default)' if p.get('note') else ''} | "
                     f"{_f(p.get('sensitivity'))} | {_f(p.get('false_presence'))} | {_f(p.get('auc'))} |")
    notes = [f"{name}: {p['note']}." for name, p in rows if p.get("note")]
    return lines + ([""] + notes if notes else []) + [""]


def section(metrics: dict[str, Any]) -> list[str]:
    """The "Calibration and operating points" section of report.md (empty without the figures); the
    reliability diagrams are among the run's plots (``metrics["files"]``)."""
    models = metrics["models"]
    if not any("calibration" in m for m in models.values()):
        return []
    ds = metrics["dataset"]
    lines = ["## Calibration and operating points", "",
             f"These figures describe **{ds['name']}**: {ds['n_test']} test images, with the temperature and the "
             f"confidence threshold chosen on its {ds['n_val']} validation images. They are not a clinical "
             "validation: whether a model may be used for optical diagnosis (ASGE PIVI: NPV ≥ 90 % for "
             "adenomatous histology on high-confidence calls) is decided on prospective clinical data, per "
             "polyp, not on these images.", "",
             "ECE: 15 equal-width confidence bins; T: temperature fitted on validation by NLL (SKD: on the "
             "logsumexp class logits); NLL in nats. A subclass-logit student may instead deploy one temperature T_k "
             "per subclass (a case's class logits are divided by its own T, 1/T = Σ_k q_k / T_k with q its subclass "
             "probabilities: mostly its predicted subclass's T), fitted jointly on validation; it does so only when "
             "that lowers the validation NLL out of sample (2-fold) against one T. \"ECE deployed\" is after the "
             "calibration the artifact carries. Dividing logits by T never changes a prediction, so F1 and accuracy "
             "above are unchanged. A low ECE alone says nothing about discrimination (a model that always "
             "predicts the majority class with its base rate is calibrated): read it with F1 and AUC.", ""]
    lines += _calibration_table(models)
    lines += ["", f"ECE from sampling alone: the ECE a perfectly calibrated model with the same confidences would show "
                  f"on {ds['n_test']} test images (labels drawn 1,000 times). An ECE below its 95th percentile is "
                  "consistent with perfect calibration at this test size: differences inside that range are sampling noise. "
                  f"T [interval]: 95 % bootstrap interval of the temperature over the {ds['n_val']} validation images; "
                  "a wide one means validation is too small to pin T down, and the ECE after scaling on test can stay "
                  "above the sampling range."]
    notes = [f"{n}: no temperature — {m['calibration']['temperature_note']}" for n, m in models.items()
             if (m.get("calibration") or {}).get("temperature_note")]
    notes += _subclass_notes(models)
    lines += [""] + ([f"- {s}" for s in notes] + [""] if notes else [])
    lines += [f"Operating point: the lowest confidence (highest calibrated class probability) in (0.5, 1) at which "
              f"validation NPV ≥ {100 * NPV_TARGET:.0f} % (PIVI's bar for leaving a polyp in place; PPV is reported, "
              "it does not move the threshold); "
              "below it a case is \"low confidence\" (no call). On test, with 95 % Wilson intervals; the "
              "threshold and the temperature are stored in each student's checkpoint and every artifact "
              "exported from it.", ""]
    lines += _operating_table(models) + [""]
    lines += [f"- {s}" for s in _comparison(models, metrics.get("coverage_differences") or {})] + [""]
    lines += _presence_lines(models)
    plots = [f for f in metrics.get("files", []) if f.startswith("reliability_")]
    if plots:
        lines += ["Reliability diagrams (test split, before and after the deployed calibration, under Plots): "
                  + ", ".join(f"`{p}`" for p in plots) + ".", ""]
    return lines
