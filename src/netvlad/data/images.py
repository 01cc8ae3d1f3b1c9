"""Image loading: any file Pillow reads becomes an H×W×3 uint8 RGB array."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: File suffixes treated as images when a folder is searched (all are formats Pillow reads).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"}
)


def list_images(folder: str | Path) -> list[str]:
    """Image files under ``folder`` (recursive), as sorted POSIX paths relative to it.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: image folder not found")
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


class ImageLoadError(ValueError):
    """An image that is missing, truncated or not an image; the message names the file."""


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode (L, LA, P, RGBA, CMYK, I;16, I, F) to H×W×3 uint8 RGB.

    16-bit and float images are scaled to 0–255 by their type's range, not clipped, so that a
    16-bit PNG does not come out white.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "LA", "PA") else img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def load_image(path: str | Path, honour_exif: bool = False) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: image file.
        honour_exif: apply the EXIF orientation tag. Off by default: the benchmarks' ground
            truth (and MATLAB's ``imread``) ignore it.

    Returns:
        H×W×3 uint8 array.

    Raises:
        ImageLoadError: missing, unreadable, truncated or corrupt file (message names it).
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if honour_exif:
                img = ImageOps.exif_transpose(img)
            return to_rgb_array(img)
    except FileNotFoundError as exc:
        raise ImageLoadError(f"{path}: image not found") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"{path}: not an image Pillow can read") from exc
    except (OSError, SyntaxError) as exc:
        raise ImageLoadError(f"{path}: corrupt or truncated image ({exc})") from exc
