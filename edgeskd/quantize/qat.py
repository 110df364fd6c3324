"""Quantization-aware distillation: fine-tune a student with INT8 fake quantization that follows
TensorRT's rules, with the loss it was trained with, and export a Q/DQ ONNX with the learned scales.

TensorRT's explicit quantization fixes the arithmetic: symmetric INT8 (zero point 0,
range [-128, 127], scale = amax / 127), per-channel weights on the output-channel axis, per-tensor
activations. The fake-quantized student reproduces exactly that:

* BatchNorm is folded into the convolution before fine-tuning (what TensorRT and ONNX Runtime run
  is the folded weight, so that is what gets quantized and trained);
* every Conv2d and every Linear but the head quantizes its input activation (per tensor, learnable
  amax initialised on training images by min/max or TensorRT's entropy calibration, whichever
  scores better on validation) and its weight (per output channel, amax = max |w|, recomputed
  each step); the head stays FP32 like the PTQ path's head;
* rounding passes gradients straight through (STE), and the activation amax gets the LSQ gradient
  (it is trained in log space);
* export replaces each fake quantizer by ``torch.fake_quantize_per_*_affine``, which the ONNX
  exporter writes as QuantizeLinear/DequantizeLinear (opset 17); weight Q nodes are then folded
  into INT8 initializers (TensorRT's "pre-quantized weights → DequantizeLinear" form, ~¼ the size).

The loss is the checkpoint's own: SKD (teacher subclass logits), KD (teacher LSE class logits) or
plain CE, with the checkpoint's α and T (``edgeskd.distill.losses``). The teacher is the run's
``teacher.pt`` next to the checkpoint unless ``teacher`` names one.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from edgeskd.errors import ArtifactError, UsageError
from edgeskd.meta import ModelMeta

QMIN, QMAX = -128, 127
CALIB_SAMPLES = 1 << 18        # |x| values kept per activation for the entropy initialisation
STUDENT_MODES = ("none", "kd", "skd")


# -- fake quantization ----------------------------------------------------------------------------
def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def fake_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric INT8 quantize-dequantize; gradient straight through the rounding (and, for a
    trainable ``scale``, LSQ's: round(x/s) − x/s inside the range, the clip level outside)."""
    return torch.clamp(_round_ste(x / scale), QMIN, QMAX) * scale


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel scale max|w| / 127 (axis 0), never 0."""
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
    return torch.clamp(amax, min=1e-8) / QMAX


class ActQuant(nn.Module):
    """Per-tensor symmetric INT8 fake quantization of an activation with a learnable amax."""

    def __init__(self) -> None:
        super().__init__()
        self.log_amax = nn.Parameter(torch.zeros(()))
        self.init_amax: dict[str, float] = {}
        self.calibrating = False
        self.exporting = False
        self._seen: list[torch.Tensor] = []
        self._gen = torch.Generator().manual_seed(0)

    @property
    def amax(self) -> float:
        return float(self.log_amax.detach().exp())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self._observe(x)
            return x
        scale = self.log_amax.exp() / QMAX
        if self.exporting:
            return torch.fake_quantize_per_tensor_affine(x, float(scale), 0, QMIN, QMAX)
        return fake_quant(x, scale)

    def _observe(self, x: torch.Tensor) -> None:
        v = x.detach().abs().flatten().float().cpu()
        if v.numel() > CALIB_SAMPLES // 8:
            v = v[torch.randint(v.numel(), (CALIB_SAMPLES // 8,), generator=self._gen)]
        self._seen.append(v)

    def finish_calibration(self) -> None:
        """Candidate amax values from the seen |x|: ``max`` (min/max calibration) and ``entropy``
        (TensorRT's entropy calibration on a 2048-bin histogram); ``use_init`` picks one."""
        from edgeskd.quantize.calibration import entropy_amax

        v = torch.cat(self._seen).numpy() if self._seen else np.zeros(1, np.float32)
        self._seen = []
        top = float(v.max()) if v.size else 0.0
        amax = top
        if top > 0:
            hist, edges = np.histogram(v, bins=2048, range=(0.0, top))
            amax = entropy_amax(hist, edges)
        self.init_amax = {"max": max(top, 1e-6), "entropy": max(amax, 1e-6)}
        self.use_init("entropy")

    def use_init(self, which: str) -> None:
        self.log_amax.data.fill_(float(np.log(self.init_amax[which])))


class _QuantLayer(nn.Module):
    """A Conv2d or Linear whose input and weight are fake-quantized the TensorRT way."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.input_quant = ActQuant()
        self.exporting = False

    def set_exporting(self, on: bool) -> None:
        """Export mode: the weight scales become fixed tensors (initializers in the ONNX, so the
        weight QuantizeLinear folds into an INT8 initializer) and the fake quantizers the
        ``torch.fake_quantize_per_*_affine`` ops the exporter writes as Q/DQ."""
        self.exporting = on
        self.input_quant.exporting = on
        if on:
            s = weight_scale(self.layer.weight).clone()
            self.register_buffer("export_scale", s, persistent=False)
            self.register_buffer("export_zero_point", torch.zeros_like(s, dtype=torch.int32), persistent=False)

    def quantized_weight(self) -> torch.Tensor:
        w = self.layer.weight
        if self.exporting:
            return torch.fake_quantize_per_channel_affine(w, self.export_scale, self.export_zero_point, 0, QMIN, QMAX)
        s = weight_scale(w)
        return fake_quant(w, s.reshape(-1, *([1] * (w.ndim - 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quant(x)
        if self.input_quant.calibrating:
            return self.layer(x)
        w = self.quantized_weight()
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, w, self.layer.bias)
        return nn.functional.linear(x, w, self.layer.bias)


# -- preparing the model --------------------------------------------------------------------------
def fold_batchnorm(model: nn.Module) -> tuple[int, int]:
    """Fold every BatchNorm2d that directly follows a Conv2d inside an nn.Sequential into the conv
    (eval statistics). Returns (folded, BatchNorm layers left)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                seq._modules[a] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                seq._modules[b] = nn.Identity()
                folded += 1
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    return folded, left


def prepare_qat(model: nn.Module) -> tuple[nn.Module, str, dict[str, int]]:
    """(fake-quantized copy of ``model``, the head's module name, counts). The head is the last
    Linear registered (the classifier of every edgeskd student); it stays FP32."""
    q = copy.deepcopy(model).eval()
    folded, left = fold_batchnorm(q)
    linears = [n for n, m in q.named_modules() if isinstance(m, nn.Linear)]
    head = linears[-1] if linears else ""
    targets = [n for n, m in q.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n != head]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = q.get_submodule(parent_name) if parent_name else q
        setattr(parent, child, _QuantLayer(getattr(parent, child)))
    return q, head, {"batchnorm_folded": folded, "batchnorm_left": left, "quantized_layers": len(targets)}


def quant_layers(model: nn.Module) -> list[_QuantLayer]:
    return [m for m in model.modules() if isinstance(m, _QuantLayer)]


def calibrate(model: nn.Module, batches: Sequence[np.ndarray]) -> None:
    """Initialise every activation amax on ``batches`` (preprocessed float32 NCHW), FP32 forward."""
    layers = quant_layers(model)
    for m in layers:
        m.input_quant.calibrating = True
    try:
        with torch.no_grad():
            model.eval()
            for x in batches:
                model(torch.from_numpy(x))
    finally:
        for m in layers:
            m.input_quant.calibrating = False
    for m in layers:
        m.input_quant.finish_calibration()


INITS = ("max", "entropy")


def choose_init(model: nn.Module, val_inputs, meta: ModelMeta) -> tuple[str, dict[str, float]]:
    """Start the activation ranges from the calibration (``INITS``) whose fake-quantized model has
    the best validation F1 — which clips best depends on the model (entropy clipping costs some
    models more than the outliers it removes). Returns (choice, F1 of each)."""
    f1 = {}
    for which in INITS:
        for m in quant_layers(model):
            m.input_quant.use_init(which)
        f1[which] = _val_f1(model, val_inputs, meta)
    best = max(INITS, key=lambda w: (f1[w], w == "entropy"))
    for m in quant_layers(model):
        m.input_quant.use_init(best)
    return best, f1


def set_exporting(model: nn.Module, on: bool) -> None:
    for m in quant_layers(model):
        m.set_exporting(on)


# -- the loss the checkpoint was trained with -----------------------------------------------------
LEGACY_TEMPERATURE = 4.0   # T of checkpoints written before students recorded their own


def trained_distillation(ckpt: dict, mode: str) -> tuple[float, float]:
    """(T, α) the student was distilled with: what its checkpoint records (every distilled student
    records it, the --tune choice too), else its run's --temperature / --alpha, else T = 4: the
    default of the versions that did not record it (the defaults have moved since)."""
    config = ckpt.get("config") or {}
    used = config.get("distillation") if isinstance(config.get("distillation"), dict) else {}
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    t = used.get("temperature", train.get("temperature"))
    if t is None:
        t = LEGACY_TEMPERATURE
    a = used.get("alpha", train.get("alpha", 0.5))
    return float(t), float(a)


def distillation_loss(mode: str, teacher_meta: ModelMeta | None, *, alpha: float, temperature: float
                      ) -> Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor], dict]:
    """loss(student_out, teacher_out, class_labels, subclass_labels) → {"loss", ...}."""
    from edgeskd.distill import losses as L

    if mode == "none":
        return lambda out, t, y, s: L.ce_loss(out, y)
    if teacher_meta is None:
        raise UsageError(f"a {mode} student needs its teacher")
    idx = list(teacher_meta.subclass_to_class)
    if mode == "kd":
        return lambda out, t, y, s: L.kd_loss(out, L.subclass_to_class_logits(t, idx), y, alpha=alpha,
                                              temperature=temperature)
    if mode == "skd":
        return lambda out, t, y, s: L.skd_loss(out, t, y, idx, alpha=alpha, temperature=temperature)
    raise UsageError(f"unknown distillation mode {mode!r}")


