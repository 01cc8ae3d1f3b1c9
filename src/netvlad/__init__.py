"""netvlad: NetVLAD visual place recognition in PyTorch.

The public API is re-exported lazily so that ``import netvlad`` stays cheap and touches no file.
"""

from __future__ import annotations

from netvlad._version import __version__

_LAZY = {
    # The weights versions: presets and checkpoints as netvlad.models, plus published models by name.
    "create_model": "netvlad.weights",
    "load_model": "netvlad.weights",
    "list_weights": "netvlad.weights",
    "load_pretrained": "netvlad.weights",
    "save_model": "netvlad.models",
    "list_presets": "netvlad.models",
    "PlaceModel": "netvlad.models",
    "NetVLAD": "netvlad.layers",
    "compute_representation": "netvlad.extract",
    "load_dataset": "netvlad.data",
    "PlaceDataset": "netvlad.data",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'netvlad' has no attribute {name!r}")
