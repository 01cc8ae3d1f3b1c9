"""Self-describing checkpoints: config + state dict in one file, loaded without executing code."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from netvlad._atomic import atomic_write
from netvlad._sniff import describe, sniff
from netvlad._version import __version__
from netvlad.models.config import PRESETS, ModelConfig
from netvlad.models.model import PlaceModel, check_device, create_model

__all__ = ["FORMAT", "VERSION", "load_checkpoint", "load_model", "save_model"]

FORMAT = "netvlad-checkpoint"
VERSION = 1


def save_model(model: PlaceModel, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (temp file + rename).

    ``.safetensors`` paths get a safetensors file with the config (and ``extra``) as JSON metadata;
    any other suffix a torch file {"format", "version", "netvlad_version", "config", "state_dict",
    "extra"} ("version" is the file layout's, "netvlad_version" the package's that wrote it). ``extra``
    must hold plain data (numbers, strings, lists, dicts, tensors) so it loads with weights_only.

    Returns:
        the path written.
    """
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {"format": FORMAT, "version": str(VERSION), "netvlad_version": __version__,
                "config": json.dumps(config), "extra": json.dumps(extra or {})}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))
    else:
        payload = {"format": FORMAT, "version": VERSION, "netvlad_version": __version__, "config": config,
                   "state_dict": state, "extra": extra or {}}
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    return path


#: What :func:`load_checkpoint` can open, by content (:func:`netvlad._sniff.sniff`).
_TORCH_KINDS = ("torch-zip", "torch-legacy", "pickle")


def load_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint without building the model → (config, state_dict, extra).

    The file is recognised by content, not by suffix: a safetensors file or a torch file. Torch
    files load with ``weights_only=True``: a file that would need to run code is refused.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint at all (says what the file is instead), not a netvlad
            checkpoint, a newer format version, unsafe content, or a NaN/inf weight (names the
            first such tensor: a model that would write all-NaN descriptors).
    """
    path = Path(path)
    kind = sniff(path)
    if kind == "missing":
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if kind == "safetensors":
        payload = _read_safetensors(path)
    elif kind in _TORCH_KINDS:
        payload = _read_torch(path)
    else:
        hint = "; a MATLAB model needs `netvlad convert` first" if kind.startswith("matlab") else ""
        raise ValueError(f"{path}: {describe(kind)}, not a model checkpoint (expected a netvlad "
                         f"checkpoint: a PyTorch .pt or a .safetensors file){hint}")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a netvlad checkpoint (no format={FORMAT!r}); a bare state dict "
                         "or a foreign model needs `netvlad convert` first")
    if int(payload.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: checkpoint version {payload['version']} is newer than this netvlad "
                         f"supports ({VERSION}); upgrade netvlad")
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: netvlad checkpoint without a state_dict (a damaged file?)")
    _check_finite_state(path, state)
    try:
        config = ModelConfig.from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as exc:  # a hand-edited or foreign config
        raise ValueError(f"{path}: bad model config in the checkpoint ({exc})") from None
    return config, state, payload.get("extra") or {}


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: safetensors file without netvlad config metadata "
                         "(a bare state dict? see `netvlad convert`)")
    return {"format": FORMAT, "version": int(meta.get("version", 0)),
            "config": json.loads(meta["config"]), "state_dict": state,
            "extra": json.loads(meta.get("extra", "{}"))}


def _read_torch(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).splitlines()[0]
        raise ValueError(f"{path}: refused to load: the file holds objects that weights_only "
                         f"loading does not allow (it could run code): {first}") from exc
    except (RuntimeError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable torch checkpoint ({exc})") from exc


def _check_finite_state(path: Path, state: dict[str, Any]) -> None:
    """ValueError naming the first tensor holding NaN/inf: such a model describes every image as NaN."""
    for name, t in state.items():
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise ValueError(f"{path}: tensor {name!r} holds {bad} NaN/inf value(s) of {t.numel()} "
                                 "(a diverged or corrupt model); refusing to load it")


def load_model(
    name_or_path: str | Path, device: str | torch.device = "cpu", weights: str | Path | None = None
) -> PlaceModel:
    """A preset name (→ :func:`create_model`) or a checkpoint path → model in eval mode on ``device``.

    The backbone is built with random weights and then filled from the checkpoint's state dict,
    so loading never downloads anything.

    Args:
        name_or_path: a preset name (an existing file of that name wins) or a checkpoint path.
        device: where the model goes.
        weights: backbone weights for a preset (see :func:`create_model`); a checkpoint already
            holds its weights, so giving both is an error.

    Raises:
        FileNotFoundError: neither a preset nor an existing file (lists the presets).
        ValueError: ``weights`` given with a checkpoint, or a ``device`` not available here.
    """
    device = check_device(device)
    if isinstance(name_or_path, str) and name_or_path in PRESETS and not Path(name_or_path).exists():
        return create_model(name_or_path, weights=weights).to(device)
    path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint, and not a preset ({', '.join(PRESETS)})")
    if weights is not None:
        raise ValueError(f"{path}: --weights applies to presets only; a checkpoint carries its own weights")
    config, state, _ = load_checkpoint(path)
    try:
        model = PlaceModel(config)
    except (KeyError, ValueError) as exc:  # e.g. a backbone or method this netvlad does not know
        why = exc.args[0] if exc.args else exc
        raise ValueError(f"{path}: its config describes a model this netvlad cannot build ({why})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        # torch's first line only says "Error(s) in loading state_dict"; the next ones say which tensor
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        why = "; ".join(lines[1:3] or lines[:1]) + ("; ..." if len(lines) > 3 else "")
        raise ValueError(f"{path}: weights do not match the config ({why[:400]})") from None
    return model.to(device).eval()
