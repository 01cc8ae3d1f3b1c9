"""MATLAB ``dbStruct`` files (Pittsburgh 250k/30k, TokyoTM, Tokyo 24/7): v5 via scipy, v7.3 via h5py.

Layout (Relja/netvlad ``dbBase``; pytorch-NetVlad parses the fields positionally, so the writer
keeps this order): ``whichSet``, ``dbImageFns`` (N×1 cell of char), ``utmDb`` (2×N double),
``qImageFns``, ``utmQ`` (2×Q), ``numImages``, ``numQueries``, ``posDistThr`` (25),
``posDistSqThr`` (625), ``nonTrivPosDistSqThr`` (100); TokyoTM adds ``dbTimeStamp``,
``qTimeStamp``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from netvlad._atomic import atomic_write
from netvlad.data.formats._common import (
    bad,
    looks_tokyo247,
    rel_name,
    resolve_roots,
    tokyo247_conditions,
    tokyo247_groups,
)
from netvlad.data.places import PlaceDataset

FIELD_ORDER = (
    "whichSet",
    "dbImageFns",
    "utmDb",
    "qImageFns",
    "utmQ",
    "numImages",
    "numQueries",
    "posDistThr",
    "posDistSqThr",
    "nonTrivPosDistSqThr",
)


def is_mat73(path: Path) -> bool:
    """MATLAB v7.3 files are HDF5 (with a 512-byte text header MATLAB adds in front)."""
    with open(path, "rb") as f:
        head = f.read(128)
    if b"MATLAB 7.3" in head:
        return True
    import h5py

    return bool(h5py.is_hdf5(str(path)))


# ----------------------------------------------------------------------------- v5 (scipy)


def _v5_value(v, path, field):
    """scipy.io.loadmat value -> str | list[str] | ndarray in MATLAB orientation."""
    if isinstance(v, np.ndarray) and v.dtype.kind == "U":
        return "".join(v.ravel().tolist()) if v.size else ""
    if isinstance(v, np.ndarray) and v.dtype == object:  # cell array
        out = []
        for item in v.ravel(order="F"):
            if isinstance(item, np.ndarray) and item.dtype.kind == "U":
                out.append("".join(item.ravel().tolist()) if item.size else "")
            elif isinstance(item, str):
                out.append(item)
            else:
                raise bad(path, field, "cell array entries must be strings")
        return out
    if isinstance(v, np.ndarray) and v.dtype.kind in "fiub":
        return v
    raise bad(path, field, f"unsupported MATLAB value of type {type(v).__name__}")


def _read_v5(path: Path) -> dict:
    import scipy.io

    try:
        m = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=True, chars_as_strings=True)
    except Exception as exc:  # scipy raises many types on corrupt input
        raise ValueError(
            f"{path}: not a readable MATLAB v5 .mat file ({type(exc).__name__}: {exc})"
        ) from None
    if "dbStruct" not in m:
        keys = sorted(k for k in m if not k.startswith("__"))
        raise bad(path, "dbStruct", f"variable missing (file holds {keys})")
    s = m["dbStruct"]
    if not (isinstance(s, np.ndarray) and s.dtype.names and s.size == 1):
        raise bad(path, "dbStruct", "is not a 1×1 struct")
    rec = s.ravel()[0]
    return {name: _v5_value(rec[name], path, name) for name in s.dtype.names}


# ----------------------------------------------------------------------------- v7.3 (h5py)


def _h5_char(ds) -> str:
    if ds.attrs.get("MATLAB_empty", 0):
        return ""
    arr = np.asarray(ds[()])
    # MATLAB stores column-major: a 1×L char row is an HDF5 (L, 1) uint16 array.
    return "".join(chr(c) for c in arr.T.ravel().tolist())


def _h5_class(ds) -> str:
    c = ds.attrs.get("MATLAB_class", b"")
    return c.decode() if isinstance(c, bytes) else str(c)


def _h5_value(f, ds, path, field):
    import h5py

    if isinstance(ds, h5py.Group):
        raise bad(path, field, "nested structs are not supported")
    cls = _h5_class(ds)
    if cls == "char":
        return _h5_char(ds)
    if cls == "cell":
        out = []
        for ref in np.asarray(ds[()]).ravel():  # HDF5 C order == MATLAB column-major order
            target = f[ref]
            if _h5_class(target) != "char":
                raise bad(path, field, "cell array entries must be strings")
            out.append(_h5_char(target))
        return out
    if ds.attrs.get("MATLAB_empty", 0):
        return np.zeros((0, 0))
    arr = np.asarray(ds[()])
    if arr.dtype.kind not in "fiub":
        raise bad(path, field, f"unsupported MATLAB class {cls or arr.dtype}")
    return arr.T


def _read_v73(path: Path) -> dict:
    import h5py

    try:
        f = h5py.File(str(path), "r")
    except Exception as exc:
        raise ValueError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({exc})") from None
    with f:
        if "dbStruct" not in f:
            raise bad(
                path, "dbStruct", f"variable missing (file holds {sorted(k for k in f if k != '#refs#')})"
            )
        g = f["dbStruct"]
        if not isinstance(g, h5py.Group):
            raise bad(path, "dbStruct", "is not a struct")
        try:
            return {k: _h5_value(f, g[k], path, k) for k in g.keys()}
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"{path}: dbStruct: unreadable ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------- common


def _names(fields, key, path) -> list[str]:
    v = fields.get(key)
    if v is None:
        raise bad(path, key, "field missing")
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list):
        raise bad(path, key, "must be a cell array of file names")
    return [rel_name(s) for s in v]


def _utm(fields, key, n, path) -> np.ndarray:
    v = fields.get(key)
    if v is None:
        raise bad(path, key, "field missing")
    if isinstance(v, (str, list)):
        raise bad(path, key, "must be a numeric 2×N matrix")
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 2 and a.shape == (2, n):
        return a.T.copy()
    if a.ndim == 2 and a.shape == (n, 2):
        return a.copy()
    if n == 0 and a.size == 0:
        return np.zeros((0, 2))
    raise bad(path, key, f"has shape {a.shape[0]}×{a.shape[1] if a.ndim > 1 else 1}, expected 2×{n}")


def _scalar(fields, key, path, default):
    v = fields.get(key)
    if v is None:
        return default
    a = np.asarray(v)
    if isinstance(v, (str, list)) or a.size != 1 or a.dtype.kind not in "fiub":
        raise bad(path, key, "must be a numeric scalar")
    return float(a.ravel()[0])


def _vector(fields, key, n, path):
    v = fields.get(key)
    if v is None:
        return None
    a = np.asarray(v).ravel()
    if isinstance(v, (str, list)) or a.size != n:
        raise bad(path, key, f"must be a numeric vector of {n} values")
    return a.astype(np.int64) if a.dtype.kind == "f" and np.all(a == np.round(a)) else a


def load_mat(path: str | Path, images: str | Path | None = None) -> PlaceDataset:
    """Load a MATLAB ``dbStruct`` file (v5 or v7.3).

    Args:
        path: the ``.mat`` file.
        images: dataset root; image names are relative to ``images/images/`` (or ``images/``) for
            the database and ``queries/``, ``query/`` or ``images/`` for queries (the Pittsburgh,
            Tokyo 24/7 and TokyoTM layouts), whichever holds the first listed image. Default: the
            .mat file's folder.

    Raises:
        ValueError: one line naming the file and the offending field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    fields = _read_v73(path) if is_mat73(path) else _read_v5(path)
    db = _names(fields, "dbImageFns", path)
    qs = _names(fields, "qImageFns", path)
    db_utm = _utm(fields, "utmDb", len(db), path)
    q_utm = _utm(fields, "utmQ", len(qs), path)
    pos = _scalar(fields, "posDistThr", path, 25.0)
    nontriv_sq = _scalar(fields, "nonTrivPosDistSqThr", path, 100.0)
    notes = []
    for key, n in (("numImages", len(db)), ("numQueries", len(qs))):
        v = _scalar(fields, key, path, float(n))
        if int(v) != n:  # dbLoad recomputes these, so a stale count is only worth a remark
            notes.append(f"{path}: {key} = {int(v)} but {n} names are listed (using {n})")
    db_ts = _vector(fields, "dbTimeStamp", len(db), path)
    q_ts = _vector(fields, "qTimeStamp", len(qs), path)
    which = fields.get("whichSet")
    which = which if isinstance(which, str) else ""
    name = path.stem
    rules = set()
    if db_ts is not None and q_ts is not None:
        rules.add("tokyotm_timestamp")
    groups = conditions = None
    if looks_tokyo247(name, which):
        rules.add("tokyo247_dedup")
        groups = tokyo247_groups(db)
        conditions = tokyo247_conditions(qs)
    root = Path(images) if images is not None else path.parent
    db_root, q_root = resolve_roots(root, db, qs, ["images"], ["queries", "query", "images"])
    return PlaceDataset(
        name=name,
        db_root=db_root,
        query_root=q_root,
        db_images=db,
        query_images=qs,
        db_utm=db_utm,
        query_utm=q_utm,
        zone=None,
        db_timestamps=db_ts,
        query_timestamps=q_ts,
        pos_radius=pos,
        train_pos_radius=float(np.sqrt(nontriv_sq)),
        rules=frozenset(rules),
        db_groups=groups,
        query_conditions=conditions,
        notes=notes,
    )


