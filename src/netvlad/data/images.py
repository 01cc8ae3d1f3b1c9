"""Image loading: any file Pillow reads becomes an H×W×3 uint8 RGB array.

Sizes come from file headers (Pillow opens lazily), so a caller learns an image is too big before
decoding it; a header over Pillow's decompression-bomb limit is an unreadable image, never a crash.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

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


#: EXIF orientations (tag 0x0112) that swap width and height: transposed and 90°/270° rotations.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """``Image.open`` (lazy: header only) with every failure as an ImageLoadError naming ``path``.

    A header over Pillow's decompression-bomb limit (``2·Image.MAX_IMAGE_PIXELS`` pixels, 179 Mpx
    by default) is a bad image, not a crash. Pillow's warning for sizes between the limit and twice
    it is silenced: such photos are legitimate, and extraction bounds their memory itself
    (``ExtractConfig.max_pixels``).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                yield img
    except FileNotFoundError as exc:
        raise ImageLoadError(f"{path}: image not found") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(f"{path}: not an image Pillow can read") from exc
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{path}: refused as a possible decompression bomb ({exc})") from exc
    except (OSError, SyntaxError) as exc:
        raise ImageLoadError(f"{path}: corrupt or truncated image ({exc})") from exc


def _orientation(img: Image.Image) -> int | None:
    """The EXIF orientation (1-8) read without decoding pixels; None where that is impossible.

    Pillow finds a PNG's eXIf chunk before the image data at open; one after it needs a full
    decode, so a PNG without an eXIf chunk in its header is "unknown" here rather than decoded.
    """
    if img.format == "PNG" and "exif" not in img.info:
        return None
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1))
    except (ValueError, TypeError, SyntaxError, OSError):
        return 1  # a broken EXIF block: exif_transpose ignores it too


def _oriented(size: tuple[int, int], orientation: int | None) -> tuple[int, int]:
    """(height, width) of an image of PIL ``size`` (width, height) after EXIF ``orientation``."""
    w, h = size
    return (w, h) if orientation in _SWAPPING_ORIENTATIONS else (h, w)


def image_size(path: str | Path, honour_exif: bool = False) -> tuple[int, int]:
    """(height, width) of an image from its file header, without decoding its pixels.

    Args:
        path: image file.
        honour_exif: give the size after EXIF orientation (height and width swapped for
            orientations 5-8) where the orientation is in the header; a PNG whose eXIf chunk
            follows its pixel data reports its stored size.

    Raises:
        ImageLoadError: missing, unreadable or corrupt file, or a decompression bomb (names it).
    """
    path = Path(path)
    with _opened(path) as img:
        return _oriented(img.size, _orientation(img) if honour_exif else 1)


def load_image(path: str | Path, honour_exif: bool = False,
               fit: Callable[[int, int], tuple[int, int] | None] | None = None) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: image file.
        honour_exif: apply the EXIF orientation tag. Off by default: the benchmarks' ground
            truth (and MATLAB's ``imread``) ignore it; photos from phones need it on.
        fit: given the image's (height, width) after orientation, returns the (height, width) to
            downscale it to, or None to keep it. It is called before any pixel is decoded
            (after decoding for a PNG whose orientation is not in its header), so it can refuse an
            image cheaply by raising. A JPEG is then decoded at the smallest DCT scale (1/2, 1/4,
            1/8) still at least that size (``Image.draft``); the result is resized (bilinear,
            antialiased, as ``Preprocess`` resizes) to exactly that size.

    Returns:
        H×W×3 uint8 array (the ``fit`` size when it gave one).

    Raises:
        ImageLoadError: missing, unreadable, truncated or corrupt file, or a decompression bomb
            (header over Pillow's ``2·MAX_IMAGE_PIXELS``); the message names the file.
    """
    path = Path(path)
    with _opened(path) as img:
        orientation = _orientation(img) if honour_exif else 1
        target = None
        if fit is not None and orientation is not None:
            target = fit(*_oriented(img.size, orientation))
            if target is not None:
                # draft() wants the stored (unrotated) width×height; a no-op for formats other than JPEG.
                th, tw = target
                img.draft(img.mode, (th, tw) if orientation in _SWAPPING_ORIENTATIONS else (tw, th))
        try:
            img.load()
        except Image.DecompressionBombError as exc:
            raise ImageLoadError(f"{path}: refused as a possible decompression bomb ({exc})") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageLoadError(f"{path}: corrupt or truncated image ({exc})") from exc
        if honour_exif:
            img = ImageOps.exif_transpose(img)
        if fit is not None and orientation is None:
            target = fit(img.height, img.width)
        if target is None:
            return to_rgb_array(img)
        return _resized(img, target)


def _resized(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """``img`` as RGB resized to ``size`` (H, W): the same pixels as ``to_rgb_array`` then a PIL
    bilinear resize, without an array of the full-size image when it is RGB already."""
    h, w = size
    if (img.height, img.width) == (h, w):
        return to_rgb_array(img)
    if img.mode == "RGB":
        return np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8).copy()
    return np.array(Image.fromarray(to_rgb_array(img)).resize((w, h), Image.Resampling.BILINEAR))
