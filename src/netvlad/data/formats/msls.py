"""Mapillary Street-Level Sequences (MSLS) in its own layout, read as Mapillary's ``msls.py`` reads it.

Layout (the official archives extracted into one folder)::

    ROOT/train_val/<city>/{query,database}/   raw.csv, postprocessed.csv, seq_info.csv,
                                              subtask_index.csv, images/<key>.jpg
    ROOT/test/<city>/{query,database}/        seq_info.csv, subtask_index.csv, images/<key>.jpg

Columns are found by name (case-insensitive): ``raw.csv`` key, pano (lon, lat, ca used when
present); ``postprocessed.csv`` key, easting, northing (night, view_direction when present);
``subtask_index.csv`` key and one boolean column per subtask (all, s2w, w2s, o2n, n2o, d2n, n2d).
Rows of the files are matched by ``key`` (by row position, as ``msls.py`` does, when a file has no
key column). The image list follows ``postprocessed.csv`` (``subtask_index.csv`` for test cities).

What the official evaluation does, and so does this loader (``purpose="eval"``): panoramas
(``raw.csv`` pano True) are left out of queries and database; only the rows whose subtask column
is true are kept (default subtask ``all``); positives lie within 25 m. Training (``purpose="train"``)
keeps every non-panorama image (no subtask filter, as ``msls.py``'s train mode), positives within
10 m without a lower bound, negatives beyond 25 m. Default cities: MSLS's validation set (cph, sf)
for evaluation, its 22 training cities for training.

Positives never cross cities (``msls.py`` searches each city alone): with several cities the
coordinates are each city's UTM easting/northing shifted by 1000 km × the city's position in the
list, along the easting, so no two cities come within any radius. Test cities carry no coordinates
(NaN): their ground truth is on the challenge server, which reads ``evaluate --predictions``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netvlad.data.formats._common import bad
from netvlad.data.places import PlaceDataset

#: ``default_cities`` of mapillary_sls/datasets/msls.py.
MSLS_CITIES: dict[str, tuple[str, ...]] = {
    "train": (
        "trondheim", "london", "boston", "melbourne", "amsterdam", "helsinki", "tokyo", "toronto",
        "saopaulo", "moscow", "zurich", "paris", "bangkok", "budapest", "austin", "berlin", "ottawa",
        "phoenix", "goa", "amman", "nairobi", "manila",
    ),
    "val": ("cph", "sf"),
    "test": ("miami", "athens", "buenosaires", "stockholm", "bengaluru", "kampala"),
}
SUBTASKS = ("all", "s2w", "w2s", "o2n", "n2o", "d2n", "n2d")
PURPOSES = ("eval", "train")
SPLITS = (("db", "database"), ("query", "query"))
#: Shift between consecutive cities along the easting (metres): far beyond any radius, and beyond
#: UTM's easting range (166-834 km), so two cities never overlap.
CITY_OFFSET_M = 1_000_000.0
OPTIONS = ("cities", "subtask")

_TRUE = {"true", "1", "1.0", "yes"}
_FALSE = {"false", "0", "0.0", "no", ""}


# ----------------------------------------------------------------------------- layout


def _city_dirs(root: Path) -> dict[str, Path]:
    """City name → folder, for every city folder under ROOT/train_val and ROOT/test."""
    out = {}
    for sub in ("train_val", "test"):
        d = root / sub
        if d.is_dir():
            for c in sorted(p for p in d.iterdir() if p.is_dir()):
                if is_msls_city(c):
                    out.setdefault(c.name, c)
    return out


def is_msls_city(path: str | Path) -> bool:
    """A city folder: ``query/`` and ``database/``, each with postprocessed.csv or subtask_index.csv."""
    path = Path(path)
    return all(
        any((path / split / f).is_file() for f in ("postprocessed.csv", "subtask_index.csv"))
        for split in ("query", "database")
    )


def is_msls_root(path: str | Path) -> bool:
    """An MSLS root (``train_val/`` or ``test/`` holding city folders) or a single city folder."""
    path = Path(path)
    return path.is_dir() and (is_msls_city(path) or bool(_city_dirs(path)))


def resolve_cities(root: Path, cities, purpose: str) -> tuple[Path, list[tuple[str, Path]]]:
    """The MSLS root and the (city, folder) pairs to load.

    ``cities``: None (purpose's default: ``val`` for evaluation, ``train`` for training), a group
    name (``train``, ``val``, ``test``), ``present`` (every city folder found), or a list / a
    comma-separated string of city names.
    """
    root = Path(root)
    if is_msls_city(root):
        # A single city folder: ROOT/<train_val|test>/<city>.
        return root.parent.parent, [(root.name, root)]
    found = _city_dirs(root)
    if isinstance(cities, str):
        cities = cities.strip()
        if cities == "present":
            names = list(found)
        elif cities in MSLS_CITIES:
            names = list(MSLS_CITIES[cities])
        else:
            names = [c.strip() for c in cities.split(",") if c.strip()]
    elif cities is None:
        names = list(MSLS_CITIES["train" if purpose == "train" else "val"])
    else:
        names = [str(c).strip() for c in cities]
    if not names:
        raise ValueError(f"{root}: no MSLS city chosen")
    if len(set(names)) != len(names):
        raise ValueError(f"{root}: a city is listed twice in {','.join(names)}")
    missing = [c for c in names if c not in found]
    if missing:
        raise FileNotFoundError(
            f"{root}: MSLS cities {', '.join(missing)} not found under train_val/ or test/ "
            f"(present: {', '.join(found) or 'none'}; choose with cities=... or --cities)"
        )
    return root, [(c, found[c]) for c in names]


# ----------------------------------------------------------------------------- CSV reading


@dataclass
class _Table:
    path: Path
    header: list[str]
    rows: list[list[str]]

    def has(self, name: str) -> bool:
        return name in self.header

    def column(self, name: str) -> list[str]:
        if name not in self.header:
            cols = ", ".join(h for h in self.header if h) or "none"
            raise bad(self.path, "columns", f"no column {name!r} (columns: {cols})")
        j = self.header.index(name)
        return [r[j] if j < len(r) else "" for r in self.rows]

    def bools(self, name: str) -> np.ndarray:
        out = np.zeros(len(self.rows), dtype=bool)
        for i, v in enumerate(self.column(name)):
            t = v.strip().lower()
            if t in _TRUE:
                out[i] = True
            elif t not in _FALSE:
                raise bad(self.path, f"row {i + 2}, column {name!r}", f"{v!r} is not True/False")
        return out

    def floats(self, name: str) -> np.ndarray:
        vals = self.column(name)
        out = np.empty(len(vals), dtype=np.float64)
        for i, v in enumerate(vals):
            try:
                out[i] = float(v)
            except ValueError:
                raise bad(self.path, f"row {i + 2}, column {name!r}",
                          f"cannot parse {v!r} as a number") from None
        return out


def read_table(path: Path) -> _Table:
    """A CSV with a header row; header names lower-cased and stripped (the unnamed index column is '')."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MSLS metadata file not found")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise bad(path, "header", "empty file")
    header = [h.strip().lower() for h in rows[0]]
    return _Table(path, header, [r for r in rows[1:] if r])


