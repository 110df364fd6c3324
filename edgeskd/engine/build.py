"""``build-engine``: FP32 ONNX → the artifact for a backend and precision, behind an accuracy gate.

* onnxruntime (CPU, ``engine/cpu.py``): for INT8, build the TensorRT-compatible S8S8 Q/DQ ONNX (kept
  as ``<name>.int8.qdq.onnx``) and the CPU variants (U8S8 Q/DQ; FP32 with ORT graph optimizations
  saved), time each here with the same threads, gate each against FP32 on the validation split, and
  keep the fastest that passes as the CPU artifact. What was tried and why the winner won is in the
  report.
* tensorrt (GPU, ``engine/tensorrt_build.py``): the engine from the Q/DQ ONNX (INT8), the FP32 ONNX
  (FP32) or FP16 (flag / FP16 ONNX), gated on the validation split with the TensorRT runner.

A failed gate raises AccuracyGateError and leaves no artifact, unless ``force``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgeskd.engine.report import BuildReport, default_outputs
from edgeskd.errors import AccuracyGateError, ArtifactError, BackendUnavailable, DataError, UsageError
from edgeskd.meta import ModelMeta

PRECISIONS = ("int8", "fp16", "fp32")
BACKENDS = ("auto", "tensorrt", "onnxruntime")


def tensorrt_usable(binding: str = "auto", device: int | str = 0) -> tuple[bool, str]:
    """(usable, why not) — tensorrt importable and CUDA device ``device`` reachable with ``binding``."""
    try:
        from edgeskd.runtime.tensorrt_runner import cuda_index, import_tensorrt

        import_tensorrt()
        from edgeskd.runtime.cuda_binding import get_binding

        get_binding(binding, cuda_index(device))
    except BackendUnavailable as e:
        return False, str(e)
    return True, ""


def resolve_backend(backend: str, *, binding: str = "auto", device: int | str = 0) -> str:
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r} must be one of {', '.join(BACKENDS)}")
    if backend == "onnxruntime":
        return backend
    ok, why = tensorrt_usable(binding, device)
    if backend == "tensorrt":
        if not ok:
            raise BackendUnavailable(f"--backend tensorrt: {why}")
        return backend
    return "tensorrt" if ok else "onnxruntime"


def build_engine(
    onnx_path: str | Path,
    *,
    precision: str = "int8",
    backend: str = "auto",
    out: str | Path | None = None,
    data: str | Path | None = None,
    dataset: Any = None,
    calib_data: str | Path | None = None,
    calib_dataset: Any = None,
    calib_size: int = 512,
    calib_seed: int = 0,
    calib_method: str = "minmax",
    calib_dir: str | Path = "calibration",
    max_f1_drop: float = 1.0,
    force: bool = False,
    overwrite: bool | None = None,
    workspace_gib: float = 1.0,
    max_batch: int = 8,
    threads: int | None = None,
    weight_qdq_pair: bool = False,
    meta_overrides: dict[str, Any] | None = None,
    time_seconds: float = 2.0,
    binding: str = "auto",
    device: int | str = 0,
    recovery: bool = True,
    recovery_budget_s: float = 600.0,
    max_fp32_layers: int | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> BuildReport:
    """FP32 ONNX → gated artifact for ``backend`` (see module docstring); the report is written next
    to the artifact as ``<artifact>.json``.

    Validation data (the gate): ``dataset`` / ``data`` / the training data recorded in the ONNX.
    Calibration data: ``calib_dataset`` / ``calib_data`` / the training split of the same data.
    TensorRT: built and gated on GPU ``device`` (an index, "cuda" or "cuda:N") with the CUDA
    ``binding`` (auto, cuda-python or pycuda).
    INT8 (``engine/int8.py``): PTQ recovery when plain PTQ fails the gate (``recovery``, within
    ``recovery_budget_s``, at most ``max_fp32_layers`` FP32 layers); a Q/DQ ONNX source is built as is.
    """
    from edgeskd.engine import int8
    from edgeskd.utils.io import write_json_atomic

    check_options(precision=precision, calib_method=calib_method, max_f1_drop=max_f1_drop, max_batch=max_batch,
                  workspace_gib=workspace_gib)
    int8.check_recovery_options(recovery_budget_s, max_fp32_layers)
    onnx_path = Path(onnx_path)
    qdq = int8.qdq_source(onnx_path, precision)
    meta = fp32_source_meta(onnx_path, meta_overrides, qdq_source=qdq)
    backend = resolve_backend(backend, binding=binding, device=device)
    if precision == "int8" and not qdq:
        from edgeskd.quantize.qdq import check_quantizer_version

        check_quantizer_version()
    art, qdq_out = output_paths(onnx_path, backend, precision, out, overwrite)
    full = gate_data(meta, dataset, data)
    val = validation_split(full)
    calib = cache = plan = reference = None
    fp32_nodes: list[str] = []
    if qdq:
        from edgeskd.quantize.qdq_source import recorded_reference

        reference = recorded_reference(meta, val, onnx_path)
    elif precision == "int8":
        calib = calibration_set(meta, full, calib_dataset, calib_data, size=calib_size, seed=calib_seed)
        plan = int8.int8_plan(onnx_path, meta, val, calib, calib_method=calib_method, max_f1_drop=max_f1_drop,
                              cache_for=lambda m: calibration_cache(onnx_path, calib, m, calib_dir),
                              recovery=recovery, budget_s=recovery_budget_s, max_fp32_layers=max_fp32_layers,
                              threads=threads, force=force, backend=backend, data=data, log=log)
        calib_method, fp32_nodes = int8.applied(plan, calib_method, force)
        cache = calibration_cache(onnx_path, calib, calib_method, calib_dir)
    common = dict(precision=precision, val=val, calib=calib, cache=cache, max_f1_drop=max_f1_drop,
                  force=force, calib_method=calib_method, weight_qdq_pair=weight_qdq_pair, log=log,
                  fp32_nodes=fp32_nodes, reference=reference)
    try:
        rep = _build_backend(backend, onnx_path, meta, art=art, out=out, qdq_out=qdq_out, max_batch=max_batch,
                             workspace_gib=workspace_gib, calib_dir=calib_dir, threads=threads,
                             time_seconds=time_seconds, binding=binding, device=device, common=common)
    except AccuracyGateError as e:
        raise int8.explain_failure(plan, onnx_path, meta, max_f1_drop, data) or e from None
    int8.record(rep, plan)
    art = Path(rep.artifact)
    write_json_atomic(art.with_name(art.name + ".json"), rep.to_dict())
    return rep


def _build_backend(backend: str, onnx_path: Path, meta: ModelMeta, *, art: Path, out: str | Path | None,
                   qdq_out: Path, max_batch: int, workspace_gib: float, calib_dir: str | Path, threads: int | None,
                   time_seconds: float, binding: str, device: int | str, common: dict[str, Any]) -> BuildReport:
    precision = common["precision"]
    if backend == "tensorrt":
        from edgeskd.engine.tensorrt_build import build_tensorrt

        rep = build_tensorrt(onnx_path, meta, out=art, qdq_out=qdq_out, max_batch=max_batch, workspace_gib=workspace_gib,
                             timing_cache=Path(calib_dir) / "trt-timing.cache", binding=binding, device=device,
                             **common)
    else:
        from edgeskd.engine.cpu import build_onnxruntime

        rep = build_onnxruntime(onnx_path, meta, out=Path(out) if out is not None else None,
                                qdq_out=qdq_out if precision == "int8" else None, threads=threads,
                                time_seconds=time_seconds, **common)
    return rep


# -- the steps ------------------------------------------------------------------------------------
def check_options(*, precision: str, calib_method: str, max_f1_drop: float, max_batch: int,
                  workspace_gib: float) -> None:
    from edgeskd.quantize.qdq import CALIB_METHODS

    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r} must be one of {', '.join(PRECISIONS)}")
    if calib_method not in CALIB_METHODS:
        raise UsageError(f"--calib-method {calib_method!r} must be one of {', '.join(CALIB_METHODS)}")
    if max_f1_drop < 0:
        raise UsageError(f"--max-f1-drop {max_f1_drop} must be >= 0")
    if max_batch < 1 or workspace_gib <= 0:
        raise UsageError("--max-batch-size must be >= 1 and --workspace > 0")


def fp32_source_meta(onnx_path: Path, meta_overrides: dict[str, Any] | None, *, qdq_source: bool = False) -> ModelMeta:
    """The metadata of the FP32 ONNX to build from (an error for a missing or already reduced one;
    a Q/DQ INT8 source, ``qdq_source``, is INT8 by nature)."""
    from edgeskd.runtime.onnxrt import load_onnx

    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path} does not exist; export one with `edgeskd export CHECKPOINT`")
    meta = load_onnx(onnx_path, meta_overrides=meta_overrides).meta
    if meta.precision != "fp32" and not qdq_source:
        raise UsageError(f"{onnx_path} is already {meta.precision}; give the FP32 ONNX from `edgeskd export`")
    return meta


def output_paths(onnx_path: Path, backend: str, precision: str, out: str | Path | None,
                 overwrite: bool | None = None) -> tuple[Path, Path]:
    """(artifact, Q/DQ ONNX) paths, checked writable before any work is done. Everything the build
    writes goes where the artifact goes: next to the ONNX by default, else in ``--out``'s folder
    (the Q/DQ ONNX as ``<onnx stem>.int8.qdq.onnx`` there), never beside an input given elsewhere.
    ``overwrite=False`` refuses outputs that exist already (the report ``<artifact>.json`` too)."""
    from edgeskd.utils.io import check_output_file

    art, qdq_out = default_outputs(onnx_path, backend, precision)
    if out is not None:
        art = Path(out)
        qdq_out = default_outputs(onnx_path, backend, precision, engines_dir=art.parent)[1]
        if art.resolve() == onnx_path.resolve():
            raise UsageError(f"--out {out} would overwrite the source ONNX; choose another path")
        if art.resolve() == qdq_out.resolve():
            raise UsageError(f"--out {out} is the name of the Q/DQ ONNX the build also writes there; "
                             "choose another name")
    if backend == "onnxruntime" and art.suffix != ".onnx":
        raise UsageError(f"--out {art}: the onnxruntime artifact is an .onnx file")
    if backend == "tensorrt" and art.suffix not in (".engine", ".plan", ".trt"):
        raise UsageError(f"--out {art}: a TensorRT engine file ends in .engine")
    arts = [art]
    if out is None and backend == "onnxruntime" and precision != "fp32":   # the winner may be the FP32 variant
        arts.append(default_outputs(onnx_path, backend, "fp32")[0])
    for a in arts:
        check_output_file(a, overwrite=overwrite)
        check_output_file(a.with_name(a.name + ".json"), overwrite=overwrite)
    if precision == "int8" and qdq_out.resolve() != onnx_path.resolve():
        check_output_file(qdq_out, overwrite=overwrite)
    return art, qdq_out


def gate_data(meta: ModelMeta, dataset: Any, data: str | Path | None):
    """``dataset``, else ``data``, else the training data the ONNX records; classes in the model's order."""
    from edgeskd.data.artifact_data import align_classes, load_data

    return align_classes(dataset if dataset is not None else load_data(meta.extra.get("data"), path=data), meta)