# The 128-byte v5 file header: 116 bytes of text, 8 of subsystem offset, version 0x0100 and the
# endian indicator "IM", both in native byte order as scipy writes the data.
_V5_HEADER = (
    b"MATLAB 5.0 MAT-file, written by netvlad".ljust(116, b" ")
    + bytes(8)
    + np.array([0x0100, 0x4D49], dtype=np.uint16).tobytes()
)


def save_mat(ds: PlaceDataset, path: str | Path, which_set: str | None = None) -> Path:
    """Write ``ds`` as a MATLAB v5 ``dbStruct`` that Relja/netvlad's ``dbBase`` and pytorch-NetVlad read.

    Names are written relative to their own roots (MATLAB's ``dbPath``/``qPath``). Headings,
    groups, conditions and the zone are not part of the format and are not written; timestamps
    are (as TokyoTM's ``dbTimeStamp``/``qTimeStamp``). Atomic.

    Returns:
        ``path``.
    """
    import scipy.io

    path = Path(path)

    def cell(names):
        c = np.empty((len(names), 1), dtype=object)
        for i, n in enumerate(names):
            c[i, 0] = n
        return c

    s = {
        "whichSet": which_set or ds.name,
        "dbImageFns": cell(ds.db_images),
        "utmDb": np.ascontiguousarray(ds.db_utm.T, dtype=np.float64),
        "qImageFns": cell(ds.query_images),
        "utmQ": np.ascontiguousarray(ds.query_utm.T, dtype=np.float64),
        "numImages": float(ds.num_db),
        "numQueries": float(ds.num_queries),
        "posDistThr": float(ds.pos_radius),
        "posDistSqThr": float(ds.pos_radius) ** 2,
        "nonTrivPosDistSqThr": float(ds.train_pos_radius) ** 2,
    }
    if ds.db_timestamps is not None and ds.query_timestamps is not None:
        s["dbTimeStamp"] = np.asarray(ds.db_timestamps, dtype=np.float64).reshape(1, -1)
        s["qTimeStamp"] = np.asarray(ds.query_timestamps, dtype=np.float64).reshape(1, -1)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            # Our own header first: scipy's holds the creation time, so two identical datasets
            # would give different bytes. savemat skips its header when the stream is not at 0.
            f.write(_V5_HEADER)
            scipy.io.savemat(f, {"dbStruct": s}, format="5", do_compression=True, oned_as="column")

    return atomic_write(path, write)
