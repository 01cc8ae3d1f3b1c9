"""Which parameters training updates: ``backPropToLayer`` (by name or MATLAB index) and ``fixLayers``."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _layer_name(names: list[str], layer: str | int) -> str:
    """`layer` as a name of `names` (a 1-based index is MATLAB's position in the layer list)."""
    if isinstance(layer, int):
        if not 1 <= layer <= len(names):
            raise ValueError(
                f"backprop_from index {layer} is outside the model's layers 1..{len(names)} "
                f"({', '.join(names)})"
            )
        return names[layer - 1]
    if layer not in names:
        raise ValueError(f"unknown layer {layer!r}; the model's layers are: {', '.join(names)}")
    return layer


def _head_groups(model) -> list[tuple[str, list[torch.nn.Parameter]]]:
    """(layer name, parameters) of the head layers that have parameters, in order."""
    groups = [(f"{model.method.pool}:core", list(model.head.parameters()))]
    if getattr(model, "whitening", None) is not None:
        groups.append(("WPCA", list(model.whitening.parameters())))
    return groups


def freeze_for_training(
    model, backprop_from: str | int | None, fix_layers: Sequence[str] = ()
) -> list[torch.nn.Parameter]:
    """Set ``requires_grad`` as ``trainWeakly`` trains: layers from `backprop_from` on, except
    `fix_layers`.

    MATLAB's layer list is the backbone's layers (max-pool and ReLU swapped, which moves no
    parameter across a boundary) followed by the head's (``preL2``, ``vlad:core``,
    ``vlad:intranorm``, ``postL2``, ``WPCA``, ``finalL2``): `model.layer_names()` lists them, so
    an index there means what it means in MATLAB.

    Args:
        model: a `netvlad.models.PlaceModel` (its backbone must support ``freeze_layers`` when
            anything in it is to be frozen).
        backprop_from: lowest trained layer: a name of ``model.layer_names()``, its 1-based index,
            or None (everything).
        fix_layers: names of layers never updated (``fixLayers``); each must exist.

    Returns:
        the trainable parameters, in ``model.parameters()`` order.

    Raises:
        ValueError: an unknown name or an index out of range, a backbone that cannot freeze
            layers, or nothing left to train.
    """
    names = model.layer_names()
    fixed = [_layer_name(names, n) for n in fix_layers]
    start = 0 if backprop_from is None else names.index(_layer_name(names, backprop_from))
    frozen = set(names[:start]) | set(fixed)
    bb = model.backbone
    bb_names = [n for n in names if n in set(getattr(bb, "kept_layer_names", None) or ())]
    bb_frozen = [n for n in bb_names if n in frozen]
    if hasattr(bb, "freeze_layers"):
        bb.freeze_layers(bb_frozen)
    elif bb_frozen or (start and not bb_names):
        raise ValueError(
            f"backbone {type(bb).__name__} cannot freeze layers "
            f"(backprop_from={backprop_from!r}, fix_layers={list(fix_layers)!r})"
        )
    for name, params in _head_groups(model):
        for p in params:
            p.requires_grad_(name not in frozen)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(
            f"nothing to train: backprop_from={backprop_from!r} and fix_layers={list(fix_layers)!r} "
            "freeze every parameter"
        )
    return trainable
