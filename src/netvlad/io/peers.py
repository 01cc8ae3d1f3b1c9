"""Global-descriptor files of other NetVLAD implementations, read into one shape.

Every command that takes a feature file (``evaluate``, ``index build``, ``pairs``) reads it with
:func:`load_global_features`; the format is recognised by content, never by file name:

| source | content | image names |
|---|---|---|
| ``netvlad`` | our HDF5 (``format`` attribute ``netvlad-features``) | in the file |
| ``hloc`` | HDF5, a group per image name holding ``global_descriptor`` | in the file (sorted) |
| ``matlab-bin`` | MATLAB's ``serialAllFeats``: headerless little-endian float32, image-major | none |
| ``patchnetvlad-npy`` | Patch-NetVLAD's ``globalfeats.npy``: an N×D float array | none |

The last two store neither names nor (for ``.bin``) the dimension, so the caller supplies them:
the rows follow an image list (MATLAB writes them in the dataset's order; Patch-NetVLAD in the
order of the list file given to its ``feature_extract.py`` as ``--dataset_file_path``). Only our
own files carry a model fingerprint: for the others ``fingerprint`` is None, so a check that
database and queries come from one model can only say it cannot be made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from netvlad._sniff import describe, sniff
from netvlad.io.features import FORMAT, FeatureFileError, _open_h5, read_features
from netvlad.io.hloc import read_hloc
from netvlad.io.matlab import read_bin

__all__ = [
    "NAMELESS_SOURCES",
    "SOURCES",
    "GlobalFeatures",
    "align_features",
    "feature_file_kind",
    "load_global_features",
    "read_image_list",
]

#: What :func:`feature_file_kind` tells apart.
SOURCES = ("netvlad", "hloc", "matlab-bin", "patchnetvlad-npy")
#: Sources whose rows carry no image names: the caller says which image each row is.
NAMELESS_SOURCES = ("matlab-bin", "patchnetvlad-npy")

_SOURCE_WORDS = {
    "netvlad": "a netvlad feature file",
    "hloc": "an hloc global-feature file",
    "matlab-bin": "a MATLAB .bin feature file",
    "patchnetvlad-npy": "a NumPy .npy array (Patch-NetVLAD's globalfeats.npy)",
}

# A headerless .bin has no magic bytes. sniff() answers "binary" for almost every one, but its
# short signatures (2-3 bytes for pickle, legacy torch, gzip; a length heuristic for safetensors)
# match the first floats of about one .bin in ten thousand: those kinds are read as .bin too, and
# every .bin error then says what else the file may be.
_MAYBE_BIN = ("binary", "pickle", "torch-legacy", "gzip", "safetensors")


@dataclasses.dataclass(frozen=True, eq=False)
class GlobalFeatures:
    """One feature file's rows, whatever its format.

    Attributes:
        path: the file read.
        names: N image names, one per row.
        descriptors: N×D float32 (rows of images that failed extraction are NaN in our files).
        source: one of :data:`SOURCES`.
        fingerprint: the model fingerprint our files record; None when the file has none (hloc,
            MATLAB ``.bin``, Patch-NetVLAD ``.npy``, or one written without it): not checkable.
        attrs: our file's attributes (``{}`` for the others).
        names_from: where the names came from ("the file", or what the caller said).
    """

    path: Path
    names: list[str]
    descriptors: np.ndarray
    source: str
    fingerprint: str | None = None
    attrs: dict[str, Any] = dataclasses.field(default_factory=dict)
    names_from: str = "the file"

    @property
    def dim(self) -> int:
        return int(self.descriptors.shape[1])

    def __len__(self) -> int:
        return len(self.names)

    def finite(self) -> tuple[GlobalFeatures, list[str]]:
        """The rows with finite descriptors, and the names of those left out (failed images)."""
        keep = np.isfinite(self.descriptors).all(axis=1)
        if keep.all():
            return self, []
        dropped = [n for n, k in zip(self.names, keep) if not k]
        kept = dataclasses.replace(self, names=[n for n, k in zip(self.names, keep) if k],
                                   descriptors=np.ascontiguousarray(self.descriptors[keep]))
        return kept, dropped


def feature_file_kind(path: str | Path) -> str:
    """Which of :data:`SOURCES` ``path`` is, from its content (HDF5 files by their layout).

    Raises:
        FileNotFoundError: no such file.
        FeatureFileError: a file of another kind (named), or an HDF5 file of neither layout.
    """
    path = Path(path)
    kind = sniff(path)
    if kind == "missing":
        raise FileNotFoundError(f"{path}: feature file not found")
    if kind == "hdf5":
        return _hdf5_layout(path)
    if kind == "npy":
        return "patchnetvlad-npy"
    if kind in _MAYBE_BIN:
        return "matlab-bin"
    raise FeatureFileError(
        f"{path}: {describe(kind)}, not a feature file (expected a netvlad or hloc HDF5 file, a MATLAB "
        ".bin file or a NumPy .npy array)")


def _hdf5_layout(path: Path) -> str:
    with _open_h5(path) as f:
        if f.attrs.get("format") == FORMAT:
            return "netvlad"
        # visititems stops at the first non-None return: no need to walk a large hloc file.
        if f.visititems(lambda name, obj: True if isinstance(obj, h5py.Dataset)
                        and name.split("/")[-1] == "global_descriptor" else None):
            return "hloc"
    raise FeatureFileError(
        f"{path}: an HDF5 file that is neither a netvlad feature file (a '{FORMAT}' format attribute) nor "
        "an hloc global-feature file (groups holding 'global_descriptor'); hloc local features have none")


def read_image_list(path: str | Path) -> list[str]:
    """An image list as Patch-NetVLAD's ``--dataset_file_path``: one name per line, in row order.

    Names are normalised as ``netvlad.data`` normalises Patch-NetVLAD's lists (forward slashes,
    no leading ``./``), so they match a dataset's names; blank lines are skipped (Patch-NetVLAD
    cannot extract a blank name, so a list that produced features has none).

    Raises:
        FileNotFoundError: no such file. ValueError: not UTF-8 text, or no names.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image list not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text list of image names") from None
    names = []
    for line in lines:
        name = line.strip().replace("\\", "/")
        while name.startswith("./"):
            name = name[2:]
        if name:
            names.append(name)
    if not names:
        raise ValueError(f"{path}: an empty image list")
    return names


