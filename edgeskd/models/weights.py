"""Reading torch weight files safely and quietly."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


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
