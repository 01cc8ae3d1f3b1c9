"""Results that would be silently wrong are refused or made right ("nothing silently wrong").

Each refusal is checked for its exit code, a message naming the file or field, and no traceback;
each maths change against an oracle written here (NumPy loops in float64, the protocol by hand).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from netvlad.cli import main
from netvlad.io import read_features, write_features

FP_A = "a" * 64
FP_B = "b" * 64


# --------------------------------------------------------------------------- helpers


def _write_csv(path, db_utm, q_utm, db_names=None, q_names=None):
    db_names = db_names or [f"db/{i:04d}.jpg" for i in range(len(db_utm))]
    q_names = q_names or [f"q/{i:04d}.jpg" for i in range(len(q_utm))]
    lines = ["# name: silent", "split,path,easting,northing"]
    lines += [f"db,{n},{e!r},{u!r}" for n, (e, u) in zip(db_names, db_utm.tolist())]
    lines += [f"query,{n},{e!r},{u!r}" for n, (e, u) in zip(q_names, q_utm.tolist())]
    path.write_text("\n".join(lines) + "\n")
    return path


def _unnormalised_town(seed=0, nq=20, d=16):
    """Queries q_i (unit); database: d_i = 0.5·q_i + noise at q_i's place (its only positive) and
    long distractors (norm 10) 5 km away. Squared L2 finds d_i; inner product prefers the long rows."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((nq, d))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    true = 0.5 * q + 0.02 * rng.standard_normal((nq, d))
    far = rng.standard_normal((nq, d))
    far *= 10.0 / np.linalg.norm(far, axis=1, keepdims=True)
    db = np.concatenate([true, far]).astype(np.float32)
    q_utm = np.stack([np.arange(nq) * 100.0, np.zeros(nq)], 1)
    db_utm = np.concatenate([q_utm, q_utm + [0.0, 5000.0]])
    return db, q.astype(np.float32), db_utm, q_utm


def _ranking_oracle(q, db, metric):
    """Per query, database ids best first: squared L2 ascending or inner product descending, ties by id."""
    out = []
    for qi in q.astype(np.float64):
        if metric == "l2":
            key = [float(((qi - dj) ** 2).sum()) for dj in db.astype(np.float64)]
        else:
            key = [-float(qi @ dj) for dj in db.astype(np.float64)]
        out.append(sorted(range(len(db)), key=lambda j: (key[j], j)))
    return out


def _recall_oracle(q, db, q_utm, db_utm, n, metric="l2", radius=25.0):
    hits = 0
    for i, order in enumerate(_ranking_oracle(q, db, metric)):
        pos = {j for j in range(len(db)) if ((q_utm[i] - db_utm[j]) ** 2).sum() <= radius**2}
        hits += any(j in pos for j in order[:n])
    return hits / len(q)


def _eval_files(tmp_path, db, q, db_utm, q_utm, db_fp=FP_A, q_fp=FP_A, dtype="float32"):
    spec = _write_csv(tmp_path / "ds.csv", db_utm, q_utm)
    db_names = [f"db/{i:04d}.jpg" for i in range(len(db))]
    q_names = [f"q/{i:04d}.jpg" for i in range(len(q))]
    write_features(tmp_path / "db.h5", db_names, db, {"fingerprint": db_fp} if db_fp else None, dtype)
    write_features(tmp_path / "q.h5", q_names, q, {"fingerprint": q_fp} if q_fp else None, dtype)
    return spec


def _small_model(crop="conv1"):
    """A real preset architecture cut early (fast), max pooling: no cluster initialisation needed."""
    from netvlad.models import PRESETS, create_model

    return create_model(PRESETS["resnet18-netvlad"].replace(method="max", crop=crop), weights="random")


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# --------------------------------------------------------------------------- refusals, table-driven


