"""NetVLAD pooling (``layerVLAD``, ``layerVLADv2``) and its initialisation (``getClusters``)."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from netvlad.layers.functional import (
    EPS,
    VLAD_ORDERS,
    Float32Region,
    compute_dtype,
    l2n_clamped,
    l2n_eps_inside,
    whole_l2n,
)
from netvlad.layers.kmeans import kmeans

log = logging.getLogger("netvlad.layers")


class UninitializedError(RuntimeError):
    """A NetVLAD layer is used before its clusters were initialised from data."""


class NetVLAD(nn.Module):
    """NetVLAD pooling: B×D×H×W feature map → L2-normalised B×(D·K) descriptor.

    a_ik = softmax_k(w_kᵀx_i + b_k);  V_k = Σ_i a_ik (x_i − c_k);  optional intra-norm per cluster;
    flattened with index d·K + k (cluster fastest, MATLAB's column-major [K, D] layout), then whole-L2.

    The aggregation is one batched matrix product, V = Aᵀ X − (Σ_i a_ik) c_k: no loop over clusters
    and no B×K×D×N residual tensor.

    Args:
        dim: D, channels of the input map.
        num_clusters: K (hard-coded 64 in the original).
        vladv2: ``layerVLADv2``: the assignment has a bias (init: −α‖c‖²). Otherwise ``layerVLAD``:
            no bias, and the input is expected to be L2-normalised (preL2).
        intra_norm: intra-normalise each V_k (the ``intra`` token).
        pre_l2: L2-normalise each input descriptor first (the ``preL2`` token). The contract's
            ``NetVLAD`` takes already-normalised input; heads built by :func:`build_head` set this.
        order: flat layout of the output, one of ``VLAD_ORDERS`` ("matlab": d·K + k, the default;
            "torch": k·D + d with F.normalize's epsilon, kept by models converted from PyTorch
            projects so their stored descriptors stay valid).

    Attributes:
        centroids: K×D Parameter c_k (the original stores the offset −c_k).
        assignment: 1×1 Conv2d D→K (weight K×D×1×1; bias only for vladv2).
        initialized: bool buffer, False until :meth:`init_from_descriptors` (or a loaded state).
    """

    def __init__(
        self, dim: int, num_clusters: int = 64, vladv2: bool = False, intra_norm: bool = True,
        pre_l2: bool = False, order: str = "matlab",
    ):
        super().__init__()
        if order not in VLAD_ORDERS:
            raise ValueError(f"unknown VLAD order {order!r}; choose from {', '.join(VLAD_ORDERS)}")
        if dim < 1 or num_clusters < 2:
            raise ValueError(f"NetVLAD needs dim >= 1 and num_clusters >= 2, got dim={dim}, K={num_clusters}")
        self.dim = int(dim)
        self.num_clusters = int(num_clusters)
        self.vladv2 = bool(vladv2)
        self.intra_norm = bool(intra_norm)
        self.pre_l2 = bool(pre_l2)
        self.order = order
        self.centroids = nn.Parameter(torch.rand(num_clusters, dim))
        self.assignment = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=vladv2)
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def out_dim(self) -> int:
        return self.dim * self.num_clusters

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_clusters={self.num_clusters}, vladv2={self.vladv2}, "
            f"intra_norm={self.intra_norm}, pre_l2={self.pre_l2}, order={self.order}"
        )

    def check_ready(self) -> None:
        """Raise :class:`UninitializedError` unless the clusters were initialised from data."""
        if not bool(self.initialized):
            raise UninitializedError(
                "the NetVLAD layer was never initialised: its cluster centres are random and the "
                "descriptors would be near-useless. Initialise it from images with "
                "`netvlad init MODEL --images DIR --out CKPT` (or netvlad.models.init_clusters(model, "
                "images) / NetVLAD.init_from_descriptors(descs)), or load a checkpoint that has it."
            )

    def forward(self, x: Tensor) -> Tensor:
        """Aggregate a feature map.

        Args:
            x: B×D×H×W local features (any float dtype; channels_last is the fast path).

        Returns:
            B×(D·K) float32 (float64 for float64 input), L2-normalised, laid out as ``order``.

        Shape:
            (B, D, H, W) → (B, D·K).

        Raises:
            UninitializedError: the clusters were never initialised (outside tracing/compiling).
        """
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_ready()
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"NetVLAD expects B×{self.dim}×H×W input, got {tuple(x.shape)}")
        with Float32Region(x.device.type):
            dt = compute_dtype(x)
            b, d = x.shape[:2]
            # B×N×D: a free view of a channels_last map (its memory is already B×H×W×D).
            xt = x.to(dt).flatten(2).transpose(1, 2)
            norm = l2n_eps_inside if self.order == "matlab" else l2n_clamped
            if self.pre_l2:
                xt = norm(xt, dim=2)
            w = self.assignment.weight.to(dt).view(self.num_clusters, d)
            bias = None if self.assignment.bias is None else self.assignment.bias.to(dt)
            a = F.softmax(F.linear(xt, w, bias), dim=2)  # B×N×K soft-assignment
            c = self.centroids.to(dt)
            vlad = torch.bmm(a.transpose(1, 2), xt) - a.sum(1).unsqueeze(2) * c  # B×K×D
            if self.intra_norm:
                vlad = norm(vlad, dim=2)
            if self.order == "torch":
                return whole_l2n(vlad.reshape(b, self.num_clusters * d))
            # MATLAB's [K, D] column-major vec: element (k, d) at d·K + k.
            return whole_l2n(vlad.transpose(1, 2).reshape(b, d * self.num_clusters))

    @torch.no_grad()
    def init_from_descriptors(
        self, descs: Tensor, seed: int = 43, niter: int = 100, backend: str = "auto"
    ) -> float:
        """Initialise centres and assignment from sampled local descriptors (``getClusters``).

        k-means (Lloyd, ``niter`` iterations, one run, ``seed``) gives centres c_k, then
        - vlad: c̄_k = c_k/(‖c_k‖+1e-12), α = −ln(0.01) / mean over descriptors of (top1 − top2 of c̄_kᵀx);
          assignment weight = α·c̄_k, no bias; centroids = c_k (unnormalised).
        - vladv2: α = −ln(0.01) / mean(d²₂ − d²₁) (two smallest squared distances);
          weight = 2α·c_k, bias = −α‖c_k‖², centroids = c_k; so softmax gives softmax(−α‖x − c_k‖²).
        With this α the second-best cluster gets on average about 1% of the best one's weight.

        Args:
            descs: N×D descriptors, N ≥ K (for preL2 methods: already L2-normalised, as the
                original samples from backbone + preL2).
            seed: k-means seed (43 in the original).
            niter: k-means iterations (100 in the original).
            backend: "faiss" (faiss.Kmeans on all points, no subsampling), "torch" (the same Lloyd
                iterations in torch), or "auto" (faiss when importable, otherwise torch). Both start
                from the same seeded k-means++ centres; see :func:`kmeans`.

        Returns:
            α.
        """
        descs = torch.as_tensor(descs).detach().to("cpu", torch.float32)
        if descs.dim() != 2 or descs.shape[1] != self.dim:
            raise ValueError(
                f"init_from_descriptors expects N×{self.dim} descriptors, got {tuple(descs.shape)}"
            )
        if descs.shape[0] < self.num_clusters:
            raise ValueError(
                f"need at least K={self.num_clusters} descriptors to initialise NetVLAD, got {descs.shape[0]}"
            )
        if not torch.isfinite(descs).all():
            raise ValueError("init_from_descriptors: descriptors contain NaN or Inf")
        centres = kmeans(descs, self.num_clusters, niter=niter, seed=seed, backend=backend).double()
        x = descs.double()
        if self.vladv2:
            d2 = torch.cdist(x, centres).square()
            two = torch.topk(d2, 2, dim=1, largest=False).values
            gap = (two[:, 1] - two[:, 0]).mean().item()
        else:
            cn = centres / (centres.norm(dim=1, keepdim=True) + EPS)
            two = torch.topk(x @ cn.T, 2, dim=1).values
            gap = (two[:, 0] - two[:, 1]).mean().item()
        if not gap > 0:
            raise ValueError("init_from_descriptors: degenerate descriptors (zero mean top-2 gap)")
        alpha = -math.log(0.01) / gap
        dev, dt = self.centroids.device, self.centroids.dtype
        if self.vladv2:
            weight = 2 * alpha * centres
            self.assignment.bias.copy_((-alpha * centres.square().sum(1)).to(dev, dt))
        else:
            weight = alpha * cn
        self.assignment.weight.copy_(weight.view(*self.assignment.weight.shape).to(dev, dt))
        self.centroids.copy_(centres.to(dev, dt))
        self.initialized.fill_(True)
        log.info("NetVLAD initialised from %d descriptors: K=%d, alpha=%.4g",
                 len(descs), self.num_clusters, alpha)
        return alpha
