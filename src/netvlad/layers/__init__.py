"""NetVLAD aggregation, global max/avg pooling and the L2 normalisations of the MATLAB original.

Arandjelović et al., "NetVLAD: CNN architecture for weakly supervised place recognition" (CVPR 2016);
the maths follows Relja/netvlad v1.03 (``layerVLAD``, ``layerVLADv2``, ``layerWholeL2Normalize`` and
MatConvNet's ``normalize`` layer with param [2D, 1e-12, 1, 0.5]). Torch only.

Shapes: a *feature map* is B×D×H×W (any memory format; channels_last is kept and is the fast
path), N = H·W local descriptors of dimension D, K clusters. Descriptors are B×out_dim.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from netvlad.layers.kmeans import kmeans

__all__ = [
    "EPS",
    "AvgPool",
    "MaxPool",
    "Method",
    "NetVLAD",
    "UninitializedError",
    "VLAD_ORDERS",
    "build_head",
    "kmeans",
    "l2n_eps_inside",
    "parse_method",
    "whole_l2n",
]

log = logging.getLogger(__name__)

#: The epsilon of every normalisation in the original (MatConvNet ``normalize`` and whole-L2).
EPS = 1e-12

#: Flat layouts of the K×D VLAD matrix: "matlab" puts element (k, d) at d·K + k (the original's
#: column-major vec, which released whitening matrices expect); "torch" at k·D + d (cluster-major,
#: ``vlad.view(B, -1)`` in pytorch-NetVlad, Patch-NetVLAD, OpenIBL and the VG benchmark). "torch"
#: also takes those projects' preL2/intra normalisation, F.normalize's x / max(‖x‖, eps): a cluster
#: no descriptor goes to has a residual norm near 1e-6, where MATLAB's sqrt(‖x‖² + eps) visibly
#: shrinks its block (by 7% at norm 2.4e-6) and F.normalize does not.
VLAD_ORDERS = ("matlab", "torch")

POOLS = ("max", "avg", "vlad", "vladv2")
FLAGS = ("preL2", "intra")


class UninitializedError(RuntimeError):
    """A NetVLAD layer is used before its clusters were initialised from data."""


def _rsqrt_sumsq(x: Tensor, dim: int) -> Tensor:
    # vector_norm is one fused pass (5× faster than square().sum() on B×N×D); squaring it back
    # costs at most an ulp.
    return torch.rsqrt(torch.linalg.vector_norm(x, dim=dim, keepdim=True).square() + EPS)


class _L2NormInside(torch.autograd.Function):
    """y = x·r, r = (Σx² + eps)^-½, with the hand-written backward g_x = r·(g − y⟨g, y⟩).

    Saves y and r only; about 1.6× faster than autograd through the division on the large
    B×N×D preL2 input (the dominant cost of a NetVLAD training step after the GEMMs).
    """

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:
        r = _rsqrt_sumsq(x, dim)
        y = x * r
        ctx.save_for_backward(y, r)
        ctx.dim = dim
        return y

    @staticmethod
    @once_differentiable  # r is saved without its graph: refuse double backward rather than be wrong
    def backward(ctx, g: Tensor):
        y, r = ctx.saved_tensors
        t = y * (g * y).sum(ctx.dim, keepdim=True)
        return t.neg_().add_(g).mul_(r), None  # r·(g − y⟨g, y⟩) with one full-size temporary


def l2n_eps_inside(x: Tensor, dim: int = 1) -> Tensor:
    """x / sqrt(Σ x² + 1e-12) along ``dim``: MatConvNet ``normalize`` [2D, 1e-12, 1, 0.5].

    Used for preL2 (per spatial descriptor, over channels) and intra-normalisation (per cluster).
    The epsilon sits inside the sqrt, so a zero vector maps to zero with a finite gradient.
    """
    if x.requires_grad and torch.is_grad_enabled():
        return _L2NormInside.apply(x, dim)
    return x * _rsqrt_sumsq(x, dim)


def _l2n_clamped(x: Tensor, dim: int) -> Tensor:
    """x / max(‖x‖, 1e-12) (F.normalize, the PyTorch projects' normalisation).

    Same arithmetic as :func:`l2n_eps_inside` but the epsilon clamps instead of adding, so for
    any norm above 1e-6 both give bit-identical results.
    """
    return x * torch.rsqrt(torch.linalg.vector_norm(x, dim=dim, keepdim=True).square().clamp_min(EPS * EPS))


def whole_l2n(x: Tensor) -> Tensor:
    """x / (‖x‖₂ + 1e-12) over dim 1 of a B×D tensor: ``layerWholeL2Normalize`` (epsilon outside)."""
    return x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + EPS)


@dataclass(frozen=True)
class Method:
    """A parsed aggregation method string (``opts.method`` of the original).

    Attributes:
        pool: "vlad" | "vladv2" | "max" | "avg".
        pre_l2: L2-normalise each local descriptor before pooling.
        intra: intra-normalise each cluster's residual sum (VLAD only).
    """

    pool: str = "vlad"
    pre_l2: bool = True
    intra: bool = True

    @property
    def is_vlad(self) -> bool:
        return self.pool in ("vlad", "vladv2")

    @property
    def name(self) -> str:
        """Canonical string, e.g. ``vlad_preL2_intra``; ``parse_method(m.name) == m``."""
        return "_".join([self.pool] + ["preL2"] * self.pre_l2 + ["intra"] * self.intra)

    def __str__(self) -> str:
        return self.name


def parse_method(s: str) -> Method:
    """Parse a method string such as ``vlad_preL2_intra`` (tokens split on ``_``, any order).

    Exactly one of max|avg|vlad|vladv2; optional ``preL2``; optional ``intra`` (VLAD only).
    Like the original's "Unsupported options", any unknown, repeated or unused token is an error.

    Raises:
        ValueError: naming the offending tokens and the allowed ones.
    """
    if isinstance(s, Method):
        return s
    tokens = str(s).split("_")
    allowed = f"allowed tokens: one of {'|'.join(POOLS)}, plus optional {' and '.join(FLAGS)}"
    allowed += " (intra: vlad/vladv2 only)"
    pools = [t for t in tokens if t in POOLS]
    if len(pools) != 1:
        what = "no pooling token" if not pools else f"several pooling tokens {pools}"
        raise ValueError(f"bad method {s!r}: {what}; {allowed}")
    pool = pools[0]
    rest = list(tokens)
    rest.remove(pool)
    pre_l2 = intra = False
    if "preL2" in rest:
        rest.remove("preL2")
        pre_l2 = True
    if pool in ("vlad", "vladv2") and "intra" in rest:
        rest.remove("intra")
        intra = True
    if rest:
        raise ValueError(f"bad method {s!r}: unsupported token(s) {rest}; {allowed}")
    return Method(pool, pre_l2, intra)


def _compute_dtype(x: Tensor) -> torch.dtype:
    # Aggregation and norms run in float32 (float64 when given float64, e.g. gradcheck): bf16/fp16
    # sums over N = 1200 positions lose ~3 significant digits.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _Float32Region:
    """Disable autocast (if on) so the head computes in the dtype it chooses."""

    def __init__(self, device_type: str):
        self.device_type = device_type
        self.ctx = None

    def __enter__(self):
        if torch.is_autocast_enabled(self.device_type):
            self.ctx = torch.autocast(self.device_type, enabled=False)
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


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
        """x: B×D×H×W → B×(D·K) float32 (float64 for float64 input), L2-normalised."""
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_ready()
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ValueError(f"NetVLAD expects B×{self.dim}×H×W input, got {tuple(x.shape)}")
        with _Float32Region(x.device.type):
            dt = _compute_dtype(x)
            b, d = x.shape[:2]
            # B×N×D: a free view of a channels_last map (its memory is already B×H×W×D).
            xt = x.to(dt).flatten(2).transpose(1, 2)
            norm = l2n_eps_inside if self.order == "matlab" else _l2n_clamped
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


class _GlobalPool(nn.Module):
    """Global pooling over H×W (optionally after preL2), then whole-L2: B×D×H×W → B×D."""

    mode = ""

    def __init__(self, dim: int, pre_l2: bool = False):
        super().__init__()
        self.dim = int(dim)
        self.pre_l2 = bool(pre_l2)

    @property
    def out_dim(self) -> int:
        return self.dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}, pre_l2={self.pre_l2}"

    def forward(self, x: Tensor) -> Tensor:
        with _Float32Region(x.device.type):
            x = x.to(_compute_dtype(x))
            if self.pre_l2:
                x = l2n_eps_inside(x, dim=1)
            return whole_l2n(self._pool(x))


class MaxPool(_GlobalPool):
    """``layerTotalMaxPool``: max over all positions per channel, then L2."""

    mode = "max"

    def _pool(self, x: Tensor) -> Tensor:
        return x.amax(dim=(2, 3))


class AvgPool(_GlobalPool):
    """``layerTotalAvgPool``: mean over all positions per channel, then L2."""

    mode = "avg"

    def _pool(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))


def build_head(method: Method | str, dim: int, num_clusters: int = 64, order: str = "matlab") -> nn.Module:
    """The aggregation head of ``addLayers``: preL2 (if asked) → pooling → (intra) → L2.

    ``order`` is the NetVLAD output layout (see ``VLAD_ORDERS``); pooling heads ignore it.
    Returns a module with ``.out_dim`` taking the backbone's B×D×H×W map to L2-normalised B×out_dim.
    """
    method = parse_method(method)
    if method.is_vlad:
        return NetVLAD(dim, num_clusters, vladv2=method.pool == "vladv2", intra_norm=method.intra,
                       pre_l2=method.pre_l2, order=order)
    return (MaxPool if method.pool == "max" else AvgPool)(dim, pre_l2=method.pre_l2)