@dataclass
class QATResult:
    path: Path
    meta: ModelMeta
    mode: str
    teacher: str
    epochs: int
    lr: float
    seconds: float
    train_seconds: float | None            # the student's own training time (checkpoint history)
    val_f1: dict[str, float]               # fp32 / ptq (calibrated, before QAT) / qat (best epoch)
    test: dict[str, Any]                   # fp32 and onnx (the exported Q/DQ model in ONNX Runtime)
    history: list[dict] = field(default_factory=list)
    parity: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"], d["meta"] = str(self.path), self.meta.to_dict()
        return d


# -- inputs: checkpoint, teacher, data ------------------------------------------------------------
@dataclass
class _Inputs:
    model: nn.Module
    meta: ModelMeta
    ckpt: dict
    mode: str
    train_cfg: dict
    teacher: nn.Module | None
    teacher_meta: ModelMeta | None
    teacher_path: str


def load_student(checkpoint: str | Path, teacher: str | Path | None = None) -> _Inputs:
    """The student, its distillation mode and settings, and its teacher (one-line errors)."""
    from edgeskd.models.checkpoint import model_from_checkpoint

    model, meta, ckpt = model_from_checkpoint(checkpoint)
    mode = (meta.extra or {}).get("distillation")
    if meta.model_name == "teacher" or mode not in STUDENT_MODES:
        raise UsageError(f"{checkpoint} is a teacher checkpoint ({meta.model_name or meta.arch}); quantization-aware "
                         "distillation fine-tunes a student: give a student-*.pt from `edgeskd train`")
    train_cfg = (ckpt.get("config") or {}).get("train") or {}
    if mode == "none":
        return _Inputs(model, meta, ckpt, mode, train_cfg, None, None, "")
    path = Path(teacher) if teacher is not None else Path(checkpoint).parent / "teacher.pt"
    if not path.is_file():
        where = f"--teacher {path} does not exist" if teacher is not None else \
            f"the teacher of {checkpoint} is not at {path}"
        raise ArtifactError(f"{where}; pass --teacher T.pt (the teacher.pt this {mode} student was distilled from)")
    t_model, t_meta, _ = model_from_checkpoint(path)
    _check_teacher(t_meta, meta, mode, path)
    for p in t_model.parameters():
        p.requires_grad_(False)
    return _Inputs(model, meta, ckpt, mode, train_cfg, t_model.eval(), t_meta, str(path))