def _aligned(base_keys: list[str], table: _Table, what: str) -> np.ndarray:
    """Row index into ``table`` for each of ``base_keys``: by key column, else by position."""
    if table.has("key"):
        where = {k: i for i, k in enumerate(table.column("key"))}
        missing = [k for k in base_keys if k not in where]
        if missing:
            raise bad(table.path, "key", f"{len(missing)} {what} key(s) missing, e.g. {missing[0]!r}")
        return np.array([where[k] for k in base_keys], dtype=np.int64)
    if len(table.rows) != len(base_keys):
        raise bad(table.path, "rows", f"{len(table.rows)} rows for {len(base_keys)} {what} images "
                  "(no key column, so rows are matched by position)")
    return np.arange(len(base_keys), dtype=np.int64)


def split_keys(table: _Table, folder: Path) -> list[str]:
    """Image keys of a split: the file's key column, else seq_info.csv's (by position, as msls.py)."""
    if table.has("key"):
        return [k.strip() for k in table.column("key")]
    seq = read_table(folder / "seq_info.csv")
    idx = _aligned([str(i) for i in range(len(table.rows))], seq, "image")
    keys = seq.column("key")
    return [keys[i].strip() for i in idx]


# ----------------------------------------------------------------------------- one city


@dataclass
class _Split:
    keys: list[str]
    utm: np.ndarray  # (n, 2), NaN for test cities
    headings: np.ndarray | None
    conditions: list[str] | None
    panoramas: int = 0


def _read_split(folder: Path, subtask: str | None) -> _Split:
    """One ``query/`` or ``database/`` folder: its non-panorama images of the subtask, in file order."""
    post_path = folder / "postprocessed.csv"
    if not post_path.is_file():  # a test city: no coordinates, no panorama flags
        sub = read_table(folder / "subtask_index.csv")
        keys = split_keys(sub, folder)
        keep = sub.bools(subtask or "all")
        keys = [k for k, m in zip(keys, keep) if m]
        return _Split(keys, np.full((len(keys), 2), np.nan), None, None)
    post = read_table(post_path)
    keys = split_keys(post, folder)
    raw = read_table(folder / "raw.csv")
    keep = ~raw.bools("pano")[_aligned(keys, raw, "image")]
    panoramas = int((~keep).sum())
    if subtask is not None:
        sub = read_table(folder / "subtask_index.csv")
        keep &= sub.bools(subtask)[_aligned(keys, sub, "image")]
    rows = np.flatnonzero(keep)
    utm = np.stack([post.floats("easting")[rows], post.floats("northing")[rows]], axis=1)
    headings = None
    if raw.has("ca"):
        try:
            headings = raw.floats("ca")[_aligned(keys, raw, "image")][rows]
        except ValueError:
            headings = None  # an optional field: a malformed one is not worth refusing the dataset
    conditions = None
    if post.has("night") and post.has("view_direction"):
        night = post.bools("night")[rows]
        view = post.column("view_direction")
        conditions = [f"{'night' if n else 'day'}_{view[r].strip().lower() or 'unknown'}"
                      for n, r in zip(night, rows)]
    return _Split([keys[r] for r in rows], utm.reshape(-1, 2), headings, conditions, panoramas)


