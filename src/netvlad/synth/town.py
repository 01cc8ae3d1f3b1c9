"""Town layout: districts of skewed street grids, building facades along the streets, lamps, cameras.

Coordinates are metres in a local frame (x east, y north) whose origin is ``config.origin_utm``;
headings are compass bearings in degrees (0 = north, 90 = east).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from netvlad.synth.config import SPLITS, SynthConfig
from netvlad.synth.textures import (
    Atlas,
    build_atlas,
    facade_texture,
    find_photo_files,
    hedge_texture,
    load_photos,
    person_texture,
    procedural_photos,
    smooth_noise,
    vehicle_texture,
)

_MAX_TEX = 384  # texels per facade side: caps memory for very wide/tall facades


@dataclass
class Street:
    """A straight street centreline: points p + a·d for a in [a0, a1] (d is a unit vector)."""

    p: np.ndarray
    d: np.ndarray
    a0: float
    a1: float

    @property
    def length(self) -> float:
        return self.a1 - self.a0

    @property
    def bearing(self) -> float:
        return math.degrees(math.atan2(self.d[0], self.d[1])) % 360.0

    @property
    def normal(self) -> np.ndarray:
        """Unit normal to the right of the driving direction."""
        return np.array([self.d[1], -self.d[0]])


@dataclass
class District:
    """One split's area: its streets (cameras drive on them), lamps and its slice of the segments."""

    split: str
    streets: list[Street]
    lamps: np.ndarray  # (L, 2)
    seg_start: int
    seg_stop: int
    center: np.ndarray
    radius: float


@dataclass
class Town:
    """Static geometry + textures. Segments are vertical textured quads from (a, z0) to (b, z1)."""

    config: SynthConfig
    districts: list[District]
    seg_a: np.ndarray  # (F, 2) float64
    seg_b: np.ndarray  # (F, 2)
    seg_z0: np.ndarray  # (F,)
    seg_z1: np.ndarray  # (F,)
    seg_tex: np.ndarray  # (F,) int64 texture id in the atlas
    atlas: Atlas
    ground_tex: dict[str, int]  # "asphalt", "pavement" -> texture id
    vehicle_tex: np.ndarray  # texture ids
    person_tex: dict[str, np.ndarray] = field(default_factory=dict)  # "skin", "shirt", "trousers"
    n_photos: int = 0

    def district(self, split: str) -> District:
        return self.districts[SPLITS.index(split)]

    @property
    def num_facades(self) -> int:
        return len(self.seg_tex)

    def fingerprint(self) -> str:
        """sha256 of the geometry and every texel: what the images are rendered from besides the
        config, i.e. what installed photo packages change."""
        h = hashlib.sha256()
        a = self.atlas
        geometry = (self.seg_a, self.seg_b, self.seg_z0, self.seg_z1, self.seg_tex, self.vehicle_tex)
        for arr in (*geometry, a.colors, a.emissive, a.offset, a.width, a.height):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()


def _intersect(p1, d1, p2, d2) -> np.ndarray:
    # p1 + a d1 = p2 + b d2
    den = d1[0] * d2[1] - d1[1] * d2[0]
    a = ((p2[0] - p1[0]) * d2[1] - (p2[1] - p1[1]) * d2[0]) / den
    return p1 + a * d1


def _rot(phi: float) -> np.ndarray:
    c, s = math.cos(phi), math.sin(phi)
    return np.array([[c, -s], [s, c]])


