"""Which project wrote a checkpoint (told by its keys) and what its model computes, in our terms.

All four projects run the same NetVLAD (lyakaap's / pytorch-NetVlad's): F.normalize over
channels (preL2), softmax of a 1×1 conv (bias only for vladv2), residual sums per cluster,
intra-normalisation, ``view(N, -1)`` (cluster-major: k·D + d) and L2. What differs is the
trunk, the optional projection after it and the input preprocessing:

- Patch-NetVLAD: ``encoder.N`` (VGG-16), ``pool.*``, ``WPCA.0.*`` (1×1 conv P×KD); ImageNet
  mean/std, resized to 480×640.
- pytorch-NetVlad (Nanne): ``encoder.N`` (VGG-16), ``pool.*`` (none for max/avg pooling); ImageNet
  mean/std at full size. Its training checkpoints have Patch-NetVLAD's keys but no ``not_improved``.
- deep-visual-geo-localization-benchmark (gmberton): ``backbone.N`` (VGG-16 or a ResNet trunk),
  ``aggregation.*`` or, with an fc layer, ``aggregation.0.*`` + ``aggregation.1`` (Linear, then L2);
  ImageNet mean/std, resized to 480×640.
- OpenIBL: ``base_model.base.N`` (VGG-16), ``net_vlad.*``, ``pca_layer.*`` (hub file); 0–255 minus
  the VGG mean pixel, resized to 480×640.

OpenIBL training checkpoints keep their PCA in a separate ``pca_params_<name>.h5`` (U, lams, mu),
applied as in its ``ibl/pca.py``: W = (U·diag(lams^-½))ᵀ, b = −W·mu, then L2.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from netvlad.convert.peers.trunks import resnet_trunk, vgg16_trunk
from netvlad.models.config import IMAGENET, Preprocess

__all__ = ["PeerModel", "PROJECTS", "identify", "openibl_pca"]

#: The projects recognised, with the keys that identify them (for help and error messages).
PROJECTS = (
    "Patch-NetVLAD (encoder.*, pool.*, WPCA.*)",
    "pytorch-NetVlad (encoder.*, pool.*)",
    "deep-visual-geo-localization-benchmark (backbone.*, aggregation.*)",
    "OpenIBL (base_model.base.*, net_vlad.*, pca_layer.*)",
)
#: The input size (H, W) Patch-NetVLAD, OpenIBL and the VG benchmark resize every image to.
PEER_RESIZE = (480, 640)
#: OpenIBL normalises 0–1 RGB by these means and std 1/255: 0–255 minus the VGG mean pixel.
_OPENIBL_MEAN = (0.48501960784313836, 0.4579568627450961, 0.4076039215686255)


@dataclass
class PeerModel:
    """A checkpoint's model, in our terms, before a :class:`PlaceModel` is built from it.

    Attributes:
        project, format: who wrote the file and what kind of file it is, in words.
        arch, crop: our backbone and its crop layer; trunk: its state dict (our key names).
        method: aggregation method string (``vlad_preL2_intra`` ...).
        centroids (K×D), assignment_weight (K×D×1×1), assignment_bias (K or None): the NetVLAD
            layer, None for max/avg pooling.
        whitening: (weight P×n_in, bias P) applied after the head, then L2; or None.
        preprocess: the input preprocessing of the project.
        notes: what the user should know.
    """

    project: str
    format: str
    arch: str
    crop: str
    trunk: dict[str, Tensor]
    method: str
    centroids: Tensor | None = None
    assignment_weight: Tensor | None = None
    assignment_bias: Tensor | None = None
    whitening: tuple[Tensor, Tensor] | None = None
    preprocess: Preprocess = IMAGENET
    notes: list[str] = field(default_factory=list)


def _netvlad_params(state: dict[str, Tensor], prefix: str, label: str) -> dict[str, Any]:
    """``{prefix}centroids``, ``{prefix}conv.weight`` [, ``conv.bias``] → PeerModel fields."""
    allowed = {f"{prefix}centroids", f"{prefix}conv.weight", f"{prefix}conv.bias"}
    extra = [k for k in state if k.startswith(prefix) and k not in allowed]
    missing = [k for k in (f"{prefix}centroids", f"{prefix}conv.weight") if k not in state]
    if missing or extra:
        raise ValueError(
            f"{label}: the aggregation under '{prefix}' is not NetVLAD "
            f"({'missing ' + ', '.join(missing) if missing else 'unexpected ' + ', '.join(extra[:4])})"
        )
    bias = state.get(f"{prefix}conv.bias")
    return {
        "method": "vladv2_preL2_intra" if bias is not None else "vlad_preL2_intra",
        "centroids": state[f"{prefix}centroids"],
        "assignment_weight": state[f"{prefix}conv.weight"],
        "assignment_bias": bias,
    }


def _conv_projection(state: dict[str, Tensor], prefix: str) -> tuple[Tensor, Tensor] | None:
    """A 1×1 conv (or Linear) P×n_in[×1×1] with bias P under ``prefix``, as (P×n_in, P)."""
    w, b = state.get(f"{prefix}weight"), state.get(f"{prefix}bias")
    if w is None:
        return None
    return w.reshape(w.shape[0], -1), b


def _reject_keys(state: dict[str, Tensor], known: tuple[str, ...], label: str, project: str) -> None:
    extra = [k for k in state if not k.startswith(known)]
    if extra:
        raise ValueError(f"{label}: a {project} checkpoint with unexpected keys: {', '.join(extra[:5])}")


def _encoder_project(label: str, state: dict[str, Tensor], container: dict[str, Any], config) -> PeerModel:
    """Patch-NetVLAD or pytorch-NetVlad: both build ``encoder`` + ``pool`` the same way."""
    _reject_keys(state, ("encoder.", "pool.", "WPCA."), label, "Patch-NetVLAD / pytorch-NetVlad")
    arch, crop, trunk = vgg16_trunk(state, "encoder.", label)
    patch = any(k.startswith("WPCA.") for k in state) or "num_pcs" in container or "not_improved" in container
    project = "Patch-NetVLAD" if patch else "pytorch-NetVlad"
    notes = []
    if any(k.startswith("pool.") for k in state):
        fields = _netvlad_params(state, "pool.", label)
    else:
        fields = {"method": _pooling_from_option(label, config, project)}
        notes.append(
            f"the file has no pooling weights: {project} pooled with max or avg, which the file cannot "
            f"tell; {fields['method']} was taken from --method"
        )
    whitening = _conv_projection(state, "WPCA.0.")
    if patch:
        pre = replace(IMAGENET, resize=PEER_RESIZE)
        what = f"WPCA {whitening[0].shape[0]}" if whitening else "no WPCA"
        fmt = f"Patch-NetVLAD checkpoint ({what})"
        notes.append("input resized to 480×640 as Patch-NetVLAD's configs do (imageresizeH/W)")
        if fields.get("centroids") is not None:
            notes.append("the global NetVLAD descriptor is converted, not Patch-NetVLAD's patch descriptors")
    else:
        pre, fmt = IMAGENET, "pytorch-NetVlad checkpoint"
        notes.append(
            "pytorch-NetVlad extracts at full image size (no resize); told apart from a Patch-NetVLAD "
            "training checkpoint (same keys) by having neither its 'not_improved' entry nor a WPCA layer"
        )
    return PeerModel(project, fmt, arch, crop, trunk, whitening=whitening, preprocess=pre, notes=notes,
                     **fields)


def _pooling_from_option(label: str, config, project: str) -> str:
    from netvlad.layers import parse_method

    method = getattr(config, "method", None)
    m = parse_method(method) if method else None
    if m is None or m.pool not in ("max", "avg") or m.pre_l2:
        raise ValueError(
            f"{label}: a {project} model without pooling weights pools with max or avg, and the file "
            "cannot tell which: pass --method max or --method avg"
        )
    return m.name


def _benchmark(label: str, state: dict[str, Tensor], container: dict[str, Any]) -> PeerModel:
    """deep-visual-geo-localization-benchmark: ``backbone`` + ``aggregation`` (+ fc Linear, L2)."""
    _reject_keys(state, ("backbone.", "aggregation."), label, "VG benchmark")
    if "backbone.1.running_mean" in state:
        arch, crop, trunk = resnet_trunk(state, "backbone.", label)
    else:
        try:
            arch, crop, trunk = vgg16_trunk(state, "backbone.", label)
        except ValueError as exc:
            raise ValueError(f"{exc}; the benchmark's ViT and CCT backbones are not supported") from None
    whitening = None
    if "aggregation.0.centroids" in state or "aggregation.1.weight" in state:
        fields = _netvlad_params(state, "aggregation.0.", label)
        whitening = _conv_projection(state, "aggregation.1.")
        if whitening is None or set(k for k in state if k.startswith("aggregation.1.")) != {
            "aggregation.1.weight", "aggregation.1.bias"
        }:
            raise ValueError(f"{label}: aggregation.1 is not the benchmark's fc Linear (weight, bias)")
    elif "aggregation.centroids" in state:
        fields = _netvlad_params(state, "aggregation.", label)
    else:
        keys = [k for k in state if k.startswith("aggregation.")]
        raise ValueError(
            f"{label}: a VG benchmark model whose aggregation is not NetVLAD "
            f"({'keys ' + ', '.join(keys[:3]) if keys else 'no aggregation weights: MAC, SPoC or RMAC'}); "
            "only NetVLAD models convert"
        )
    notes = [
        "input normalised, then the float tensor resized to 480×640 (bilinear, no antialiasing), as "
        "the benchmark's test transform (default --resize, torchvision 0.8's tensor resize) does"
    ]
    fmt = "deep-visual-geo-localization-benchmark " + ("training checkpoint" if container else "model")
    return PeerModel("VG benchmark", fmt, arch, crop, trunk, whitening=whitening,
                     preprocess=replace(IMAGENET, resize=PEER_RESIZE, resize_stage="tensor"), notes=notes,
                     **fields)


def openibl_pca(path: str | Path, n_in: int) -> tuple[Tensor, Tensor]:
    """OpenIBL's ``pca_params_*.h5`` (U n_in×P, lams P, mu n_in×1) → (W P×n_in, b P), whitened.

    As ``ibl/pca.py`` ``load()``: U·diag(lams^-½), bias −(U·diag(lams^-½))ᵀ·mu; all P stored components.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an HDF5 file with U/lams/mu of consistent shapes.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: PCA file not found")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("U", "lams", "mu") if k not in f]
            if missing:
                has = ", ".join(f) or "nothing"
                raise ValueError(f"{path}: not an OpenIBL PCA file (no {', '.join(missing)}; has {has})")
            u, lams, mu = (np.asarray(f[k][...], dtype=np.float64) for k in ("U", "lams", "mu"))
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file ({exc})") from None
    if u.ndim != 2 or u.shape[0] != n_in or lams.size < u.shape[1] or mu.size != n_in:
        raise ValueError(
            f"{path}: PCA of U {u.shape}, lams {lams.shape}, mu {mu.shape} does not fit the model's "
            f"{n_in}-D NetVLAD vector (expected U {n_in}×P, lams P, mu {n_in})"
        )
    lams = lams.ravel()[: u.shape[1]]
    if not (lams > 0).all():
        raise ValueError(f"{path}: PCA eigenvalues (lams) must be positive to whiten")
    w = (u / np.sqrt(lams)).T
    b = -(w @ mu.ravel())
    return torch.from_numpy(w.astype(np.float32)), torch.from_numpy(b.astype(np.float32))


