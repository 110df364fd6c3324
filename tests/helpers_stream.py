"""Helpers shared by the stream / video tests (no tests here): a tiny ONNX model with edgeskd
metadata, and small generated endoscopy-like videos with a known content area.

Imported as ``from helpers_stream import ...``: pytest's default import mode ("prepend") puts this
folder on ``sys.path`` (it has no ``__init__.py``), and the name does not match ``test_*.py``, so
pytest never collects it as a test module."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeskd.meta import ModelMeta

META = ModelMeta(
    class_names=["hyperplastic", "adenoma"],
    subclass_names=["hp_a", "hp_b", "ad_a", "ad_b"],
    subclass_to_class=[0, 0, 1, 1],
    input_size=(32, 32),
    arch="tiny-test",
)


def make_onnx(path: Path, *, meta: ModelMeta | None = META, seed: int = 0) -> Path:
    """A 4-subclass-logit conv net at 32x32, exported with torch; metadata_props from ``meta``."""
    import onnx
    import torch
    from torch import nn

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()
    with torch.no_grad():   # a strong colour dependence, so predictions change with the picture
        net[-1].weight.mul_(20)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, torch.zeros(1, 3, 32, 32), str(path), input_names=["input"], output_names=["subclass_logits"],
            dynamic_axes={"input": {0: "n"}, "subclass_logits": {0: "n"}}, dynamo=False,
        )
    model = onnx.load(str(path))
    if meta is not None:
        for k, v in meta.to_props().items():
            e = model.metadata_props.add()
            e.key, e.value = k, v
    onnx.save(model, str(path))
    return path


def endo_frame(w: int, h: int, i: int = 0, *, field: tuple[int, int, int] | None = None, text: bool = True,
               seed: int = 0) -> np.ndarray:
    """A frame with a textured, lit circular field (cx, cy, r) on black, overlay text on the left."""
    from PIL import Image, ImageDraw

    cx, cy, r = field if field is not None else (w // 2 + w // 16, h // 2, int(min(w, h) * 0.45))
    rng = np.random.default_rng(seed + i)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([
        150 + 60 * np.sin((xx + 3 * i) / 9.0) * np.cos(yy / 13.0),
        80 + 40 * np.cos((yy - 2 * i) / 7.0),
        70 + 30 * np.sin((xx + yy) / 11.0),
    ], axis=-1) + rng.normal(0, 6, (h, w, 3))
    # a bright "polyp" blob whose redness alternates over time, so the model's output changes
    blob = ((xx - cx - r // 3) ** 2 + (yy - cy) ** 2) < (r // 4) ** 2
    base[blob] += (80, -40, -40) if (i // 5) % 2 else (-40, 60, 40)
    img = np.clip(base, 0, 255).astype(np.uint8)
    img[(xx - cx) ** 2 + (yy - cy) ** 2 > r * r] = 0
    if text:
        pil = Image.fromarray(img)
        d = ImageDraw.Draw(pil)
        d.text((2, 2), "PATIENT 0042", fill=(255, 255, 255))
        d.text((2, h - 14), "12:00:%02d" % (i % 60), fill=(255, 255, 255))
        img = np.asarray(pil)
    return img


def make_video(path: Path, n: int = 20, w: int = 160, h: int = 120, *, codec: str = "libx264",
               pix_fmt: str = "yuv420p", fps: int = 30, faststart: bool = True, **kw) -> Path:
    from edgeskd.data.video_writer import encode_video

    encode_video(path, (endo_frame(w, h, i, **kw) for i in range(n)), fps=fps, codec=codec, pix_fmt=pix_fmt,
                 faststart=faststart)
    return path


def decode_all(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