def build_town(config: SynthConfig, progress: bool = True) -> Town:
    """Lay out the districts of all splits and texture every facade.

    Deterministic in ``config`` (its seed included). Districts sit ``district_gap`` metres apart
    along x, each rotated and skewed differently.
    """
    root = np.random.SeedSequence([config.seed, 0x70E1])
    rng_photo, *rng_districts = (np.random.default_rng(s) for s in root.spawn(1 + len(SPLITS)))
    photos = load_photos(find_photo_files(config.photo_sources), config.max_photos, rng_photo)
    n_photos = len(photos)
    if not photos:
        photos = procedural_photos(12, rng_photo)
    textures: list[tuple[np.ndarray, np.ndarray | None]] = []
    seg_rows: list[tuple] = []  # (ax, ay, bx, by, z0, z1, tex)
    districts: list[District] = []
    # Facade count is unknown until the layout is drawn, so the bar counts districts' blocks.
    total_blocks = sum((config.blocks[s][0] + 2) * (config.blocks[s][1] + 2) for s in SPLITS)
    bar = tqdm(total=total_blocks, desc="town: facades", unit="block", disable=not progress)
    for di, split in enumerate(SPLITS):
        rng = rng_districts[di]
        vlines, hlines = _street_grid(config, split, di, rng)
        seg_start = len(seg_rows)
        style = rng.uniform(0.6, 1.2)  # district-wide building height style
        nbx, nby = len(vlines) - 1, len(hlines) - 1
        for i in range(nbx):
            for j in range(nby):
                bar.update(1)
                _block(config, rng, vlines, hlines, i, j, style, photos, textures, seg_rows)
        districts.append(_district(config, split, vlines, hlines, seg_start, len(seg_rows)))
    bar.close()
    vehicle_ids, person_ids, ground = _libraries(np.random.default_rng(root.spawn(1)[0]), textures)
    atlas = build_atlas(textures)
    rows = np.array(seg_rows, dtype=np.float64).reshape(-1, 7)
    return Town(
        config=config,
        districts=districts,
        seg_a=rows[:, 0:2].copy(),
        seg_b=rows[:, 2:4].copy(),
        seg_z0=rows[:, 4].copy(),
        seg_z1=rows[:, 5].copy(),
        seg_tex=rows[:, 6].astype(np.int64),
        atlas=atlas,
        ground_tex=ground,
        vehicle_tex=np.array(vehicle_ids),
        person_tex={k: np.array(v) for k, v in person_ids.items()},
        n_photos=n_photos,
    )


def _street_grid(config: SynthConfig, split: str, di: int, rng: np.random.Generator):
    """The district's street centrelines (point, unit direction): the vertical and the horizontal
    ones, with one ring of extra blocks around the district (its inner facades line the edge streets)."""
    nx, ny = config.blocks[split]
    xs = np.concatenate([[0.0], np.cumsum(rng.uniform(*config.block_size, size=nx + 2))])
    ys = np.concatenate([[0.0], np.cumsum(rng.uniform(*config.block_size, size=ny + 2))])
    xs -= xs[-1] / 2
    ys -= ys[-1] / 2
    skew = math.radians(config.street_skew_deg)
    phi = rng.uniform(0, math.pi / 2)
    R = _rot(phi)
    origin = np.array([di * config.district_gap, 0.0])
    vlines, hlines = [], []
    for x in xs:
        a = rng.uniform(-skew, skew)
        vlines.append((R @ np.array([x, 0.0]) + origin, R @ np.array([math.sin(a), math.cos(a)])))
    for y in ys:
        a = rng.uniform(-skew, skew)
        hlines.append((R @ np.array([0.0, y]) + origin, R @ np.array([math.cos(a), math.sin(a)])))
    return vlines, hlines


def _block(config, rng, vlines, hlines, i: int, j: int, style: float, photos, textures, seg_rows) -> None:
    """The facades (or a park's hedges) of block (i, j), appended to `textures` and `seg_rows`."""
    nbx, nby = len(vlines) - 1, len(hlines) - 1
    sb = rng.uniform(*config.setback, size=4)  # left, right, bottom, top
    (pl, dl), (pr, dr) = vlines[i], vlines[i + 1]
    (pb, db), (pt, dt) = hlines[j], hlines[j + 1]
    # Offset each centreline toward the block interior by its setback.
    nl, nr = np.array([dl[1], -dl[0]]), -np.array([dr[1], -dr[0]])
    nb, nt = np.array([-db[1], db[0]]), -np.array([-dt[1], dt[0]])
    L, Rr = (pl + sb[0] * nl, dl), (pr + sb[1] * nr, dr)
    B, T = (pb + sb[2] * nb, db), (pt + sb[3] * nt, dt)
    c00, c10 = _intersect(*L, *B), _intersect(*Rr, *B)
    c11, c01 = _intersect(*Rr, *T), _intersect(*L, *T)
    # Counter-clockwise sides; each side's outside (its street) is to the right of a->b.
    sides = [(c00, c10, j == 0), (c10, c11, i == nbx - 1), (c11, c01, j == nby - 1), (c01, c00, i == 0)]
    park = rng.random() < config.park_prob
    tpm = config.texels_per_metre
    for a, b, outer in sides:
        if outer:  # faces away from the district: never seen
            continue
        length = float(np.linalg.norm(b - a))
        if park:
            tw, th = min(_MAX_TEX, max(8, round(length * tpm))), max(4, round(1.2 * tpm))
            textures.append((hedge_texture(photos[rng.integers(len(photos))], tw, th, rng), None))
            seg_rows.append((*a, *b, 0.0, 1.2, len(textures) - 1))
            continue
        pos = 0.0
        while pos < length - 1e-6:
            w = rng.uniform(*config.building_width)
            if length - (pos + w) < config.building_width[0] * 0.6:
                w = length - pos
            p0 = a + (b - a) * (pos / length)
            p1 = a + (b - a) * ((pos + w) / length)
            h = float(np.clip(rng.uniform(*config.building_height) * style, 4.0, 40.0))
            tw = min(_MAX_TEX, max(8, round(w * tpm)))
            th = min(_MAX_TEX, max(8, round(h * tpm)))
            photo = photos[rng.integers(len(photos))]
            textures.append(facade_texture(photo, tw, th, h, rng))
            seg_rows.append((*p0, *p1, 0.0, h, len(textures) - 1))
            pos += w


