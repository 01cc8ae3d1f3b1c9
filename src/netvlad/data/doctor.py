"""Dataset doctor: finds the problems that silently spoil place-recognition results.

Checks (severity in brackets; errors make ``netvlad dataset check`` exit 1):

- ``empty`` [error]: no database images or no queries.
- ``missing-image`` / ``unreadable-image`` [error]: file absent, or Pillow cannot read its header
  (full decode only with ``decode=True``), or the header is over Pillow's decompression-bomb limit.
- ``mixed-sizes`` [warning]: several image sizes among database or query images (batching then
  needs batch size 1 or resizing).
- ``bad-coordinates`` [error]: NaN / infinite UTM coordinates.
- ``zone-mixed`` [error when the coordinates are in several UTM zones and were not put into one;
  warning when the loader re-projected them into one zone].
- ``outlier-coordinates`` [warning]: images farther than ``outlier_km`` from the median position
  *and* beyond the robust bound median(d) + 10·1.4826·MAD(d) of all distances d to that median, so
  a legitimately wide dataset (a city, a railway line) is not flagged wholesale.
- ``no-positive`` [warning]: queries with no database image within ``pos_radius``; they count as
  failures in recall@N (MATLAB's denominator is every query).
- ``query-in-database`` [error; warning under rule ``tokyotm_timestamp``, which excludes same-time
  images]: a query file also listed in the database (same resolved path, or byte-identical file).
- ``few-negatives`` [warning, error when ``min_negatives`` is set explicitly]: queries with fewer
  than ``min_negatives`` negatives (training samples nNegChoice = 1000 of them per query).
- ``duplicate-name`` [error]: the same image listed twice in the database (or among the queries):
  a feature file holds one row per name, so ``netvlad extract`` refuses such a list.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netvlad.data.places import PlaceDataset
from netvlad.geo import parse_zone

DEFAULT_MIN_NEGATIVES = 1000  # trainWeakly's nNegChoice


@dataclass(frozen=True)
class CheckConfig:
    """Options of `check_dataset` (CLI defaults come from here)."""

    check_images: bool = True
    decode: bool = False
    min_negatives: int | None = None  # None: warn below DEFAULT_MIN_NEGATIVES; set: error below it
    outlier_km: float = 50.0
    max_listed: int = 5
    progress: bool = True


@dataclass
class Finding:
    severity: str  # "error" | "warning" | "info"
    code: str
    message: str
    items: list[str] = field(default_factory=list)
    count: int = 0

    def format(self, max_listed: int = 5) -> str:
        s = f"{self.severity.upper()} [{self.code}] {self.message}"
        if self.items:
            shown = ", ".join(self.items[:max_listed])
            more = f" ... and {self.count - max_listed} more" if self.count > max_listed else ""
            s += f": {shown}{more}"
        return s


@dataclass
class DoctorReport:
    dataset: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def add(self, severity, code, message, items=None, count=None):
        items = list(items or [])
        self.findings.append(Finding(severity, code, message, items, len(items) if count is None else count))

    def format(self, max_listed: int = 5) -> str:
        lines = [f.format(max_listed) for f in self.findings]
        lines.append(f"{self.dataset}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return "\n".join(lines)


def _image_info(path: Path, decode: bool):
    """(width, height) or an error string; reads only the header unless ``decode``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            size = img.size
            if decode:
                img.load()
        return size
    except FileNotFoundError:
        return "missing"
    except Image.DecompressionBombError as exc:  # not an OSError: it would end the whole check
        return f"unreadable (a possible decompression bomb: {exc})"
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        return f"unreadable ({exc})"


def _check_images(ds: PlaceDataset, cfg: CheckConfig, rep: DoctorReport) -> None:
    from tqdm import tqdm

    missing, unreadable = [], []
    sizes = {"database": Counter(), "query": Counter()}
    todo = [("database", p) for p in ds.db_paths()] + [("query", p) for p in ds.query_paths()]
    for split, p in tqdm(todo, desc="checking images", disable=not cfg.progress, leave=False):
        info = _image_info(p, cfg.decode)
        if info == "missing":
            missing.append(str(p))
        elif isinstance(info, str):
            unreadable.append(f"{p} {info}")
        else:
            sizes[split][info] += 1
    if missing:
        rep.add("error", "missing-image", f"{len(missing)} image(s) not found", missing)
    if unreadable:
        rep.add("error", "unreadable-image", f"{len(unreadable)} image(s) Pillow cannot read", unreadable)
    for split, c in sizes.items():
        if len(c) > 1:
            top = [f"{w}x{h} ({n})" for (w, h), n in c.most_common()]
            rep.add(
                "warning",
                "mixed-sizes",
                f"{len(c)} different {split} image sizes (batches need equal "
                "sizes: use batch size 1 or resize)",
                top,
            )


def _same_files(ds: PlaceDataset) -> list[str]:
    """Queries whose file is also in the database: same resolved path, or identical bytes."""
    db_resolved = {p.resolve(): i for i, p in enumerate(ds.db_paths())}
    hits = []
    by_size = defaultdict(list)
    for p in ds.db_paths():
        if p.is_file():
            by_size[p.stat().st_size].append(p)
    digests: dict[Path, str] = {}

    def digest(p: Path) -> str:
        if p not in digests:
            digests[p] = hashlib.sha1(p.read_bytes()).hexdigest()
        return digests[p]

    for qi, qp in enumerate(ds.query_paths()):
        rq = qp.resolve()
        if rq in db_resolved:
            hits.append(f"{ds.query_images[qi]} (= db {ds.db_images[db_resolved[rq]]})")
            continue
        if qp.is_file():
            cands = by_size.get(qp.stat().st_size, [])
            if cands:
                dq = digest(qp)
                same = next((c for c in cands if digest(c) == dq), None)
                if same is not None:
                    hits.append(f"{ds.query_images[qi]} (identical to {same})")
    return hits


