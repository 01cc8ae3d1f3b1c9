"""NetVLAD aggregation, global max/avg pooling and the L2 normalisations of the MATLAB original.

Arandjelović et al., "NetVLAD: CNN architecture for weakly supervised place recognition" (CVPR 2016);
the maths follows Relja/netvlad v1.03 (``layerVLAD``, ``layerVLADv2``, ``layerWholeL2Normalize`` and
MatConvNet's ``normalize`` layer with param [2D, 1e-12, 1, 0.5]). Torch only.

Modules: `functional` (the normalisations and their epsilons), `method` (the method string),
`vlad` (the NetVLAD layer), `pooling` (max/avg heads), `kmeans`; `build_head` here puts a head
together. Shapes: a *feature map* is B×D×H×W (any memory format; channels_last is kept and is the
fast path), N = H·W local descriptors of dimension D, K clusters. Descriptors are B×out_dim.
"""

from __future__ import annotations

from torch import nn

from netvlad.layers.functional import EPS, VLAD_ORDERS, l2n_eps_inside, whole_l2n
from netvlad.layers.kmeans import kmeans
from netvlad.layers.method import FLAGS, POOLS, Method, parse_method
from netvlad.layers.pooling import AvgPool, MaxPool
from netvlad.layers.vlad import NetVLAD, UninitializedError

__all__ = [
    "EPS",
    "FLAGS",
    "POOLS",
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


def build_head(method: Method | str, dim: int, num_clusters: int = 64, order: str = "matlab") -> nn.Module:
    """The aggregation head of ``addLayers``: preL2 (if asked) → pooling → (intra) → L2.

    Args:
        method: a `Method` or its string (``vlad_preL2_intra``, ``max``, ...).
        dim: D, channels of the backbone's map.
        num_clusters: K (NetVLAD only).
        order: the NetVLAD output layout (see ``VLAD_ORDERS``); pooling heads ignore it.

    Returns:
        a module with ``.out_dim``: `NetVLAD`, `MaxPool` or `AvgPool`.

    Shape:
        (B, D, H, W) → (B, out_dim), L2-normalised.
    """
    method = parse_method(method)
    if method.is_vlad:
        return NetVLAD(dim, num_clusters, vladv2=method.pool == "vladv2", intra_norm=method.intra,
                       pre_l2=method.pre_l2, order=order)
    return (MaxPool if method.pool == "max" else AvgPool)(dim, pre_l2=method.pre_l2)
