"""Read MATLAB .mat files (v5 through scipy, v7.3 through h5py, class objects through mat-io).

Every reader returns the same neutral structure so the MatConvNet parser never sees which
format a file was in:

- struct (1×1)          -> ``dict`` (field order kept)
- struct array (M×N)    -> ``list[dict]`` in MATLAB's column-major order
- cell array            -> ``list`` in column-major order
- char row              -> ``str`` (a char matrix -> ``list[str]``, one per row)
- numeric / logical     -> ``np.ndarray`` in MATLAB's own shape (at least 2-D, column-major
  semantics: index ``a[i, j, k]`` is MATLAB's ``a(i+1, j+1, k+1)``)
- class object          -> :class:`MatlabObject`: class name and properties (neutral values)

MATLAB stores classdef (MCOS) objects' properties in a private "subsystem" (the v5 header's
subsystem offset, the v7.3 ``#subsystem#`` group). scipy and h5py cannot decode it, so a file that
has one is read entirely by the mat-io package (``matio``, Python >= 3.11); files without one keep
the scipy/h5py readers, which also serve Python 3.10. Without mat-io, objects keep only their class
name and :attr:`MatlabObject.unreadable` says why.

MATLAB v7.3 files are HDF5: a struct is a group (attribute ``MATLAB_class = "struct"``), a cell
is a dataset of object references into ``#refs#``, char is uint16, dims are stored reversed,
and empty arrays hold their dims with ``MATLAB_empty = 1``.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MatlabObject", "read_mat", "is_v73", "has_subsystem", "MATIO_MISSING"]

log = logging.getLogger(__name__)

#: Why objects have no properties when mat-io cannot be imported (it needs Python >= 3.11).
MATIO_MISSING = "reading MATLAB class objects needs the mat-io package (pip install mat-io; Python >= 3.11)"

_NUMERIC_CLASSES = {
    "double": np.float64,
    "single": np.float32,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "uint64": np.uint64,
}


@dataclass(frozen=True)
class MatlabObject:
    """A MATLAB class instance (classdef/MCOS, old-style object or function handle).

    Attributes:
        classname: the MATLAB class, e.g. ``"layerVLAD"``.
        properties: ``{property: neutral value}`` as saved (class defaults filled in). A class with
            a ``saveobj`` method stores what that returned as the single property ``"any"``. None
            when the contents could not be read.
        unreadable: why ``properties`` is None, in words ("" when it is not).
    """

    classname: str
    properties: dict[str, Any] | None = field(default=None, hash=False)
    unreadable: str = ""

    def __str__(self) -> str:
        return f"MATLAB object of class {self.classname!r}"


def is_v73(path: str | Path) -> bool:
    """True when ``path`` is an HDF5 file (MATLAB ``save -v7.3``)."""
    import h5py

    return h5py.is_hdf5(str(path))


def read_mat(path: str | Path) -> dict[str, Any]:
    """Read every top-level variable of a .mat file (v5/v6/v7 or v7.3).

    Args:
        path: the .mat file.

    Returns:
        ``{variable name: value}`` in the neutral structure described in the module docstring
        (MATLAB's private ``__header__``-style entries and the v7.3 ``#refs#`` group left out).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a MATLAB file (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if has_subsystem(path):
        matio = _import_matio()
        why = MATIO_MISSING
        if matio is not None:
            try:
                return _read_matio(path, matio)
            except Exception as exc:  # mat-io's own error types, numpy/h5py ones: scipy/h5py judge the file
                log.debug("%s: mat-io failed, reading without class objects", path, exc_info=True)
                why = f"mat-io could not decode it ({type(exc).__name__}: {exc})"
    else:
        why = "the file has no MCOS subsystem, where MATLAB stores class objects' properties"
    return _mark_unreadable(_read_v73(path) if is_v73(path) else _read_v5(path), why)


def has_subsystem(path: str | Path) -> bool:
    """True when the file carries MATLAB's object subsystem (it holds classdef objects)."""
    path = Path(path)
    if is_v73(path):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                return "#subsystem#" in f
        except OSError:
            return False  # _read_v73 reports the file
    with open(path, "rb") as f:
        header = f.read(128)
    if len(header) < 128 or header[126:128] not in (b"IM", b"MI"):
        return False
    offset = int.from_bytes(header[116:124], "little" if header[126:128] == b"IM" else "big")
    return offset not in (0, 0x2020202020202020)  # unset: zeros, or spaces as some writers leave it


def _import_matio():
    try:
        import matio
    except ImportError:  # not installed, or Python < 3.11 (it imports enum.StrEnum)
        return None
    return matio


def _mark_unreadable(value: Any, why: str) -> Any:
    """Attach ``why`` to every object the scipy/h5py readers left without properties."""
    if isinstance(value, MatlabObject) and value.properties is None and not value.unreadable:
        return replace(value, unreadable=why)
    if isinstance(value, dict):
        return {k: _mark_unreadable(v, why) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_unreadable(v, why) for v in value]
    return value


# --------------------------------------------------------------------------- v5 (scipy)


def _read_v5(path: Path) -> dict[str, Any]:
    import scipy.io

    try:
        # No squeezing: MATLAB shapes are kept so weights can be reshaped by their documented dims.
        raw = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=True, chars_as_strings=True)
    except NotImplementedError as exc:  # scipy's answer to v7.3, should h5py not recognise it
        raise ValueError(f"{path}: MATLAB v7.3 file that is not valid HDF5 ({exc})") from exc
    except Exception as exc:  # scipy raises ValueError/TypeError/OSError variants for junk input
        raise ValueError(f"{path}: not a MATLAB .mat file scipy can read ({exc})") from exc
    return {k: _from_scipy(v) for k, v in raw.items() if not k.startswith("__")}


