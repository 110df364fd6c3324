"""Model weights: reading weight files safely, local backbone state dicts, and ImageNet weights
found in a local cache first, downloaded second, and otherwise refused with one line that names the
exact file and the folder to put it in.

- Every file is read with ``torch.load(weights_only=True)`` (no code runs on load; torch's warnings
  about foreign pickles silenced, the caller turns the failure into one line) or safetensors.
- ``pretrained=PATH``: a local state dict; tensors whose name and shape match go into the model
  (the head, of another size, keeps its own initialisation).
- ``pretrained="imagenet"``, registry models (torchvision architectures): the weight enum's DEFAULT
  entry (``torchvision.models.get_model_weights(name).DEFAULT``), cached in the torch hub folder
  (``$TORCH_HOME/hub/checkpoints/<file name in the enum's URL>``, e.g. ``resnet18-f37072fd.pth``),
  downloaded with ``torch.hub.download_url_to_file`` (hash prefix checked).
- ``pretrained="imagenet"``, timm models: the model's default pretrained tag on the Hugging Face hub
  (``timm/<arch>.<tag>``), looked up in the Hugging Face cache (``$HF_HUB_CACHE``, else
  ``$HF_HOME/hub``) and downloaded with ``huggingface_hub.hf_hub_download``; ``HF_HUB_OFFLINE=1``
  skips the download.

Downloads use a short socket time-out (``DOWNLOAD_TIMEOUT_S`` per network operation) so a machine
without a network fails in seconds, not minutes. ``weight_file`` finds (or fetches) the file without
building a model, so a training run can fail before it writes anything.
"""

from __future__ import annotations

import os
import socket
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

from edgeskd.errors import ArtifactError, UsageError

IMAGENET = "imagenet"
DOWNLOAD_TIMEOUT_S = 10.0
# timm's Hugging Face repos hold one of these (the first is preferred, as timm itself does).
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def is_imagenet(pretrained: object) -> bool:
    return isinstance(pretrained, str) and pretrained.strip().lower() == IMAGENET


@contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """A default time-out for sockets opened inside the block (urllib opens them without one)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


# -- reading files -----------------------------------------------------------------------
def load_weights_only(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU (no code runs on load), torch's warnings silenced.

    A file that is not a torch checkpoint (e.g. a plain pickle) makes torch warn about its pickle
    protocol before the load fails. Callers turn that failure into a one-line error; the warning
    would only print a library line above it.
    """
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: Path, *, what: str = "cached weights",
                    fix: str = "delete it and run again") -> dict[str, Any]:
    """A state dict from a .pth/.pt/.bin (weights_only) or a .safetensors file; a one-line
    ArtifactError ("cannot read <what> <path> (<why>); <fix>") otherwise."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = load_weights_only(path)
    except Exception as e:  # noqa: BLE001 - truncated download, foreign pickle, ...
        raise ArtifactError(f"cannot read {what} {path} ({_reason(e)}); {fix}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ArtifactError(f"{path} is not a state dict; {fix}")
    return state


def load_backbone_weights(model: Any, path: str | os.PathLike[str]) -> None:
    """Load a local state dict into the backbone; the classification head is left as initialised."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"--pretrained {p} does not exist; give a local .pt/.pth state dict or 'imagenet'")
    state = read_state_dict(p, what="weights", fix="give a torch state dict")
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ArtifactError(f"no tensor in {p} matches the model's backbone; is it for this architecture?")
    model.load_state_dict(usable, strict=False)


