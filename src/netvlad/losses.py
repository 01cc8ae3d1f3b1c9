"""The weakly supervised triplet ranking loss of ``trainWeakly`` (NetVLAD paper, eq. 7).

Per query tuple (q, p, n_1..n_M): ``L = Σ_j max(0, d²(q,p) + m − d²(q,n_j))`` on **squared**
Euclidean distances. Autograd of this sum gives exactly the MATLAB hand-written gradient
(∂L/∂q = 2Σ_j(n_j − p), ∂L/∂p = 2V(p − q), ∂L/∂n_j = 2(q − n_j), sums over the V violators only).
The batch gradient is normalised by the number of violating triplets T of the whole batch,
not by the number of queries: the SGD step uses ``Σ_queries L / T``.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_MARGIN = 0.1


def triplet_ranking_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    margin: float = DEFAULT_MARGIN,
    mask: torch.Tensor | None = None,
    reduction: str = "violators",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triplet ranking loss on squared distances.

    Args:
        query: (B, D) or (D,) query embeddings.
        positive: same shape as `query`.
        negatives: (B, M, D) or (M, D) negative embeddings.
        margin: m (0.1 in the paper, on squared distances of L2-normalised vectors).
        mask: (B, M) bool, False for padding negatives (tuples have different M).
        reduction: "violators" = Σ L / T (T = number of violating triplets; 0 if T = 0), the
            paper's batch normalisation; "sum" = Σ L; "none" = per-query L of shape (B,).

    Returns:
        (loss, violators): loss as reduced; violators (B,) int64 count of triplets with a
        positive hinge (the V of each query).
    """
    single = query.dim() == 1
    if single:
        query, positive, negatives = query[None], positive[None], negatives[None]
        mask = None if mask is None else mask[None]
    if query.shape != positive.shape or negatives.dim() != 3 or negatives.shape[0] != query.shape[0]:
        raise ValueError(
            f"triplet_ranking_loss: shapes query {tuple(query.shape)}, positive {tuple(positive.shape)}, "
            f"negatives {tuple(negatives.shape)} do not match (B, D), (B, D), (B, M, D)"
        )
    d_pos = (query - positive).pow(2).sum(-1)  # (B,)
    d_neg = (query[:, None, :] - negatives).pow(2).sum(-1)  # (B, M)
    hinge = torch.relu(d_pos[:, None] + margin - d_neg)
    if mask is not None:
        hinge = hinge * mask.to(hinge.dtype)
    per_query = hinge.sum(-1)
    violators = (hinge > 0).sum(-1)
    if reduction == "none":
        loss = per_query[0] if single else per_query
    elif reduction == "sum":
        loss = per_query.sum()
    elif reduction == "violators":
        loss = per_query.sum() / violators.sum().clamp(min=1).to(per_query.dtype)
    else:
        raise ValueError(f"triplet_ranking_loss: unknown reduction {reduction!r} (violators, sum, none)")
    return loss, (violators[0] if single else violators)


def rank_loss_numpy(d_pos, d_neg, margin: float = DEFAULT_MARGIN) -> float:
    """``testCoreRank``'s per-query value: mean over negatives of max(0, dPos + m − dNeg).

    Args:
        d_pos: scalar squared distance to the nearest non-trivial positive.
        d_neg: (M,) squared distances to the random negatives.
    """
    import numpy as np

    d_neg = np.asarray(d_neg, dtype=np.float64)
    return float(np.maximum(0.0, float(d_pos) + margin - d_neg).mean())


class TripletRankingLoss(nn.Module):
    """Module form of `triplet_ranking_loss`; ``forward`` returns (loss, violators)."""

    def __init__(self, margin: float = DEFAULT_MARGIN, reduction: str = "violators"):
        super().__init__()
        self.margin = float(margin)
        self.reduction = reduction

    def forward(self, query, positive, negatives, mask=None):
        return triplet_ranking_loss(query, positive, negatives, self.margin, mask, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"