def check_dataset(ds: PlaceDataset, config: CheckConfig | None = None) -> DoctorReport:
    """Run every check on ``ds`` (see module docstring). Returns the report; never raises on bad data."""
    cfg = config or CheckConfig()
    rep = DoctorReport(ds.name)
    for note in ds.notes:
        rep.add("info", "loader-note", note)
    if ds.num_db == 0 or ds.num_queries == 0:
        rep.add("error", "empty", f"{ds.num_db} database image(s), {ds.num_queries} query image(s)")
    if cfg.check_images:
        _check_images(ds, cfg, rep)
    names = [f"db {n}" for n in ds.db_images] + [f"query {n}" for n in ds.query_images]
    allu = np.concatenate([ds.db_utm, ds.query_utm])
    bad = ~np.all(np.isfinite(allu), axis=1)
    if bad.any():
        rep.add("error", "bad-coordinates", f"{int(bad.sum())} image(s) with NaN/infinite coordinates",
                [names[i] for i in np.flatnonzero(bad)])
    _check_zones(ds, names, rep)
    _check_outliers(allu, bad, names, cfg, rep)
    if ds.num_db and ds.num_queries and not bad.any():
        _check_positives_and_negatives(ds, cfg, rep)
    _check_duplicate_names(ds, rep)
    if cfg.check_images or ds.db_root.resolve() == ds.query_root.resolve():
        _check_queries_in_database(ds, cfg, rep)
    return rep


def _check_zones(ds: PlaceDataset, names: list[str], rep: DoctorReport) -> None:
    """Coordinates from several UTM zones: an error unless the loader re-projected them into one."""
    zones = (ds.db_zones or []) + (ds.query_zones or [])
    keys = Counter(parse_zone(z) for z in zones if z)
    if len(keys) <= 1:
        return
    if ds.zone is None:
        rep.add("error", "zone-mixed", "coordinates come from several UTM zones and are not comparable",
                [f"zone {n}{'N' if north else 'S'}: {c}" for (n, north), c in keys.items()])
        return
    target = parse_zone(ds.zone)
    other = [names[i] for i, z in enumerate(zones) if z and parse_zone(z) != target]
    rep.add("warning", "zone-mixed",
            f"{len(other)} image(s) from other UTM zones were re-projected into {ds.zone}", other)


def _check_outliers(allu: np.ndarray, bad: np.ndarray, names: list[str], cfg: CheckConfig,
                    rep: DoctorReport) -> None:
    """Images far from the median position (beyond ``outlier_km`` and 10 robust deviations)."""
    good = allu[~bad]
    if good.shape[0] < 3:
        return
    med = np.median(good, axis=0)
    d = np.full(allu.shape[0], np.nan)
    d[~bad] = np.linalg.norm(good - med, axis=1)
    dd = d[~bad]
    mad = 1.4826 * np.median(np.abs(dd - np.median(dd)))
    bound = max(cfg.outlier_km * 1000.0, np.median(dd) + 10.0 * mad)
    out = np.flatnonzero(np.nan_to_num(d, nan=0.0) > bound)
    if out.size:
        rep.add("warning", "outlier-coordinates",
                f"{out.size} image(s) more than {bound / 1000:.1f} km from the median position",
                [f"{names[i]} ({d[i] / 1000:.1f} km)" for i in out])


def _check_positives_and_negatives(ds: PlaceDataset, cfg: CheckConfig, rep: DoctorReport) -> None:
    """Queries without a positive (failures in recall@N) and with too few negatives for training."""
    pos = ds.all_positives()
    nopos = [ds.query_images[q] for q in range(ds.num_queries) if pos[q].size == 0]
    if nopos:
        rep.add("warning", "no-positive",
                f"{len(nopos)} of {ds.num_queries} queries have no database image "
                f"within {ds.pos_radius:g} m (they count as failures in recall@N)", nopos)
    nneg = ds.num_negatives()
    need = cfg.min_negatives if cfg.min_negatives is not None else DEFAULT_MIN_NEGATIVES
    few = np.flatnonzero(nneg < need)
    if few.size:
        rep.add("error" if cfg.min_negatives is not None else "warning", "few-negatives",
                f"{few.size} queries have fewer than {need} negatives (min {int(nneg.min())}); training "
                f"with nNegChoice={need} cannot sample them", [ds.query_images[q] for q in few])


def _check_duplicate_names(ds: PlaceDataset, rep: DoctorReport) -> None:
    for role, listed in (("database", ds.db_images), ("query", ds.query_images)):
        dups = [n for n, c in Counter(listed).items() if c > 1]
        if dups:
            rep.add("error", "duplicate-name", f"{len(dups)} {role} name(s) listed more than once (a feature "
                    "file holds one row per name: `netvlad extract` refuses the list)", dups)


def _check_queries_in_database(ds: PlaceDataset, cfg: CheckConfig, rep: DoctorReport) -> None:
    """Query images that are also database images: they inflate recall (unless a rule excludes them)."""
    same = _same_files(ds) if cfg.check_images else [n for n in ds.query_images if n in set(ds.db_images)]
    if same:
        ruled = "tokyotm_timestamp" in ds.rules
        rep.add("warning" if ruled else "error", "query-in-database",
                f"{len(same)} query image(s) also in the database"
                + (" (excluded by the timestamp rule)" if ruled else " (they inflate recall)"), same)