def _check_teacher(t_meta: ModelMeta, meta: ModelMeta, mode: str, path: Path) -> None:
    if t_meta.output != "subclass_logits" or (t_meta.extra or {}).get("distillation"):
        raise ArtifactError(f"--teacher {path} is a student ({t_meta.model_name}); give the run's teacher.pt")
    if list(t_meta.class_names) != list(meta.class_names):
        raise ArtifactError(f"--teacher {path} predicts classes {t_meta.class_names}, the student "
                            f"{list(meta.class_names)}; give the teacher this student was distilled from")
    if mode == "skd" and list(t_meta.subclass_names) != list(meta.subclass_names):
        raise ArtifactError(f"--teacher {path} has subclasses {t_meta.subclass_names}, the SKD student "
                            f"{list(meta.subclass_names)}; give the teacher this student was distilled from")
    if tuple(t_meta.input_size) != tuple(meta.input_size):
        raise ArtifactError(f"--teacher {path} takes {t_meta.input_size} inputs, the student {meta.input_size}; "
                            "give the teacher this student was distilled from")


def _student_train_seconds(ckpt: dict) -> float | None:
    hist = (ckpt.get("metrics") or {}).get("history") or []
    t = [float(r["time_s"]) for r in hist if isinstance(r, dict) and "time_s" in r]
    return round(sum(t), 2) if t else None