def _mixed_eval(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    utm = np.stack([np.arange(10) * 100.0, np.zeros(10)], 1)
    spec = _eval_files(tmp_path, x, x[:4], utm, utm[:4], db_fp=FP_A, q_fp=FP_B)
    return ["evaluate", "--dataset", spec, "--db", tmp_path / "db.h5", "--queries", tmp_path / "q.h5"]


def _mixed_pairs(tmp_path):
    _mixed_eval(tmp_path)
    return ["pairs", "--db", tmp_path / "db.h5", "--queries", tmp_path / "q.h5", "--out", tmp_path / "p.txt"]


def _crop_too_big(tmp_path):
    return [*_mixed_eval(tmp_path)[:-2], "--crop-dim", "64"]  # db.h5 alone (8-D), queries looked up in it


def _crop_negative(tmp_path):
    return [*_mixed_eval(tmp_path)[:-2], "--crop-dim", "-3"]


def _nan_checkpoint(tmp_path):
    from netvlad.models import save_model

    model = _small_model()
    with torch.no_grad():
        model.backbone.conv1.weight[0, 0, 0, 0] = float("nan")
    save_model(model, tmp_path / "diverged.pt")
    return ["describe", tmp_path / "diverged.pt"]


def _inf_checkpoint_extract(tmp_path):
    from netvlad.models import save_model

    model = _small_model(crop="bn1")
    with torch.no_grad():
        model.backbone.bn1.running_var[3] = float("inf")
    save_model(model, tmp_path / "inf.safetensors")
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "imgs" / "a.png")
    return ["extract", tmp_path / "inf.safetensors", "--images", tmp_path / "imgs",
            "--out", tmp_path / "f.h5"]