def _from_scipy(value: Any) -> Any:
    from scipy.io import matlab

    if isinstance(value, matlab.MatlabObject):  # old-style (pre-classdef) object: struct + classname
        return MatlabObject(str(value.classname), _object_fields(value, _from_scipy))
    if isinstance(value, matlab.MatlabFunction):
        return MatlabObject("function_handle", None, "a function handle")
    if isinstance(value, matlab.MatlabOpaque):  # classdef (MCOS) object: s2 holds the class name
        try:
            name = value[0]["s2"]
            name = name.decode("latin1") if isinstance(name, bytes) else str(name)
        except (IndexError, KeyError, ValueError):
            name = "unknown"
        return MatlabObject(name)
    return _from_array(value, _from_scipy)


def _object_fields(value: np.ndarray, convert) -> dict[str, Any] | None:
    """The fields of a 1×1 old-style object (a struct with a class name); None for an object array."""
    fields = _from_array(np.asarray(value), convert)
    return fields if isinstance(fields, dict) else None


def _from_array(value: Any, convert) -> Any:
    """Struct / cell / char / numeric arrays in MATLAB's shape; ``convert`` reads each element."""
    if not isinstance(value, np.ndarray):
        if hasattr(value, "toarray"):  # sparse
            return np.asarray(value.toarray())
        return value
    if value.dtype.names is not None:  # struct (array)
        items = [{name: convert(rec[name]) for name in value.dtype.names} for rec in value.ravel(order="F")]
        return items[0] if value.size == 1 else items
    if value.dtype == object:  # cell
        return [convert(v) for v in value.ravel(order="F")]
    if value.dtype.kind == "U":  # chars_as_strings gives one string per row
        rows = [str(s) for s in value.ravel(order="F")]
        if not rows:
            return ""
        return rows[0] if len(rows) == 1 else rows
    return value


# --------------------------------------------------------------------------- class objects (mat-io)


def _read_matio(path: Path, matio) -> dict[str, Any]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        raw = matio.load_from_mat(str(path), raw_data=True)
    notes = [str(w.message) for w in caught]
    for note in notes:
        log.debug("%s: mat-io: %s", path, note)
    why = "mat-io could not decode it" + (f" ({notes[0]})" if notes else "")
    convert = _matio_converter(why)
    return {k: convert(v) for k, v in raw.items() if not k.startswith("__")}