def _data(ckpt: dict, meta: ModelMeta, data: str | Path | None):
    from edgeskd.errors import DataError
    from edgeskd.data.artifact_data import align_classes, data_ref_from_checkpoint, load_data

    ls = align_classes(load_data(data_ref_from_checkpoint(ckpt), path=data), meta)
    for split in ("train", "val"):
        if not (ls.splits == split).any():
            raise DataError(f"data set {ls.name} has no {split} split; quantization-aware training needs train "
                            "and val (give --data with split folders)")
    return ls


# -- fine-tuning ----------------------------------------------------------------------------------
def _val_f1(model: nn.Module, inputs, meta: ModelMeta) -> float:
    from edgeskd.distill.evaluate import evaluate_logits, predict_logits

    return float(evaluate_logits(predict_logits(model, inputs), meta, inputs.labels)["f1"])


def _loader(train_ls, meta: ModelMeta, *, batch_size: int, augment: str | bool, seed: int):
    """The training split in batches with the augmentation the student was trained with
    (``augment``: the run's policy, endoscopy | flip | none, or an older run's true / false)."""
    from torch.utils.data import DataLoader, RandomSampler

    from edgeskd.data.torch_dataset import ImageDataset

    from edgeskd.distill.config import AUGMENT_POLICIES, augment_policy
    from edgeskd.distill.loop import AUGMENT_ARGS

    policy = augment_policy(augment)
    if policy not in AUGMENT_POLICIES:
        raise ArtifactError(f"the checkpoint's training augmentation {augment!r} is unknown here; "
                            f"expected one of {', '.join(AUGMENT_POLICIES)}")
    # decoded once: every epoch reads every image (as in training)
    ds = ImageDataset(train_ls.in_memory(), meta.input_size, meta.mean, meta.std, target="subclass", seed=seed,
                      **AUGMENT_ARGS[policy])
    sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed))
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=len(ds) > batch_size)


def fine_tune(qmodel: nn.Module, teacher: nn.Module | None, loss_fn, loader, val_inputs, meta: ModelMeta, *,
              epochs: int, lr: float, scale_lr: float, log: Callable[[str], None] = lambda s: None
              ) -> tuple[float, float, list[dict]]:
    """Fine-tune in place; keeps the epoch with the best validation F1 (the calibrated start counts
    as epoch 0). Returns (F1 before, best F1, per-epoch history)."""
    import math

    scales = [m.input_quant.log_amax for m in quant_layers(qmodel)]
    ids = {id(p) for p in scales}
    weights = [p for p in qmodel.parameters() if id(p) not in ids and p.requires_grad]
    opt = torch.optim.AdamW([{"params": weights, "lr": lr, "weight_decay": 0.0},
                             {"params": scales, "lr": scale_lr, "weight_decay": 0.0}])
    total = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(1.0, s / total))))
    f1_start = best = _val_f1(qmodel, val_inputs, meta)
    best_state = copy.deepcopy(qmodel.state_dict())
    history = [{"epoch": 0, "val_f1": f1_start}]
    log(f"calibrated fake-quantized student: val F1 {f1_start:.2f}")
    for epoch in range(1, epochs + 1):
        t0, losses = time.perf_counter(), []
        loader.dataset.set_epoch(epoch)
        qmodel.train()
        for x, y, s in loader:
            with torch.no_grad():
                t_out = teacher(x) if teacher is not None else None
            parts = loss_fn(qmodel(x).float(), None if t_out is None else t_out.float(), y.long(), s.long())
            if not torch.isfinite(parts["loss"]):
                raise ArtifactError(f"QAT loss became {parts['loss'].item()} at epoch {epoch}; lower --lr")
            opt.zero_grad(set_to_none=True)
            parts["loss"].backward()
            opt.step()
            sched.step()
            losses.append(float(parts["loss"].detach()))
        f1 = _val_f1(qmodel, val_inputs, meta)
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 5), "val_f1": f1,
                        "time_s": round(time.perf_counter() - t0, 2)})
        log(f"QAT epoch {epoch}/{epochs}: loss {np.mean(losses):.4f}  val F1 {f1:.2f}")
        if f1 > best:
            best, best_state = f1, copy.deepcopy(qmodel.state_dict())
    qmodel.load_state_dict(best_state)
    qmodel.eval()
    return f1_start, best, history


