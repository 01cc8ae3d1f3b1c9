"""Triplet ranking loss and its gradient vs the MATLAB hand-written formulas (trainWeakly's gradient)."""

from __future__ import annotations

import pytest
import torch

from netvlad.losses import TripletRankingLoss, rank_loss_numpy, triplet_ranking_loss


def test_loss_value_and_gradient_by_hand():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(6, generator=g, dtype=torch.float64)
    p = q + 0.3 * torch.randn(6, generator=g, dtype=torch.float64)
    negs = torch.stack(
        [q + 0.2 * torch.randn(6, generator=g, dtype=torch.float64) for _ in range(3)] + [q + 5.0]
    )  # the last one is far: no violation
    m = 0.5
    q.requires_grad_(), p.requires_grad_(), negs.requires_grad_()
    loss, v = triplet_ranking_loss(q, p, negs, m, reduction="none")
    d_pos = ((q - p) ** 2).sum().detach()
    d_neg = ((q - negs) ** 2).sum(1).detach()
    hinge = [max(0.0, float(d_pos + m - dn)) for dn in d_neg]
    assert float(loss.detach()) == pytest.approx(sum(hinge))
    viol = torch.tensor([h > 0 for h in hinge])
    assert int(v) == int(viol.sum()) and 0 < int(v) < 4
    loss.backward()
    with torch.no_grad():
        V = int(viol.sum())
        gq = 2 * (negs[viol] - p).sum(0)
        gp = 2 * V * (p - q)
        gn = torch.where(viol[:, None], 2 * (q - negs), torch.zeros_like(negs))
    torch.testing.assert_close(q.grad, gq)
    torch.testing.assert_close(p.grad, gp)
    torch.testing.assert_close(negs.grad, gn)


def test_batch_normalised_by_violating_triplets():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 4, generator=g, dtype=torch.float64)
    p = q + 0.5 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    n = q[:, None] + 0.5 * torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False  # padding negatives of a shorter tuple
    per_q, v = triplet_ranking_loss(q, p, n, 0.3, mask=mask, reduction="none")
    loss, _ = triplet_ranking_loss(q, p, n, 0.3, mask=mask)
    assert int(v.sum()) > 0
    torch.testing.assert_close(loss, per_q.sum() / v.sum())
    ref = sum(
        float(triplet_ranking_loss(q[i], p[i], n[i][mask[i]], 0.3, reduction="none")[0]) for i in range(3)
    )
    assert float(per_q.sum()) == pytest.approx(ref)
    q.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: triplet_ranking_loss(x, p, n, 0.3, mask=mask)[0], (q,))
    zero, vz = triplet_ranking_loss(q, p, n + 100.0, 0.3)
    assert float(zero.detach()) == 0.0 and int(vz.sum()) == 0


def test_module_rank_loss_and_errors():
    mod = TripletRankingLoss(0.1)
    q, p = torch.zeros(1, 2), torch.tensor([[0.1, 0.0]])
    n = torch.tensor([[[0.2, 0.0], [1.0, 0.0]]])
    loss, v = mod(q, p, n)
    assert int(v) == 1 and float(loss) == pytest.approx(0.01 + 0.1 - 0.04)
    assert rank_loss_numpy(0.01, [0.04, 1.0], 0.1) == pytest.approx((0.07 + 0.0) / 2)
    with pytest.raises(ValueError, match="reduction"):
        triplet_ranking_loss(q, p, n, reduction="mean")
    with pytest.raises(ValueError, match="shapes"):
        triplet_ranking_loss(q, p, n[0])
