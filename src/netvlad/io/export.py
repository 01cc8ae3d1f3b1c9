"""A finished netvlad feature file written in the other formats ``netvlad extract --format`` offers."""

from __future__ import annotations

from pathlib import Path

from netvlad.io.features import read_attrs, read_features
from netvlad.io.hloc import export_hloc
from netvlad.io.matlab import write_bin

#: Formats :func:`export_features` writes.
EXPORT_FORMATS = ("bin", "hloc")


def export_features(features: str | Path, out: str | Path, fmt: str, as_half: bool = False) -> Path:
    """Write a netvlad HDF5 feature file as a MATLAB ``.bin`` or in hloc's layout. Atomic.

    Args:
        features: the netvlad feature file (complete).
        out: the file to write.
        fmt: "bin" (headerless float32, image-major: :func:`write_bin`) or "hloc" (a group per image:
            :func:`export_hloc`, which leaves failed images out).
        as_half: hloc only: store float16.

    Returns:
        ``out`` as a Path.

    Raises:
        ValueError: an unknown format. DiskFullError: hloc output that would not fit (checked first:
            HDF5 crashes the process on a full disk while writing many small datasets).
    """
    out = Path(out)
    if fmt == "bin":
        _, desc, _ = read_features(features)
        return write_bin(out, desc)
    if fmt != "hloc":
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    _check_space_for_hloc(Path(features), out, int(read_attrs(features)["num_images"]))
    return export_hloc(features, out, as_half=as_half)


def _check_space_for_hloc(h5: Path, out: Path, num_images: int) -> None:
    # hloc's layout needs the descriptors once more, plus about 2 KiB of metadata per image.
    from netvlad._outputs import disk_full_error, free_bytes

    need = h5.stat().st_size + 2048 * num_images
    free = free_bytes(out)
    if free is not None and free < need:
        raise disk_full_error(out, need, how="the descriptors + 2 KiB per image",
                              then=f"free some space and rerun (the descriptors stay in {h5})")