# ----------------------------------------------------------------------------- the dataset


def load_msls(
    root: str | Path,
    cities=None,
    subtask: str | None = None,
    purpose: str = "eval",
    images: str | Path | None = None,
) -> PlaceDataset:
    """Load MSLS cities as one `PlaceDataset` (see module docstring for the rules).

    Args:
        root: the MSLS root (holding ``train_val/`` and/or ``test/``) or one city folder.
        cities: see :func:`resolve_cities` (default: cph, sf for ``eval``; the 22 training cities
            for ``train``).
        subtask: one of `SUBTASKS`; default ``all`` for evaluation, no filter for training.
        purpose: ``eval`` or ``train``.
        images: where the images are, when not beside the metadata (the same tree below it).

    Returns:
        `PlaceDataset` with ``protocol="msls"``, image names relative to the root
        (``<train_val|test>/<city>/<split>/images/<key>.jpg``), ``query_conditions``
        ``day|night`` + ``_forward|_backward|_sideways`` when ``postprocessed.csv`` has night and
        view_direction.

    Raises:
        FileNotFoundError, ValueError: one line naming the file and the problem.
    """
    if purpose not in PURPOSES:
        raise ValueError(f"MSLS purpose must be one of {', '.join(PURPOSES)}, got {purpose!r}")
    if subtask is not None and subtask not in SUBTASKS:
        raise ValueError(f"{root}: unknown MSLS subtask {subtask!r}; choose from {', '.join(SUBTASKS)}")
    if subtask is None and purpose == "eval":
        subtask = "all"
    root, chosen = resolve_cities(Path(root), cities, purpose)
    parts: dict[str, list] = {"db": [], "query": []}
    notes, loaded = [], []
    for city, folder in chosen:
        splits = {tag: _read_split(folder / sub, subtask) for tag, sub in SPLITS}
        if not splits["db"].keys or not splits["query"].keys:
            # msls.py skips a city that the subtask leaves without queries or database images.
            notes.append(f"{city}: no {'queries' if not splits['query'].keys else 'database images'} "
                         f"for subtask {subtask}; city left out")
            continue
        shift = np.array([CITY_OFFSET_M * len(loaded), 0.0])
        loaded.append(city)
        rel = folder.relative_to(root).as_posix()
        for tag, sub in SPLITS:
            s = splits[tag]
            names = [f"{rel}/{sub}/images/{k}.jpg" for k in s.keys]
            parts[tag].append((names, s.utm + shift, s.headings, s.conditions))
        pano = splits["db"].panoramas + splits["query"].panoramas
        if pano:
            notes.append(f"{city}: {pano} panorama(s) left out ({splits['query'].panoramas} queries, "
                         f"{splits['db'].panoramas} database), as MSLS's evaluation does")
    if not loaded:
        raise ValueError(f"{root}: no MSLS query or database image left for cities "
                         f"{', '.join(c for c, _ in chosen)} and subtask {subtask}")
    if len(loaded) > 1:
        notes.append("cities placed 1000 km apart along the easting (" + ", ".join(
            f"{c} +{i * CITY_OFFSET_M / 1000:.0f} km" for i, c in enumerate(loaded))
            + ") so positives never cross cities, as MSLS searches each city alone")
    return PlaceDataset(
        name=dataset_name(loaded, subtask, purpose),
        db_root=Path(images) if images else root,
        query_root=Path(images) if images else root,
        db_images=[n for p in parts["db"] for n in p[0]],
        query_images=[n for p in parts["query"] for n in p[0]],
        db_utm=np.concatenate([p[1] for p in parts["db"]]),
        query_utm=np.concatenate([p[1] for p in parts["query"]]),
        db_headings=_join_optional([p[2] for p in parts["db"]]),
        query_headings=_join_optional([p[2] for p in parts["query"]]),
        query_conditions=_join_conditions([p[3] for p in parts["query"]]),
        pos_radius=25.0,
        train_pos_radius=10.0,
        trivial_radius=0.0,  # msls.py: every database image within 10 m is a positive
        protocol="msls",
        notes=notes,
    )


def _join_optional(arrays):
    if any(a is None for a in arrays):
        return None
    return np.concatenate(arrays)


def _join_conditions(lists):
    if any(c is None for c in lists):
        return None
    return [c for cs in lists for c in cs]


def dataset_name(cities: list[str], subtask: str | None, purpose: str) -> str:
    group = next((g for g, cs in MSLS_CITIES.items() if sorted(cs) == sorted(cities)), None)
    name = f"msls_{group}" if group else "msls_" + "+".join(cities)
    return name if subtask in (None, "all") else f"{name}_{subtask}"


def msls_options(options: dict[str, str]) -> dict:
    """Keyword arguments of :func:`load_msls` from SPEC options (``cities``, ``subtask``)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown MSLS option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    out = {}
    if "cities" in options:
        out["cities"] = options["cities"]
    if options.get("subtask"):
        out["subtask"] = options["subtask"]
    return out
