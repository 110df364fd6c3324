"""The edgeskd TensorRT engine file: JSON header + serialized engine, in one file.

Layout: ``ENGINE_MAGIC`` (12 bytes) · header length (uint32, little endian) · header (UTF-8 JSON) ·
engine bytes. The header carries the model metadata, the TensorRT version and the GPU compute
capability the engine was built for (engines are tied to both), the I/O tensor names and the
batch range of the optimization profile. Reading it needs neither TensorRT nor a GPU.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeskd.errors import ArtifactError
from edgeskd.meta import ModelMeta
from edgeskd.runtime.formats import ENGINE_MAGIC
from edgeskd.utils.io import atomic_path

HEADER_FORMAT = "edgeskd-trt-engine"
HEADER_VERSION = 1
_MAX_HEADER = 1 << 20


@dataclass
class EngineHeader:
    meta: ModelMeta
    trt_version: str                      # e.g. "10.3.0"
    compute_capability: tuple[int, int]   # e.g. (8, 7) for Orin
    input_name: str = "input"
    output_name: str = "subclass_logits"
    min_batch: int = 1
    max_batch: int = 1
    device_name: str = ""
    engine_sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)   # builder settings (workspace, precision...)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": HEADER_FORMAT, "version": HEADER_VERSION, "meta": self.meta.to_dict(),
            "trt_version": self.trt_version, "compute_capability": list(self.compute_capability),
            "input_name": self.input_name, "output_name": self.output_name,
            "min_batch": self.min_batch, "max_batch": self.max_batch, "device_name": self.device_name,
            "engine_sha256": self.engine_sha256, "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> "EngineHeader":
        if d.get("format") != HEADER_FORMAT:
            raise ArtifactError(f"{source} is not an edgeskd TensorRT engine; build one with `edgeskd build-engine`")
        if int(d.get("version", 0)) > HEADER_VERSION:
            raise ArtifactError(f"{source} is from a newer edgeskd (engine header v{d['version']}); upgrade edgeskd")
        try:
            return cls(
                meta=ModelMeta.from_dict(d["meta"], source=source),
                trt_version=str(d["trt_version"]),
                compute_capability=tuple(int(v) for v in d["compute_capability"]),  # type: ignore[arg-type]
                input_name=str(d["input_name"]), output_name=str(d["output_name"]),
                min_batch=int(d["min_batch"]), max_batch=int(d["max_batch"]),
                device_name=str(d.get("device_name", "")), engine_sha256=str(d.get("engine_sha256", "")),
                extra=dict(d.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{source} has a malformed engine header ({type(e).__name__}: {e})") from None


def write_engine(path: str | Path, engine: bytes, header: EngineHeader) -> Path:
    """Write header + engine atomically (a failed build leaves nothing behind)."""
    header.engine_sha256 = hashlib.sha256(engine).hexdigest()
    blob = json.dumps(header.to_dict(), sort_keys=True).encode("utf-8")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(ENGINE_MAGIC)
            f.write(struct.pack("<I", len(blob)))
            f.write(blob)
            f.write(engine)
    return Path(path)


def _read(path: str | Path, with_engine: bool) -> tuple[EngineHeader, bytes]:
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"engine {p} does not exist")
    with open(p, "rb") as f:
        magic = f.read(len(ENGINE_MAGIC))
        if magic != ENGINE_MAGIC:
            raise ArtifactError(
                f"{p} has no edgeskd engine header (a bare TensorRT plan?); rebuild it with `edgeskd build-engine`"
            )
        raw_len = f.read(4)
        if len(raw_len) != 4:
            raise ArtifactError(f"{p} is truncated; rebuild it with `edgeskd build-engine`")
        (n,) = struct.unpack("<I", raw_len)
        if n > _MAX_HEADER:
            raise ArtifactError(f"{p} has a corrupt engine header (length {n})")
        blob = f.read(n)
        if len(blob) != n:
            raise ArtifactError(f"{p} is truncated; rebuild it with `edgeskd build-engine`")
        try:
            d = json.loads(blob.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ArtifactError(f"{p} has a corrupt engine header (not JSON)") from None
        header = EngineHeader.from_dict(d, source=str(p))
        engine = f.read() if with_engine else b""
    if with_engine:
        if not engine:
            raise ArtifactError(f"{p} has a header but no engine bytes; rebuild it with `edgeskd build-engine`")
        if header.engine_sha256 and hashlib.sha256(engine).hexdigest() != header.engine_sha256:
            raise ArtifactError(f"{p}: engine bytes do not match the header checksum (corrupt copy?); rebuild it")
    return header, engine


def read_engine_header(path: str | Path) -> EngineHeader:
    return _read(path, with_engine=False)[0]


def read_engine(path: str | Path) -> tuple[EngineHeader, bytes]:
    return _read(path, with_engine=True)


def _version_key(v: str) -> tuple[str, ...]:
    return tuple(v.split(".")[:3])


def check_compatible(header: EngineHeader, *, trt_version: str, compute_capability: tuple[int, int],
                     source: str = "engine") -> None:
    """Refuse an engine built for another TensorRT version or GPU architecture, saying how to rebuild."""
    onnx_hint = header.extra.get("onnx", "the model's .onnx")
    rebuild = (f"rebuild it on this machine: edgeskd build-engine {onnx_hint} --backend tensorrt "
               f"--precision {header.meta.precision}")
    if _version_key(header.trt_version) != _version_key(trt_version):
        raise ArtifactError(
            f"{source} was built with TensorRT {header.trt_version}, this machine has {trt_version}; {rebuild}"
        )
    have = tuple(compute_capability)
    if tuple(header.compute_capability) != have:
        built = ".".join(map(str, header.compute_capability))
        raise ArtifactError(
            f"{source} was built for GPU compute capability {built}, this GPU is {have[0]}.{have[1]}; {rebuild}"
        )
