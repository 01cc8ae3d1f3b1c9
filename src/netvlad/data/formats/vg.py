"""The VPR suite in gmberton's layout (deep-visual-geo-localization-benchmark, VPR-datasets-downloader,
CosPlace), and where each suite dataset lives under a folder of datasets.

Layout: ``DATASET/images/{train,val,test}/{database,queries}/`` of ``@``-named ``.jpg`` files
(``@easting@northing@zone@letter@lat@lon@pano@tile@heading@pitch@roll@height@timestamp@note@.jpg``).
Read as the benchmark's ``BaseDataset`` reads it: ``glob("**/*.jpg")`` under each folder (other
files are ignored), UTM easting and northing taken from the name as written (no re-projection,
whatever the zone), positives within 25 m for every dataset (``val_positive_dist_threshold``).
The downloader places its dummy coordinates so that 25 m is each dataset's own rule: Nordland
frames 25/10.5 m apart on one line (±10 frames), SPED one image per 1000 m (the same place only).
CosPlace's SF-XL keeps its splits without ``images/`` (``sf_xl/processed/test``) and names its
query folders ``queries_v1``, ``queries_night``, ...: choose one with ``?queries=NAME``
(``queries_v1``, CosPlace's test set, by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from netvlad.data.formats.folders import load_at_folder
from netvlad.data.places import PlaceDataset

SPLITS = ("test", "val", "train")
OPTIONS = ("split", "queries")
#: Folder names of MSLS in this layout (VPR-datasets-downloader's format_mapillary.py).
MSLS_FOLDERS = ("msls", "mapillary_sls")


def split_dir(root: Path, split: str) -> Path | None:
    for d in (root / "images" / split, root / split):
        if (d / "database").is_dir():
            return d
    return None


def is_vg_root(path: str | Path) -> bool:
    """A dataset folder of this layout: ``images/<split>/database`` (or ``<split>/database``)."""
    path = Path(path)
    return path.is_dir() and any(split_dir(path, s) is not None for s in SPLITS)


def query_dir(split_dir: Path, queries: str | None) -> str:
    if queries:
        if not (split_dir / queries).is_dir():
            subs = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
            raise FileNotFoundError(f"{split_dir}: no query folder {queries}/ (found {', '.join(subs)})")
        return queries
    for q in ("queries", "queries_v1"):
        if (split_dir / q).is_dir():
            return q
    subs = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    raise FileNotFoundError(f"{split_dir}: no queries/ folder (found {', '.join(subs)}); name the query "
                            "folder with ?queries=NAME")


def load_vg(root: str | Path, split: str | None = None, queries: str | None = None,
            name: str | None = None) -> PlaceDataset:
    """Load one split of a dataset in gmberton's layout (see module docstring).

    Args:
        root: the dataset folder (``pitts30k``, holding ``images/``).
        split: ``test``, ``val`` or ``train``; default the first present of test, val, train.
        queries: the query folder (default ``queries``, or ``queries_v1`` for SF-XL).
        name: the dataset's name (default ``<folder>_<split>``, e.g. ``pitts30k_test``).

    Returns:
        `PlaceDataset` (Tokyo 24/7's panorama de-duplication when the folder is named like it and
        the names carry panorama ids; MSLS's protocol and day/night conditions for MSLS).
    """
    root = Path(root)
    if split is not None and split not in SPLITS:
        raise ValueError(f"{root}: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    present = [s for s in SPLITS if split_dir(root, s) is not None]
    if not present:
        raise FileNotFoundError(f"{root}: no images/<split>/database folder (splits: {', '.join(SPLITS)})")
    split = split or present[0]
    d = split_dir(root, split)
    if d is None:
        raise FileNotFoundError(f"{root}: no split {split!r} (present: {', '.join(present)})")
    folder = root.parent.name if root.name == "processed" else root.name  # CosPlace: sf_xl/processed
    ds = load_at_folder(d, name=name or f"{folder}_{split}", queries=query_dir(d, queries),
                        extensions=(".jpg",), raw_utm=True)
    if folder.lower() in MSLS_FOLDERS and ds.protocol != "msls":
        ds.protocol = "msls"
    return ds


def vg_options(options: dict[str, str]) -> dict:
    """Keyword arguments of :func:`load_vg` from SPEC options (``split``, ``queries``)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for gmberton's layout; "
                         f"known: {', '.join(OPTIONS)}")
    return {k: v for k, v in options.items() if v}


# ----------------------------------------------------------------------------- the suite