def _district(config: SynthConfig, split: str, vlines, hlines, seg_start: int, seg_stop: int) -> District:
    """Camera streets (the original grid lines, between the first and last original cross lines),
    their lamps (alternating sides), and the district's centre and radius."""
    streets = []
    for lines, cross in ((vlines, hlines), (hlines, vlines)):
        for p, d in lines[1:-1]:
            lo = _intersect(p, d, *cross[1])
            hi = _intersect(p, d, *cross[-2])
            a0, a1 = sorted((float(np.dot(lo - p, d)), float(np.dot(hi - p, d))))
            streets.append(Street(p=p, d=d, a0=a0, a1=a1))
    lamps = []
    for st in streets:
        side = 1.0
        for a in np.arange(st.a0 + config.lamp_spacing / 2, st.a1, config.lamp_spacing):
            lamps.append(st.p + a * st.d + side * (config.road_half_width + 0.6) * st.normal)
            side = -side
    corners = np.array([st.p + a * st.d for st in streets for a in (st.a0, st.a1)])
    center = corners.mean(axis=0)
    radius = float(np.linalg.norm(corners - center, axis=1).max())
    return District(split, streets, np.array(lamps).reshape(-1, 2), seg_start, seg_stop, center, radius)


def _libraries(rng_lib: np.random.Generator, textures: list) -> tuple[list[int], dict[str, list[int]], dict]:
    """Occluder (vehicles, people) and ground texture libraries, appended to `textures` after the
    facades: (vehicle texture ids, person part texture ids, ground texture ids)."""
    vehicle_ids = []
    for _ in range(24):
        textures.append((vehicle_texture(rng_lib), None))
        vehicle_ids.append(len(textures) - 1)
    person_ids: dict[str, list[int]] = {"skin": [], "shirt": [], "trousers": []}
    for _ in range(16):
        tex = person_texture(rng_lib)
        for part, rows in (("skin", slice(0, 2)), ("shirt", slice(2, 8)), ("trousers", slice(8, 16))):
            textures.append((np.ascontiguousarray(tex[rows]), None))
            person_ids[part].append(len(textures) - 1)
    ground = {}
    for name, base, contrast in (("asphalt", (70, 70, 74), 18.0), ("pavement", (150, 146, 138), 22.0)):
        textures.append((_ground_texture(rng_lib, base, contrast, paving=name == "pavement"), None))
        ground[name] = len(textures) - 1
    return vehicle_ids, person_ids, ground


GROUND_TEXELS_PER_METRE = 16.0
GROUND_TILE = 128  # texels: an 8 m tile


def _ground_texture(rng: np.random.Generator, base, contrast: float, paving: bool) -> np.ndarray:
    n = GROUND_TILE
    noise = np.zeros((n, n), np.float32)
    for octave in (4, 8, 16, 32, 64):
        noise += smooth_noise(rng, octave, octave, n, n) * (octave**-0.5)
    noise -= noise.mean()
    tex = np.array(base, np.float32) + contrast * noise[..., None] / noise.std()
    if paving:  # 1 m paving slabs
        yy, xx = np.mgrid[0:n, 0:n]
        joints = (yy % 16 == 0) | (xx % 16 == 0)
        tex[joints] *= 0.75
    return np.clip(tex, 0, 255).astype(np.uint8)
