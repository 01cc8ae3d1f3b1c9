"""Camera planning, occluders, and writing a town as a place-recognition dataset (JPEG + CSV + dbStruct)."""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from netvlad._atomic import atomic_write
from netvlad._outputs import check_output_dir, folder_holds_only
from netvlad.synth.conditions import CONDITIONS, sample_condition
from netvlad.synth.config import SPLITS, SynthConfig
from netvlad.synth.manifest import JOURNAL, MANIFEST, TownWriter, prepare_folder
from netvlad.synth.render import Camera, Renderer
from netvlad.synth.town import District, Town, build_town

_KINDS = ("db", "query")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class View:
    """One planned image: where the camera is, where it looks, under which condition."""

    split: str
    kind: str  # "db" | "query"
    index: int
    name: str  # relative to the split's images/ (db) or queries/ (query) folder
    x: float
    y: float
    heading: float  # compass bearing, degrees in [0, 360)
    street: int  # index into the district's streets (occluders are placed along it)
    along: float  # position along that street, metres
    lateral: float  # signed offset from its centreline, metres
    location: int  # db: panorama id (views of one location share it); query: -1
    condition: str
    height: float
    hfov: float = 70.0  # horizontal field of view, degrees

    @property
    def camera(self) -> Camera:
        return Camera(self.x, self.y, self.heading, self.height, self.hfov)


