"""Reading images from disk (PIL), with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeskd.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_image(path: str | Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB; raises DataError naming the file if it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image not found: {p}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot decode image {p}: {e}; fix or remove it (`train` and `info` can skip unreadable "
                        "images with --skip-bad)") from None