def _openibl(label: str, path: Path, state: dict[str, Tensor], container: dict[str, Any], pca) -> PeerModel:
    """OpenIBL: ``base_model.base`` + ``net_vlad`` (+ ``pca_layer`` in the hub file)."""
    _reject_keys(state, ("base_model.", "net_vlad.", "pca_layer."), label, "OpenIBL")
    arch, crop, trunk = vgg16_trunk(state, "base_model.base.", label)
    fields = _netvlad_params(state, "net_vlad.", label)
    notes = ["input resized to 480×640 and normalised as OpenIBL's get_transformer_test (0–255 minus the "
             "VGG mean); its Tokyo 24/7 queries instead keep their aspect (shorter side 640)"]
    whitening = _conv_projection(state, "pca_layer.")
    if whitening is not None:
        if pca is not None:
            raise ValueError(f"{label}: this OpenIBL model has its PCA layer already; --pca does not apply")
        fmt = f"OpenIBL model with PCA ({whitening[0].shape[0]}-D, EmbedNetPCA)"
    else:
        fmt = "OpenIBL training checkpoint" if container else "OpenIBL model (state dict)"
        auto = path.with_name(f"pca_params_{path.name.split('.')[0]}.h5")
        if pca is None and auto.is_file():
            pca = auto
            notes.append(f"PCA whitening from {auto.name}, found next to the checkpoint as OpenIBL's "
                         "test.py names it")
        elif pca is not None:
            notes.append(f"PCA whitening from {pca}")
        else:
            notes.append(f"no PCA file ({auto.name}) next to it: the model outputs the NetVLAD vector, as "
                         "OpenIBL's test.py without --reduction; pass --pca FILE for the whitened one")
        if pca is not None:
            k, d = fields["centroids"].shape
            whitening = openibl_pca(pca, k * d)
    preprocess = Preprocess("matconvnet", tuple(round(255 * m, 6) for m in _OPENIBL_MEAN), (1.0, 1.0, 1.0),
                            255.0, resize=PEER_RESIZE)
    return PeerModel("OpenIBL", fmt, arch, crop, trunk, whitening=whitening, preprocess=preprocess,
                     notes=notes, **fields)


