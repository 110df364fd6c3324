"""torch checkpoint → ONNX: dynamic batch, onnxsim, ``onnx.checker`` (full check), metadata_props,
and a parity check against torch on real samples before anything is written.

The output is named after what it holds (``class_logits`` or ``subclass_logits``); the input is
``input`` (float32 NCHW after ``edgeskd.runtime.preprocess``).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeskd.errors import ArtifactError, UsageError
from edgeskd.meta import ModelMeta
from edgeskd.utils.io import atomic_path

PARITY_TOL = 1e-4
INPUT_NAME = "input"


@dataclass
class ParityReport:
    n: int
    max_abs_diff: float
    top1_agreement: float          # fraction of samples whose class argmax agrees
    source: str                    # where the samples came from
    tolerance: float = PARITY_TOL

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_agreement == 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "max_abs_diff": self.max_abs_diff, "top1_agreement": self.top1_agreement,
                "source": self.source, "tolerance": self.tolerance, "ok": self.ok}


@dataclass
class ExportResult:
    path: Path
    meta: ModelMeta
    parity: ParityReport
    opset: int
    batch: str
    simplified: bool
    size_bytes: int
    notes: list[str] = field(default_factory=list)


def torch_to_onnx_model(model, meta: ModelMeta, *, opset: int = 17, batch: int | None = None):
    """Export with the TorchScript-based exporter (no onnxscript needed); returns an onnx.ModelProto."""
    import onnx
    import torch

    if opset < 13:
        raise UsageError(f"--opset {opset} is too old; Q/DQ INT8 needs opset >= 13 (17 recommended)")
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise UsageError(f"--opset {opset} is newer than this onnx knows ({newest}); 17 is recommended")
    h, w = meta.input_size
    dummy = torch.zeros(batch or 2, 3, h, w)
    out_name = meta.output
    dyn = None if batch else {INPUT_NAME: {0: "batch"}, out_name: {0: "batch"}}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # the legacy exporter's deprecation notice
        with torch.inference_mode(False), torch.no_grad():
            try:
                torch.onnx.export(
                    model.eval(), (dummy,), buf, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                    output_names=[out_name], dynamic_axes=dyn, do_constant_folding=True,
                )
            except (RuntimeError, ValueError) as e:
                if "opset" in str(e).lower():   # torch's exporter supports fewer opsets than onnx knows
                    raise UsageError(f"--opset {opset}: torch's ONNX exporter does not support it; 17 is "
                                     "recommended") from None
                raise
    return onnx.load_from_string(buf.getvalue())


def simplify_model(model):
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise ArtifactError("onnxsim could not validate the simplified model; export with --no-simplify")
    return simplified


def _sha256(path: str | Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def attach_metadata(model, meta: ModelMeta, extra_props: dict[str, str] | None = None):
    """Replace the model's edgeskd metadata_props with ``meta`` (JSON values)."""
    import onnx

    # other tools' bookkeeping (onnxsim's per-pass entries) is not the artifact's metadata
    keep = {p.key: p.value for p in model.metadata_props
            if not p.key.startswith(("edgeskd.", "onnxsim"))}
    keep.update(meta.to_props())
    keep.update(extra_props or {})
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, keep)
    model.producer_name = "edgeskd"
    model.doc_string = f"edgeskd {meta.model_name or meta.arch}: {meta.output} for {', '.join(meta.class_names)}"
    return model


def parity_images(dataset, meta: ModelMeta, n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """Preprocessed samples for the parity check: the test split (else val, else all) of ``dataset``, or
    seeded generated images when there is no data set."""
    from edgeskd.runtime.evaluate import preprocess_items

    if dataset is not None and len(dataset):
        for split in ("test", "val", None):
            sub = dataset if split is None else dataset.split(split)
            if len(sub):
                idx = np.arange(len(sub))
                if len(idx) > n:
                    idx = np.sort(np.random.default_rng(seed).choice(len(idx), n, replace=False))
                return preprocess_items(sub, meta, idx), f"{len(idx)} images of {dataset.name} {split or 'all'}"
    from edgeskd.runtime.preprocess import preprocess_for

    h, w = meta.input_size
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(min(n, 32), h, w, 3), dtype=np.uint8)
    return preprocess_for(meta, imgs), f"{len(imgs)} generated noise images (no data set)"