def load_global_features(path: str | Path, *, dim: int | None = None, names: Sequence[str] | None = None,
                         names_from: str | None = None) -> GlobalFeatures:
    """Read any supported feature file (see :data:`SOURCES`) as N names + N×D float32 descriptors.

    Args:
        path: the file; its format is recognised by content.
        dim: descriptor dimension. Required for a MATLAB ``.bin`` file (it records none); for the
            other formats a given ``dim`` is checked against the file's.
        names: for ``.bin`` / ``.npy`` files, the image name of each row, in row order (e.g. the
            dataset's database images, or :func:`read_image_list` of Patch-NetVLAD's list). Files
            that store their names ignore it (use :func:`align_features` to reorder their rows).
        names_from: where ``names`` came from, for error messages (a file name, "the dataset's
            database list").

    Returns:
        :class:`GlobalFeatures`.

    Raises:
        FileNotFoundError: no such file.
        FeatureFileError (a ValueError): unknown content, a row count that differs from the number
            of ``names`` (both numbers named), a missing or wrong ``dim``, a partial file.
    """
    path = Path(path)
    kind = feature_file_kind(path)
    if kind == "netvlad":
        file_names, desc, attrs = read_features(path)
        feats = GlobalFeatures(path, file_names, desc, kind, attrs.get("fingerprint") or None, attrs)
    elif kind == "hloc":
        file_names, desc = read_hloc(path)
        feats = GlobalFeatures(path, file_names, desc, kind)
    else:
        feats = _load_nameless(path, kind, dim, names, names_from or "the image list")
    if dim is not None and feats.dim != dim:
        raise FeatureFileError(f"{path}: holds {feats.dim}-D descriptors, not the {dim}-D expected")
    return feats


