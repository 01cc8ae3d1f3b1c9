"""Published NetVLAD models by name: the catalogue, a resumable checksummed download cache, ``pretrained=``.

``create_model("vd16_pitts30k_conv5_3_vlad_preL2_intra_white", pretrained=True)`` downloads the
file once into the cache (``$NETVLAD_HOME``, else the user cache folder), verifies its sha256 on
every use (the catalogue's, or the one recorded at the first download), converts it once with
:func:`netvlad.convert.convert_file` and loads the converted checkpoint. ``list_weights()`` says
what is published, by whom, what it reproduces and under which licence.
"""

from __future__ import annotations

from pathlib import Path

from netvlad.weights.cache import CachePaths, DownloadRecord, default_cache_dir, sha256_file
from netvlad.weights.catalogue import (
    Catalogue,
    WeightsEntry,
    find_weights,
    load_catalogue,
    packaged_catalogue_path,
    resolve_catalogue,
)
from netvlad.weights.download import ChecksumError, DownloadError, DownloadResult, download_file
from netvlad.weights.pretrained import (
    cache_status,
    converter_version,
    create_model,
    get_weights,
    load_model,
    load_pretrained,
    model_reference,
    published,
)

__all__ = [
    "CachePaths",
    "Catalogue",
    "ChecksumError",
    "DownloadError",
    "DownloadRecord",
    "DownloadResult",
    "WeightsEntry",
    "cache_status",
    "converter_version",
    "create_model",
    "default_cache_dir",
    "download_file",
    "find_weights",
    "get_weights",
    "list_weights",
    "load_catalogue",
    "load_model",
    "load_pretrained",
    "model_reference",
    "packaged_catalogue_path",
    "published",
    "resolve_catalogue",
    "sha256_file",
]


def list_weights(catalogue: Catalogue | str | Path | None = None) -> list[WeightsEntry]:
    """Every published model of the catalogue (None = the packaged one), in catalogue order."""
    return list(resolve_catalogue(catalogue).entries)