def _matio_converter(why: str):
    from matio.utils import matclass as mc

    def convert(value: Any) -> Any:
        if isinstance(value, mc.MatlabOpaque):
            props = value.properties
            if isinstance(props, tuple):  # an empty object array: only its dims
                return []
            if not isinstance(props, dict):  # mat-io returns the raw metadata when decoding fails
                return MatlabObject(str(value.classname), None, why)
            return MatlabObject(str(value.classname), {k: convert(v) for k, v in props.items()})
        if isinstance(value, mc.MatlabOpaqueArray):  # an array of objects: a list, like a cell
            items = [convert(v) for v in np.asarray(value).ravel(order="F")]
            return items[0] if len(items) == 1 else items
        if isinstance(value, mc.MatlabEnumerationArray):
            return MatlabObject(str(value.classname), None, "a MATLAB enumeration")
        if isinstance(value, mc.MatlabObject):  # old-style object: struct + classname
            return MatlabObject(str(value.classname), _object_fields(value, convert))
        if isinstance(value, mc.MatlabFunction):
            return MatlabObject("function_handle", None, "a function handle")
        if isinstance(value, mc.MatlabCanonicalEmpty):
            return np.zeros((0, 0))
        if isinstance(value, mc.EmptyMatStruct):
            return []
        if isinstance(value, mc.MatlabContainerMap):
            return MatlabObject("containers.Map", {str(k): convert(v) for k, v in value.items()})
        if isinstance(value, np.ndarray) and type(value) is not np.ndarray:
            value = np.asarray(value)
        return _from_array(value, convert)

    return convert


# --------------------------------------------------------------------------- v7.3 (h5py)


def _read_v73(path: Path) -> dict[str, Any]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {k: _from_h5(f, f[k]) for k in f.keys() if not k.startswith("#")}
    except OSError as exc:
        raise ValueError(f"{path}: cannot read as a MATLAB v7.3 (HDF5) file ({exc})") from exc


def _attr_str(node, name: str) -> str | None:
    value = node.attrs.get(name)
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.tobytes() if value.dtype.kind == "S" else value.item()
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _from_h5(f, node) -> Any:
    import h5py

    cls = _attr_str(node, "MATLAB_class")
    if isinstance(node, h5py.Group):
        return _h5_struct(f, node)
    if node.attrs.get("MATLAB_object_decode") is not None or (
        cls is not None and cls not in _NUMERIC_CLASSES and cls not in ("cell", "char", "logical", "struct")
    ):
        return MatlabObject(cls or "unknown")
    if node.attrs.get("MATLAB_empty") is not None and int(np.asarray(node.attrs["MATLAB_empty"]).ravel()[0]):
        # An empty array stores its MATLAB dims as data.
        dims = tuple(int(d) for d in np.asarray(node[()]).ravel())
        if cls == "char":
            return ""
        if cls in ("cell", "struct"):
            return []
        return np.zeros(dims or (0, 0), dtype=_NUMERIC_CLASSES.get(cls or "double", np.float64))
    data = node[()]
    if node.dtype == h5py.ref_dtype or (node.dtype.kind == "O"):
        refs = np.asarray(data).ravel()  # reversed dims in C order == MATLAB column-major
        return [_from_h5(f, f[r]) for r in refs]
    arr = np.asarray(data)
    if arr.dtype.names and set(arr.dtype.names) >= {"real", "imag"}:
        arr = arr["real"] + 1j * arr["imag"]
    arr = arr.T  # HDF5 stores MATLAB's dims reversed
    if arr.ndim < 2:
        arr = arr.reshape(1, -1)
    if cls == "char":
        rows = ["".join(chr(c) for c in row) for row in arr.astype(np.uint32)]
        return rows[0] if len(rows) == 1 else rows
    if cls == "logical":
        return arr.astype(bool)
    return arr


def _h5_struct(f, group) -> Any:
    import h5py

    fields = list(group.keys())
    if "MATLAB_fields" in group.attrs:  # the saved field order
        order = [
            "".join(c.decode("latin1") if isinstance(c, bytes) else str(c) for c in name)
            for name in group.attrs["MATLAB_fields"]
        ]
        fields = [n for n in order if n in group] + [n for n in fields if n not in order]
    # A struct *array* stores each field as a dataset of references without a MATLAB_class.
    is_array = bool(fields) and all(
        isinstance(group[n], h5py.Dataset)
        and group[n].dtype == h5py.ref_dtype
        and _attr_str(group[n], "MATLAB_class") is None
        for n in fields
    )
    if not is_array:
        return {n: _from_h5(f, group[n]) for n in fields}
    columns = {n: np.asarray(group[n][()]).ravel() for n in fields}
    count = len(next(iter(columns.values())))
    return [{n: _from_h5(f, f[columns[n][i]]) for n in fields} for i in range(count)]
