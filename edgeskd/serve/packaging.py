"""``edgeskd export --format triton|deepstream``: a checkpoint (exported to ONNX first, checked against
torch as usual) or a built artifact (.onnx, .engine) → a Triton repository or a DeepStream folder."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeskd.errors import UsageError


@dataclass
class PackageResult:
    format: str
    out: Path
    files: dict[str, str]
    info: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)     # what the CLI prints

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "out": str(self.out), "files": self.files, **self.info}


def _is_checkpoint(p: Path) -> bool:
    from edgeskd.runtime.formats import Format, detect_format

    return p.is_file() and detect_format(p) is Format.torch


def package(src: str | Path, fmt: str, out: str | Path | None, *, model_name: str | None = None,
            max_batch_size: int | None = None, device: str = "auto", overwrite: bool = False,
            **export_kw: Any) -> PackageResult:
    """Write ``fmt`` ("triton" / "deepstream") at ``out`` from a checkpoint or an artifact."""
    src = Path(src)
    if out is None:
        raise UsageError(f"--format {fmt} needs --out: the {'repository' if fmt == 'triton' else 'folder'} to write")
    if not src.exists():
        raise UsageError(f"{src} does not exist; give a checkpoint (.pt) or an .onnx / .engine artifact")
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgeskd-package-") as tmp:
        artifact = src
        if _is_checkpoint(src):
            from edgeskd.export.onnx_export import export_onnx

            res = export_onnx(src, Path(tmp) / f"{src.name.split('.')[0]}.onnx", opset=export_kw.get("opset", 17),
                              simplify=export_kw.get("simplify", True), data_path=export_kw.get("data"),
                              parity_samples=export_kw.get("parity_samples", 256))
            notes += list(res.notes)
            artifact = res.path
        if fmt == "triton":
            return _triton(artifact, Path(out), model_name, max_batch_size, device, overwrite, notes)
        if fmt == "deepstream":
            return _deepstream(artifact, Path(out), max_batch_size, device, overwrite, notes)
    raise UsageError(f"unknown format {fmt!r}")


def _triton(artifact: Path, out: Path, name: str | None, max_batch: int | None, device: str, overwrite: bool,
            notes: list[str]) -> PackageResult:
    from edgeskd.serve.repository import write_triton_repository

    r = write_triton_repository(artifact, out, name=name, device=device, max_batch_size=max_batch,
                                overwrite=overwrite)
    kept = f"; kept version(s) {', '.join(map(str, r.kept_versions))}" if r.kept_versions else ""
    lines = [f"wrote {r.model_path} (version {r.version} of model {r.name}{kept})",
             f"config: {r.config_path}",
             f"serve it: edgeskd serve {out}    or, in NVIDIA's container: tritonserver --model-repository {out}"]
    return PackageResult("triton", out, {"model": str(r.model_path), "config": str(r.config_path)},
                         {"name": r.name, "version": r.version, "kept_versions": r.kept_versions}, notes, lines)


def _deepstream(artifact: Path, out: Path, max_batch: int | None, device: str, overwrite: bool,
                notes: list[str]) -> PackageResult:
    from edgeskd.serve.deepstream import write_deepstream

    gpu = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    r = write_deepstream(artifact, out, batch_size=max_batch or 1, gpu_id=gpu, overwrite=overwrite)
    lines = [f"wrote {r.out_dir}: {r.onnx_path.name} (0-255 input, Softmax output), {r.labels_path.name}, "
             f"{r.config_path.name}",
             f"use it: nvinfer config-file-path={r.config_path}"]
    return PackageResult("deepstream", out, {"onnx": str(r.onnx_path), "config": str(r.config_path),
                                             "labels": str(r.labels_path)}, {}, notes, lines)