# -- export -----------------------------------------------------------------------------------------
def fold_weight_quantizers(model) -> Any:
    """Constant nodes → initializers, then QuantizeLinear(float initializer) → its INT8 initializer
    (round half to even and saturate, as QuantizeLinear does), so weights are stored as INT8 →
    DequantizeLinear. Unused initializers are dropped."""
    from onnx import numpy_helper

    g = model.graph
    for n in [n for n in g.node if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value"]:
        t = numpy_helper.from_array(numpy_helper.to_array(n.attribute[0].t), n.output[0])
        g.initializer.append(t)
        g.node.remove(n)
    inits = {t.name: t for t in g.initializer}
    for n in [n for n in g.node if n.op_type == "QuantizeLinear"]:
        if not all(i in inits for i in n.input[:3]):
            continue
        w, s, zp = (numpy_helper.to_array(inits[i]) for i in n.input[:3])
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        if s.ndim == 1 and s.size > 1:
            shape = [1] * w.ndim
            shape[axis] = -1
            s, zp = s.reshape(shape), zp.reshape(shape)
        q = np.clip(np.rint(w / s) + zp.astype(np.int32), QMIN, QMAX).astype(np.int8)
        g.initializer.append(numpy_helper.from_array(q, n.output[0]))
        g.node.remove(n)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    return model


def qat_onnx_bytes(qmodel: nn.Module, meta: ModelMeta) -> tuple[bytes, list[str]]:
    """(checked Q/DQ ONNX with ``meta`` attached, its FP32 head nodes)."""
    import onnx

    from edgeskd.export.onnx_export import attach_metadata, torch_to_onnx_model
    from edgeskd.quantize.qdq import compact_names, head_nodes, inspect_qdq

    set_exporting(qmodel, True)
    try:
        proto = torch_to_onnx_model(qmodel, meta, opset=17)
    finally:
        set_exporting(qmodel, False)
    proto = fold_weight_quantizers(proto)
    head = head_nodes(proto)
    proto = compact_names(proto, keep=head)
    quant = {**(meta.extra.get("quant") or {}), "fp32_nodes": head}
    attach_metadata(proto, meta.replace(extra={**meta.extra, "quant": quant}))
    onnx.checker.check_model(proto, full_check=True)
    problems = inspect_qdq(proto).problems()
    if problems:
        raise ArtifactError(f"the QAT Q/DQ ONNX does not fit TensorRT: {'; '.join(problems)}")
    return proto.SerializeToString(), head


def check_qat_parity(qmodel: nn.Module, blob: bytes, meta: ModelMeta, x: np.ndarray) -> dict[str, Any]:
    """The fake-quantized torch model vs ONNX Runtime on the exported Q/DQ model: max |Δ logit|
    (one INT8 step where a value sits on a rounding boundary) and class top-1 agreement."""
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner
    from edgeskd.runtime.postprocess import class_probabilities

    runner = OnnxRuntimeRunner(blob)
    with torch.no_grad():
        a = np.concatenate([qmodel(torch.from_numpy(x[i:i + 64])).numpy() for i in range(0, len(x), 64)])
    b = np.concatenate([runner.infer(x[i:i + 64]) for i in range(0, len(x), 64)])
    agree = float(np.mean(class_probabilities(a, meta).argmax(1) == class_probabilities(b, meta).argmax(1)))
    return {"n": int(len(x)), "max_abs_diff": float(np.abs(a - b).max()) if len(a) else 0.0,
            "logit_range": float(np.ptp(a)) if len(a) else 0.0, "top1_agreement": agree}


# -- entry point ----------------------------------------------------------------------------------
EPOCH_SHARE = 0.1      # default QAT epochs: this share of the student's training epochs (>= 1)
LR_SHARE = 0.05        # default QAT learning rate: this share of the student's peak learning rate
SCALE_LR = 1e-2        # Adam step for the activation log-amax (relative change per step)


def default_qat_out(checkpoint: str | Path, engines_dir: str | Path = "engines") -> Path:
    return Path(engines_dir) / f"{Path(checkpoint).stem}.qat.onnx"


def _check_options(epochs: int | None, lr: float | None, batch_size: int | None, calib_size: int) -> None:
    import math

    if epochs is not None and epochs < 1:
        raise UsageError(f"--epochs {epochs} must be >= 1 (QAT fine-tunes for at least one epoch)")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"--lr {lr} must be a finite number > 0")
    if batch_size is not None and batch_size < 2:
        raise UsageError(f"--batch-size {batch_size} must be >= 2")
    if calib_size < 1:
        raise UsageError(f"--calib-size {calib_size} must be >= 1")


