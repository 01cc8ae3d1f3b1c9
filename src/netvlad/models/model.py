"""PlaceModel: backbone → aggregation head → optional PCA-whitening Linear + L2; and create_model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor, nn

from netvlad.layers import NetVLAD, UninitializedError, build_head, l2n_eps_inside, parse_method, whole_l2n
from netvlad.models.config import PRESETS, ModelConfig, Preprocess

__all__ = ["PlaceModel", "check_device", "config_out_dim", "create_model", "resolve_config"]


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists here.

    Why: torch reports a CUDA device asked for on a machine (or a torch build) without one as an
    AssertionError or RuntimeError from deep inside ``.to()``; users should read one line.

    Raises:
        ValueError: naming the device and what is missing (not a device string, no CUDA support
            in this torch build, no such CUDA device, no MPS).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device {str(device)!r}: not a torch device ({str(exc).splitlines()[0]})") from None
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise ValueError(f"device {str(device)!r}: this torch build ({torch.__version__}) has no CUDA "
                             "support; use cpu")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise ValueError(f"device {str(device)!r}: {count} CUDA device(s) visible here")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r}: MPS is not available here; use cpu")
    return dev


def _build_backbone(name: str, crop: str | None, weights: str | Path | None) -> nn.Module:
    from netvlad.backbones import build_backbone  # engineer B's registry

    return build_backbone(name, crop=crop, weights=weights)


class PlaceModel(nn.Module):
    """A global image descriptor: B×3×H×W preprocessed images → L2-normalised B×out_dim.

    Args:
        config: the model description (see :class:`ModelConfig`).
        backbone: a ready backbone module (``out_channels``, ``crop``, ``layer_names``); None builds
            ``config.backbone`` with random weights (load a state dict or pass ``weights`` to
            :func:`create_model` for real ones).

    Attributes:
        backbone, head (NetVLAD / MaxPool / AvgPool), whitening (nn.Linear or None),
        out_dim, local_dim (D, backbone channels), preprocess (:class:`Preprocess`), method.
    """

    def __init__(self, config: ModelConfig, backbone: nn.Module | None = None):
        super().__init__()
        if backbone is None:
            backbone = _build_backbone(config.backbone, config.crop, None)
        if config.crop is None and getattr(backbone, "crop", None):
            config = config.replace(crop=backbone.crop)  # record the concrete layer in checkpoints
        self.config = config
        self.method = parse_method(config.method)
        self.backbone = backbone
        self.local_dim = int(backbone.out_channels)
        self.head = build_head(self.method, self.local_dim, config.num_clusters, config.vlad_order)
        self.whitening: nn.Linear | None = None
        if config.whiten_dim is not None:
            self.whitening = nn.Linear(self.head.out_dim, config.whiten_dim, bias=True)

    @property
    def out_dim(self) -> int:
        return self.config.whiten_dim if self.whitening is not None else self.head.out_dim

    @property
    def preprocess(self) -> Preprocess:
        return self.config.preprocess

    def set_preprocess(self, preprocess: Preprocess) -> None:
        """Replace the input preprocessing (e.g. to add a max_side); saved with the model."""
        self.config = self.config.replace(preprocess=preprocess)

    @property
    def initialized(self) -> bool:
        """False only for a NetVLAD head whose clusters were never initialised."""
        return not isinstance(self.head, NetVLAD) or bool(self.head.initialized)

    def check_ready(self) -> None:
        """Raise :class:`UninitializedError` if the NetVLAD clusters were never initialised."""
        if isinstance(self.head, NetVLAD):
            try:
                self.head.check_ready()
            except UninitializedError as exc:
                raise UninitializedError(f"model {self.config.backbone}/{self.method}: {exc}") from None

    def local_features(self, x: Tensor) -> Tensor:
        """B×3×H×W → B×D×h×w backbone map, preL2-normalised when the method has preL2.

        These are the descriptors the original samples for cluster initialisation.
        """
        f = self.backbone(x)
        if self.method.pre_l2:
            f = l2n_eps_inside(f.float() if f.dtype != torch.float64 else f, dim=1)
        return f

    def forward(self, x: Tensor) -> Tensor:
        """B×3×H×W preprocessed (channels_last welcome; it is kept) → B×out_dim, L2-normalised.

        Raises:
            UninitializedError: the NetVLAD layer was never initialised from data.
        """
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_ready()
        d = self.head(self.backbone(x))
        if self.whitening is not None:
            # WPCA then finalL2 (addPCA); float32 even under autocast.
            with torch.autocast(d.device.type, enabled=False):
                w = self.whitening
                d = whole_l2n(nn.functional.linear(d, w.weight.to(d.dtype), w.bias.to(d.dtype)))
        return d

    @torch.no_grad()
    def set_whitening(self, weight: Tensor, bias: Tensor) -> None:
        """Append y = W·x + b then L2 (``addPCA``): weight dim_out×out_dim_before, bias dim_out.

        Replaces any existing whitening; updates ``config.whiten_dim`` and ``out_dim``.
        """
        weight, bias = torch.as_tensor(weight), torch.as_tensor(bias)
        n_in = self.head.out_dim
        if weight.dim() != 2 or weight.shape[1] != n_in or bias.shape != (weight.shape[0],):
            raise ValueError(
                f"set_whitening expects weight dim_out×{n_in} and bias (dim_out,), got "
                f"{tuple(weight.shape)} and {tuple(bias.shape)}"
            )
        ref = self.head.state_dict()
        dev = next(iter(ref.values())).device if ref else weight.device
        lin = nn.Linear(n_in, weight.shape[0], bias=True, device=dev)
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
        self.whitening = lin
        self.config = self.config.replace(whiten_dim=int(weight.shape[0]))

    def layer_names(self) -> list[str]:
        """MatConvNet-style names of every layer: backbone, then the head (and whitening)."""
        bb = self.backbone
        names = list(getattr(bb, "kept_layer_names", None) or getattr(bb, "layer_names", []))
        m = self.method
        if m.pre_l2:
            names.append("preL2")
        names.append(f"{m.pool}:core")
        if m.intra:
            names.append("vlad:intranorm")
        names.append("postL2")
        if self.whitening is not None:
            names += ["WPCA", "finalL2"]
        return names

    def fingerprint(self) -> str:
        """sha256 hex of the config JSON and every parameter/buffer (name, dtype, shape, bytes).

        Identical for a model and its save/load round trip; changes with any weight.
        """
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for name, t in sorted(self.state_dict().items()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            flat = t.reshape(-1)
            flat = flat.to(torch.uint8) if t.dtype == torch.bool else flat.view(torch.uint8)
            h.update(flat.numpy().tobytes())
        return h.hexdigest()


def resolve_config(name_or_config: str | ModelConfig) -> ModelConfig:
    """A preset name or a ModelConfig → ModelConfig; unknown names raise ValueError listing presets."""
    if isinstance(name_or_config, ModelConfig):
        return name_or_config
    if name_or_config in PRESETS:
        return PRESETS[name_or_config]
    raise ValueError(f"unknown model preset {name_or_config!r}; choose from {', '.join(PRESETS)}")


def create_model(
    name_or_config: str | ModelConfig, weights: str | Path | None = None, seed: int = 0
) -> PlaceModel:
    """Build a model from a preset name or a config, in eval mode, on the CPU.

    Args:
        name_or_config: preset name (see :func:`list_presets`) or :class:`ModelConfig`.
        weights: backbone weights: None = the config's ``pretrained`` (lite0 presets: the
            installed ImageNet weights; others: random), "random" = random init, "imagenet"
            (downloads torchvision's file for VGG and ResNet; CaffeNet/AlexNet has none: convert
            MatConvNet's ``imagenet-caffe-ref.mat`` with ``netvlad convert``), or a state-dict file.
        seed: seeds the random init of backbone and head (the global RNG is left untouched).

    With explicit weights, the preprocessing becomes the backbone's ``default_preprocess`` for them
    (the config's ``max_side`` is kept).

    A NetVLAD head starts uninitialised: run :func:`init_clusters` (or load a checkpoint).
    """
    config = resolve_config(name_or_config)
    if weights is None:
        weights = config.pretrained
    elif str(weights) in ("random", "none"):
        weights = None
    if weights is not None:
        config = config.replace(pretrained=str(weights) if weights == "imagenet" else Path(weights).name)
    else:
        config = config.replace(pretrained=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = _build_backbone(config.backbone, config.crop, weights)
        if weights is not None and getattr(backbone, "default_preprocess", None):
            # The weights decide the input normalisation (torchvision VGG files expect ImageNet
            # mean/std, the MATLAB ones 0–255 minus the mean pixel); the backbone reports it.
            pre = {k: v for k, v in backbone.default_preprocess.items() if k != "max_side"}
            config = config.replace(preprocess=Preprocess(**pre, max_side=config.preprocess.max_side))
        model = PlaceModel(config, backbone)
    return model.eval()


def config_out_dim(config: ModelConfig) -> tuple[int, int]:
    """(local_dim D, out_dim) of a config, from a weightless backbone built on the meta device."""
    try:
        with torch.device("meta"):
            backbone = _build_backbone(config.backbone, config.crop, None)
    except (RuntimeError, NotImplementedError):  # a backbone that cannot live on meta
        backbone = _build_backbone(config.backbone, config.crop, None)
    d = int(backbone.out_channels)
    if config.whiten_dim is not None:
        return d, config.whiten_dim
    return d, d * config.num_clusters if parse_method(config.method).is_vlad else d
