"""PyTorch checkpoints of the NetVLAD projects people train with → :class:`PlaceModel`.

Patch-NetVLAD, pytorch-NetVlad, the deep-visual-geo-localization-benchmark and OpenIBL, told apart
by their keys (:mod:`.projects`). The converted model outputs the vector its source outputs for the
same image: same trunk and crop, same NetVLAD (preL2, softmax assignment, intra-norm, L2), the
source's cluster-major order (``vlad_order="torch"``), its projection (WPCA / fc / OpenIBL PCA,
then L2) and its preprocessing (normalisation and 480×640 resize). Files load with
``weights_only`` plus numpy numbers (:mod:`.loading`); nothing in them is executed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from netvlad.convert.model import ConversionInfo, ConvertConfig
from netvlad.convert.peers.loading import checkpoint_file, load_torch_file, split_checkpoint, strip_module
from netvlad.convert.peers.projects import PROJECTS, PeerModel, identify, openibl_pca
from netvlad.convert.peers.trunks import build_trunk

__all__ = ["PROJECTS", "PeerModel", "build_peer_model", "convert_torch_checkpoint", "load_torch_file",
           "openibl_pca"]

log = logging.getLogger(__name__)

#: Options ``convert_torch_checkpoint`` takes (``netvlad convert --pca``).
OPTIONS = ("pca",)


def _check_config(label: str, peer: PeerModel, config: ConvertConfig) -> None:
    """A --method or --crop that contradicts the file is an error, not silently ignored."""
    from netvlad.layers import parse_method

    if config.crop is not None and config.crop != peer.crop:
        raise ValueError(
            f"{label}: this model's head is trained on {peer.crop}; --crop {config.crop} cannot apply"
        )
    if config.method is not None and parse_method(config.method).name != peer.method:
        raise ValueError(
            f"{label}: the file's head is {peer.method}; --method {config.method} contradicts it"
        )


def _load_head(label: str, peer: PeerModel, model) -> None:
    head, d = model.head, model.local_dim
    if peer.centroids is None:
        return
    k = peer.centroids.shape[0]
    w = peer.assignment_weight
    if tuple(peer.centroids.shape) != (k, d) or w.numel() != k * d or w.shape[0] != k:
        raise ValueError(
            f"{label}: NetVLAD centroids {tuple(peer.centroids.shape)} and assignment {tuple(w.shape)} do "
            f"not fit K×D with D = {d} ({peer.arch} at {peer.crop})"
        )
    b = peer.assignment_bias
    if b is not None and tuple(b.shape) != (k,):
        raise ValueError(f"{label}: NetVLAD assignment bias {tuple(b.shape)}, expected ({k},)")
    with torch.no_grad():
        head.centroids.copy_(peer.centroids.float())
        head.assignment.weight.copy_(w.float().reshape(k, d, 1, 1))
        if b is not None:
            head.assignment.bias.copy_(b.float())
        head.initialized.fill_(True)


def _load_whitening(label: str, peer: PeerModel, model) -> None:
    if peer.whitening is None:
        return
    w, b = peer.whitening
    n_in = model.head.out_dim
    if w.dim() != 2 or w.shape[1] != n_in or b is None or tuple(b.shape) != (w.shape[0],):
        shown = "none" if b is None else tuple(b.shape)
        raise ValueError(
            f"{label}: the projection after the head is {tuple(w.shape)} with bias {shown}; expected "
            f"P×{n_in} and P (the head outputs {n_in} values)"
        )
    model.set_whitening(w.float(), b.float())


def build_peer_model(label: str, peer: PeerModel):
    """The :class:`~netvlad.models.PlaceModel` (eval mode, CPU) computing what ``peer`` describes.

    Raises:
        ValueError: weights whose shapes do not fit the architecture.
    """
    from netvlad.models import ModelConfig, PlaceModel

    backbone = build_trunk(peer.arch, peer.crop, peer.trunk, label)
    vlad = peer.centroids is not None
    k = int(peer.centroids.shape[0]) if vlad else 64
    config = ModelConfig(peer.arch, peer.crop, peer.method, k, None, peer.preprocess, Path(label).name,
                         vlad_order="torch" if vlad else "matlab")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the head's random init is overwritten
        model = PlaceModel(config, backbone)
    _load_head(label, peer, model)
    _load_whitening(label, peer, model)
    return model.eval()


def convert_torch_checkpoint(path: str | Path, config: ConvertConfig | None = None, **options):
    """Build a :class:`~netvlad.models.PlaceModel` from a NetVLAD project's PyTorch checkpoint.

    Args:
        path: a ``.pth`` / ``.pth.tar`` of Patch-NetVLAD, pytorch-NetVlad, the VG benchmark or OpenIBL
            (bare state dict or training checkpoint, DataParallel prefixes allowed), or a zip/tar
            archive of a run folder (its ``model_best.pth.tar`` / ``best_model.pth``, else its only
            checkpoint, is converted).
        config: ``method`` must be max or avg for a pytorch-NetVlad model without pooling weights;
            otherwise ``method``/``crop`` may only repeat what the file holds.
        options: ``pca=PATH``: OpenIBL's ``pca_params_*.h5`` for a training checkpoint (default:
            the file of that name next to the checkpoint, if any).

    Returns:
        (model in eval mode on the CPU, :class:`ConversionInfo`); ``info.notes`` says what was
        assumed (resize, the archive member taken, where the PCA came from).

    Raises:
        FileNotFoundError: no such file (or PCA file).
        ValueError: unsafe content (naming the global it needs), no supported project (naming the
            first keys and the projects), a netvlad checkpoint, or weights that do not fit.
    """
    config = config or ConvertConfig()
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(
            f"{path}: unknown option(s) {unknown} for a PyTorch checkpoint; known: {', '.join(OPTIONS)}"
        )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with checkpoint_file(path) as ckpt:
        state, container = split_checkpoint(load_torch_file(ckpt.path, ckpt.label), ckpt.label)
        state, stripped = strip_module(state, ckpt.label)
        peer = identify(ckpt.label, ckpt.path, state, container, config, options.get("pca"))
    _check_config(ckpt.label, peer, config)
    model = build_peer_model(ckpt.label, peer)
    notes = ckpt.notes + peer.notes
    if stripped:
        notes.append("DataParallel 'module.' prefixes removed from the keys")
    info = ConversionInfo(
        source=ckpt.label,
        format=peer.format,
        arch=peer.arch,
        crop=peer.crop,
        method=model.method.name,
        released=True,
        num_clusters=model.config.num_clusters if model.method.is_vlad else None,
        whiten_dim=model.config.whiten_dim,
        preprocess=model.preprocess.to_dict(),
        vlad_order=model.config.vlad_order,
        notes=notes,
    )
    log.info("converted %s (%s): %s at %s, %s, out_dim %d", ckpt.label, peer.project, peer.arch, peer.crop,
             info.method, model.out_dim)
    return model, info