def _load_nameless(path: Path, kind: str, dim: int | None, names: Sequence[str] | None,
                   names_from: str) -> GlobalFeatures:
    what = _SOURCE_WORDS[kind]
    if names is None:
        raise FeatureFileError(f"{path}: {what} stores no image names: give the image list its rows follow")
    names = [str(n) for n in names]
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise FeatureFileError(
                f"{names_from}: image {n!r} is listed twice; it cannot name the rows of {path}")
        seen.add(n)
    if kind == "patchnetvlad-npy":
        desc = _read_npy(path)
        if desc.shape[0] != len(names):
            raise FeatureFileError(
                f"{path}: {desc.shape[0]} rows, but {names_from} counts {len(names)} images; the rows "
                "must follow that list (Patch-NetVLAD's --dataset_file_path)")
        return GlobalFeatures(path, names, desc, kind, names_from=names_from)
    desc = _read_bin_rows(path, dim, len(names), names_from)
    return GlobalFeatures(path, names, desc, kind, names_from=names_from)


def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle, which could run code: refused
        raise FeatureFileError(f"{path}: not a numeric .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise FeatureFileError(f"{path}: truncated or corrupt .npy file ({exc})") from None
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise FeatureFileError(f"{path}: a {arr.dtype} array of shape {arr.shape}, not N×D descriptors")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _read_bin_rows(path: Path, dim: int | None, n: int, names_from: str) -> np.ndarray:
    kind = sniff(path)
    also = "" if kind == "binary" else f" (its first bytes also look like {describe(kind)}: a .bin file?)"
    size = path.stat().st_size
    fits = f"; its {size} bytes would be {size // (4 * n)}-D for the {n} images of {names_from}" \
        if n and size % (4 * n) == 0 else ""
    if dim is None:
        raise FeatureFileError(f"{path}: a MATLAB .bin file does not record its dimension: give it "
                               f"(dim=D / --dim D, or --model MODEL for the model's out_dim){fits}{also}")
    if dim <= 0:
        raise ValueError(f"{path}: dim must be positive, got {dim}")
    if size % (4 * dim):
        raise FeatureFileError(f"{path}: {size} bytes is not a whole number of {dim}-D float32 vectors "
                               f"({size / (4 * dim):.3f}): truncated or the wrong dimension{fits}{also}")
    rows = size // (4 * dim)
    if rows != n:
        raise FeatureFileError(
            f"{path}: {rows} rows of dim {dim}, but {names_from} counts {n} images{fits}{also}")
    return read_bin(path, dim, n)


def align_features(features: GlobalFeatures, wanted: Sequence[str], role: str = "",
                   wanted_from: str = "the dataset's") -> np.ndarray:
    """Rows of ``features`` in the order of the ``wanted`` names: a len(wanted)×D float32 array.

    NaN rows (images skipped as bad during extraction) stay NaN: :func:`netvlad.metrics.evaluate`
    never ranks such a database image and counts such a query as a failure.

    Args:
        features: a loaded file (:func:`load_global_features`).
        wanted: the names whose rows are wanted, in the order wanted.
        role: a word for error messages ("database", "query").
        wanted_from: whose names ``wanted`` are, for error messages.

    Raises:
        FeatureFileError: some wanted names are not in the file (counted, first few named).
    """
    wanted = list(wanted)
    if features.names == wanted:
        return np.asarray(features.descriptors, dtype=np.float32)
    pos = {n: i for i, n in enumerate(features.names)}
    missing = [n for n in wanted if n not in pos]
    if missing:
        src = "" if features.names_from == "the file" else f" (rows named by {features.names_from})"
        raise FeatureFileError(
            f"{features.path}: {len(missing)} of {wanted_from} {len(wanted)} {(role + ' ') if role else ''}"
            f"images are not in the feature file{src}, e.g. {', '.join(missing[:5])}")
    return np.asarray(features.descriptors[[pos[n] for n in wanted]], dtype=np.float32)
