"""Synthetic town: ray-casting geometry against float64 oracles, files, determinism, splits, CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import pytest

from netvlad.cli import main
from netvlad.data import load_dataset
from netvlad.synth import (
    SPLITS,
    Camera,
    Condition,
    Renderer,
    SynthConfig,
    benchmark_render,
    build_town,
    plan_views,
    render_view,
    sample_occluders,
)
from netvlad.synth.textures import build_atlas, find_photo_files
from netvlad.synth.town import District, Street, Town

# Flat lighting: albedo reaches the pixel unchanged (no sun, no fog, no tone curve).
FLAT = Condition(name="flat", sun=0.0, ambient=1.0, fog_distance=1e12, clouds=0.0)
W, H = 64, 48


def small_config(**kw) -> SynthConfig:
    return SynthConfig.preset("tiny", width=W, height=H, max_photos=4, **kw)


@pytest.fixture(scope="module")
def town() -> Town:
    return build_town(small_config(), progress=False)


@pytest.fixture(scope="module")
def town_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("town")
    assert (
        main(
            [
                "synth-town",
                "--out",
                str(out),
                "--size",
                "tiny",
                "--width",
                str(W),
                "--height",
                str(H),
                "--no-progress",
            ]
        )
        == 0
    )
    return out


# ------------------------------------------------------------------ a one-facade scene (exact oracle)


def one_wall_town(texture: np.ndarray, a=(-10.0, 20.0), b=(10.0, 20.0), z1=12.0) -> Town:
    """One facade from a to b (0..z1 m high), textured with `texture`; ground and sky around it."""
    ground = np.full((8, 8, 3), 100, np.uint8)
    atlas = build_atlas([(texture, None), (ground, None), (ground, None)])
    street = Street(p=np.array([0.0, 0.0]), d=np.array([1.0, 0.0]), a0=-50.0, a1=50.0)
    district = District("train", [street], np.zeros((0, 2)), 0, 1, np.zeros(2), 50.0)
    return Town(
        config=SynthConfig(),
        districts=[district],
        seg_a=np.array([a]),
        seg_b=np.array([b]),
        seg_z0=np.array([0.0]),
        seg_z1=np.array([z1]),
        seg_tex=np.array([0]),
        atlas=atlas,
        ground_tex={"asphalt": 1, "pavement": 2},
        vehicle_tex=np.zeros(0, np.int64),
    )


def test_camera_facing_a_facade_sees_its_texture_and_facing_away_does_not():
    tex = np.zeros((32, 64, 3), np.uint8)
    tex[:, :32] = (255, 0, 0)  # left half red (seen from the street side, i.e. from -y)
    tex[:, 32:] = (0, 0, 255)  # right half blue
    town = one_wall_town(tex)
    r = Renderer(town, W, H)
    img, ids = r.render(Camera(0.0, 0.0, 0.0, 2.5, 70.0), FLAT, town.districts[0], return_ids=True)
    centre_row = H // 2 - 1  # just above the horizon: on the wall
    assert tuple(img[centre_row, W // 2 - 2]) == (255, 0, 0)
    assert tuple(img[centre_row, W // 2 + 1]) == (0, 0, 255)
    assert (ids == 0).sum() > 0.3 * W * H
    away, ids_away = r.render(Camera(0.0, 0.0, 180.0, 2.5, 70.0), FLAT, town.districts[0], return_ids=True)
    assert (ids_away == 0).sum() == 0
    red = (away[..., 0] > 200) & (away[..., 1] < 50) & (away[..., 2] < 50)
    blue = (away[..., 2] > 200) & (away[..., 0] < 50) & (away[..., 1] < 50)
    assert not red.any() and not blue.any()


def test_wall_rows_and_columns_match_the_pinhole_oracle():
    town = one_wall_town(np.full((16, 16, 3), 200, np.uint8), a=(-4.0, 20.0), b=(6.0, 20.0), z1=9.0)
    cam = Camera(0.0, 0.0, 0.0, 2.5, 70.0)
    _, ids = Renderer(town, W, H).render(cam, FLAT, town.districts[0], return_ids=True)
    f = (W / 2) / math.tan(math.radians(cam.hfov) / 2)
    expected = np.zeros((H, W), bool)
    for row in range(H):
        for col in range(W):
            u = (col + 0.5 - W / 2) / f
            v = (row + 0.5 - H / 2) / f
            s = 20.0  # the wall is the plane y = 20 and the camera looks along +y: ray (u, 1, -v)·s
            x, z = u * s, cam.height - v * s
            expected[row, col] = -4.0 <= x <= 6.0 and 0.0 <= z <= 9.0
    assert np.array_equal(ids == 0, expected)


# ------------------------------------------------------------------ the generated town


def nearest_hit_oracle(town: Town, district, cam: Camera, col: int, row: int, width: int, height: int) -> int:
    """Segment seen by one pixel, by brute force in float64 (-1: none)."""
    f = (width / 2) / math.tan(math.radians(cam.hfov) / 2)
    u = (col + 0.5 - width / 2) / f
    v = (row + 0.5 - height / 2) / f
    th = math.radians(cam.heading)
    dx, dy = math.sin(th) + u * math.cos(th), math.cos(th) - u * math.sin(th)
    best, best_s = -1, math.inf
    for i in range(district.seg_start, district.seg_stop):
        ax, ay = town.seg_a[i] - (cam.x, cam.y)
        ex, ey = town.seg_b[i] - town.seg_a[i]
        den = dx * ey - dy * ex
        if abs(den) < 1e-12:
            continue
        s = (ax * ey - ay * ex) / den
        t = (ax * dy - ay * dx) / den
        z = cam.height - v * s
        if 0.2 < s < best_s and 0 <= t <= 1 and town.seg_z0[i] <= z <= town.seg_z1[i]:
            mid = (town.seg_a[i] + town.seg_b[i]) / 2 - (cam.x, cam.y)
            if (
                math.hypot(*mid) - np.linalg.norm(town.seg_b[i] - town.seg_a[i]) / 2
                < town.config.view_distance
            ):
                best, best_s = i, s
    return best


def test_rendered_segment_ids_match_brute_force(town):
    r = Renderer(town, W, H)
    db, _ = plan_views(town, "train")
    district = town.district("train")
    rng = np.random.default_rng(0)
    checked = 0
    for view in db[:: max(1, len(db) // 12)]:
        _, ids = r.render(view.camera, FLAT, district, return_ids=True)
        for _ in range(6):
            row, col = int(rng.integers(H)), int(rng.integers(W))
            want = nearest_hit_oracle(town, district, view.camera, col, row, W, H)
            assert ids[row, col] == want, (view, row, col)
            checked += 1
    assert checked >= 60


def test_facade_textures_are_unique_photo_crops(town):
    assert find_photo_files(), "mvtbdata / scikit-image photos should be installed in the dev environment"
    assert town.n_photos > 0
    a = town.atlas
    digests = set()
    for t in np.unique(town.seg_tex):
        start = a.offset[t, 0]
        texels = a.colors[start : start + a.width[t, 0] * a.height[t, 0]]
        digests.add(hashlib.sha1(texels.tobytes()).hexdigest())
    assert len(digests) == len(np.unique(town.seg_tex)) == town.num_facades


def test_splits_are_disjoint_and_every_query_has_a_positive(town):
    cams = {}
    for split in SPLITS:
        db, q = plan_views(town, split)
        cams[split] = np.array([[v.x, v.y] for v in db + q])
        d = town.district(split)
        # a district's facades lie within its own area
        pts = np.concatenate([town.seg_a[d.seg_start : d.seg_stop], town.seg_b[d.seg_start : d.seg_stop]])
        assert np.linalg.norm(pts - d.center, axis=1).max() < d.radius + 150
        dbp = np.array([[v.x, v.y] for v in db])
        for v in q:
            assert np.hypot(*(dbp - (v.x, v.y)).T).min() <= 25.0
    for i, s1 in enumerate(SPLITS):
        for s2 in SPLITS[i + 1 :]:
            gap = np.linalg.norm(cams[s1][:, None] - cams[s2][None], axis=2).min()
            assert gap > 2 * town.config.view_distance, (s1, s2, gap)


def test_query_conditions_occluders_and_night(town):
    r = Renderer(town, W, H)
    _, queries = plan_views(town, "train")
    assert {v.condition for v in queries} <= set(town.config.query_conditions)
    night = [v for v in queries if v.condition == "night"]
    day = [v for v in queries if v.condition == "day"]
    assert night and day
    assert np.mean([render_view(r, v).mean() for v in night]) < 0.6 * np.mean(
        [render_view(r, v).mean() for v in day]
    )
    occ = [
        sample_occluders(town, town.district("train"), v, np.random.default_rng(i))
        for i, v in enumerate(queries)
    ]
    assert sum(len(o["tex"]) for o in occ) > 0


def test_files_hold_the_camera_positions_and_load_through_the_loaders(town_dir):
    config = SynthConfig.preset("tiny", width=W, height=H)  # what the CLI made
    town = build_town(config, progress=False)
    ox, oy = config.origin_utm
    for split in SPLITS:
        db, q = plan_views(town, split)
        csv_ds = load_dataset(town_dir / split / f"synth_{split}.csv")
        mat_ds = load_dataset(town_dir / split / f"synth_{split}.mat")
        for ds in (csv_ds, mat_ds):
            assert ds.num_db == len(db) and ds.num_queries == len(q)
            np.testing.assert_array_equal(ds.db_utm, [[ox + v.x, oy + v.y] for v in db])
            np.testing.assert_array_equal(ds.query_utm, [[ox + v.x, oy + v.y] for v in q])
            assert all(p.is_file() for p in ds.db_paths() + ds.query_paths())
            assert [p.name for p in ds.db_paths()] == [v.name for v in db]
        assert csv_ds.zone == "17T"
        np.testing.assert_allclose(csv_ds.db_headings, [v.heading for v in db])
        assert csv_ds.query_conditions == [v.condition for v in q]
        assert all(len(csv_ds.positives(i)) > 0 for i in range(csv_ds.num_queries))


def test_generation_is_deterministic_and_refuses_another_config(town_dir, tmp_path):
    again = tmp_path / "again"
    assert (
        main(
            [
                "synth-town",
                "--out",
                str(again),
                "--size",
                "tiny",
                "--width",
                str(W),
                "--height",
                str(H),
                "--no-progress",
            ]
        )
        == 0
    )
    files = sorted(p.relative_to(town_dir) for p in town_dir.rglob("*") if p.is_file())
    assert len(files) > 100
    for rel in files:
        if rel.suffix == ".mat":  # MATLAB's header holds the creation time: compare the content
            a, b = load_dataset(town_dir / rel), load_dataset(again / rel)
            assert a.db_images == b.db_images and np.array_equal(a.query_utm, b.query_utm)
        else:
            assert (town_dir / rel).read_bytes() == (again / rel).read_bytes(), rel
    assert main(["synth-town", "--out", str(again), "--size", "tiny", "--seed", "5", "--no-progress"]) == 2


def test_procedural_fallback_and_seeds_differ():
    cfg = small_config(photo_sources=("procedural",))
    t0 = build_town(cfg, progress=False)
    t1 = build_town(dataclasses.replace(cfg, seed=1), progress=False)
    assert t0.n_photos == 0 and t0.num_facades > 0
    assert t0.seg_a.shape != t1.seg_a.shape or not np.array_equal(t0.seg_a, t1.seg_a)
    r = Renderer(t0, W, H)
    db, _ = plan_views(t0, "test")
    img = render_view(r, db[0])
    assert img.shape == (H, W, 3) and img.dtype == np.uint8 and img.std() > 5


def test_config_errors_and_benchmark(town, capsys):
    with pytest.raises(ValueError, match="unknown town size 'huge'"):
        SynthConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown condition"):
        SynthConfig(query_conditions={"fog": 1.0})
    with pytest.raises(ValueError, match="blocks and n_queries need an entry for split 'val'"):
        SynthConfig(blocks={"train": (1, 1), "test": (1, 1)})
    with pytest.raises(ValueError, match="unknown photo source"):
        build_town(SynthConfig.preset("tiny", photo_sources=("flickr",)), progress=False)
    assert main(["synth-town", "--size", "tiny"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
    r = benchmark_render(town.config, n=4, town=town)
    assert r["images"] == 4 and r["images_per_s"] > 0 and r["images_per_cpu_s"] > 0
