"""torch.hub entry points: ``torch.hub.load(REPO_DIR, "vgg16_netvlad", source="local")``.

One entry point per preset of ``netvlad.models.PRESETS`` (dashes become underscores) plus a
generic ``netvlad(preset, pretrained_checkpoint=None)``. Presets build untrained models (random
backbone and uninitialised NetVLAD, except lite0's installed ImageNet weights); pass a checkpoint
from ``netvlad convert`` / ``netvlad train`` to get a ready one; presets download nothing.

One entry point per published model of ``netvlad weights list`` (``-`` and ``.`` become ``_``),
e.g. ``vd16_pitts30k_conv5_3_vlad_preL2_intra_white`` or ``vgbench_resnet18_netvlad_msls``:
``pretrained=True`` (the default) downloads the file once into the netvlad cache, verifies its
sha256 and converts it once, exactly as ``netvlad.create_model(NAME, pretrained=True)``.
"""

from __future__ import annotations

import sys
from pathlib import Path as _Path

dependencies = ["torch", "numpy", "PIL"]

try:  # an installed package wins; otherwise use the source tree this file sits in
    import netvlad  # noqa: F401
except ImportError:
    sys.path.insert(0, str(_Path(__file__).resolve().parent / "src"))


def netvlad(preset: str = "vgg16-netvlad", pretrained_checkpoint: str | None = None, seed: int = 0):
    """Build a netvlad PlaceModel.

    Args:
        preset: a preset name (``netvlad models`` lists them), with dashes or underscores.
        pretrained_checkpoint: a netvlad checkpoint file (e.g. from ``netvlad convert``); when given
            it defines the model entirely and ``preset`` is ignored.
        seed: seed of the random initialisation of an untrained preset.

    Returns:
        the model in eval mode on the CPU (``model.preprocess`` turns an H×W×3 uint8 image into its input).
    """
    from netvlad.models import PRESETS, create_model, load_model

    if pretrained_checkpoint is not None:
        return load_model(pretrained_checkpoint)
    name = preset.replace("_", "-")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    return create_model(name, seed=seed)


def _entry(preset: str):
    def entry(pretrained_checkpoint: str | None = None, seed: int = 0):
        return netvlad(preset, pretrained_checkpoint, seed)

    entry.__name__ = preset.replace("-", "_")
    entry.__doc__ = f"The ``{preset}`` preset (see ``netvlad``); pretrained_checkpoint loads trained weights."
    return entry


# Explicit names so torch.hub.list() finds them (it lists module-level callables).
vgg16_netvlad = _entry("vgg16-netvlad")
vgg19_netvlad = _entry("vgg19-netvlad")
alexnet_netvlad = _entry("alexnet-netvlad")
vgg16_max = _entry("vgg16-max")
vgg16_avg = _entry("vgg16-avg")
resnet18_netvlad = _entry("resnet18-netvlad")
resnet50_netvlad = _entry("resnet50-netvlad")
lite0_netvlad = _entry("lite0-netvlad")
lite0_max = _entry("lite0-max")


def _published(name: str, hub_name: str, about: str):
    def entry(pretrained: bool = True, **kwargs):
        from netvlad.weights import create_model

        return create_model(name, pretrained=pretrained, **kwargs)

    entry.__name__ = hub_name
    entry.__doc__ = (f"Published model ``{name}``: {about}. pretrained=True downloads (once) and converts "
                     "(once); keyword arguments go to netvlad.weights.load_pretrained (device, cache_dir, "
                     "progress, catalogue, timeout).")
    return entry


def _add_published_entries() -> None:
    from netvlad.weights import list_weights

    for e in list_weights():
        globals()[e.hub_name] = _published(e.name, e.hub_name, f"{e.project}, trained on {e.trained_on}")


# One module-level callable per catalogue entry, so torch.hub.list() finds them too.
_add_published_entries()
