"""The common ``Backbone`` interface: named layers, cropping, freezing, geometry and weight loading.

A backbone is an ImageNet CNN trunk cropped at a named layer (MatConvNet's ``relja_cropToLayer``
keeps layers 1..index(name), so the crop layer itself is included and everything after it is not
even built). Subclasses describe their layers as an ordered list of ``(name, [modules])``; this
module derives from it the output channels, the stride, the receptive field, ``freeze_below``
and strict loading of torchvision-style state dicts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "MATCONVNET_PREPROCESS",
    "IMAGENET_PREPROCESS",
    "Backbone",
    "download_state_dict",
    "read_state_dict",
]

#: RGB float on 0–255 minus the VGG mean pixel, no std (MatConvNet's ``averageImage``).
MATCONVNET_PREPROCESS: dict[str, Any] = {
    "style": "matconvnet",
    "mean": (123.68, 116.779, 103.939),
    "std": (1.0, 1.0, 1.0),
    "scale": 255.0,
}
#: torchvision's ImageNet normalisation on a 0–1 scale.
IMAGENET_PREPROCESS: dict[str, Any] = {
    "style": "imagenet",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "scale": 1.0,
}

_BN_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a ``.pth``/``.pt`` (``weights_only=True``) or ``.safetensors`` file.

    Accepts a bare state dict or a dict holding one under ``"state_dict"`` / ``"model"`` (training
    checkpoints); a ``module.`` prefix (``DataParallel``) is stripped.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable state dict (message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or pickled-object files
        raise ValueError(f"{path}: not a readable weights file ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        raise ValueError(f"{path}: the file holds no tensors")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def download_state_dict(url: str, name: str) -> dict[str, Tensor]:
    """Fetch torchvision's ImageNet weights for ``name`` through ``torch.hub`` (cached in ``$TORCH_HOME``).

    Raises:
        OSError: the download failed (offline machine, proxy, ...), with what to do instead.
    """
    try:
        sd = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, weights_only=True)
    except Exception as exc:  # urllib/http/ssl errors all mean the same to the user
        raise OSError(
            f"could not download {name} ImageNet weights from {url} ({type(exc).__name__}: {exc}); "
            "offline? download the file elsewhere and pass weights=FILE (--weights FILE), or convert a "
            "MatConvNet .mat model with `netvlad convert`"
        ) from exc
    return dict(sd)


def _geometry(module: nn.Module) -> tuple[int, int, int] | None:
    """(kernel, stride, dilation) along one spatial axis for a sliding-window module, else None."""
    if isinstance(module, nn.Conv2d):
        return module.kernel_size[0], module.stride[0], module.dilation[0]
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        dil = _first(getattr(module, "dilation", 1))
        return _first(module.kernel_size), _first(module.stride or module.kernel_size), dil
    return None


def _first(v: int | tuple[int, ...]) -> int:
    return v if isinstance(v, int) else v[0]


class Backbone(nn.Module):
    """A CNN trunk cropped at a named layer.

    Attributes:
        name: registry name ("vgg16", ...).
        layer_names: every layer of the full network, in order (valid ``crop`` / ``freeze_below`` names).
        default_crop: the crop used when none is given.
        crop: the last layer kept.
        kept_layer_names: ``layer_names`` up to and including ``crop``.
        out_channels: channels D of the output map.
        stride: input pixels per output cell.
        receptive_field: side in pixels of one output cell's receptive field (Oxford/Paris ROI
            crops grow by half of it on each side).
        default_preprocess: dict (style, mean, std, scale) the weights expect; see ``models.Preprocess``.
        weights_source: "random", "imagenet" or the path of the weights file.

    ``forward(x: B×3×H×W) -> B×out_channels×h×w``, h ≈ H/stride. Works with any memory format;
    channels_last input stays channels_last (the fast path on CPU).
    """

    def __init__(
        self,
        crop: str | None,
        *,
        name: str,
        layer_names: list[str],
        default_crop: str,
        default_preprocess: dict[str, Any],
    ) -> None:
        super().__init__()
        self.name = name
        self.layer_names = list(layer_names)
        self.default_crop = default_crop
        self.default_preprocess = dict(default_preprocess)
        crop = self.default_crop if crop is None else crop
        self._check_layer(crop, "crop")
        self.crop = crop
        self.weights_source = "random"
        self._frozen_layers: list[str] = []
        self._freeze_bn = True

    # --- subclass hooks -------------------------------------------------------------------------
    def _layer_modules(self) -> list[tuple[str, list[nn.Module]]]:
        """The kept layers in forward order, each with the modules holding its parameters."""
        raise NotImplementedError

    def _imagenet_state_dict(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def _mismatch_hint(self, state_dict: Mapping[str, Tensor]) -> str:
        """Extra text for a load error (e.g. 'this is torchvision's AlexNet')."""
        return ""

    # --- names ------------------------------------------------------------------------------------
    def _check_layer(self, layer: str, what: str) -> int:
        if layer not in self.layer_names:
            raise ValueError(
                f"unknown {what} layer {layer!r} for {self.name}; "
                f"choose one of: {', '.join(self.layer_names)}"
            )
        return self.layer_names.index(layer)

    @property
    def kept_layer_names(self) -> list[str]:
        return self.layer_names[: self.layer_names.index(self.crop) + 1]

    @property
    def trainable_layer_names(self) -> list[str]:
        """Kept layers whose parameters ``freeze_below`` left trainable (all of them by default)."""
        return [n for n in self.kept_layer_names if n not in self._frozen_layers]

    @property
    def frozen_layer_names(self) -> list[str]:
        return list(self._frozen_layers)

    # --- geometry ---------------------------------------------------------------------------------
    def _walk_geometry(self) -> tuple[int, int, int]:
        """(out_channels, stride, receptive_field) of the kept trunk.

        Walks the sliding-window modules along the main path (a ResNet ``downsample`` branch is
        parallel to it, so it adds neither stride nor extent): rf += (k−1)·d·jump; jump *= s.
        """
        rf, jump, channels = 1, 1, 3
        for _, modules in self._layer_modules():
            for top in modules:
                for sub_name, m in top.named_modules():
                    if "downsample" in sub_name.split("."):
                        continue
                    geo = _geometry(m)
                    if geo is None:
                        continue
                    k, s, d = geo
                    rf += (k - 1) * d * jump
                    jump *= s
                    if isinstance(m, nn.Conv2d):
                        channels = m.out_channels
        return channels, jump, rf

    def _init_weights(self) -> None:
        """torchvision's random init, in module order (the caller seeds torch).

        Conv2d: Kaiming-normal weight (fan_out, ReLU), zero bias if it has one; BatchNorm2d: weight 1,
        bias 0. Only the conv weights draw random numbers, so a seeded build is reproducible.
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _finish_init(self) -> None:
        """Call at the end of a subclass ``__init__``: derives the geometry."""
        self.out_channels, self.stride, self.receptive_field = self._walk_geometry()

    # --- freezing ---------------------------------------------------------------------------------
    def freeze_below(self, layer_name: str | None, freeze_bn: bool = True) -> None:
        """Train from ``layer_name`` up: parameters of the layers before it get ``requires_grad=False``.

        ``layer_name`` and every later kept layer become trainable (so calling it again moves the
        boundary). ``None`` unfreezes everything. The paper's VGG-16 setting is
        ``freeze_below("conv5_1")``: conv5_1, conv5_2, conv5_3 are trained, conv1_1..relu4_3 are fixed.

        Args:
            layer_name: a kept layer name (at or before ``crop``), or None.
            freeze_bn: also keep the BatchNorm layers of frozen layers in eval mode (running
                statistics neither used from the batch nor updated) whatever ``train()`` says.
                Trainable layers' BatchNorm follow ``train()/eval()``; put the whole model in
                ``eval()`` yourself if you want frozen statistics everywhere (small batches).

        Raises:
            ValueError: unknown name, or a layer beyond the crop.
        """
        if layer_name is None:
            idx = 0
        else:
            idx = self._check_layer(layer_name, "freeze_below")
            if layer_name not in self.kept_layer_names:
                raise ValueError(
                    f"freeze_below layer {layer_name!r} is beyond the crop {self.crop!r} of {self.name}; "
                    f"choose one of: {', '.join(self.kept_layer_names)}"
                )
        self._apply_freeze(self.kept_layer_names[:idx], freeze_bn)

    def freeze_layers(self, names: list[str], freeze_bn: bool = True) -> None:
        """Freeze exactly the kept layers ``names`` (any set, e.g. MATLAB's ``fixLayers``); the others
        become trainable.

        Raises:
            ValueError: a name that is not a kept layer.
        """
        for n in names:
            self._check_layer(n, "freeze_layers")
            if n not in self.kept_layer_names:
                raise ValueError(f"layer {n!r} is beyond the crop {self.crop!r} of {self.name}")
        self._apply_freeze([n for n in self.kept_layer_names if n in set(names)], freeze_bn)

    def freeze_all(self, freeze_bn: bool = True) -> None:
        """Freeze every kept layer (train only what comes after the backbone)."""
        self._apply_freeze(list(self.kept_layer_names), freeze_bn)

    def _apply_freeze(self, frozen: list[str], freeze_bn: bool) -> None:
        self._frozen_layers = frozen
        self._freeze_bn = freeze_bn
        for name, modules in self._layer_modules():
            trainable = name not in frozen
            for m in modules:
                for p in m.parameters():
                    p.requires_grad_(trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode and self._freeze_bn and self._frozen_layers:
            for name, modules in self._layer_modules():
                if name in self._frozen_layers:
                    for m in modules:
                        for sub in m.modules():
                            if isinstance(sub, _BN_TYPES):
                                sub.eval()
        return self

    # --- weights ----------------------------------------------------------------------------------
    def load_weights(self, weights: str | os.PathLike | Mapping[str, Tensor]) -> None:
        """Load ``"imagenet"``, a state-dict file, or a state dict (torchvision key names).

        Strict about the kept trunk: every parameter and buffer must be present with the right
        shape (BatchNorm ``num_batches_tracked``, absent from old files, excepted). Keys of layers
        beyond the crop and of the classifier (``classifier.*``, ``fc.*``, ``_fc.*``) are ignored.

        Raises:
            ValueError: missing or mis-shaped keys, naming the source and the first offenders.
            FileNotFoundError: a path that does not exist.
            OSError: ``"imagenet"`` needs a download and the network is not reachable.
        """
        if isinstance(weights, Mapping):
            sd, source = dict(weights), "state dict"
        elif str(weights) == "imagenet":
            sd, source = self._imagenet_state_dict(), f"{self.name} ImageNet weights"
        else:
            sd, source = read_state_dict(weights), str(weights)
        expected = self.state_dict()
        if not any(k in sd for k in expected) and any(k.startswith("backbone.") for k in sd):
            # a netvlad PlaceModel checkpoint: its trunk lives under "backbone."
            sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
        missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
        bad_shape = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
        if missing or bad_shape:
            parts = [f"{source}: does not fit {self.name} cropped at {self.crop}"]
            if bad_shape:
                shown = "; ".join(
                    f"{k} has {tuple(sd[k].shape)}, expected {tuple(expected[k].shape)}"
                    for k in bad_shape[:3]
                )
                parts.append(f"{len(bad_shape)} shape mismatch(es): {shown}")
            if missing:
                parts.append(f"{len(missing)} missing key(s): {', '.join(missing[:5])}")
                parts.append(f"the file has e.g.: {', '.join(list(sd)[:5])}")
            hint = self._mismatch_hint(sd)
            if hint:
                parts.append(hint)
            raise ValueError("; ".join(parts))
        self.load_state_dict({k: sd[k] for k in expected if k in sd}, strict=False)
        self.weights_source = "imagenet" if str(weights) == "imagenet" else source
        self._after_load(sd, source)

    def _after_load(self, sd: Mapping[str, Tensor], source: str) -> None:
        """Hook for subclasses: adjust metadata (e.g. preprocessing) to what the weights expect."""

    # --- forward ----------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return (
            f"name={self.name}, crop={self.crop}, out_channels={self.out_channels}, stride={self.stride}, "
            f"receptive_field={self.receptive_field}"
        )
