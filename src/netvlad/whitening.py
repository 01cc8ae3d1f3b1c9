"""PCA and PCA-whitening learnt on descriptors (``addPCA`` / ``relja_PCA``), as plain arrays.

The fit follows ``relja_PCA`` exactly: mean-centring, an (n − 1) covariance normaliser, the
*dual* (Gram-matrix) method when the dimension exceeds the sample count (the NetVLAD case,
32768 > 10000), double precision, eigenpairs sorted by decreasing eigenvalue. The layer is
``y = Wᵀ(x − μ)`` with ``W = U·diag(1/sqrt(λ + 1e-9))`` when whitening, appended to the model as
``Linear`` (bias ``−Wᵀμ``) followed by a whole-vector L2 normalisation.

`PCAParams` stores the eigen-decomposition (not the layer), so one fit serves every smaller
output dimension, with or without whitening (see `PCAParams.layer`).

Whitening divides each direction by its standard deviation, so directions the training set barely
constrains (a dimension near the number of training images) are amplified noise: `dim_warning`
says so, `variance_kept` tells how much the kept directions hold, and `select_dim` picks the
dimension by validation recall@1, as the paper chooses its settings on the validation set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netvlad._atomic import atomic_write

log = logging.getLogger(__name__)

#: ``addPCA``'s ``nTrainCap``: at most this many database descriptors are used for the fit.
DEFAULT_MAX_SAMPLES = 10000
#: ``addPCA`` calls ``rng(43)`` before ``randsample``.
DEFAULT_SEED = 43
#: ``addPCA``: ``U·diag(1/sqrt(λ + 1e-9))``.
WHITEN_EPS = 1e-9
#: ``relja_PCA`` (dual method): ``1/sqrt(max(λ, 1e-9))`` when mapping Gram eigenvectors back.
DUAL_EPS = 1e-9

_FORMAT = "netvlad-pca"
#: Dimensions :func:`select_dim` tries (the paper's 4096 and the cropToDim sizes it reports).
DIM_CANDIDATES = (4096, 2048, 1024, 512, 256, 128)


@dataclass
class PCAParams:
    """An eigen-decomposition of a descriptor covariance (``pca.mat``'s ``U``, ``lams``, ``mu``).

    Attributes:
        mean: (D,) float64 training mean μ.
        components: (D, r) float64 unit-norm principal directions U, by decreasing eigenvalue.
        eigvals: (r,) float64 eigenvalues λ of the (n − 1)-normalised covariance.
        n_samples: number of training descriptors n.
        all_eigvals: eigenvalues of every component the fit found (≥ r), for diagnostics.
    """

    mean: np.ndarray
    components: np.ndarray
    eigvals: np.ndarray
    n_samples: int
    all_eigvals: np.ndarray | None = None

    @property
    def in_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def max_dim(self) -> int:
        """Largest output dimension this fit can serve."""
        return int(self.components.shape[1])

    def layer(self, dim: int | None = None, whiten: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Weights of the PCA(-whitening) layer ``y = weight @ x + bias``.

        Args:
            dim: output dimension (``pcaDim``); None = `max_dim`.
            whiten: scale each direction by 1/sqrt(λ + 1e-9) (``doWhite``).

        Returns:
            weight (dim, D) float32 and bias (dim,) float32, with bias = −weight·μ.

        Raises:
            ValueError: dim larger than the stored components.
        """
        dim = self.max_dim if dim is None else int(dim)
        if not 1 <= dim <= self.max_dim:
            raise ValueError(
                f"PCA dimension {dim} not available: the fit stores {self.max_dim} components "
                f"(descriptor dimension {self.in_dim}, {self.n_samples} training samples)"
            )
        u = self.components[:, :dim]
        if whiten:
            u = u / np.sqrt(self.eigvals[:dim] + WHITEN_EPS)[None, :]
        weight = u.T
        bias = -(weight @ self.mean)
        return weight.astype(np.float32), bias.astype(np.float32)

    def transform(self, x: np.ndarray, dim: int | None = None, whiten: bool = True) -> np.ndarray:
        """Project (N, D) descriptors to (N, dim) float64 (no final L2; the model adds it)."""
        weight, bias = self.layer(dim, whiten)
        return np.asarray(x, dtype=np.float64) @ weight.T.astype(np.float64) + bias.astype(np.float64)

    def save(self, path: str | Path) -> Path:
        """Write an .npz file atomically (plain arrays: no pickle)."""
        arrays = {
            "format": np.array(_FORMAT),
            "mean": self.mean,
            "components": self.components,
            "eigvals": self.eigvals,
            "n_samples": np.array(self.n_samples),
            "all_eigvals": self.all_eigvals if self.all_eigvals is not None else self.eigvals,
        }
        return atomic_write(path, lambda tmp: np.savez(tmp, **arrays), suffix=".tmp.npz")

    @classmethod
    def load(cls, path: str | Path) -> PCAParams:
        """Read a file written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: PCA parameter file not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"{path}: unreadable PCA file ({exc})") from exc
        if "format" not in arrays or str(arrays["format"]) != _FORMAT:
            raise ValueError(f"{path}: not a netvlad PCA file (missing format={_FORMAT!r})")
        return cls(
            mean=arrays["mean"],
            components=arrays["components"],
            eigvals=arrays["eigvals"],
            n_samples=int(arrays["n_samples"]),
            all_eigvals=arrays["all_eigvals"],
        )


def sample_indices(num: int, max_samples: int = DEFAULT_MAX_SAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Which of `num` database images to use for the fit (``rng(43); randsample(n, 10000)``).

    All of them (in order) when ``num <= max_samples``, else a random subset in random order
    (numpy's generator, so the subset differs from MATLAB's; only the procedure matches).
    """
    if num <= max_samples:
        return np.arange(num)
    return np.random.default_rng(seed).choice(num, size=max_samples, replace=False)


def _block_cols(d: int, n: int, budget: int = 2**25) -> int:
    # float64 conversion happens one block of columns at a time: budget/n columns ≈ 256 MB.
    return max(1, min(d, budget // max(n, 1)))


def fit_pca(
    desc: np.ndarray,
    dim: int | None = None,
    max_samples: int | None = DEFAULT_MAX_SAMPLES,
    seed: int = DEFAULT_SEED,
) -> PCAParams:
    """Fit PCA on descriptors, exactly as ``relja_PCA`` (float64, (n − 1), primal or dual).

    Args:
        desc: (N, D) descriptors (any float dtype; computations are float64).
        dim: components to keep (None = all that the method yields: D in the primal regime,
            n in the dual one). ``addPCA`` asserts pcaDim < D; here dim ≤ min(D, n) is enough.
        max_samples: cap on n; above it a random subset is taken with `seed` (None = no cap).
        seed: subsampling seed (43 as ``addPCA``).

    Returns:
        `PCAParams` with `dim` components by decreasing eigenvalue, each direction's sign fixed
        so that its largest-magnitude coordinate is positive (MATLAB's sign is arbitrary).

    Raises:
        ValueError: not 2-D, fewer than 2 samples, non-finite values, or dim too large.
    """
    x = np.asarray(desc)
    if x.ndim != 2:
        raise ValueError(f"fit_pca: descriptors must be (N, D), got shape {x.shape}")
    if max_samples is not None and x.shape[0] > max_samples:
        x = x[np.sort(sample_indices(x.shape[0], max_samples, seed))]
    n, d = x.shape
    if n < 2:
        raise ValueError(f"fit_pca: need at least 2 descriptors, got {n}")
    primal = d <= n
    n_avail = d if primal else n
    dim = n_avail if dim is None else int(dim)
    if not 1 <= dim <= n_avail:
        raise ValueError(f"fit_pca: dim {dim} must be in [1, {n_avail}] for {n} descriptors of dimension {d}")
    mean = x.mean(axis=0, dtype=np.float64)
    if not np.all(np.isfinite(mean)):
        raise ValueError("fit_pca: descriptors contain NaN or Inf")
    step = _block_cols(d, n)
    if primal:
        # Covariance D×D = Xcᵀ·Xc/(n−1) (D ≤ n, so Xc in float64 is at most n×n).
        xc = x.astype(np.float64) - mean
        cov = xc.T @ xc / (n - 1)
        lams, vecs = np.linalg.eigh(cov)
        order = np.argsort(-lams, kind="stable")
        lams = lams[order]
        u = vecs[:, order[:dim]]
    else:
        # Dual: eigenvectors V of the n×n Gram matrix Xc·Xcᵀ/(n−1) map to U = Xcᵀ·V/sqrt((n−1)λ).
        gram = np.zeros((n, n), dtype=np.float64)
        for j in range(0, d, step):
            blk = x[:, j : j + step].astype(np.float64) - mean[j : j + step]
            gram += blk @ blk.T
        gram /= n - 1
        lams, vecs = np.linalg.eigh(gram)
        order = np.argsort(-lams, kind="stable")
        lams = lams[order]
        v = vecs[:, order[:dim]] / np.sqrt(np.maximum(lams[:dim], DUAL_EPS) * (n - 1))[None, :]
        u = np.empty((d, dim), dtype=np.float64)
        for j in range(0, d, step):
            blk = x[:, j : j + step].astype(np.float64) - mean[j : j + step]
            u[j : j + step] = blk.T @ v
    lams = np.maximum(lams, 0.0)  # round-off can make null-space eigenvalues slightly negative
    idx = np.argmax(np.abs(u), axis=0)
    signs = np.sign(u[idx, np.arange(u.shape[1])])
    signs[signs == 0] = 1.0
    u = u * signs[None, :]
    return PCAParams(mean=mean, components=u, eigvals=lams[:dim].copy(), n_samples=n, all_eigvals=lams)


def variance_kept(params: PCAParams, dim: int) -> float:
    """Fraction of the training descriptors' total variance held by the first ``dim`` components."""
    total = float(np.sum(params.all_eigvals if params.all_eigvals is not None else params.eigvals))
    return float(np.sum(params.eigvals[: int(dim)])) / total if total > 0 else float("nan")


def dim_warning(params: PCAParams, dim: int, whiten: bool = True) -> str | None:
    """A sentence when whitening to ``dim`` exceeds half the training descriptors, else None.

    Whitening scales every kept direction to unit variance; beyond about n/2 of n training images
    the trailing directions are estimated from too few samples and whitening amplifies their
    noise. Plain PCA only drops directions, so it gets no warning.
    """
    dim, n = int(dim), int(params.n_samples)
    if not whiten or 2 * dim <= n:
        return None
    return (
        f"whitening to {dim}-D with a fit on only {n} descriptors: dimensions beyond about {n // 2} "
        f"(half the training images) are mostly noise that whitening amplifies; the {dim} kept "
        f"components hold {100 * variance_kept(params, dim):.1f}% of the variance. Use a smaller "
        "--dim, more training images, or --dim auto with a validation set"
    )


def candidate_dims(params: PCAParams, candidates: Sequence[int] = DIM_CANDIDATES) -> list[int]:
    """The ``candidates`` this fit can serve: at most its stored components, below the input dim."""
    return [int(c) for c in candidates if 1 <= int(c) <= params.max_dim and int(c) < params.in_dim]


def project(params: PCAParams, x: np.ndarray, dim: int | None = None, whiten: bool = True) -> np.ndarray:
    """What the model outputs once the layer is appended: (N, D) → (N, dim) float32 L2-normalised."""
    y = params.transform(x, dim, whiten)
    return (y / (np.linalg.norm(y, axis=1, keepdims=True) + 1e-12)).astype(np.float32)


@dataclass
class DimChoice:
    """Result of :func:`select_dim`: the chosen dimension and the score of every candidate tried."""

    dim: int
    scores: dict[int, float] = field(default_factory=dict)


def select_dim(
    params: PCAParams,
    val_db: np.ndarray,
    val_q: np.ndarray,
    score: Callable[[np.ndarray, np.ndarray], float],
    candidates: Sequence[int] = DIM_CANDIDATES,
    whiten: bool = True,
) -> DimChoice:
    """The output dimension with the best validation score among the candidates that fit.

    Args:
        params: the fit (on training descriptors).
        val_db, val_q: (N, D) and (Q, D) validation descriptors of the model without the layer.
        score: ``score(db, q)`` of projected descriptors, higher is better (e.g. recall@1 of
            ``netvlad.metrics.evaluate_dataset`` on the validation set).
        candidates: dimensions to try; those the fit cannot serve are skipped.
        whiten: whitening or plain PCA.

    Returns:
        :class:`DimChoice`; ties go to the smaller dimension (cheaper, fewer noisy directions).

    Raises:
        ValueError: no candidate fits the fit.
    """
    dims = candidate_dims(params, candidates)
    if not dims:
        raise ValueError(
            f"none of the dimensions {', '.join(map(str, candidates))} fits a fit of {params.max_dim} "
            f"components on {params.in_dim}-D descriptors; give --dim explicitly"
        )
    scores = {d: float(score(project(params, val_db, d, whiten), project(params, val_q, d, whiten)))
              for d in dims}
    best = max(sorted(scores), key=lambda d: scores[d])  # sorted ascending: ties → smaller dim
    return DimChoice(best, scores)


def apply_whitening(model, params: PCAParams, dim: int | None = None, whiten: bool = True):
    """Append the PCA(-whitening) layer to `model` via ``model.set_whitening`` (Linear + L2).

    Args:
        model: a `netvlad.models.PlaceModel` without whitening (its output dim must equal D).
        params: the fit.
        dim: output dimension (None = all stored components).
        whiten: whitening (``doWhite``) or plain PCA.

    Logs :func:`dim_warning` when the dimension is large for the number of training samples.

    Returns:
        the model (modified in place).
    """
    import torch

    current = getattr(model, "out_dim", None)
    if getattr(model, "whitening", None) is not None:
        raise ValueError("apply_whitening: the model already has a PCA/whitening layer")
    if current is not None and int(current) != params.in_dim:
        raise ValueError(f"apply_whitening: model output dim {current} != PCA input dim {params.in_dim}")
    weight, bias = params.layer(dim, whiten)
    warning = dim_warning(params, weight.shape[0], whiten)
    if warning:
        log.warning(warning)
    model.set_whitening(torch.from_numpy(weight), torch.from_numpy(bias))
    return model