def validation_split(dataset):
    """The validation split the gate runs on (DataError if there is none)."""
    val = dataset.split("val")
    if len(val) == 0:
        raise DataError(f"data set {dataset.name} has no validation split for the accuracy gate; "
                        "give --data with a val split")
    return val


def calibration_set(meta: ModelMeta, dataset, calib_dataset: Any, calib_data: str | Path | None, *, size: int,
                    seed: int):
    """The calibration images: ``calib_dataset`` / ``calib_data`` / the training split of ``dataset``,
    classes in the model's order."""
    from edgeskd.data.artifact_data import align_classes, load_data
    from edgeskd.quantize.calibration import select_calibration

    source = calib_dataset if calib_dataset is not None else (
        load_data(path=calib_data) if calib_data is not None else dataset)
    return select_calibration(align_classes(source, meta), meta, size=size, seed=seed,
                              batch_size=min(32, max(1, size)), split="train",
                              source=str(calib_data) if calib_data else "")


def calibration_cache(onnx_path: Path, calib: Any, method: str, calib_dir: str | Path) -> Path:
    from edgeskd.quantize.calibration import cache_path

    stem = onnx_path.name.removesuffix(".onnx")
    return cache_path(onnx_path.read_bytes(), calib, method, directory=calib_dir, stem=stem)