def _fp32_reference(model: nn.Module, val_inputs, meta: ModelMeta) -> dict[str, Any]:
    """The FP32 student on the validation split (percent), with the split's fingerprint: the
    reference ``build-engine`` gates this Q/DQ ONNX against (``quantize.qdq_source``)."""
    from edgeskd.distill.evaluate import evaluate_logits, predict_logits
    from edgeskd.quantize.qdq_source import split_fingerprint

    val = val_inputs.dataset
    m = evaluate_logits(predict_logits(model, val_inputs), meta, val.labels, val.subclasses, val.subclass_names)
    return {"f1": float(m["f1"]), "per_subclass": m.get("per_subclass_accuracy") or {}, "n": len(val),
            "fingerprint": split_fingerprint(val, meta)}


def _evaluate_test(model: nn.Module, blob: bytes, ls, meta: ModelMeta) -> dict[str, Any]:
    """FP32 torch student vs the exported Q/DQ ONNX in ONNX Runtime on the test split (per subclass too)."""
    from edgeskd.distill.evaluate import evaluate_model
    from edgeskd.metrics import as_percent
    from edgeskd.runtime.evaluate import evaluate_runner
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner

    test = ls.split("test")
    if len(test) == 0:
        return {}
    fp32 = evaluate_model(model, meta, test)
    q = evaluate_runner(OnnxRuntimeRunner(blob), test)
    q.pop("logits", None)
    q = as_percent(q)
    keys = ("f1", "accuracy", "auc", "per_subclass_accuracy")
    return {"n": len(test), "fp32": {k: fp32.get(k) for k in keys}, "onnx_int8": {k: q.get(k) for k in keys},
            "f1_drop": round(float(fp32["f1"]) - float(q["f1"]), 4)}


