"""Vectorised ray casting of vertical textured quads (facades, vehicles, people), ground and sky.

The camera is level (pitch 0), so every image column is one horizontal ray in the ground plane:
column × segment intersections are a W×F problem, and each pixel only picks, among the nearest K
hits of its column, the first whose height range contains the ray's height (a 2.5-D ray caster).
Textures are sampled nearest-neighbour from a mip level chosen by the pixel footprint, which keeps
distant facades from aliasing into noise. Lighting conditions and the sensor response (exposure,
noise, tone curve) are in :mod:`netvlad.synth.conditions`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from netvlad.synth.conditions import CONDITIONS, Condition, cloud_panorama, develop
from netvlad.synth.town import GROUND_TEXELS_PER_METRE, District, Town

_K = 8  # nearest hits per column considered for occlusion
_LAMP_HEIGHT = 6.0


@dataclass(frozen=True)
class Camera:
    """A level pinhole camera at (x, y) in the town frame, `heading` a compass bearing in degrees."""

    x: float
    y: float
    heading: float
    height: float = 2.5
    hfov: float = 70.0


@dataclass
class _Rays:
    """The camera's rays: one horizontal direction (Dx, Dy) per column, elevation v per row."""

    W: int
    H: int
    f: float  # focal length in pixels
    u: np.ndarray  # (W,) column offsets / f
    v: np.ndarray  # (H,) row offsets / f, positive below the horizon
    Dx: np.ndarray
    Dy: np.ndarray
    Dn: np.ndarray  # (W,) ‖(Dx, Dy)‖
    cam: np.ndarray  # (2,) camera position
    fwd: tuple[float, float]


@dataclass
class _QuadHits:
    """Which quad each covered pixel shows: the nearest K candidates per column (W×K arrays) and,
    for each covered pixel `px`, its flat (column, candidate) index `ck`."""

    order: np.ndarray  # W×K segment ids, nearest first
    sk: np.ndarray  # W×K ray parameter (distance along the ray / ‖D‖)
    tk: np.ndarray  # W×K position along the segment, 0..1
    zlo: np.ndarray
    zhi: np.ndarray
    px: np.ndarray
    ck: np.ndarray
    E: np.ndarray  # F×2 segment vectors b − a


def _quad_hits(rays: _Rays, camera: Camera, a, b, z0, z1) -> _QuadHits:
    """Column × segment intersections (W×F), the nearest K per column, and per pixel the first
    candidate whose height range contains the ray's height."""
    W, v, Dx, Dy = rays.W, rays.v, rays.Dx, rays.Dy
    F = len(z0)
    A = (a - rays.cam).astype(np.float32)
    E = (b - a).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        den = Dx[:, None] * E[None, :, 1] - Dy[:, None] * E[None, :, 0]
        s = (A[:, 0] * E[:, 1] - A[:, 1] * E[:, 0])[None] / den
        t = (A[None, :, 0] * Dy[:, None] - A[None, :, 1] * Dx[:, None]) / den
        s = np.where((s > 0.2) & (t >= 0) & (t <= 1), s, np.inf).astype(np.float32)
    # Only as many candidates as the busiest column has hits (usually 2–5, at most _K).
    K = int(min(_K, max(1, np.isfinite(s).sum(axis=1).max())))
    if F > K:
        order = np.argpartition(s, K - 1, axis=1)[:, :K]
    else:
        order = np.broadcast_to(np.arange(F), (W, F))
    sk = np.take_along_axis(s, order, axis=1)
    srt = np.argsort(sk, axis=1)
    order = np.take_along_axis(order, srt, axis=1)
    sk = np.take_along_axis(sk, srt, axis=1)  # (W, K), nearest first
    tk = np.take_along_axis(t, order, axis=1)
    hitk = np.isfinite(sk)
    sk = np.where(hitk, sk, 1.0).astype(np.float32)
    zlo = np.where(hitk, z0[order], 1.0).astype(np.float32)
    zhi = np.where(hitk, z1[order], 0.0).astype(np.float32)
    # Candidate k covers the rows whose v lies in [(h - zhi)/s, (h - zlo)/s].
    vlo = np.where(hitk, (camera.height - zhi) / sk, np.inf).astype(np.float32)
    vhi = np.where(hitk, (camera.height - zlo) / sk, -np.inf).astype(np.float32)
    # Pad K to 1, 2, 4 or 8 with empty ranges so that a pixel's K flags read as one integer.
    Kp = 1 << (K - 1).bit_length()
    if Kp > K:
        vlo = np.pad(vlo, ((0, 0), (0, Kp - K)), constant_values=np.inf)
        vhi = np.pad(vhi, ((0, 0), (0, Kp - K)), constant_values=-np.inf)
    vv = v[:, None, None]
    hit = (vv >= vlo[None]) & (vv <= vhi[None])  # (H, W, Kp)
    first = hit.argmax(axis=2).ravel()
    px = np.flatnonzero(hit.view(f"u{Kp}").ravel())
    ck = (px % W) * K + first[px]  # flat (column, candidate) index of each covered pixel
    return _QuadHits(order, sk, tk, zlo, zhi, px, ck, E)


