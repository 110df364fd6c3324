"""``edgeskd predict SRC...``: one call per image (files, folders, globs) with any artifact.

Each image goes through the deployed preprocessing (``runtime.preprocess``), the artifact's runner
and its calibration (``runtime.postprocess``): the class, its calibrated probability, the top
subclass, and the state at the artifact's threshold (a class, or "low confidence"). Rows go to the
console and, with ``out``, to a CSV or JSON-lines file; ``save_dir`` gets each image with the call
drawn on it. Everything is checked (sources, artifact, outputs) before the first image is read.
"""

from __future__ import annotations

import csv
import glob
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from edgeskd.errors import DataError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
OUT_SUFFIXES = (".csv", ".jsonl")


@dataclass
class Prediction:
    path: str
    cls: str                 # argmax class
    prob: float              # its calibrated probability
    subclass: str | None     # top subclass (None for class-logit models)
    subclass_prob: float | None
    state: str               # the class, or "low confidence" below the threshold
    probs: dict[str, float]  # every class's calibrated probability

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["class"] = d.pop("cls")
        return d


def expand_sources(sources: Sequence[str | Path]) -> list[Path]:
    """Image files from files, folders (recursively, sorted) and glob patterns; UsageError naming the
    first source that matches nothing, or a file that is not an image."""
    if not sources:
        raise UsageError("no images given; name image files, folders or glob patterns")
    found: list[Path] = []
    for s in sources:
        text = str(s)
        p = Path(text).expanduser()
        if any(ch in text for ch in "*?[") and not p.exists():
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise UsageError(f"{text} matches no image ({', '.join(IMAGE_SUFFIXES)})")
            found += files
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not files:
                raise UsageError(f"folder {p} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            found += files
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise UsageError(f"{p} is not an image file ({', '.join(IMAGE_SUFFIXES)}); for video use "
                                 "`edgeskd stream`")
            found.append(p)
        else:
            raise UsageError(f"{p} does not exist; give image files, folders or glob patterns")
    return list(dict.fromkeys(found))   # a file named twice is predicted once


def check_outputs(out: Path | None, save_dir: Path | None, *, overwrite: bool) -> None:
    from edgeskd.utils.io import check_output_file, probe_writable_dir

    if out is not None:
        if out.suffix.lower() not in OUT_SUFFIXES:
            raise UsageError(f"--out {out}: give a .csv or .jsonl file")
        check_output_file(out, overwrite=overwrite)
    if save_dir is not None:
        if save_dir.exists() and not save_dir.is_dir():
            raise UsageError(f"--save {save_dir} is a file; give a folder")
        if save_dir.is_dir() and any(save_dir.iterdir()) and not overwrite:
            raise UsageError(f"--save {save_dir} is not empty; pass --overwrite to write into it, or choose "
                             "another folder")
        probe_writable_dir(save_dir.parent if str(save_dir.parent) else ".")


def predict_images(runner: Any, paths: Sequence[Path], *, threshold: float | None = None, batch_size: int = 16,
                   crop: Sequence[int] | None = None,
                   on_image: Callable[[int, Prediction, np.ndarray], None] | None = None) -> list[Prediction]:
    """Predictions for ``paths`` in order (images of different sizes batch fine: each is resized
    to the model's input). A file that does not decode is a DataError naming it."""
    from edgeskd.clinical.operating_point import NO_POLYP_CALL, state_name
    from edgeskd.data.images import read_image
    from edgeskd.runtime.postprocess import class_probabilities, subclass_probabilities
    from edgeskd.runtime.preprocess import preprocess_for
    from edgeskd.stream.result import Presence, frame_class, frame_state

    meta = runner.metadata
    thr = meta.threshold if threshold is None else threshold
    presence = Presence.of(meta)
    preds: list[Prediction] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images = [read_image(p) for p in chunk]
        x = np.concatenate([preprocess_for(meta, im[None], crop=crop) for im in images])
        logits = runner.infer(x)
        probs = class_probabilities(logits, meta)
        subs = subclass_probabilities(logits, meta)
        for i, p in enumerate(chunk):
            state = frame_state(probs[i], thr, presence)
            k = frame_class(probs[i], presence)   # with a background class: the likelier polyp class
            conf = probs[i] if presence is None else presence.conditional_full(probs[i])
            sub = None
            if subs is not None and state != NO_POLYP_CALL:   # among the polyp subclasses, as the stream shows it
                cand = (list(presence.polyp_subclasses) if presence is not None and presence.polyp_subclasses
                        else list(range(subs.shape[1])))
                sub = cand[int(np.argmax(subs[i, cand]))]
            pred = Prediction(
                path=str(p), cls=meta.class_names[k], prob=round(float(conf[k]), 6),
                subclass=None if sub is None else meta.subclass_names[sub],
                subclass_prob=None if sub is None else round(float(subs[i, sub]), 6),
                state=state_name(state, meta.class_names),
                probs={c: round(float(v), 6) for c, v in zip(meta.class_names, probs[i])})
            preds.append(pred)
            if on_image is not None:
                on_image(start + i, pred, images[i])
    return preds


def annotate(rgb: np.ndarray, pred: Prediction, meta: Any, threshold: float | None) -> np.ndarray:
    """The image with the call drawn on it (the stream's overlay panel)."""
    from edgeskd.clinical.operating_point import LOW_CONFIDENCE, NO_POLYP
    from edgeskd.stream.overlay import Annotation, draw_annotation

    pos = meta.class_names[meta.positive_class]
    bg = getattr(meta, "background_class", None)
    presence = None if bg is None else 1.0 - pred.probs.get(meta.class_names[bg], 0.0)
    ann = Annotation(class_name=pred.cls, prob=pred.prob, raw_class_name=pred.cls, raw_prob=pred.prob,
                     subclass=pred.subclass, subclass_prob=pred.subclass_prob,
                     positive_prob=pred.probs.get(pos, 0.0), fps=0.0, latency_ms=0.0,
                     is_positive=pred.cls == pos, low_confidence=pred.state == LOW_CONFIDENCE, threshold=threshold,
                     no_polyp=pred.state == NO_POLYP, presence=presence)
    scale = max(1, 256 // max(1, min(rgb.shape[:2])))   # small images are enlarged so the text is legible
    big = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1) if scale > 1 else rgb
    return draw_annotation(big, ann)


def save_name(path: Path, root_index: int, used: set[str]) -> str:
    """A unique PNG name for an annotated copy of ``path``."""
    name = f"{path.stem}.png"
    if name in used:
        name = f"{path.stem}-{root_index}.png"
    used.add(name)
    return name


def write_predictions(out: Path, preds: Iterable[Prediction], class_names: Sequence[str]) -> None:
    """CSV (one column per class probability) or JSON lines, atomically."""
    from edgeskd.utils.io import write_text_atomic

    rows = [p.row() for p in preds]
    if out.suffix.lower() == ".jsonl":
        write_text_atomic(out, "".join(json.dumps(r) + "\n" for r in rows))
        return
    buf = io.StringIO()
    cols = ["path", "class", "prob", "subclass", "subclass_prob", "state", *(f"p_{c}" for c in class_names)]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        probs = r.pop("probs")
        w.writerow({**r, **{f"p_{c}": probs[c] for c in class_names}})
    write_text_atomic(out, buf.getvalue())