@dataclass(frozen=True)
class SuiteDataset:
    """Where a suite dataset lives under a folder of datasets, and what it is.

    Attributes:
        name: the name ``benchmark vpr --datasets`` takes.
        folders: candidate folder names under the root (first found wins).
        split: the split evaluated; queries: its query folder (None: ``queries``).
        title: the dataset, in words; source: where to get it.
        msls_cities: for MSLS in its own layout, the cities (its validation set).
    """

    name: str
    folders: tuple[str, ...]
    split: str = "test"
    queries: str | None = None
    title: str = ""
    source: str = ""
    msls_cities: tuple[str, ...] | None = None


_DOWNLOADER = "gmberton/VPR-datasets-downloader"
SUITE: dict[str, SuiteDataset] = {s.name: s for s in (
    SuiteDataset("msls_val", ("msls", "mapillary_sls"), "val", title="Mapillary SLS val (cph, sf)",
                 source="mapillary.com/dataset/places", msls_cities=("cph", "sf")),
    SuiteDataset("pitts30k_test", ("pitts30k",), title="Pittsburgh 30k test", source=_DOWNLOADER),
    SuiteDataset("pitts30k_val", ("pitts30k",), "val", title="Pittsburgh 30k val", source=_DOWNLOADER),
    SuiteDataset("pitts250k_test", ("pitts250k",), title="Pittsburgh 250k test", source=_DOWNLOADER),
    SuiteDataset("pitts250k_val", ("pitts250k",), "val", title="Pittsburgh 250k val", source=_DOWNLOADER),
    SuiteDataset("tokyo247", ("tokyo247",), title="Tokyo 24/7", source=_DOWNLOADER),
    SuiteDataset("nordland", ("nordland",), title="Nordland (summer db, winter queries)", source=_DOWNLOADER),
    SuiteDataset("st_lucia", ("st_lucia",), title="St Lucia", source=_DOWNLOADER),
    SuiteDataset("sf_xl_test", ("sf_xl/processed", "sf_xl"), queries="queries_v1",
                 title="SF-XL test (queries_v1)", source="gmberton/CosPlace (SF-XL)"),
    SuiteDataset("san_francisco", ("san_francisco",), title="San Francisco Landmark", source=_DOWNLOADER),
    SuiteDataset("sped", ("sped",), title="SPED", source=_DOWNLOADER),
    SuiteDataset("eynsham", ("eynsham",), title="Eynsham", source=_DOWNLOADER),
    SuiteDataset("svox", ("svox",), title="SVOX", source=_DOWNLOADER),
    SuiteDataset("amstertime", ("amstertime",), title="AmsterTime", source=_DOWNLOADER),
    SuiteDataset("baidu", ("baidu",), title="Baidu", source=_DOWNLOADER),
)}


def find_suite_dataset(name: str, root: str | Path) -> str:
    """The SPEC of suite dataset ``name`` under ``root`` (a folder of datasets).

    Known names (`SUITE`) are looked up in gmberton's layout (``ROOT/pitts30k/images/test``), MSLS
    also in its own layout (``ROOT/msls/train_val/...``, cities cph, sf). Then, for any name,
    ``ROOT/NAME.*`` or ``ROOT/NAME`` in any supported format (``ROOT/pitts30k_test.mat``,
    ``ROOT/my_set.csv``, a folder in gmberton's layout: its test split).

    Raises:
        FileNotFoundError: nothing for ``name`` under ``root`` (the message names where it looked).
    """
    from netvlad.data.formats.msls import is_msls_root

    root = Path(root)
    entry = SUITE.get(name)
    looked = []
    if entry is not None:
        for folder in entry.folders:
            d = root / folder
            looked.append(str(d))
            if entry.msls_cities and is_msls_root(d) and not is_vg_root(d):
                return f"msls:{d}?cities={','.join(entry.msls_cities)}"
            if is_vg_root(d) and split_dir(d, entry.split) is not None:
                q = f"&queries={entry.queries}" if entry.queries else ""
                return f"vg:{d}?split={entry.split}{q}"
    files = sorted(p for p in root.glob(f"{name}.*") if p.suffix.lower() in (".mat", ".csv", ".npz"))
    for cand in [*files, root / name]:
        looked.append(str(cand))
        if cand.exists():
            return f"vg:{cand}?split=test" if is_vg_root(cand) else str(cand)
    raise FileNotFoundError(f"{name}: not found under {root} (looked for {', '.join(looked) or name}); "
                            f"known suite names: {', '.join(SUITE)}")