def identify(label: str, path: Path, state: dict[str, Tensor], container: dict[str, Any], config,
             pca: str | Path | None = None) -> PeerModel:
    """Tell the project from the state dict's keys and read its model.

    Args:
        label: the file's name in messages; path: the file on disk (OpenIBL's PCA file sits next to it).
        state: the state dict, DataParallel prefixes removed; container: the checkpoint's other entries.
        config: :class:`~netvlad.convert.ConvertConfig` (``method`` for max/avg pooling) or None.
        pca: OpenIBL's PCA file for a training checkpoint (None: look next to the checkpoint).

    Raises:
        ValueError: no supported project (the message shows the first keys and lists the projects),
            or a supported project with a model this version does not convert.
    """
    keys = list(state)
    if any(k.startswith("base_model.base.") for k in keys):
        return _openibl(label, path, state, container, pca)
    if any(k.startswith("backbone.") for k in keys) and any(k.startswith("head.") for k in keys):
        raise ValueError(f"{label}: a netvlad model's bare state dict (no config); save models with "
                         "netvlad.models.save_model, which `netvlad` reads directly")
    if any(k.startswith("backbone.") for k in keys):
        peer = _benchmark(label, state, container)
    elif any(k.startswith("encoder.") for k in keys):
        peer = _encoder_project(label, state, container, config)
    else:
        raise ValueError(
            f"{label}: a PyTorch checkpoint of no supported NetVLAD project; its keys start "
            f"{', '.join(keys[:5])}; supported: {'; '.join(PROJECTS)}"
        )
    if pca is not None:
        raise ValueError(
            f"{label}: a {peer.project} model; --pca applies to OpenIBL training checkpoints only"
        )
    return peer