def check_parity(model, onnx_bytes: bytes, meta: ModelMeta, x: np.ndarray, source: str,
                 tol: float = PARITY_TOL, batch: int | None = None) -> ParityReport:
    """torch vs ONNX Runtime on the same preprocessed inputs: max |Δ logit|, class top-1 agreement."""
    from edgeskd.runtime.onnxrt import OnnxRuntimeRunner
    from edgeskd.runtime.postprocess import class_probabilities
    from edgeskd.runtime.torch_runner import TorchRunner

    bs = batch or 32
    with TorchRunner(model=model, meta=meta) as torch_runner, \
            OnnxRuntimeRunner(onnx_bytes, meta_overrides=meta.to_dict()) as ort_runner:
        a = np.concatenate([torch_runner.infer(x[i:i + bs]) for i in range(0, len(x), bs)])
        b = np.concatenate([ort_runner.infer(x[i:i + bs]) for i in range(0, len(x), bs)])
    diff = float(np.max(np.abs(a - b))) if len(a) else 0.0
    agree = float(np.mean(class_probabilities(a, meta).argmax(1) == class_probabilities(b, meta).argmax(1)))
    return ParityReport(n=len(x), max_abs_diff=diff, top1_agreement=agree, source=source, tolerance=tol)


def default_onnx_path(checkpoint: str | Path, engines_dir: str | Path = "engines") -> Path:
    return Path(engines_dir) / f"{Path(checkpoint).stem}.onnx"


def export_onnx(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    opset: int = 17,
    batch: str | int = "dynamic",
    simplify: bool = True,
    dataset: Any = None,
    data_path: str | Path | None = None,
    parity_samples: int = 256,
    tol: float = PARITY_TOL,
    overwrite: bool | None = None,
) -> ExportResult:
    """Export an edgeskd checkpoint to ONNX at ``out`` (default ``engines/<checkpoint stem>.onnx``).

    Parity samples: ``dataset`` (a LabeledSet) if given, else ``data_path``, else the checkpoint's
    own training data, else generated images. Nothing is written if a check fails.
    """
    import onnx

    from edgeskd.data.artifact_data import align_classes, data_ref_from_checkpoint, load_data, portable_data_ref
    from edgeskd.models.checkpoint import model_from_checkpoint

    if batch != "dynamic":
        try:
            batch = int(batch)
        except ValueError:
            raise UsageError(f"--batch-size {batch!r} must be 'dynamic' or a positive integer") from None
        if batch < 1:
            raise UsageError(f"--batch-size {batch} must be 'dynamic' or a positive integer")
    if parity_samples < 1:
        raise UsageError("--parity-samples must be >= 1")
    out = Path(out) if out is not None else default_onnx_path(checkpoint)
    if out.suffix != ".onnx":
        raise UsageError(f"--out {out} must end in .onnx")
    from edgeskd.utils.io import check_output_file

    check_output_file(out, overwrite=overwrite)
    model, meta, ckpt = model_from_checkpoint(checkpoint)
    notes: list[str] = []
    ref = data_ref_from_checkpoint(ckpt)
    meta = meta.replace(precision="fp32", model_name=meta.model_name or Path(checkpoint).stem,
                        extra={**meta.extra, **({"data": portable_data_ref(ref)} if ref else {}),
                               "checkpoint": Path(checkpoint).name, "checkpoint_sha256": _sha256(checkpoint)})

    static = None if batch == "dynamic" else int(batch)
    model_proto = torch_to_onnx_model(model, meta, opset=opset, batch=static)
    if simplify:
        model_proto = simplify_model(model_proto)
    model_proto = attach_metadata(model_proto, meta)
    try:
        onnx.checker.check_model(model_proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ArtifactError(f"exported ONNX fails onnx.checker: {str(e).splitlines()[0]}") from None
    blob = model_proto.SerializeToString()

    parity_data = dataset
    if parity_data is None and (data_path is not None or ref is not None):
        try:
            parity_data = load_data(ref, path=data_path)
        except Exception as e:  # noqa: BLE001 - data is optional for parity; say what happened
            if data_path is not None:
                raise
            notes.append(f"training data not loadable ({str(e).splitlines()[0][:120]}); parity on generated images")
    if parity_data is not None:
        parity_data = align_classes(parity_data, meta)
    x, source = parity_images(parity_data, meta, parity_samples)
    parity = check_parity(model, blob, meta, x, source, tol=tol, batch=static)
    if not parity.ok:
        raise ArtifactError(
            f"ONNX parity check failed: max |Δ logit| {parity.max_abs_diff:.3g} (limit {tol:g}), top-1 agreement "
            f"{100 * parity.top1_agreement:.2f}% on {source}; nothing written — try --no-simplify or another --opset"
        )
    with atomic_path(out) as tmp:
        tmp.write_bytes(blob)
    return ExportResult(path=out, meta=meta, parity=parity, opset=opset, batch=str(batch), simplified=simplify,
                        size_bytes=len(blob), notes=notes)