class Renderer:
    """Renders `town` at `width`×`height`: ``render(camera, condition, district, occluders)`` -> uint8."""

    def __init__(self, town: Town, width: int, height: int):
        self.town = town
        self.width = width
        self.height = height
        self._clouds = cloud_panorama()
        a = town.atlas
        # Float colours once: the per-pixel gather is then one fancy index.
        self._colors = a.colors.astype(np.float32)
        self._emissive = a.emissive.astype(np.float32)

    def render(
        self,
        camera: Camera,
        condition: Condition = CONDITIONS["day"],
        district: District | None = None,
        occluders: dict[str, np.ndarray] | None = None,
        rng: np.random.Generator | None = None,
        return_ids: bool = False,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """One image.

        Args:
            camera: viewpoint.
            condition: lighting; night adds lit windows, street lamps and sensor noise (needs `rng`).
            district: the district whose facades, lamps and streets are drawn (None: all of them).
            occluders: extra segments, dict of arrays a (M,2), b (M,2), z0 (M,), z1 (M,), tex (M,).
            rng: noise source (only used when condition.noise > 0).
            return_ids: also return which segment each pixel shows.

        Returns:
            height×width×3 uint8 RGB; with `return_ids`, also a height×width int64 map: the index
            of the town segment (``town.seg_*`` row) seen, -2 for an occluder, -1 for ground/sky.
        """
        rays = self._rays(camera)
        H, W = rays.H, rays.W
        color = np.empty((H * W, 3), np.float32)
        covered = np.zeros(H * W, bool)
        haze = np.array(condition.haze, np.float32)
        a, b, z0, z1, tex, gid = self._segments(district, rays.cam, rays.fwd, occluders)
        ids = np.full(H * W, -1, np.int64) if return_ids else None
        if len(tex):
            hits = _quad_hits(rays, camera, a, b, z0, z1)
            covered[hits.px] = True
            if ids is not None:
                ids[hits.px] = gid[hits.order.ravel()[hits.ck]]
            color[hits.px] = self._quad_colors(rays, camera, condition, district, hits, tex, haze)
        self._ground_and_sky(rays, camera, condition, district, color, covered, haze)
        out = develop(color, condition, rng, H, W)
        return (out, ids.reshape(H, W)) if ids is not None else out

    def _rays(self, camera: Camera) -> _Rays:
        W, H = self.width, self.height
        f = (W / 2) / math.tan(math.radians(camera.hfov) / 2)
        u = (np.arange(W, dtype=np.float32) + 0.5 - W / 2) / np.float32(f)
        v = (np.arange(H, dtype=np.float32) + 0.5 - H / 2) / np.float32(f)  # positive = below the horizon
        th = math.radians(camera.heading)
        fwd = (math.sin(th), math.cos(th))
        right = (math.cos(th), -math.sin(th))
        Dx = (fwd[0] + u * right[0]).astype(np.float32)
        Dy = (fwd[1] + u * right[1]).astype(np.float32)
        Dn = np.sqrt(Dx * Dx + Dy * Dy)
        return _Rays(W, H, f, u, v, Dx, Dy, Dn, np.array([camera.x, camera.y]), fwd)

    def _quad_colors(self, rays: _Rays, camera: Camera, condition: Condition, district, h: _QuadHits,
                     tex: np.ndarray, haze: np.ndarray) -> np.ndarray:
        """Colours of the pixels `h` covers: texel lookup at the mip level of the pixel footprint,
        Lambert shading by the sun, night lights and lamps, aerial perspective."""
        atlas = self.town.atlas
        W, f, v, Dx, Dy, Dn = rays.W, rays.f, rays.v, rays.Dx, rays.Dy, rays.Dn
        order, sk, tk, zlo, zhi, px, ck = h.order, h.sk, h.tk, h.zlo, h.zhi, h.px, h.ck
        # Everything but the texel row is constant along a (column, candidate): compute it W×K.
        tid = tex[order]
        dist = sk * Dn[:, None]
        Ex, Ey = h.E[order, 0], h.E[order, 1]
        seg_len = np.maximum(np.sqrt(Ex * Ex + Ey * Ey), 1e-6)
        nx_, ny_ = Ey / seg_len, -Ex / seg_len
        ndotd = (nx_ * Dx[:, None] + ny_ * Dy[:, None]) / Dn[:, None]
        height = np.maximum(zhi - zlo, 1e-6)
        w0 = atlas.width[tid, 0].astype(np.float32)
        h0 = atlas.height[tid, 0].astype(np.float32)
        fp = dist / np.float32(f)  # metres per pixel at the hit
        # Mip level from the texels per pixel (grazing views count more, capped at ~73°).
        tpp = np.maximum(fp / np.maximum(np.abs(ndotd), 0.3) * w0 / seg_len, fp * h0 / height)
        lev = np.clip(np.log2(np.maximum(tpp, 1.0)).astype(np.int64), 0, atlas.levels - 1)
        wl, hl = atlas.width[tid, lev], atlas.height[tid, lev]
        tx = np.minimum((tk * wl).astype(np.int64), wl - 1)
        base = (atlas.offset[tid, lev] + tx).ravel()
        # texel row = (zhi - z) / height · hl with z = h - v·s  ->  ty0 + v·ty1
        ty0 = ((zhi - camera.height) / height * hl).ravel()
        ty1 = (sk / height * hl).ravel()
        rows = px // W
        ty = np.clip((ty0[ck] + v[rows] * ty1[ck]).astype(np.int64), 0, hl.ravel()[ck] - 1)
        idx = base[ck] + ty * wl.ravel()[ck]
        albedo = self._colors[idx]
        # Lambert shading by the sun (normals turned toward the camera), then aerial perspective.
        sun = self._sun_dir(condition)
        lam = np.maximum(-np.sign(ndotd) * (nx_ * sun[0] + ny_ * sun[1]), 0.0)
        shade = (condition.ambient + condition.sun * lam).astype(np.float32)
        keep = np.exp(-dist / np.float32(condition.fog_distance)).astype(np.float32).ravel()
        gain = (shade.ravel() * keep)[ck]
        col = albedo * gain[:, None]
        if condition.night:
            warm = condition.window_light * np.array([255, 205, 130], np.float32)
            col += self._emissive[idx][:, None] * warm
            cols = px % W
            s_p = sk.ravel()[ck]
            z_p = camera.height - v[rows] * s_p
            lamp = self._lamps(district, rays.cam, s_p * Dx[cols], s_p * Dy[cols], z_p, condition)
            col += albedo * (lamp * keep[ck])[:, None]
        col += haze * (1 - keep[ck])[:, None]
        return col

    def _ground_and_sky(self, rays: _Rays, camera: Camera, condition: Condition, district,
                        color: np.ndarray, covered: np.ndarray, haze: np.ndarray) -> None:
        """Fill the pixels no quad covers: ground below the horizon, sky above (in place)."""
        W, f, u, v, Dx, Dy, Dn, cam = rays.W, rays.f, rays.u, rays.v, rays.Dx, rays.Dy, rays.Dn, rays.cam
        below = np.repeat(v > 0, W)
        gpx = np.flatnonzero(~covered & below)
        if len(gpx):
            grow, gcol = gpx // W, gpx % W
            sg = camera.height / v[grow]
            wx, wy = sg * Dx[gcol], sg * Dy[gcol]  # relative to the camera
            gd = sg * Dn[gcol]
            col = self._ground(district, cam, wx, wy, gd, f, camera.height)
            shade = condition.ambient + condition.sun * math.sin(math.radians(condition.sun_elevation))
            light = np.full(gd.shape, shade, np.float32)
            if condition.night:
                light += self._lamps(district, cam, wx, wy, np.zeros_like(wx), condition)
            keep = np.exp(-gd / np.float32(condition.fog_distance))
            color[gpx] = col * (light * keep)[:, None] + haze * (1 - keep)[:, None]
        spx = np.flatnonzero(~covered & ~below)
        if len(spx):
            top = int(np.count_nonzero(v <= 0))  # sky rows: the top of the frame
            color[spx] = self._sky(camera, condition, u, v[:top])[spx]

    def _segments(self, district, cam, fwd, occluders):
        """Static segments of `district` near and ahead of the camera, plus the occluders
        (a, b, z0, z1, tex, global id)."""
        town = self.town
        sl = slice(0, len(town.seg_tex)) if district is None else slice(district.seg_start, district.seg_stop)
        a, b = town.seg_a[sl], town.seg_b[sl]
        mid = (a + b) / 2 - cam
        half = np.linalg.norm(b - a, axis=1) / 2
        ahead = (mid[:, 0] * fwd[0] + mid[:, 1] * fwd[1]) > -half
        near = np.hypot(mid[:, 0], mid[:, 1]) - half < town.config.view_distance
        keep = np.flatnonzero(ahead & near) + sl.start
        parts = [
            (
                town.seg_a[keep],
                town.seg_b[keep],
                town.seg_z0[keep],
                town.seg_z1[keep],
                town.seg_tex[keep],
                keep,
            )
        ]
        if occluders is not None and len(occluders["tex"]):
            m = len(occluders["tex"])
            parts.append(
                (
                    occluders["a"],
                    occluders["b"],
                    occluders["z0"],
                    occluders["z1"],
                    occluders["tex"],
                    np.full(m, -2, np.int64),
                )
            )
        return tuple(np.concatenate(p) for p in zip(*parts))

    @staticmethod
    def _sun_dir(condition: Condition) -> tuple[float, float]:
        az, el = math.radians(condition.sun_azimuth), math.radians(condition.sun_elevation)
        return math.sin(az) * math.cos(el), math.cos(az) * math.cos(el)

    def _ground(self, district, cam, wx, wy, gd, f, cam_h) -> np.ndarray:
        atlas, town = self.town.atlas, self.town
        px, py = wx + np.float32(cam[0]), wy + np.float32(cam[1])
        # Road within the road half-width of any street centreline, else pavement.
        streets = district.streets if district is not None else [s for d in town.districts for s in d.streets]
        rhw = np.float32(town.config.road_half_width)
        road = np.zeros(px.shape, bool)
        dash = np.zeros(px.shape, bool)
        for st in streets:
            d0, d1 = np.float32(st.d[0]), np.float32(st.d[1])
            dd = np.abs(px * d1 - py * d0 - np.float32(st.p[0] * st.d[1] - st.p[1] * st.d[0]))
            road |= dd <= rhw
            # Dashed centre line: 15 cm wide, 3 m paint / 3 m gap; only near (sub-pixel further away).
            on = np.flatnonzero((dd < 0.12) & (gd < 60))
            if len(on):
                along = px[on] * d0 + py[on] * d1 - np.float32(st.p[0] * st.d[0] + st.p[1] * st.d[1])
                dash[on[(along % 6.0) < 3.0]] = True
        tid = np.where(road, town.ground_tex["asphalt"], town.ground_tex["pavement"])
        # Ground footprint grows with distance² (foreshortening).
        fp = np.maximum(gd / f, gd * gd / (f * cam_h)) * GROUND_TEXELS_PER_METRE
        lev = np.clip(np.log2(np.maximum(fp, 1.0)).astype(np.int64), 0, atlas.levels - 1)
        wl, hl = atlas.width[tid, lev], atlas.height[tid, lev]
        scale = GROUND_TEXELS_PER_METRE / (atlas.width[tid, 0] / wl)
        tx = (np.floor(px * scale).astype(np.int64)) % wl
        ty = (np.floor(py * scale).astype(np.int64)) % hl
        col = self._colors[atlas.offset[tid, lev] + ty * wl + tx]
        col[dash] = np.array([225, 215, 170], np.float32)
        return col

    def _lamps(self, district, cam, wx, wy, wz, condition) -> np.ndarray:
        # Street lamps: inverse-square-ish pools of light (night only).
        if district is None or len(district.lamps) == 0:
            return np.zeros(wx.shape, np.float32)
        rel = (district.lamps - cam).astype(np.float32)
        close = rel[np.hypot(rel[:, 0], rel[:, 1]) < 70.0]
        light = np.zeros(wx.shape, np.float32)
        for lx, ly in close:
            d2 = (wx - lx) ** 2 + (wy - ly) ** 2 + (wz - _LAMP_HEIGHT) ** 2
            light += 1.0 / (1.0 + d2 / 30.0)
        return np.float32(condition.lamp_light) * light

    def _sky(self, camera, condition, u, v) -> np.ndarray:
        """The sky of rows `v` (len(v)·W, 3): a gradient by elevation plus a cloud panorama.

        Elevation is taken per row (exact on the centre column): the gradient is smooth, so the
        error is invisible and the cost is O(H) instead of O(H·W) transcendental calls.
        """
        elev = np.arctan(-v)  # (H,)
        tt = (np.clip(elev / (math.pi / 3), 0, 1) ** 0.7)[:, None]
        grad = (
            np.array(condition.sky_horizon, np.float32) * (1 - tt)
            + np.array(condition.sky_zenith, np.float32) * tt
        )  # (H, 3)
        ch, cw = self._clouds.shape
        az = (math.radians(camera.heading) + np.arctan(u)) / (2 * math.pi) + condition.cloud_shift
        cx = (np.floor(az * cw).astype(np.int64)) % cw
        cy = np.clip((np.clip(elev, 0, None) / (math.pi / 2) * ch * 2).astype(np.int64), 0, ch - 1)
        cloud = (self._clouds[np.ix_(cy, cx)] * np.float32(condition.clouds))[..., None]  # (H, W, 1)
        cloud_col = np.array(condition.sky_horizon, np.float32) * 0.5 + 120.0 * (0 if condition.night else 1)
        return (grad[:, None, :] * (1 - cloud) + cloud_col * cloud).reshape(-1, 3)
