"""Lloyd k-means for NetVLAD cluster initialisation: faiss when installed, else plain torch."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

__all__ = ["kmeans"]

log = logging.getLogger(__name__)


def kmeans(x: Tensor, k: int, niter: int = 100, seed: int = 43, backend: str = "auto") -> Tensor:
    """Lloyd k-means of N×D ``x`` → K×D float32 centres, one run from a seeded k-means++ start.

    The original calls ``yael_kmeans(..., niter=100, seed=43)``; its exact centres depend on yael's
    RNG and cannot be reproduced, so only the procedure is matched. k-means++ seeding (yael's
    "berkeley" init) avoids the frequent merged-cluster minima of a plain random start.
    """
    if backend not in ("auto", "faiss", "torch"):
        raise ValueError(f"unknown k-means backend {backend!r}; choose from auto, faiss, torch")
    x = x.detach().to("cpu", torch.float32).contiguous()
    init = _kmeanspp(x, k, torch.Generator().manual_seed(seed))
    if backend != "torch":
        try:
            import faiss  # lazy: heavy, and only needed at initialisation time
        except ImportError:
            if backend == "faiss":
                raise
            log.warning("faiss is not installed; using the slower torch k-means")
        else:
            km = faiss.Kmeans(
                x.shape[1], k, niter=niter, seed=seed, verbose=False,
                # yael uses every point; faiss would otherwise subsample to 256 per centroid.
                max_points_per_centroid=max(1, -(-x.shape[0] // k)), min_points_per_centroid=1,
            )
            km.train(x.numpy(), init_centroids=init.numpy())
            return torch.from_numpy(km.centroids.copy())
    return _torch_lloyd(x, init, niter, seed)


def _kmeanspp(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    idx = [int(torch.randint(len(x), (1,), generator=gen))]
    d2 = (x - x[idx[0]]).square().sum(1)
    for _ in range(1, k):
        p = d2.double() if d2.sum() > 0 else torch.ones_like(d2, dtype=torch.float64)
        idx.append(int(torch.multinomial(p, 1, generator=gen)))
        d2 = torch.minimum(d2, (x - x[idx[-1]]).square().sum(1))
    return x[idx].clone()


def _torch_lloyd(x: Tensor, c: Tensor, niter: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed + 1)
    k = len(c)
    x2 = x.square().sum(1, keepdim=True)
    for _ in range(niter):
        assign = (x2 - 2 * x @ c.T + c.square().sum(1)).argmin(1)
        counts = torch.bincount(assign, minlength=k)
        new = torch.zeros_like(c).index_add_(0, assign, x) / counts.clamp(min=1).unsqueeze(1).to(x.dtype)
        empty = counts == 0
        if empty.any():  # re-seed an empty cluster with a random point, as faiss and yael do
            new[empty] = x[torch.randint(len(x), (int(empty.sum()),), generator=gen)]
        if torch.equal(new, c):
            break
        c = new
    return c
