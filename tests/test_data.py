"""PlaceDataset geometry and protocol rules, on synthetic data and on Patch-NetVLAD's real ground truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from netvlad.data import (
    PlaceDataset,
    dedup_ranked,
    dedup_ranked_matrix,
    load_csv,
    load_dataset,
    load_mat,
    save_csv,
    save_mat,
)
from netvlad.data.formats.patchnetvlad import package_dir

needs_pnv = pytest.mark.skipif(package_dir() is None, reason="patchnetvlad (dev extra) not installed")


def brute_positives(db, q, r):
    d2 = np.sum((db - q) ** 2, axis=1)
    ids = np.flatnonzero(d2 <= r * r)
    return ids[np.lexsort((ids, d2[ids]))], d2


def make_ds(**kw):
    rng = np.random.default_rng(0)
    db = rng.uniform(0, 300, (400, 2))
    q = rng.uniform(0, 300, (40, 2))
    base = dict(
        name="synthetic",
        db_root="/x",
        query_root="/y",
        db_images=[f"d{i}.jpg" for i in range(400)],
        query_images=[f"q{i}.jpg" for i in range(40)],
        db_utm=db,
        query_utm=q,
    )
    base.update(kw)
    return PlaceDataset(**base)


def test_positives_and_nontrivial_against_brute_force():
    ds = make_ds()
    ds.db_utm[5] = ds.query_utm[0] + [0.5, 0.0]  # trivial (< 1 m)
    ds.db_utm[6] = ds.query_utm[0] + [3.0, 4.0]  # 5 m: non-trivial
    ds.db_utm[7] = ds.query_utm[0] + [10.0, 0.0]  # exactly 10 m: non-trivial (d^2 <= 100)
    allpos = ds.all_positives()
    for q in range(ds.num_queries):
        expect, d2 = brute_positives(ds.db_utm, ds.query_utm[q], 25.0)
        np.testing.assert_array_equal(ds.positives(q), expect)
        np.testing.assert_array_equal(allpos[q], expect)
        nt = ds.nontrivial_positives(q)
        exp_nt = expect[(d2[expect] > 1.0) & (d2[expect] <= 100.0)]
        np.testing.assert_array_equal(nt, exp_nt)
        assert np.all(ds.is_positive(q, expect)) and not np.any(ds.is_negative(q, expect))
        assert ds.negative_mask(q).sum() == ds.num_db - expect.size
    assert 5 in ds.positives(0) and 5 not in ds.nontrivial_positives(0)
    assert {6, 7} <= set(ds.nontrivial_positives(0).tolist())
    # dbTiny convention: trivial_radius 0 removes the lower bound.
    tiny = make_ds(trivial_radius=0.0)
    tiny.db_utm[5] = tiny.query_utm[0]
    assert 5 in tiny.nontrivial_positives(0)


def test_db_positives_exclude_self_for_nontrivial():
    ds = make_ds()
    assert 3 in ds.db_positives(3)
    assert 3 not in ds.db_nontrivial_positives(3)


def test_sample_negatives_distinct_valid_and_terminates():
    ds = make_ds()
    rng = np.random.default_rng(5)
    for q in range(ds.num_queries):
        negs = ds.sample_negatives(q, 50, rng)
        assert negs.size == 50 and np.unique(negs).size == 50
        assert np.all(ds.is_negative(q, negs))
    # Asking for every negative returns exactly the complement of the positives.
    q = 0
    avail = ds.num_db - ds.positives(q).size
    allneg = ds.sample_negatives(q, avail, 1)
    np.testing.assert_array_equal(np.sort(allneg), np.flatnonzero(ds.negative_mask(q)))
    with pytest.raises(ValueError, match=rf"query 0 \(q0.jpg\) has only {avail} negatives"):
        ds.sample_negatives(q, avail + 1, 1)
    # All db images within 25 m: no negatives at all, still terminates.
    crowded = make_ds(db_utm=np.zeros((400, 2)), query_utm=np.zeros((40, 2)))
    with pytest.raises(ValueError, match="has only 0 negatives"):
        crowded.sample_negatives(0, 1)
    # Reproducible with a seed.
    np.testing.assert_array_equal(ds.sample_negatives(3, 10, 42), ds.sample_negatives(3, 10, 42))


def test_sample_negatives_is_uniform_over_negatives():
    ds = make_ds()
    q = 1
    counts = np.zeros(ds.num_db)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        counts[ds.sample_negatives(q, 5, rng)] += 1
    neg = ds.negative_mask(q)
    assert counts[~neg].sum() == 0
    expected = 2000 * 5 / neg.sum()
    # chi-square-ish sanity: every negative drawn, none wildly over-represented
    assert counts[neg].min() > 0 and counts[neg].max() < 3 * expected


def test_tokyotm_timestamp_rule():
    # TokyoTM: queries are taken from the database imagery itself (same file, same timestamp).
    rng = np.random.default_rng(3)
    db = rng.uniform(0, 100, (60, 2))
    ts = np.repeat([2009, 2011, 2013], 20)
    qi = np.array([0, 21, 45])
    ds = PlaceDataset(
        name="tokyoTM_val",
        db_root="/i",
        query_root="/i",
        db_images=[f"{i}.jpg" for i in range(60)],
        query_images=[f"{i}.jpg" for i in qi],
        db_utm=db,
        query_utm=db[qi] + 2.0,
        db_timestamps=ts,
        query_timestamps=ts[qi],
        rules={"tokyotm_timestamp"},
    )
    for k, q in enumerate(qi):
        _, d2 = brute_positives(db, ds.query_utm[k], 10.0)
        expect = np.flatnonzero((d2 > 1) & (d2 <= 100) & (ts != ts[q]))
        assert set(ds.nontrivial_positives(k).tolist()) == set(expect.tolist())
        assert q not in ds.nontrivial_positives(k)  # its own image has its own timestamp
    ranked = np.arange(60)
    kept = ds.postprocess_ranked(1, ranked, n_top=30)
    assert np.all(ts[kept] != 2011) and kept.size == 30
    assert ds.retrieve_factor() == 10
    with pytest.raises(ValueError, match="needs db and query timestamps"):
        PlaceDataset(
            name="x",
            db_root="/",
            query_root="/",
            db_images=["a"],
            query_images=["b"],
            db_utm=[[0, 0]],
            query_utm=[[0, 0]],
            rules={"tokyotm_timestamp"},
        )


def test_tokyo247_dedup():
    groups = np.arange(48) // 12  # 4 panoramas of 12 cutouts
    ranked = np.array([13, 14, 2, 25, 0, 1, 40, 26, 15])
    np.testing.assert_array_equal(dedup_ranked(ranked, groups), [13, 2, 25, 40])
    np.testing.assert_array_equal(dedup_ranked(ranked, groups, n_top=2), [13, 2])
    m = dedup_ranked_matrix(np.stack([ranked, ranked[::-1]]), groups, 5)
    np.testing.assert_array_equal(m, [[13, 2, 25, 40, -1], [15, 26, 40, 1, -1]])
    ds = make_ds(
        db_utm=np.zeros((48, 2)),
        db_images=[f"{i}" for i in range(48)],
        db_groups=groups,
        rules={"tokyo247_dedup"},
    )
    np.testing.assert_array_equal(ds.postprocess_ranked(0, ranked, 3), [13, 2, 25])
    assert ds.retrieve_factor() == 12


def test_subset_queries_and_validation():
    ds = make_ds(query_conditions=["day", "sunset", "night"] * 13 + ["day"])
    sub = ds.subset_queries([5, 2])
    assert sub.query_images == ["q5.jpg", "q2.jpg"] and sub.query_conditions == ["night", "night"]
    np.testing.assert_array_equal(sub.positives(0), ds.positives(5))
    with pytest.raises(ValueError, match="db_utm has 3 rows for 400"):
        make_ds(db_utm=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="unknown rule"):
        make_ds(rules={"nope"})


# ----------------------------------------------------------------------------- real ground truth


@needs_pnv
def test_pitts30k_test_real_ground_truth(tmp_path):
    ds = load_dataset("pitts30k_test", images=tmp_path)
    assert (ds.num_db, ds.num_queries) == (10_000, 6_816)
    assert ds.pos_radius == 25.0 and ds.train_pos_radius == 10.0 and ds.zone == "17T"
    assert ds.db_images[0] == "Pittsburgh250k/000/000829_pitch1_yaw1.jpg"
    assert ds.query_images[0].startswith("Pittsburgh250k/queries_real/")
    allpos = ds.all_positives()
    rng = np.random.default_rng(0)
    for q in rng.choice(ds.num_queries, 40, replace=False):
        expect, _ = brute_positives(ds.db_utm, ds.query_utm[q], 25.0)
        np.testing.assert_array_equal(allpos[q], expect)
    assert sum(p.size == 0 for p in allpos) == 0  # every Pitts30k-test query has a positive

    # Round trip through our CSV and .mat: same names, coordinates, radii and positives.
    csv_ds = load_csv(save_csv(ds, tmp_path / "out" / "pitts.csv"))
    assert csv_ds.db_paths() == ds.db_paths() and csv_ds.query_paths() == ds.query_paths()
    np.testing.assert_array_equal(csv_ds.db_utm, ds.db_utm)
    np.testing.assert_array_equal(csv_ds.query_utm, ds.query_utm)
    assert (csv_ds.name, csv_ds.zone, csv_ds.pos_radius, csv_ds.rules) == (ds.name, ds.zone, 25.0, ds.rules)
    mat_ds = load_mat(save_mat(ds, tmp_path / "pitts30k_test.mat"), images=tmp_path)
    assert mat_ds.db_images == ds.db_images and mat_ds.query_images == ds.query_images
    np.testing.assert_array_equal(mat_ds.db_utm, ds.db_utm)
    np.testing.assert_array_equal(mat_ds.query_utm, ds.query_utm)
    assert (mat_ds.pos_radius, mat_ds.train_pos_radius) == (25.0, 10.0)
    for q in (0, 100, 6815):
        np.testing.assert_array_equal(mat_ds.positives(q), allpos[q])
        np.testing.assert_array_equal(csv_ds.positives(q), allpos[q])


@needs_pnv
def test_tokyo247_real_ground_truth(tmp_path):
    ds = load_dataset("tokyo247", images=tmp_path)
    assert (ds.num_db, ds.num_queries) == (75_984, 315)
    assert ds.rules == {"tokyo247_dedup"} and ds.zone == "54S"
    # Panorama ids from file names agree with MATLAB's floor((id-1)/12).
    np.testing.assert_array_equal(ds.db_groups, np.arange(ds.num_db) // 12)
    # Conditions from file numbers agree with MATLAB's 1-based position mod 3.
    pos_rule = [("night", "day", "sunset")[(i + 1) % 3] for i in range(315)]
    assert ds.query_conditions == pos_rule and ds.query_conditions[:3] == ["day", "sunset", "night"]
    rng = np.random.default_rng(1)
    for q in rng.choice(315, 25, replace=False):
        expect, _ = brute_positives(ds.db_utm, ds.query_utm[q], 25.0)
        np.testing.assert_array_equal(ds.positives(q), expect)
    # Round trip keeps the protocol (rule, groups, conditions) through CSV, and names/coords through .mat.
    # (first 100 panoramas and 30 queries: writing 76k MATLAB cells takes scipy several seconds)
    sub = dataclasses.replace(
        ds.subset_queries(np.arange(30)),
        db_images=ds.db_images[:1200],
        db_utm=ds.db_utm[:1200],
        db_groups=ds.db_groups[:1200],
    )
    c = load_csv(save_csv(sub, tmp_path / "t.csv"))
    assert c.rules == ds.rules and c.query_conditions == sub.query_conditions
    assert c.db_paths() == sub.db_paths() and c.query_paths() == sub.query_paths()
    np.testing.assert_array_equal(c.db_groups, sub.db_groups)
    np.testing.assert_array_equal(c.db_utm, sub.db_utm)
    m = load_mat(save_mat(sub, tmp_path / "tokyo247.mat"), images=tmp_path)
    assert m.rules == ds.rules and m.db_images == sub.db_images and m.query_images == sub.query_images
    assert m.query_conditions == sub.query_conditions
    np.testing.assert_array_equal(m.db_groups, sub.db_groups)
    np.testing.assert_array_equal(m.query_utm, sub.query_utm)
    for q in range(30):
        np.testing.assert_array_equal(m.positives(q), sub.positives(q))
        np.testing.assert_array_equal(c.positives(q), sub.positives(q))


def test_image_list_dataset(tmp_path):
    import torch
    from PIL import Image

    from netvlad.data import ImageListDataset, ImageLoadError

    Image.new("RGB", (8, 6), (255, 0, 0)).save(tmp_path / "a.png")
    Image.new("L", (8, 6), 128).save(tmp_path / "b.png")
    to_t = lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255  # noqa: E731
    ds = ImageListDataset([tmp_path / "a.png", tmp_path / "b.png", tmp_path / "gone.png"], to_t)
    assert len(ds) == 3
    x, i = ds[1]
    assert i == 1 and x.shape == (3, 6, 8) and torch.allclose(x, torch.full_like(x, 128 / 255))
    assert ds[0][0][0].mean() == 1.0
    with pytest.raises(ImageLoadError, match=r"gone\.png: image not found"):
        ds[2]

    def boom(a):
        raise RuntimeError("bad size")

    with pytest.raises(ImageLoadError, match=r"a\.png: preprocessing failed \(RuntimeError: bad size\)"):
        ImageListDataset([tmp_path / "a.png"], boom)[0]
    loader = torch.utils.data.DataLoader(ImageListDataset([tmp_path / "a.png"] * 3, to_t), batch_size=2)
    xb, ib = next(iter(loader))
    assert xb.shape == (2, 3, 6, 8) and ib.tolist() == [0, 1]
