"""``convert_file``: recognise a foreign model file by its content and convert it.

MATLAB files (v5/v7 or v7.3) go to the MatConvNet converter; PyTorch checkpoints to the peer
projects' converters (:mod:`netvlad.convert.peers`), which tell the projects apart by their keys.
"""

from __future__ import annotations

from pathlib import Path

from netvlad._sniff import describe, sniff
from netvlad.convert.model import ConvertConfig, convert_matconvnet

__all__ = ["convert_file", "SUPPORTED_FORMATS"]

#: What ``netvlad convert`` reads, for help texts and error messages.
SUPPORTED_FORMATS = (
    "MatConvNet .mat models (the original NetVLAD release, with or without MATLAB class objects; "
    "hloc's *_struct.mat; MatConvNet ImageNet models), v5/v7 or v7.3",
    "PyTorch checkpoints of Patch-NetVLAD, pytorch-NetVlad, the deep-visual-geo-localization-"
    "benchmark and OpenIBL (.pth / .pth.tar)",
)


def convert_file(path: str | Path, config: ConvertConfig | None = None, **options):
    """Convert any supported model file into a :class:`~netvlad.models.PlaceModel`.

    Args:
        path: the file; its format is recognised from its content, not its name.
        config: :class:`ConvertConfig` (method/crop/K for backbone-only MatConvNet files).
        options: format-specific options passed to the PyTorch converters (e.g. ``pca=`` for an
            OpenIBL checkpoint's separate PCA file).

    Returns:
        (model in eval mode on the CPU, :class:`ConversionInfo`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file of no supported format (the message says what the file is and what
            was expected), or a supported format whose content does not fit.
    """
    path = Path(path)
    kind = sniff(path)
    if kind == "missing":
        raise FileNotFoundError(f"{path}: no such file")
    if kind in ("matlab-v5", "matlab-v73") or (kind == "hdf5" and path.suffix.lower() == ".mat"):
        if options:
            raise ValueError(f"{path}: options {sorted(options)} do not apply to a MATLAB file")
        return convert_matconvnet(path, config)
    if kind in ("torch-zip", "torch-legacy", "zip", "tar"):
        from netvlad.convert.peers import convert_torch_checkpoint

        return convert_torch_checkpoint(path, config, **options)
    raise ValueError(
        f"{path}: {describe(kind)}, not a model file this converter reads; expected "
        + "; or ".join(SUPPORTED_FORMATS)
    )