# -- torchvision ------------------------------------------------------------------------
def torchvision_weights(name: str) -> Any | None:
    """The DEFAULT ImageNet weight enum of a torchvision architecture, or None if it has none."""
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def torchvision_weight_file(weights: Any) -> Path:
    """Where torch hub keeps (and looks for) this enum's file: ``<torch hub dir>/checkpoints/<name>``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def torchvision_weight_path(name: str) -> Path:
    """The ImageNet weight file of registry model ``name``: the torch hub cache, else a download, else
    a one-line error."""
    weights = torchvision_weights(name)
    if weights is None:
        raise UsageError(f"{name} has no ImageNet weights; train it from scratch, give a local state dict "
                         "(--pretrained PATH), or pick a model that has them (e.g. resnet18, mobilenet_v3_small)")
    path = torchvision_weight_file(weights)
    if not path.is_file():
        _download_torch_hub(weights.url, path, name)
    return path


def _download_torch_hub(url: str, path: Path, name: str) -> None:
    import torch

    m = torch.hub.HASH_REGEX.search(path.name)
    made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]   # child first
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with socket_timeout(DOWNLOAD_TIMEOUT_S):
            torch.hub.download_url_to_file(url, str(path), hash_prefix=m.group(1) if m else None, progress=False)
    except Exception as e:  # noqa: BLE001 - no network, DNS, HTTP error, hash mismatch, disk full
        for d in made:      # leave no empty cache folders behind (torch hub removed its temp file)
            try:
                d.rmdir()
            except OSError:
                break
        raise ArtifactError(
            f"ImageNet weights for {name} are not cached and could not be downloaded ({_reason(e)}): "
            f"put {path.name} (from {url}) in {path.parent}/ (the torch hub cache; set TORCH_HOME to move it)"
        ) from None


# -- timm / Hugging Face -----------------------------------------------------------------
def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def timm_hf_source(arch: str) -> tuple[str, tuple[str, ...]]:
    """(Hugging Face repo id, candidate file names) of a timm architecture's default (or tagged) weights."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not cfg.hf_hub_id:
        raise UsageError(f"timm:{arch} has no ImageNet weights on the Hugging Face hub; train it from scratch, "
                         "give a local state dict (--pretrained PATH), or pick a tag that has them "
                         "(timm.list_pretrained())")
    repo = cfg.hf_hub_id.split("@")[0]
    return repo, ((cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES)


def hf_snapshot_dir(repo: str) -> Path:
    """The folder a user can put a file in by hand: the cache's ``snapshots/main`` of ``repo``."""
    return hf_cache_dir() / f"models--{repo.replace('/', '--')}" / "snapshots" / "main"


def timm_weight_file(arch: str) -> Path:
    """Local path of a timm architecture's ImageNet weights: the Hugging Face cache, else a download."""
    from huggingface_hub import try_to_load_from_cache

    repo, files = timm_hf_source(arch)
    cache = hf_cache_dir()
    for f in files:
        hit = try_to_load_from_cache(repo, f, cache_dir=cache)
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit)
    if hf_offline():
        reason = "HF_HUB_OFFLINE is set"
    else:
        got = _hf_download(repo, files, cache)
        if isinstance(got, Path):
            return got
        reason = got
    raise ArtifactError(
        f"ImageNet weights for timm:{arch} are not in the Hugging Face cache and could not be downloaded "
        f"({reason}): put {files[0]} (from https://huggingface.co/{repo}/resolve/main/{files[0]}) "
        f"in {hf_snapshot_dir(repo)}/ (set HF_HOME to move the cache)"
    )


def _unreachable(url: str) -> str | None:
    """None when ``url``'s server answers (any HTTP status), else why not (one short try)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=DOWNLOAD_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return None
    except Exception as e:  # noqa: BLE001 - DNS, refused, time-out, TLS
        return _reason(e)
    return None


def _hf_download(repo: str, files: tuple[str, ...], cache: Path) -> Path | str:
    """The downloaded file's path, or why no file could be downloaded."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    unreachable = _unreachable(f"{endpoint}/api/models/{repo}")
    if unreachable:   # huggingface_hub retries connection errors with back-off for ~30 s: fail fast instead
        return unreachable
    reason = f"none of {', '.join(files)} in {repo}"
    for f in files:
        try:
            with socket_timeout(DOWNLOAD_TIMEOUT_S):
                return Path(hf_hub_download(repo, f, cache_dir=cache, etag_timeout=DOWNLOAD_TIMEOUT_S))
        except EntryNotFoundError:
            continue
        except Exception as e:  # noqa: BLE001 - offline, DNS, HTTP, gated repo, disk full
            return _reason(e)
    return reason


# -- loading into a model ----------------------------------------------------------------
def _head_keys(model: Any) -> set[str]:
    """State-dict keys of the model's last Linear layer (the classification head)."""
    from torch import nn

    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return {f"{last[-1]}.weight", f"{last[-1]}.bias"} if last else set()


def load_imagenet_weights(model: Any, name: str) -> None:
    """Load torchvision ImageNet weights into registry model ``name``; its head keeps its own init.
    Every backbone tensor must fit: a partial load would train a half-random backbone silently."""
    state = read_state_dict(torchvision_weight_path(name))
    own = model.state_dict()
    head = _head_keys(model)
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape and k not in head}
    missing = sorted(k for k in own if k not in usable and k not in head and not k.endswith("num_batches_tracked"))
    if missing:
        raise ArtifactError(f"ImageNet weights for {name} do not fit the model ({len(missing)} tensors missing "
                            f"or of another shape, e.g. {missing[0]})")
    model.load_state_dict(usable, strict=False)


def weight_file(name: str, pretrained: str | os.PathLike[str] | None) -> Path | None:
    """The file model ``name`` would load for ``pretrained`` (fetched into its cache if it is not
    there yet), without building the model; a one-line error if there is none. None: no weights."""
    if pretrained is None:
        return None
    if not is_imagenet(pretrained):
        p = Path(pretrained)
        if not p.is_file():
            raise UsageError(f"--pretrained {p} does not exist; give a local .pt/.pth state dict or 'imagenet'")
        return p
    if name.startswith("timm:"):
        return timm_weight_file(name[len("timm:"):].strip())
    return torchvision_weight_path(name)


def load_pretrained(model: Any, name: str, pretrained: str | os.PathLike[str]) -> None:
    """``pretrained`` = 'imagenet' (the cache, else a download) or a local state dict (backbone only)."""
    if is_imagenet(pretrained):
        load_imagenet_weights(model, name)
    else:
        load_backbone_weights(model, pretrained)
