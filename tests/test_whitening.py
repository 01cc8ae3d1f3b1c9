"""PCA / whitening (relja_PCA, addPCA) vs numpy SVD in the primal and dual regimes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from netvlad.whitening import PCAParams, apply_whitening, fit_pca, sample_indices


def _data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    scales = np.linspace(3.0, 0.2, d)
    return (rng.normal(size=(n, d)) * scales + rng.normal(size=d)).astype(np.float32)


@pytest.mark.parametrize("n,d", [(200, 12), (15, 40)], ids=["primal", "dual"])
def test_fit_matches_svd(n, d):
    x = _data(n, d)
    k = min(n, d) - 2 if n < d else 8
    p = fit_pca(x, dim=k)
    xc = x.astype(np.float64) - x.mean(0, dtype=np.float64)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    lam = s**2 / (n - 1)
    np.testing.assert_allclose(p.eigvals, lam[:k], rtol=1e-9)
    # same directions up to sign, unit norm
    dots = np.abs(np.sum(p.components * vt[:k].T, axis=0))
    np.testing.assert_allclose(dots, 1.0, atol=1e-8)
    np.testing.assert_allclose(p.mean, x.mean(0, dtype=np.float64), rtol=1e-12)
    # whitening: unit variance and decorrelation on the training set, bias = -Wμ
    w, b = p.layer(k, whiten=True)
    y = x.astype(np.float64) @ w.T.astype(np.float64) + b
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y, rowvar=False, ddof=1), np.eye(k), atol=1e-4)
    # plain PCA: variances are the eigenvalues
    y2 = p.transform(x, k, whiten=False)
    np.testing.assert_allclose(y2.var(0, ddof=1), lam[:k], rtol=1e-4)


def test_crop_reuse_and_round_trip(tmp_path):
    x = _data(100, 10, seed=1)
    full = fit_pca(x)
    small = fit_pca(x, dim=4)
    w_full, b_full = full.layer(4)
    w_small, b_small = small.layer(4)
    np.testing.assert_allclose(w_full, w_small, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b_full, b_small, rtol=1e-5, atol=1e-6)
    path = full.save(tmp_path / "pca.npz")
    back = PCAParams.load(path)
    np.testing.assert_array_equal(back.components, full.components)
    assert back.n_samples == 100 and back.max_dim == 10
    with pytest.raises(ValueError, match="not available"):
        small.layer(5)
    (tmp_path / "bad.npz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="bad.npz"):
        PCAParams.load(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        PCAParams.load(tmp_path / "missing.npz")


def test_sampling_and_errors():
    assert sample_indices(5, 10).tolist() == [0, 1, 2, 3, 4]
    a = sample_indices(100, 10, seed=43)
    assert len(set(a.tolist())) == 10 and np.array_equal(a, sample_indices(100, 10, seed=43))
    x = _data(30, 4)
    p = fit_pca(x, max_samples=10)
    assert p.n_samples == 10
    with pytest.raises(ValueError, match="dim 9"):
        fit_pca(x, dim=9)
    with pytest.raises(ValueError, match="at least 2"):
        fit_pca(x[:1])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fit_pca(x[0])


def test_apply_whitening_then_crop_dim():
    from train_helpers import tiny_model

    model = tiny_model(method="avg")
    x = torch.randn(40, 3, 24, 32)
    with torch.no_grad():
        desc = model(x).numpy()
    p = fit_pca(desc, dim=12)
    apply_whitening(model, p, dim=12)
    assert model.out_dim == 12
    with torch.no_grad():
        y = model(x).numpy()
    ref = p.transform(desc, 12)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(y, ref, atol=1e-4)
    # cropping the whitened descriptor equals a 6-d whitening re-normalised
    from netvlad.metrics import crop_to_dim

    ref6 = p.transform(desc, 6)
    ref6 /= np.linalg.norm(ref6, axis=1, keepdims=True)
    np.testing.assert_allclose(crop_to_dim(y, 6), ref6, atol=1e-4)
    with pytest.raises(ValueError, match="already"):
        apply_whitening(model, p, dim=4)