def plan_views(town: Town, split: str) -> tuple[list[View], list[View]]:
    """Database views (every ``db_spacing`` m along every street, ``n_headings`` each, ``db_condition``)
    and query views (random street positions, jittered position/heading, random conditions).

    Deterministic in (config.seed, split).
    """
    cfg = town.config
    district = town.district(split)
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), 0xCA])
    db: list[View] = []
    loc = 0
    for si, st in enumerate(district.streets):
        n = max(1, int(st.length // cfg.db_spacing))
        start = st.a0 + (st.length - (n - 1) * cfg.db_spacing) / 2
        for i in range(n):
            a = start + i * cfg.db_spacing
            p = st.p + a * st.d + cfg.lane_offset * st.normal
            for k in range(cfg.n_headings):
                hd = (st.bearing + k * 360.0 / cfg.n_headings) % 360.0
                db.append(
                    View(
                        split,
                        "db",
                        len(db),
                        f"{loc:05d}_yaw{k}.jpg",
                        float(p[0]),
                        float(p[1]),
                        hd,
                        si,
                        float(a),
                        cfg.lane_offset,
                        loc,
                        cfg.db_condition,
                        cfg.camera_height,
                        cfg.hfov_deg,
                    )
                )
            loc += 1
    lengths = np.array([st.length for st in district.streets])
    names = list(cfg.query_conditions)
    probs = np.array([cfg.query_conditions[c] for c in names], np.float64)
    probs /= probs.sum()
    queries: list[View] = []
    for qi in range(cfg.n_queries[split]):
        si = int(rng.choice(len(lengths), p=lengths / lengths.sum()))
        st = district.streets[si]
        a = float(rng.uniform(st.a0, st.a1))
        lat = float(rng.uniform(-cfg.query_position_jitter, cfg.query_position_jitter))
        p = st.p + a * st.d + lat * st.normal
        k = int(rng.integers(cfg.n_headings))
        jit = rng.uniform(-cfg.query_heading_jitter_deg, cfg.query_heading_jitter_deg)
        hd = float((st.bearing + k * 360.0 / cfg.n_headings + jit) % 360.0)
        cond = names[int(rng.choice(len(names), p=probs))]
        h = float(cfg.camera_height + rng.uniform(-0.3, 0.3))
        queries.append(
            View(
                split,
                "query",
                qi,
                f"{qi:05d}_{cond}.jpg",
                float(p[0]),
                float(p[1]),
                hd,
                si,
                a,
                lat,
                -1,
                cond,
                h,
                cfg.hfov_deg,
            )
        )
    return db, queries


def sample_occluders(
    town: Town, district: District, view: View, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Vehicles (boxes in the lanes / parked) and pedestrians (on the pavement) around a view.

    Returns:
        segment arrays a (M,2), b (M,2), z0 (M,), z1 (M,), tex (M,) for `Renderer.render`.
    """
    cfg = town.config
    mean_v, mean_p = cfg.db_occluders if view.kind == "db" else cfg.query_occluders
    st = district.streets[view.street]
    cam = np.array([view.x, view.y])
    rows: list[tuple] = []
    for _ in range(rng.poisson(mean_v)):
        along = view.along + rng.choice([-1.0, 1.0]) * rng.uniform(5.0, 40.0)
        lat = float(rng.choice([-3.8, -1.6, 1.6, 3.8]))
        if abs(along - view.along) < 4.0 and abs(lat - view.lateral) < 2.5:
            continue
        c = st.p + along * st.d + lat * st.normal
        ex, ey = 2.2 * st.d, 0.9 * st.normal
        corners = [c - ex - ey, c + ex - ey, c + ex + ey, c - ex + ey]
        tex = int(town.vehicle_tex[rng.integers(len(town.vehicle_tex))])
        for i in range(4):
            rows.append((*corners[i], *corners[(i + 1) % 4], 0.15, 1.5, tex))
    skin, shirt, trousers = town.person_tex["skin"], town.person_tex["shirt"], town.person_tex["trousers"]
    for _ in range(rng.poisson(mean_p)):
        along = view.along + rng.choice([-1.0, 1.0]) * rng.uniform(3.0, 30.0)
        lat = float(rng.choice([-1.0, 1.0]) * rng.uniform(cfg.road_half_width + 0.5, cfg.setback[0] - 0.8))
        c = st.p + along * st.d + lat * st.normal
        to = c - cam
        dist = float(np.hypot(*to))
        if dist < 1.0:
            continue
        side = np.array([to[1], -to[0]]) / dist  # billboard faces the camera
        parts = ((0.0, 0.85, 0.18, trousers), (0.85, 1.5, 0.25, shirt), (1.5, 1.75, 0.11, skin))
        for z0, z1, half, lib in parts:
            rows.append((*(c - half * side), *(c + half * side), z0, z1, int(lib[rng.integers(len(lib))])))
    arr = np.array(rows, np.float64).reshape(-1, 7)
    return {
        "a": arr[:, 0:2],
        "b": arr[:, 2:4],
        "z0": arr[:, 4],
        "z1": arr[:, 5],
        "tex": arr[:, 6].astype(np.int64),
    }


def render_view(renderer: Renderer, view: View) -> np.ndarray:
    """The image of `view`: its occluders, lighting and noise drawn from a per-view seed, so any
    image can be re-rendered alone, in any order, with the same bytes."""
    town = renderer.town
    district = town.district(view.split)
    rng = np.random.default_rng(
        [town.config.seed, SPLITS.index(view.split), _KINDS.index(view.kind), view.index]
    )
    occ = sample_occluders(town, district, view, rng)
    cond = CONDITIONS[view.condition] if view.kind == "db" else sample_condition(view.condition, rng)
    return renderer.render(view.camera, cond, district, occ, rng)


def _jpeg_bytes(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class SynthTown:
    """A generated town on disk: per split, its dataset and the files written."""

    out: Path
    datasets: dict  # split -> PlaceDataset
    csv: dict[str, Path]
    mat: dict[str, Path]
    seconds: float
    kept: int = 0  # images of an interrupted or earlier run that verified and were kept

    def summary(self) -> str:
        resumed = f", kept {self.kept} verified images of an earlier run" if self.kept else ""
        lines = [f"town in {self.out} ({self.seconds:.1f} s{resumed})"]
        for split, ds in self.datasets.items():
            lines.append(
                f"  {split:5s}: {ds.num_db:5d} db, {ds.num_queries:4d} queries  {self.csv[split]}  "
                f"{self.mat[split].name}"
            )
        return "\n".join(lines)


def to_dataset(town: Town, split: str, db: list[View], queries: list[View], root: Path):
    """The `PlaceDataset` of one split (UTM = ``origin_utm`` + local x/y)."""
    from netvlad.data import PlaceDataset

    ox, oy = town.config.origin_utm
    return PlaceDataset(
        name=f"synth_{split}",
        db_root=root / "images",
        query_root=root / "queries",
        db_images=[v.name for v in db],
        query_images=[v.name for v in queries],
        db_utm=np.array([[ox + v.x, oy + v.y] for v in db]).reshape(-1, 2),
        query_utm=np.array([[ox + v.x, oy + v.y] for v in queries]).reshape(-1, 2),
        zone=town.config.zone,
        db_headings=np.array([v.heading for v in db]),
        query_headings=np.array([v.heading for v in queries]),
        db_groups=np.array([v.location for v in db], np.int64),
        query_conditions=[v.condition for v in queries],
    )


#: What `generate_town` writes into its folder (hidden temporaries aside).
TOWN_ENTRIES = (*SPLITS, MANIFEST, JOURNAL, "map.png")


def is_town_dir(path: Path) -> bool:
    """A folder holding only what :func:`generate_town` writes (a finished or interrupted town)."""
    return folder_holds_only(path, TOWN_ENTRIES)


def generate_town(
    out: str | Path, config: SynthConfig | None = None, progress: bool = True, overwrite: bool = False
) -> SynthTown:
    """Build, render and write a town: ``out/<split>/images/*.jpg`` (database),
    ``out/<split>/queries/*.jpg``, ``out/<split>/synth_<split>.csv`` and ``.mat`` (dbStruct),
    ``out/town.json`` (manifest: version, seed, config, counts, size and sha256 of every file) and
    ``out/map.png`` (top-down map of the three areas).

    Rerunning into the same folder resumes: with the same config and version, images already written
    and verified (size and sha256 in the manifest or the journal of a killed run) are kept and the
    rest rendered, giving the same bytes as an undisturbed run. A folder holding another town (other
    seed, config or version), an unreadable manifest, or town files without one is refused unless
    `overwrite`, which deletes the old town's files and starts over. See `netvlad.synth.manifest`.

    Returns:
        `SynthTown` with the three `PlaceDataset` splits.

    Raises:
        ValueError: the folder holds another town (and not `overwrite`).
    """
    from netvlad.data import save_csv, save_mat

    config = config or SynthConfig()
    out = Path(out)
    check_output_dir(out, is_ours=is_town_dir, kind="synthetic town folder")
    t0 = time.perf_counter()
    kept, recorded_town = prepare_folder(out, config, overwrite)
    town = build_town(config, progress=progress)
    fingerprint = town.fingerprint()
    if kept and recorded_town != fingerprint:
        logger.warning(
            "%s: the town differs from the one of the earlier run (installed photo packages changed?): "
            "rendering every image again",
            out,
        )
        kept = {}
    renderer = Renderer(town, config.width, config.height)
    plans = {split: plan_views(town, split) for split in SPLITS}
    folders = {split: (f"{split}/images", f"{split}/queries") for split in SPLITS}
    planned = {
        f"{folder}/{v.name}"
        for split, (db, q) in plans.items()
        for views, folder in zip((db, q), folders[split])
        for v in views
    }
    writer = TownWriter(out, config, fingerprint, kept)
    try:
        writer.start(planned)
        n_kept = _write_images(writer, renderer, plans, folders, progress)
        datasets, csvs, mats = {}, {}, {}
        for split in SPLITS:
            root = out / split
            datasets[split] = ds = to_dataset(town, split, *plans[split], root)
            csvs[split] = save_csv(ds, root / f"synth_{split}.csv")
            mats[split] = save_mat(ds, root / f"synth_{split}.mat", which_set=split)
        map_png = plot_town_map(town, plans, out / "map.png")
        meta = {
            "facades": town.num_facades,
            "photos": town.n_photos,
            "splits": {s: {"db": d.num_db, "queries": d.num_queries} for s, d in datasets.items()},
        }
        extra = [*csvs.values(), *mats.values(), *([map_png] if map_png else [])]
        writer.finish(meta, extra)
    finally:
        writer.close()
    return SynthTown(out, datasets, csvs, mats, time.perf_counter() - t0, n_kept)


def _write_images(
    writer: TownWriter,
    renderer: Renderer,
    plans: dict[str, tuple[list[View], list[View]]],
    folders: dict[str, tuple[str, str]],
    progress: bool,
) -> int:
    """Render and write every planned image `writer` does not already hold; returns how many it held."""
    n_kept = 0
    total = sum(len(db) + len(q) for db, q in plans.values())
    quality = renderer.town.config.jpeg_quality
    with tqdm(total=total, desc="town: render", unit="img", disable=not progress) as bar:
        for split in SPLITS:
            for views, folder in zip(plans[split], folders[split]):
                (writer.out / folder).mkdir(parents=True, exist_ok=True)
                for view in views:
                    rel = f"{folder}/{view.name}"
                    if writer.has(rel):
                        n_kept += 1
                    else:
                        writer.write(rel, _jpeg_bytes(render_view(renderer, view), quality))
                    bar.update(1)
    return n_kept


def plot_town_map(town: Town, plans: dict[str, tuple[list[View], list[View]]], path: Path) -> Path | None:
    """A top-down map per district: facades, database cameras, queries (atomic PNG; skipped without
    matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.collections import LineCollection
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(SPLITS), figsize=(5 * len(SPLITS), 5))
    for ax, split in zip(np.atleast_1d(axes), SPLITS):
        d = town.district(split)
        sl = slice(d.seg_start, d.seg_stop)
        segs = np.stack([town.seg_a[sl], town.seg_b[sl]], axis=1)
        ax.add_collection(LineCollection(segs, colors="0.35", linewidths=1.2))
        db, q = plans[split]
        ax.scatter([v.x for v in db], [v.y for v in db], s=3, c="tab:blue", label=f"database ({len(db)})")
        ax.scatter(
            [v.x for v in q], [v.y for v in q], s=6, c="tab:red", marker="x", label=f"queries ({len(q)})"
        )
        ax.set_aspect("equal")
        ax.set_title(f"{split} area (x, y in m from UTM {town.config.zone} origin)", fontsize=9)
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=80, metadata={"Software": None}), suffix=".tmp.png")
    plt.close(fig)
    return path


def benchmark_render(
    config: SynthConfig | None = None, n: int = 100, town: Town | None = None, progress: bool = False
) -> dict[str, float]:
    """Rendering speed on the train district's query views (occluders and all conditions included).

    Returns:
        {"images": n, "wall_s", "cpu_s", "images_per_s" (wall), "images_per_cpu_s"}. On a shared
        machine the CPU-time rate is the more stable of the two.
    """
    config = config or SynthConfig()
    town = town or build_town(config, progress=progress)
    renderer = Renderer(town, config.width, config.height)
    db, queries = plan_views(town, "train")
    views = (queries + db) * math.ceil(n / max(1, len(queries) + len(db)))
    views = views[:n]
    render_view(renderer, views[0])  # warm-up (page in the atlas)
    w0, c0 = time.perf_counter(), time.process_time()
    for view in tqdm(views, desc="render benchmark", disable=not progress):
        render_view(renderer, view)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"images": n, "wall_s": wall, "cpu_s": cpu, "images_per_s": n / wall, "images_per_cpu_s": n / cpu}
