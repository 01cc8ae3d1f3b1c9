"""PyTorch checkpoints of the NetVLAD projects people train with → PlaceModel (work in progress)."""

from __future__ import annotations

from pathlib import Path


def convert_torch_checkpoint(path: str | Path, config=None, **options):
    """Placeholder until the peer converters land: names the file and what is supported."""
    raise ValueError(f"{path}: PyTorch checkpoints are not supported by this version yet")
