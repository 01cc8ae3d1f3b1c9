"""Facade textures from real photographs (or a procedural fallback), packed into a mip-mapped atlas.

Photos come from installed packages only (never the network): ``mvtbdata`` (Peter Corke's
Machine Vision Toolbox data: buildings, streets, walls, aerial mosaics) and scikit-image's bundled
sample images. Every facade gets its own crop, flip and colour shift of a photo plus its own window
grid, so places are told apart only by what is seen.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Sample images that are not photographs of scenes (targets, masks, text, illusions) or that the
# demo uses as real-photo test data (the campus walk must stay unseen).
_SKIP = (
    "campus",
    "calibration",
    "apriltag",
    "aruco",
    "tags",
    "fisheye_target",
    "multiblobs",
    "segmentation",
    "shark",
    "scale-space",
    "eg-morph",
    "wally",
    "5points",
    "adelson",
    "lena",
    "yellowtargets",
    "greenscreen",
    "text",
    "page",
    "logo",
    "phantom",
    "cell",
    "ihc",
    "retina",
    "microaneurysms",
    "hubble",
    "moon",
    "horse",
    "chessboard",
    "clock_motion",
    "lfw",
    "binary",
    "coins",
    "monalisa",
)
_EXTS = (".png", ".jpg", ".jpeg")
_MAX_SIDE = 640


def _package_dir(name: str) -> Path | None:
    # find_spec of a top-level package does not import it (skimage's import is slow).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def find_photo_files(sources: tuple[str, ...] = ("mvtbdata", "skimage")) -> list[Path]:
    """Scene photographs shipped by installed packages, sorted by path.

    Args:
        sources: any of "mvtbdata" (its ``images/`` tree), "skimage" (``skimage/data``).
            Missing packages are skipped.

    Returns:
        Image files (possibly empty, e.g. when neither package is installed).
    """
    roots: list[Path] = []
    for source in sources:
        if source == "mvtbdata":
            pkg = _package_dir("mvtbdata")
            if pkg is not None:
                roots.append(pkg / "images")
        elif source == "skimage":
            pkg = _package_dir("skimage")
            if pkg is not None:
                roots.append(pkg / "data")
        elif source != "procedural":
            raise ValueError(f"unknown photo source {source!r}; choose from mvtbdata, skimage, procedural")
    files: list[Path] = []
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            rel = str(path.relative_to(root)).lower()
            if path.suffix.lower() in _EXTS and not any(s in rel for s in _SKIP):
                files.append(path)
    return files


def load_photos(files: list[Path], max_photos: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Load up to `max_photos` of `files` (chosen by `rng`) as RGB uint8, longest side <= 640.

    Files that fail to load or are smaller than 160 px are skipped.
    """
    if len(files) > max_photos:
        files = [files[i] for i in sorted(rng.choice(len(files), size=max_photos, replace=False))]
    photos = []
    for path in files:
        try:
            with Image.open(path) as img:
                img.draft("RGB", (_MAX_SIDE, _MAX_SIDE))  # JPEG: decode at reduced scale
                if img.mode == "1":
                    continue
                img = (
                    img.convert("RGBA").convert("RGB")
                    if img.mode in ("P", "LA", "PA")
                    else img.convert("RGB")
                )
                if min(img.size) < 160:
                    continue
                factor = max(1, max(img.size) // _MAX_SIDE)
                if factor > 1:
                    img = img.reduce(factor)
                photos.append(np.asarray(img, dtype=np.uint8).copy())
        except OSError:
            continue
    return photos


def procedural_photos(n: int, rng: np.random.Generator, size: int = 256) -> list[np.ndarray]:
    """Photo substitutes when no photo package is installed: multi-scale coloured noise + bricks."""
    photos = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    for i in range(n):
        img = np.zeros((size, size, 3), np.float32)
        for octave in (4, 8, 16, 32, 64):
            small = rng.random((octave, octave, 3), dtype=np.float32)
            up = np.asarray(
                Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
            )
            img += up.astype(np.float32) / 255.0 * (8.0 / octave)
        img /= img.max()
        if i % 2 == 0:  # bricks: running-bond mortar lines
            bh, bw = rng.integers(6, 14), rng.integers(14, 30)
            row = (yy // bh).astype(int)
            mortar = ((yy % bh) < 1.5) | (((xx + (row % 2) * bw / 2) % bw) < 1.5)
            img[mortar] = img[mortar] * 0.4 + 0.55
        base = rng.uniform(0.3, 1.0, size=3).astype(np.float32)
        photos.append(np.clip(img * base * 255.0, 0, 255).astype(np.uint8))
    return photos


def smooth_noise(rng: np.random.Generator, gh: int, gw: int, h: int, w: int) -> np.ndarray:
    """Periodic value noise: a gh×gw random grid, bicubically upsampled to h×w (wraps around)."""
    g = rng.random((gh, gw)).astype(np.float32)
    tiled = np.tile(g, (3, 3))
    big = np.asarray(Image.fromarray(tiled, mode="F").resize((3 * w, 3 * h), Image.BICUBIC))
    return big[h : 2 * h, w : 2 * w].copy()


# Wall tints: brick, sandstone, concrete, render, painted blue/green.
_PALETTE = np.array(
    [
        [150, 70, 50],
        [190, 160, 120],
        [150, 150, 145],
        [220, 210, 190],
        [90, 110, 140],
        [110, 130, 100],
        [180, 120, 90],
        [120, 100, 90],
    ],
    np.float32,
)


def facade_texture(
    photo: np.ndarray, tex_w: int, tex_h: int, metres_h: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One building facade: a photo crop + tint + floors of windows + a door.

    Args:
        photo: H×W×3 uint8 source photo.
        tex_w, tex_h: texture size in texels (facade metres × texels per metre).
        metres_h: facade height in metres (to space floors ~3–4 m apart).
        rng: per-facade random generator.

    Returns:
        (albedo tex_h×tex_w×3 uint8, window mask tex_h×tex_w bool: lit at night).
    """
    ph, pw = photo.shape[:2]
    aspect = tex_w / tex_h
    scale = rng.uniform(0.35, 1.0)
    cw = max(8, int(min(pw, ph * aspect) * scale))
    ch = max(8, int(min(ph, cw / aspect)))
    cw = min(cw, pw)
    x0 = int(rng.integers(0, pw - cw + 1))
    y0 = int(rng.integers(0, ph - ch + 1))
    crop = Image.fromarray(photo[y0 : y0 + ch, x0 : x0 + cw])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    tex = np.asarray(crop.resize((tex_w, tex_h), Image.BILINEAR), dtype=np.float32)
    # Colour shift: per-channel gains, then pull toward a building tint.
    tex = tex * rng.uniform(0.75, 1.25, size=3).astype(np.float32)
    tint = _PALETTE[rng.integers(len(_PALETTE))] * rng.uniform(0.8, 1.2, size=3).astype(np.float32)
    alpha = rng.uniform(0.1, 0.35)
    tex = (1 - alpha) * tex + alpha * tint
    windows = np.zeros((tex_h, tex_w), bool)
    if rng.random() < 0.85:
        tpm = tex_h / metres_h
        floor_h = rng.uniform(3.0, 4.2) * tpm
        pitch = rng.uniform(2.2, 4.5) * tpm
        win_w = pitch * rng.uniform(0.35, 0.7)
        win_h = floor_h * rng.uniform(0.4, 0.65)
        glass = np.array([40, 50, 60], np.float32) * rng.uniform(0.6, 1.6, size=3).astype(np.float32)
        frame = rng.uniform(150, 250, size=3).astype(np.float32)
        yy = np.arange(tex_h, dtype=np.float32)[:, None]
        xx = np.arange(tex_w, dtype=np.float32)[None, :]
        ground = tex_h - floor_h  # texel row where the ground floor starts
        phase_x = rng.uniform(0, pitch)
        fy = (ground - yy) % floor_h
        in_row = (fy > (floor_h - win_h) * 0.5) & (fy < (floor_h + win_h) * 0.5) & (yy < ground - 0.3 * tpm)
        fx = (xx - phase_x) % pitch
        in_col = fx < win_w
        win = in_row & in_col
        border = win & ~(
            (fy > (floor_h - win_h) * 0.5 + 0.15 * tpm)
            & (fy < (floor_h + win_h) * 0.5 - 0.15 * tpm)
            & (fx > 0.15 * tpm)
            & (fx < win_w - 0.15 * tpm)
        )
        # Per-window variation (blinds, reflections): a random shade per (floor, column) cell.
        cell = ((ground - yy) // floor_h).astype(np.int64) * 1000 + ((xx - phase_x) // pitch).astype(np.int64)
        shade = 0.6 + 0.8 * _hash01(cell + int(rng.integers(1 << 30)))
        tex = np.where(win[..., None], glass * shade[..., None], tex)
        tex = np.where(border[..., None], frame, tex)
        lit = _hash01(cell + int(rng.integers(1 << 30))) < 0.35
        windows = win & ~border & lit
        # Ground floor: a door or a shop window.
        door_w = rng.uniform(1.2, 4.0) * tpm
        door_x = rng.uniform(0, max(1.0, tex_w - door_w))
        door = (yy > tex_h - rng.uniform(2.2, 2.8) * tpm) & (xx > door_x) & (xx < door_x + door_w)
        tex = np.where(door[..., None], glass * 0.7, tex)
        windows |= door & (rng.random() < 0.5)
    return np.clip(tex, 0, 255).astype(np.uint8), windows


def _hash01(x: np.ndarray) -> np.ndarray:
    # Integer hash -> [0, 1): cheap per-cell randomness without an rng call per cell.
    x = (x.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x2C1B3C6D)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(12)
    return (x & np.uint64(0xFFFF)).astype(np.float32) / 65536.0


def hedge_texture(photo: np.ndarray, tex_w: int, tex_h: int, rng: np.random.Generator) -> np.ndarray:
    """Park hedge: a photo crop pushed to green."""
    tex, _ = facade_texture(photo, tex_w, tex_h, 1.0, np.random.default_rng(rng.integers(1 << 62)))
    grey = tex.astype(np.float32).mean(axis=2, keepdims=True)
    green = grey * np.array([0.45, 0.75, 0.35], np.float32) * rng.uniform(0.8, 1.2)
    return np.clip(green, 0, 255).astype(np.uint8)


def vehicle_texture(rng: np.random.Generator) -> np.ndarray:
    """A car side, 12×32 texels: paint, a dark window band, dark wheels."""
    paint = rng.uniform(20, 235, size=3).astype(np.float32)
    tex = np.empty((12, 32, 3), np.float32)
    tex[:] = paint
    tex[1:5, 5:27] = np.array([35, 40, 50], np.float32)
    tex[9:, 4:9] = 25
    tex[9:, 23:28] = 25
    return tex.astype(np.uint8)


def person_texture(rng: np.random.Generator) -> np.ndarray:
    """A pedestrian, 16×4 texels: head, shirt, trousers (applied to three stacked quads)."""
    skin = np.array([[224, 172, 130], [198, 134, 66], [141, 85, 36], [255, 219, 172]], np.float32)
    tex = np.empty((16, 4, 3), np.float32)
    tex[:2] = skin[rng.integers(4)]
    tex[2:8] = rng.uniform(20, 240, size=3)
    tex[8:] = rng.uniform(15, 90, size=3)
    return tex.astype(np.uint8)


@dataclass
class Atlas:
    """All textures, every mip level, flattened: texel i of level l of texture t is
    ``colors[offset[t, l] + y * width[t, l] + x]``.

    colors: (N, 3) uint8; emissive: (N,) uint8 (1 = a window lit at night);
    offset/width/height: (T, L) int64, levels smaller than 1 texel repeat the last one.
    """

    colors: np.ndarray
    emissive: np.ndarray
    offset: np.ndarray
    width: np.ndarray
    height: np.ndarray

    @property
    def levels(self) -> int:
        return self.offset.shape[1]

    @property
    def nbytes(self) -> int:
        return self.colors.nbytes + self.emissive.nbytes


def build_atlas(textures: list[tuple[np.ndarray, np.ndarray | None]], levels: int = 5) -> Atlas:
    """Pack (albedo H×W×3 uint8, emissive H×W bool or None) textures with box-filtered mips.

    Mip level l halves level l-1 (2×2 mean); a texture stops shrinking at 1 texel.
    """
    chunks_c, chunks_e = [], []
    T = len(textures)
    offset = np.zeros((T, levels), np.int64)
    width = np.zeros((T, levels), np.int64)
    height = np.zeros((T, levels), np.int64)
    pos = 0
    for t, (albedo, emissive) in enumerate(textures):
        c = albedo.astype(np.float32)
        e = np.zeros(albedo.shape[:2], np.float32) if emissive is None else emissive.astype(np.float32)
        for lev in range(levels):
            h, w = c.shape[:2]
            offset[t, lev], width[t, lev], height[t, lev] = pos, w, h
            chunks_c.append(np.clip(c + 0.5, 0, 255).astype(np.uint8).reshape(-1, 3))
            chunks_e.append((e >= 0.5).astype(np.uint8).reshape(-1))
            pos += h * w
            if h >= 2 and w >= 2:
                h2, w2 = h // 2, w // 2
                c = c[: 2 * h2, : 2 * w2].reshape(h2, 2, w2, 2, 3).mean(axis=(1, 3))
                e = e[: 2 * h2, : 2 * w2].reshape(h2, 2, w2, 2).mean(axis=(1, 3))
    return Atlas(np.concatenate(chunks_c), np.concatenate(chunks_e), offset, width, height)
