"""Read MATLAB .mat files (v5 through scipy, v7.3 through h5py) into plain Python values.

Both readers return the same neutral structure so the MatConvNet parser never sees which
format a file was in:

- struct (1×1)          -> ``dict`` (field order kept)
- struct array (M×N)    -> ``list[dict]`` in MATLAB's column-major order
- cell array            -> ``list`` in column-major order
- char row              -> ``str`` (a char matrix -> ``list[str]``, one per row)
- numeric / logical     -> ``np.ndarray`` in MATLAB's own shape (at least 2-D, column-major
  semantics: index ``a[i, j, k]`` is MATLAB's ``a(i+1, j+1, k+1)``)
- class object          -> :class:`MatlabObject` (its contents are not readable from Python)

MATLAB v7.3 files are HDF5: a struct is a group (attribute ``MATLAB_class = "struct"``), a cell
is a dataset of object references into ``#refs#``, char is uint16, dims are stored reversed,
and empty arrays hold their dims with ``MATLAB_empty = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MatlabObject", "read_mat", "is_v73"]

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

    MATLAB serialises such objects into a private subsystem that Python readers cannot decode,
    so only the class name survives.
    """

    classname: str

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
    if is_v73(path):
        return _read_v73(path)
    return _read_v5(path)


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
        return MatlabObject(str(value.classname))
    if isinstance(value, matlab.MatlabFunction):
        return MatlabObject("function_handle")
    if isinstance(value, matlab.MatlabOpaque):  # classdef (MCOS) object: s2 holds the class name
        try:
            name = value[0]["s2"]
            name = name.decode("latin1") if isinstance(name, bytes) else str(name)
        except (IndexError, KeyError, ValueError):
            name = "unknown"
        return MatlabObject(name)
    if not isinstance(value, np.ndarray):
        if hasattr(value, "toarray"):  # sparse
            return np.asarray(value.toarray())
        return value
    if value.dtype.names is not None:  # struct (array)
        items = [
            {name: _from_scipy(rec[name]) for name in value.dtype.names} for rec in value.ravel(order="F")
        ]
        return items[0] if value.size == 1 else items
    if value.dtype == object:  # cell
        return [_from_scipy(v) for v in value.ravel(order="F")]
    if value.dtype.kind == "U":  # chars_as_strings gives one string per row
        rows = [str(s) for s in value.ravel(order="F")]
        if not rows:
            return ""
        return rows[0] if len(rows) == 1 else rows
    return value


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