def _random_bytes_checkpoint(tmp_path):
    (tmp_path / "model.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    return ["describe", tmp_path / "model.pt"]


def _text_checkpoint(tmp_path):
    (tmp_path / "model.pt").write_text("101\n")
    return ["describe", tmp_path / "model.pt"]


def _train_random_backbone(tmp_path):
    return ["train", "--train", tmp_path / "t.csv", "--val", tmp_path / "v.csv", "--out", tmp_path / "run"]


def _train_random_explicit(tmp_path):
    # --weights random passes the check: the next problem reported is the missing training set
    return [*_train_random_backbone(tmp_path), "--weights", "random"]


def _duplicate_names(tmp_path):
    (tmp_path / "img").mkdir()
    for n, red in (("d0", 0), ("d1", 90), ("q0", 180)):
        Image.new("RGB", (8, 8), (red, 0, 0)).save(tmp_path / "img" / f"{n}.png")
    utm = np.array([[0.0, 0.0], [0.0, 5.0], [0.0, 0.0]])
    spec = _write_csv(tmp_path / "dup.csv", utm, utm[:1], ["img/d0.png", "img/d1.png", "img/d0.png"],
                      ["img/q0.png"])
    return ["dataset", "check", spec, "--no-progress"]


def _pca_auto_without_val(tmp_path):
    return ["pca", "resnet18-netvlad", "--dataset", tmp_path / "t.csv", "--dim", "auto",
            "--out", tmp_path / "o.pt"]


def _pca_bad_dim(tmp_path):
    return ["pca", "resnet18-netvlad", "--dataset", tmp_path / "t.csv", "--dim", "big",
            "--out", tmp_path / "o.pt"]


MIXED = ["db.h5", "q.h5", FP_A[:16], FP_B[:16], "different models", "--allow-mixed-models"]
REFUSALS = [
    # (name, argv builder, exit code, fragments the message must hold)
    ("evaluate-mixed-models", _mixed_eval, 2, MIXED),
    ("pairs-mixed-models", _mixed_pairs, 2, MIXED),
    ("crop-dim-above-dim", _crop_too_big, 2, ["--crop-dim 64", "8-D", "db.h5"]),
    ("crop-dim-negative", _crop_negative, 2, ["--crop-dim", "-3"]),
    ("nan-checkpoint", _nan_checkpoint, 2, ["diverged.pt", "'backbone.conv1.weight'", "NaN/inf"]),
    ("inf-checkpoint-extract", _inf_checkpoint_extract, 2, ["inf.safetensors", "'backbone.bn1.running_var'"]),
    ("random-bytes-checkpoint", _random_bytes_checkpoint, 2,
     ["model.pt", "unrecognised binary content", "not a model checkpoint", ".safetensors"]),
    ("text-checkpoint", _text_checkpoint, 2, ["model.pt", "a text file", "not a model checkpoint"]),
    ("train-random-backbone", _train_random_backbone, 2,
     ["vgg16-netvlad", "random backbone", "--weights imagenet", "--weights random"]),
    ("train-random-explicit", _train_random_explicit, 2, ["t.csv"]),
    ("doctor-duplicate-names", _duplicate_names, 1, ["ERROR [duplicate-name]", "img/d0.png"]),
    ("pca-auto-needs-val", _pca_auto_without_val, 2, ["--dim auto", "--val"]),
]


@pytest.mark.parametrize("name,build,code,fragments", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(tmp_path, capsys, name, build, code, fragments):
    argv = build(tmp_path)
    rc, out, err = _run(argv, capsys)
    assert rc == code, (out, err)
    text = err if code == 2 else out
    for frag in fragments:
        assert frag in text, (frag, text)
    assert "Traceback" not in out + err
    if code == 2:
        assert err.startswith(f"netvlad {argv[0]}: error: ") and err.count("\n") == 1  # one line


def test_bad_pca_dim_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in _pca_bad_dim(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--dim: expected a positive integer or 'auto', got 'big'" in err


def test_refusal_in_a_subprocess_prints_no_traceback(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    argv = _mixed_eval(tmp_path)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "netvlad", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert FP_A[:16] in proc.stderr and FP_B[:16] in proc.stderr


# --------------------------------------------------------------------------- mixed models: allowed, unknown


def test_mixed_models_allowed_and_unfingerprinted_files_warn_once(tmp_path, capsys, caplog):
    argv = _mixed_eval(tmp_path)
    with caplog.at_level(logging.WARNING):
        rc, out, err = _run([*argv, "--allow-mixed-models", "--ns", "1"], capsys)
    assert rc == 0, err
    assert "different models" in caplog.text and "--allow-mixed-models" in caplog.text
    # files without a fingerprint cannot be checked: one warning naming them
    names, desc, _ = read_features(tmp_path / "q.h5")
    write_features(tmp_path / "q_nofp.h5", names, desc)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rc, out, err = _run([*argv[:-1], tmp_path / "q_nofp.h5", "--ns", "1"], capsys)
    assert rc == 0
    recs = [r for r in caplog.records if "fingerprint" in r.getMessage()]
    assert len(recs) == 1 and "q_nofp.h5" in recs[0].getMessage() and "cannot check" in recs[0].getMessage()


def test_pairs_with_an_hloc_file_warns_that_it_cannot_check(tmp_path, capsys, caplog):
    from netvlad.io import export_hloc

    _mixed_eval(tmp_path)
    export_hloc(tmp_path / "q.h5", tmp_path / "q_hloc.h5")
    with caplog.at_level(logging.WARNING):
        rc, out, err = _run(["pairs", "--db", tmp_path / "db.h5", "--queries", tmp_path / "q_hloc.h5",
                             "--out", tmp_path / "p.txt", "--k", "2"], capsys)
    assert rc == 0 and (tmp_path / "p.txt").is_file()
    recs = [r for r in caplog.records if "fingerprint" in r.getMessage()]
    assert len(recs) == 1 and "q_hloc.h5" in recs[0].getMessage()


# --------------------------------------------------------------------------- ranking of unnormalised rows


def test_recall_on_unnormalised_rows_is_the_protocols():
    from netvlad.metrics import evaluate

    db, q, db_utm, q_utm = _unnormalised_town()
    pos = [np.flatnonzero(((db_utm - u) ** 2).sum(1) <= 25.0**2) for u in q_utm]
    res = evaluate(db, q, pos, ns=[1, 5])
    assert res["recall"][1] == _recall_oracle(q, db, q_utm, db_utm, 1) == 1.0
    assert res["recall"][5] == _recall_oracle(q, db, q_utm, db_utm, 5)
    # what inner-product ranking (the old behaviour) gives on the same rows: far from the protocol
    assert _recall_oracle(q, db, q_utm, db_utm, 1, metric="ip") <= 0.2


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_evaluate_cli_on_unnormalised_files(tmp_path, capsys, dtype):
    db, q, db_utm, q_utm = _unnormalised_town(seed=1)
    spec = _eval_files(tmp_path, db, q, db_utm, q_utm, dtype=dtype)
    rc, out, err = _run(["evaluate", "--dataset", spec, "--db", tmp_path / "db.h5", "--queries",
                         tmp_path / "q.h5", "--ns", "1", "5"], capsys)
    assert rc == 0, err
    _, dbs, _ = read_features(tmp_path / "db.h5")  # the stored (maybe float16-rounded) values
    _, qs, _ = read_features(tmp_path / "q.h5")
    want = _recall_oracle(qs, dbs, q_utm, db_utm, 1)
    assert want == 1.0 and f"{100 * want:>8.2f}%" in out.splitlines()[2]


def test_topk_l2_on_unnormalised_rows_against_loop():
    from netvlad.index import topk

    rng = np.random.default_rng(3)
    db = rng.standard_normal((300, 12)).astype(np.float32) * rng.uniform(0.1, 20, (300, 1)).astype(np.float32)
    q = rng.standard_normal((9, 12)).astype(np.float32) * 3
    for backend in ("numpy", "torch"):
        s, i = topk(q, db, 7, block=64, metric="l2", backend=backend)
        want = [row[:7] for row in _ranking_oracle(q, db, "l2")]
        np.testing.assert_array_equal(i, want)
        d64 = ((q[:, None, :].astype(np.float64) - db[None].astype(np.float64)) ** 2).sum(-1)
        np.testing.assert_allclose(s, np.take_along_axis(d64, i, 1), rtol=1e-4)


def test_map_ranks_unnormalised_rows_by_l2():
    from netvlad.metrics import evaluate_map

    db, q, *_ = _unnormalised_town(seed=2, nq=6)
    protocols = {"default": ([np.array([i]) for i in range(6)], None, None)}
    res = evaluate_map(db, q, protocols)
    # each query's single positive d_i is its nearest row by L2: AP = 1 for every query
    assert [r[0] for r in _ranking_oracle(q, db, "l2")] == list(range(6))
    assert res["protocols"]["default"]["map"] == 100.0


def test_pairs_rank_unnormalised_rows_by_l2(tmp_path, capsys):
    db, q, *_ = _unnormalised_town(seed=4, nq=8)
    db_names = [f"db/{i:03d}.jpg" for i in range(len(db))]
    q_names = [f"q/{i:03d}.jpg" for i in range(len(q))]
    write_features(tmp_path / "db.h5", db_names, db, {"fingerprint": FP_A})
    write_features(tmp_path / "q.h5", q_names, q, {"fingerprint": FP_A})
    rc, out, err = _run(["pairs", "--db", tmp_path / "db.h5", "--queries", tmp_path / "q.h5", "--k", "3",
                         "--out", tmp_path / "p.txt"], capsys)
    assert rc == 0, err
    order = _ranking_oracle(q, db, "l2")
    want = [f"{q_names[i]} {db_names[j]}" for i, row in enumerate(order) for j in row[:3]]
    assert (tmp_path / "p.txt").read_text().splitlines() == want


def test_index_refuses_unnormalised_rows_accepts_float16_unit_rows(tmp_path, capsys):
    from netvlad.index import check_unit_norm, l2_normalize

    db, *_ = _unnormalised_town(seed=5)
    names = [f"db/{i:03d}.jpg" for i in range(len(db))]
    write_features(tmp_path / "raw.h5", names, db, {"fingerprint": FP_A})
    rc, out, err = _run(["index", "build", tmp_path / "raw.h5", "--out", tmp_path / "raw.idx"], capsys)
    assert rc == 2 and "raw.h5" in err and "not L2-normalised: row 0 has norm" in err
    assert "Traceback" not in out + err
    write_features(tmp_path / "unit16.h5", names, l2_normalize(db), {"fingerprint": FP_A}, dtype="float16")
    _, stored, _ = read_features(tmp_path / "unit16.h5")
    assert np.abs(np.linalg.norm(stored, axis=1) - 1).max() > 1e-5  # float16 did perturb the norms
    rc, out, err = _run(["index", "build", tmp_path / "unit16.h5", "--out", tmp_path / "u.idx"], capsys)
    assert rc == 0, err
    with pytest.raises(ValueError, match="row 3 has norm 2"):
        check_unit_norm(np.eye(4, dtype=np.float32) * [[1], [1], [1], [2]], "database")


# --------------------------------------------------------------------------- extraction: non-finite output


class _NaNOnBright(torch.nn.Module):
    """A finite model that describes bright images as NaN (as an fp16 overflow would)."""

    def __init__(self):
        super().__init__()
        self.inner = _small_model()
        self.out_dim = self.inner.out_dim
        self.preprocess = self.inner.preprocess

    def check_ready(self):
        self.inner.check_ready()

    def fingerprint(self):
        return self.inner.fingerprint()

    def forward(self, x):
        y = self.inner(x).clone()
        y[x.flatten(1).mean(1) > 1.0] = float("nan")
        return y


def test_non_finite_descriptor_is_an_error_or_a_bad_image(tmp_path):
    from netvlad.extract import extract_features

    paths = []
    for i, v in enumerate((10, 250, 40)):
        paths.append(tmp_path / f"im{i}.png")
        Image.new("RGB", (16, 16), (v, v, v)).save(paths[-1])
    names = [p.name for p in paths]
    model = _NaNOnBright()
    with pytest.raises(ValueError, match=r"im1\.png: the model produced a non-finite"):
        extract_features(model, paths, names, tmp_path / "f.h5", batch_size=3, progress=False)
    assert not (tmp_path / "f.h5").exists()
    out = extract_features(model, paths, names, tmp_path / "g.h5", batch_size=3, progress=False,
                           skip_bad=True)
    got_names, desc, attrs = read_features(out)
    assert attrs["bad_images"] == ["im1.png"]
    assert np.isnan(desc[1]).all() and np.isfinite(desc[[0, 2]]).all()


# --------------------------------------------------------------------------- whitening dimension


def _pca_oracle(x):
    """Eigenvalues (descending) and directions of the (n−1) covariance, float64, primal."""
    xc = x.astype(np.float64) - x.mean(0)
    lams, vecs = np.linalg.eigh(xc.T @ xc / (len(x) - 1))
    order = np.argsort(-lams)
    return lams[order], vecs[:, order], x.mean(0)


def test_variance_kept_and_dim_warning():
    from netvlad.whitening import dim_warning, fit_pca, variance_kept

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 24)) * np.linspace(3, 0.1, 24)
    params = fit_pca(x, max_samples=None)
    lams, _, _ = _pca_oracle(x)
    for d in (1, 5, 20):
        assert variance_kept(params, d) == pytest.approx(lams[:d].sum() / lams.sum(), rel=1e-9)
    assert dim_warning(params, 20) is None  # exactly half
    msg = dim_warning(params, 21)
    assert "21-D" in msg and "40 descriptors" in msg and f"{100 * lams[:21].sum() / lams.sum():.1f}%" in msg
    assert dim_warning(params, 21, whiten=False) is None


def test_select_dim_against_oracle():
    from netvlad.whitening import candidate_dims, fit_pca, select_dim

    rng = np.random.default_rng(1)
    # 4 strong "place" directions + weak noise directions: whitening many dimensions amplifies noise
    basis = np.linalg.qr(rng.standard_normal((32, 32)))[0]
    places = rng.standard_normal((30, 4)) * 5
    train = (places[rng.integers(0, 30, 60)] @ basis[:, :4].T) + 0.3 * rng.standard_normal((60, 32))
    val_db = places @ basis[:, :4].T + 0.3 * rng.standard_normal((30, 32))
    val_q = places[:15] @ basis[:, :4].T + 0.3 * rng.standard_normal((15, 32))
    params = fit_pca(train, max_samples=None)
    lams, vecs, mu = _pca_oracle(train)

    def recall1(db, q):  # query i's positive is database row i
        return float(np.mean([np.argmin(((db - qi) ** 2).sum(1)) == i for i, qi in enumerate(q)]))

    def oracle_project(x, d):
        u = vecs[:, :d] * np.sign(vecs[np.argmax(np.abs(vecs[:, :d]), 0), range(d)])
        y = (x - mu) @ (u / np.sqrt(lams[:d] + 1e-9))
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    cands = (64, 24, 16, 8, 4, 2)
    assert candidate_dims(params, cands) == [24, 16, 8, 4, 2]  # 64 > 32 components, 32 = input dim
    choice = select_dim(params, val_db, val_q, recall1, candidates=cands)
    want = {d: recall1(oracle_project(val_db, d), oracle_project(val_q, d)) for d in (24, 16, 8, 4, 2)}
    assert choice.scores == pytest.approx(want)
    best = max(want.values())
    assert choice.dim == min(d for d, r in want.items() if r == best)  # ties: the smaller dimension
    assert want[4] > want[24]  # the data does punish whitening the noise directions
    with pytest.raises(ValueError, match="none of the dimensions 4096, 128 fits"):
        select_dim(params, val_db, val_q, recall1, candidates=(4096, 128))


def _noise_images(root, names, rng, base=None, side=32, noise=40.0):
    root.mkdir(parents=True, exist_ok=True)
    arrays = []
    for i, n in enumerate(names):
        a = rng.integers(0, 256, (side, side, 3)) if base is None else np.clip(
            base[i] + rng.normal(0, noise, base[i].shape), 0, 255)
        Image.fromarray(a.astype(np.uint8)).save(root / n)
        arrays.append(a)
    return arrays


def test_pca_cli_warns_on_a_large_dim_and_prints_variance(tmp_path, capsys, caplog):
    from netvlad.models import load_model, save_model

    rng = np.random.default_rng(0)
    names = [f"d{i:02d}.png" for i in range(24)]
    _noise_images(tmp_path / "img", names, rng)
    utm = np.stack([np.arange(24) * 100.0, np.zeros(24)], 1)
    spec = _write_csv(tmp_path / "t.csv", utm, utm[:1], [f"img/{n}" for n in names], ["img/d00.png"])
    save_model(_small_model(), tmp_path / "m.pt")
    with caplog.at_level(logging.WARNING, logger="netvlad.whitening"):
        rc, out, err = _run(["pca", tmp_path / "m.pt", "--dataset", spec, "--dim", "20", "--out",
                             tmp_path / "w.pt", "--workers", "0", "--no-progress"], capsys)
    assert rc == 0, err
    assert "whitening to 20-D with a fit on only 24 descriptors" in caplog.text
    assert "of the variance" in out and load_model(tmp_path / "w.pt").out_dim == 20
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="netvlad.whitening"):
        rc, out, err = _run(["pca", tmp_path / "m.pt", "--dataset", spec, "--dim", "12", "--out",
                             tmp_path / "w12.pt", "--workers", "0", "--no-progress"], capsys)
    assert rc == 0 and "whitening" not in caplog.text  # 12 ≤ 24/2: no warning


@pytest.mark.slow
def test_pca_cli_dim_auto_picks_the_best_validation_recall(tmp_path, capsys):
    from netvlad.extract import compute_descriptors
    from netvlad.models import load_model, save_model
    from netvlad.whitening import PCAParams, project

    rng = np.random.default_rng(1)
    model = _small_model(crop="layer4")  # 512-D: candidates 256 and 128 fit a 260-image fit
    save_model(model, tmp_path / "m.pt")
    tr = [f"t{i:03d}.png" for i in range(260)]
    _noise_images(tmp_path / "tr", tr, rng, side=16)
    utm = np.stack([np.arange(260) * 100.0, np.zeros(260)], 1)
    spec = _write_csv(tmp_path / "t.csv", utm, utm[:1], [f"tr/{n}" for n in tr], ["tr/t000.png"])
    vdb = [f"v{i:02d}.png" for i in range(30)]
    base = _noise_images(tmp_path / "va", vdb, rng, side=16)
    vq = [f"q{i:02d}.png" for i in range(15)]
    _noise_images(tmp_path / "va", vq, rng, base=base[:15], noise=90)  # noisy views of the first 15 places
    vutm = np.stack([np.arange(30) * 100.0, np.zeros(30)], 1)
    vspec = _write_csv(tmp_path / "v.csv", vutm, vutm[:15], [f"va/{n}" for n in vdb], [f"va/{n}" for n in vq])
    rc, out, err = _run(["pca", tmp_path / "m.pt", "--dataset", spec, "--dim", "auto", "--val", vspec,
                         "--out", tmp_path / "w.pt", "--workers", "0", "--batch-size", "64", "--no-progress"],
                        capsys)
    assert rc == 0, err
    # oracle: the fit file, the model's own validation descriptors, recall@1 by a loop
    params = PCAParams.load(next(tmp_path.glob("pca_*_260.npz")))
    kw = {"progress": False, "num_workers": 0, "batch_size": 64}
    dbd = compute_descriptors(model, [tmp_path / "va" / n for n in vdb], **kw)
    qd = compute_descriptors(model, [tmp_path / "va" / n for n in vq], **kw)
    want = {}
    for d in (256, 128):
        db, q = project(params, dbd, d).astype(np.float64), project(params, qd, d).astype(np.float64)
        want[d] = float(np.mean([np.argmin(((db - qi) ** 2).sum(1)) == i for i, qi in enumerate(q)]))
        assert f"{d:>5}-D  {100 * want[d]:6.2f}%" in out
    assert want[128] != want[256]  # the case discriminates (here whitening 256-D is the worse choice)
    chosen = 128 if want[128] > want[256] else 256
    assert f"{chosen:>5}-D  {100 * want[chosen]:6.2f}%  <- chosen" in out
    assert load_model(tmp_path / "w.pt").out_dim == chosen and f"whitened {chosen}-d" in out
