"""Artifact metadata: what a runner needs to use a model with nothing but the artifact.

Every artifact (checkpoint, ONNX, Q/DQ ONNX, TensorRT engine) carries one ``ModelMeta``:
checkpoints in ``ckpt["meta"]``, ONNX in ``metadata_props`` (one key each, JSON values, read
with ``json.loads`` only — never eval), engines in a JSON header.

``temperature``, ``subclass_temperatures`` and ``threshold`` are the clinical operating point
(``edgeskd.clinical``): class probabilities are softmax(class logits / T), with T = ``temperature``,
or, for a subclass-logit model that carries ``subclass_temperatures`` (T_k, fitted on validation),
the case's own T with 1/T = Σ_k q_k / T_k, q = its subclass probabilities; a frame or
polyp gets a call only when its highest calibrated probability reaches ``threshold`` (None: no
threshold was chosen, every case gets its argmax). Artifacts written before these keys existed load
with 1.0, None and None.

``background_class`` names the class that means "no polyp in view" (a background class with its own
subclasses, distilled like any other; None: every case shows a polyp, as in artifacts written before
the key existed). With one, the HP-vs-adenoma figures and the temperature(s) and ``threshold`` above
are those of the probabilities **conditional on a polyp** (softmax over the other classes' logits,
``polyp_only()``), and a frame shows "no polyp" when P(background) = softmax of the raw class logits
at its background column reaches ``presence_threshold`` (chosen on validation by training; None: 0.5,
"more likely than not").
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from edgeskd import __version__
from edgeskd.errors import ArtifactError

OUTPUT_KINDS = ("class_logits", "subclass_logits")
CHANNEL_ORDERS = ("RGB", "BGR")
# ImageNet statistics; the default for every model (torchvision backbones expect them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

REQUIRED_KEYS = ("class_names", "subclass_names", "subclass_to_class", "input_size", "output")


@dataclass
class ModelMeta:
    class_names: list[str]
    subclass_names: list[str]
    subclass_to_class: list[int]          # len == len(subclass_names); blocks contiguous per class
    input_size: tuple[int, int]           # (H, W)
    output: str = "subclass_logits"       # what the model's single output holds
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    precision: str = "fp32"
    arch: str = ""
    model_name: str = ""                  # e.g. "student-skd"
    producer: str = f"edgeskd {__version__}"
    positive_class: int = 1               # index of the positive class for F1/AUC
    temperature: float = 1.0              # calibrated probabilities = softmax(class logits / temperature)
    subclass_temperatures: list[float] | None = None   # T_k per subclass (subclass-logit models only)
    threshold: float | None = None        # confidence a call needs, in (0.5, 1); None = argmax, no abstention
    background_class: int | None = None   # the "no polyp" class; None = every case shows a polyp
    presence_threshold: float | None = None  # P(background) at which a frame is "no polyp"; None = 0.5
    extra: dict[str, Any] = field(default_factory=dict)  # trt_version, compute_capability, ...

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)  # type: ignore[assignment]
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        self.subclass_to_class = [int(v) for v in self.subclass_to_class]
        self.temperature = float(self.temperature)
        if self.subclass_temperatures is not None:
            self.subclass_temperatures = [float(v) for v in self.subclass_temperatures]
        if self.threshold is not None:
            self.threshold = float(self.threshold)
        if self.background_class is not None:
            self.background_class = int(self.background_class)
        if self.presence_threshold is not None:
            self.presence_threshold = float(self.presence_threshold)
        self.validate()

    # -- checks -----------------------------------------------------------------
    def validate(self) -> None:
        def bad(msg: str) -> ArtifactError:
            return ArtifactError(f"invalid model metadata: {msg}")

        if len(self.class_names) < 2:
            raise bad("needs at least 2 class names")
        if len(self.subclass_names) != len(self.subclass_to_class):
            raise bad("subclass_names and subclass_to_class differ in length")
        if sorted(set(self.subclass_to_class)) != list(range(len(self.class_names))):
            raise bad("subclass_to_class must map onto every class index 0..C-1")
        if any(b < a for a, b in zip(self.subclass_to_class, self.subclass_to_class[1:])):
            raise bad("subclass blocks must be contiguous and ordered by class")
        if len(self.input_size) != 2 or min(self.input_size) < 8:
            raise bad(f"input_size {self.input_size} must be (H, W) with both >= 8")
        if self.output not in OUTPUT_KINDS:
            raise bad(f"output {self.output!r} must be one of {OUTPUT_KINDS}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise bad(f"channel_order {self.channel_order!r} must be one of {CHANNEL_ORDERS}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise bad("mean/std must have 3 values, std > 0")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise bad(f"temperature {self.temperature} must be a finite number > 0")
        if self.subclass_temperatures is not None:
            if self.output != "subclass_logits":
                raise bad("subclass_temperatures needs a model with subclass_logits output")
            if len(self.subclass_temperatures) != len(self.subclass_names):
                raise bad(f"subclass_temperatures has {len(self.subclass_temperatures)} values for "
                          f"{len(self.subclass_names)} subclasses")
            if not all(math.isfinite(t) and t > 0 for t in self.subclass_temperatures):
                raise bad("subclass_temperatures must all be finite numbers > 0")
        if self.threshold is not None and not 0.5 < self.threshold < 1.0:
            raise bad(f"threshold {self.threshold} must lie in (0.5, 1) or be null")
        self._validate_background(bad)

    def _validate_background(self, bad) -> None:
        bg = self.background_class
        if bg is None:
            if self.presence_threshold is not None:
                raise bad("presence_threshold needs a background_class")
            return
        if not 0 <= bg < self.num_classes:
            raise bad(f"background_class {bg} is not a class index 0..{self.num_classes - 1}")
        if self.num_classes < 3:
            raise bad("a background class needs at least 2 other classes")
        if int(self.positive_class) == bg:
            raise bad("positive_class cannot be the background class")
        pt = self.presence_threshold
        if pt is not None and not (math.isfinite(pt) and 0.0 < pt < 1.0):
            raise bad(f"presence_threshold {pt} must lie in (0, 1) or be null")

    # -- derived ----------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_subclasses(self) -> int:
        return len(self.subclass_names)

    @property
    def num_outputs(self) -> int:
        return self.num_subclasses if self.output == "subclass_logits" else self.num_classes

    @property
    def polyp_classes(self) -> list[int]:
        """The class indices that show a polyp (every class without a background class)."""
        return [c for c in range(self.num_classes) if c != self.background_class]

    def polyp_outputs(self) -> list[int]:
        """The output columns of the polyp classes (their subclass logits, or their class logits)."""
        keep = set(self.polyp_classes)
        if self.output == "subclass_logits":
            return [k for k, c in enumerate(self.subclass_to_class) if c in keep]
        return list(self.polyp_classes)

    def polyp_only(self) -> "ModelMeta":
        """The metadata of the model conditional on a polyp: the background class and its subclasses
        left out (class indices above it shift down by one), so its outputs are ``polyp_outputs()``.
        The temperature(s) and threshold are kept (they are those of the conditional probabilities).
        Without a background class: this metadata itself."""
        bg = self.background_class
        if bg is None:
            return self
        cached = self.__dict__.get("_polyp_only")
        if cached is None:   # per frame in the stream: built once (any field set clears it, __setattr__)
            cached = self.__dict__["_polyp_only"] = self._build_polyp_only(bg)
        return cached

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        self.__dict__.pop("_polyp_only", None)

    def _build_polyp_only(self, bg: int) -> "ModelMeta":
        keep = [k for k, c in enumerate(self.subclass_to_class) if c != bg]
        shift = (lambda c: c - 1 if c > bg else c)  # noqa: E731
        sub_t = self.subclass_temperatures
        return self.replace(
            class_names=[n for c, n in enumerate(self.class_names) if c != bg],
            subclass_names=[self.subclass_names[k] for k in keep],
            subclass_to_class=[shift(self.subclass_to_class[k]) for k in keep],
            subclass_temperatures=None if sub_t is None else [sub_t[k] for k in keep],
            positive_class=shift(int(self.positive_class)), background_class=None, presence_threshold=None)

    # -- (de)serialisation ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "artifact") -> "ModelMeta":
        missing = [k for k in REQUIRED_KEYS if k not in d]
        if missing:
            fixable = {"input_size", "class_names"}
            hint = ("re-export it with `edgeskd export`, or pass --img-size/--classes"
                    if set(missing) <= fixable else
                    "re-export it with `edgeskd export` (--img-size/--classes give only the input size and "
                    "class names; a model with subclass outputs needs its subclass names from the checkpoint)")
            raise ArtifactError(f"{source} has no edgeskd metadata for: {', '.join(missing)}; {hint}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = dict(kwargs.pop("extra", {}) or {})
        extra.update({k: v for k, v in d.items() if k not in known})
        try:
            return cls(**kwargs, extra=extra)
        except (TypeError, ValueError) as e:
            raise ArtifactError(f"{source} has malformed edgeskd metadata: {e}") from None

    def to_props(self) -> dict[str, str]:
        """String key → JSON string, for ONNX ``metadata_props``."""
        return {f"edgeskd.{k}": json.dumps(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], *, source: str = "ONNX model") -> "ModelMeta":
        d: dict[str, Any] = {}
        for k, v in props.items():
            if not k.startswith("edgeskd."):
                continue
            try:
                d[k[len("edgeskd."):]] = json.loads(v)
            except json.JSONDecodeError:
                raise ArtifactError(f"{source}: metadata key {k} is not valid JSON") from None
        return cls.from_dict(d, source=source)

    def replace(self, **changes: Any) -> "ModelMeta":
        d = self.to_dict()
        d.update(changes)
        return ModelMeta.from_dict(d)