def run_qat(
    checkpoint: str | Path,
    *,
    teacher: str | Path | None = None,
    data: str | Path | None = None,
    dataset: Any = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    calib_size: int = 512,
    seed: int = 0,
    out: str | Path | None = None,
    overwrite: bool | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> QATResult:
    """Quantization-aware distillation of a student checkpoint → Q/DQ INT8 ONNX at ``out``
    (default ``engines/<checkpoint>.qat.onnx``); see the module docstring. Nothing is written
    unless every step and check succeeds."""
    from edgeskd.distill.evaluate import EvalInputs
    from edgeskd.data.artifact_data import align_classes, data_ref_from_checkpoint
    from edgeskd.quantize.calibration import select_calibration
    from edgeskd.utils.io import atomic_path, check_output_file

    _check_options(epochs, lr, batch_size, calib_size)
    out = Path(out) if out is not None else default_qat_out(checkpoint)
    if out.suffix != ".onnx":
        raise UsageError(f"--out {out} must end in .onnx")
    check_output_file(out, overwrite=overwrite)
    inp = load_student(checkpoint, teacher)
    meta, cfg = inp.meta, inp.train_cfg
    ls = align_classes(dataset, meta) if dataset is not None else _data(inp.ckpt, meta, data)
    n_epochs = epochs or max(1, round(EPOCH_SHARE * int(cfg.get("epochs", 30))))
    lr = lr or LR_SHARE * float(cfg.get("lr", 2e-3))
    bs = batch_size or int(cfg.get("batch_size", 64))
    torch.manual_seed(seed)
    qmodel, _, counts = prepare_qat(inp.model)
    n_train = int((ls.splits == "train").sum())
    calib = select_calibration(ls, meta, size=calib_size, seed=seed, batch_size=min(32, n_train), split="train")
    t0 = time.perf_counter()
    calibrate(qmodel, list(calib.batches()))
    val_inputs = EvalInputs(ls.split("val"), meta, batch_size=128)
    init, init_f1 = choose_init(qmodel, val_inputs, meta)
    log("activation ranges start from " + ", ".join(f"{k} calibration (val F1 {v:.2f})" for k, v in init_f1.items())
        + f": {init}")
    temperature, alpha = trained_distillation(inp.ckpt, inp.mode)
    loss_fn = distillation_loss(inp.mode, inp.teacher_meta, alpha=alpha, temperature=temperature)
    loader = _loader(ls.split("train"), meta, batch_size=bs, augment=cfg.get("augment", "endoscopy"), seed=seed)
    log(f"QAT of {checkpoint} ({inp.mode}{', teacher ' + inp.teacher_path if inp.teacher_path else ''}): "
        f"{counts['quantized_layers']} layers fake-quantized, {counts['batchnorm_folded']} BatchNorm folded, "
        f"{n_epochs} epoch(s) at lr {lr:g}")
    f1_ptq, f1_qat, history = fine_tune(qmodel, inp.teacher, loss_fn, loader, val_inputs, meta, epochs=n_epochs,
                                        lr=lr, scale_lr=SCALE_LR, log=log)
    seconds = round(time.perf_counter() - t0, 2)
    ref = data_ref_from_checkpoint(inp.ckpt)
    reference = _fp32_reference(inp.model, val_inputs, meta)
    settings = {"epochs": n_epochs, "lr": lr, "scale_lr": SCALE_LR, "batch_size": bs, "loss": inp.mode,
                "teacher": inp.teacher_path, "calibration": calib.source, "range_init": init, "seconds": seconds,
                **counts,
                "checkpoint": str(Path(checkpoint).resolve()), "source_model": meta.model_name or Path(checkpoint).stem,
                "reference": reference}
    qmeta = meta.replace(precision="int8", model_name=f"{meta.model_name or Path(checkpoint).stem}-qat", extra={
        **meta.extra, **({"data": ref} if ref else {}),
        "quant": {"variant": "s8s8", "calibration": "qat", "method": "qat", "weights": "int8", "qat": settings}})
    blob, head = qat_onnx_bytes(qmodel, qmeta)
    qmeta = qmeta.replace(extra={**qmeta.extra, "quant": {**qmeta.extra["quant"], "fp32_nodes": head}})
    x_check = np.concatenate(list(val_inputs.batches()))[:256]
    parity = check_qat_parity(qmodel, blob, meta, x_check)
    if parity["top1_agreement"] < 0.98:
        raise ArtifactError(f"the exported Q/DQ ONNX disagrees with the fake-quantized student on "
                            f"{100 * (1 - parity['top1_agreement']):.1f}% of {parity['n']} validation images; "
                            "nothing written")
    test = _evaluate_test(inp.model, blob, ls, meta)
    with atomic_path(out) as tmp:
        tmp.write_bytes(blob)
    val = {"fp32": reference["f1"], "ptq": f1_ptq, "qat": f1_qat}
    notes = [f"{counts['batchnorm_left']} BatchNorm layer(s) could not be folded; they run after the INT8 conv"] \
        if counts["batchnorm_left"] else []
    return QATResult(out, qmeta, inp.mode, inp.teacher_path, n_epochs, lr, seconds,
                     _student_train_seconds(inp.ckpt), val, test, history, parity, notes)
