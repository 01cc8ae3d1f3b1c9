"""Places: image lists with GPS/UTM geometry and protocol rules, and one loader per format.

``ImageListDataset`` is imported lazily (it needs torch; the rest of the package does not).
"""

from __future__ import annotations

from netvlad.data.formats import (
    FORMATS,
    detect_format,
    load_at_folder,
    load_csv,
    load_dataset,
    load_exif_folder,
    load_mat,
    load_patchnetvlad,
    read_exif_gps,
    save_csv,
    save_mat,
)
from netvlad.data.images import IMAGE_EXTENSIONS, ImageLoadError, list_images, load_image, to_rgb_array
from netvlad.data.places import KNOWN_RULES, PlaceDataset, dedup_ranked, dedup_ranked_matrix

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageLoadError",
    "list_images",
    "load_image",
    "to_rgb_array",
    "PlaceDataset",
    "KNOWN_RULES",
    "dedup_ranked",
    "dedup_ranked_matrix",
    "load_dataset",
    "detect_format",
    "FORMATS",
    "load_csv",
    "save_csv",
    "load_mat",
    "save_mat",
    "load_at_folder",
    "load_exif_folder",
    "load_patchnetvlad",
    "read_exif_gps",
    "ImageListDataset",
    "CheckConfig",
    "check_dataset",
]

_LAZY = {
    "ImageListDataset": "netvlad.data.torch_data",
    "CheckConfig": "netvlad.data.doctor",
    "check_dataset": "netvlad.data.doctor",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'netvlad.data' has no attribute {name!r}")
