"""A procedural photo-textured town: place-recognition datasets generated offline.

Streets on a skewed grid, building facades textured with real photographs from installed packages
(``mvtbdata``, scikit-image samples; a procedural fallback otherwise), street-level cameras with
exact UTM positions, database views at one time and queries at others (lighting, night, occluders,
jitter), and geographically disjoint train / val / test districts. See `generate_town`.
"""

from __future__ import annotations

from netvlad.synth.conditions import CONDITIONS, Condition, sample_condition
from netvlad.synth.config import CONDITION_NAMES, SIZE_PRESETS, SPLITS, SynthConfig
from netvlad.synth.generate import (
    SynthTown,
    View,
    benchmark_render,
    generate_town,
    plan_views,
    render_view,
    sample_occluders,
)
from netvlad.synth.render import Camera, Renderer
from netvlad.synth.town import Town, build_town

__all__ = [
    "CONDITION_NAMES",
    "CONDITIONS",
    "SIZE_PRESETS",
    "SPLITS",
    "Camera",
    "Condition",
    "Renderer",
    "SynthConfig",
    "SynthTown",
    "Town",
    "View",
    "benchmark_render",
    "build_town",
    "generate_town",
    "plan_views",
    "render_view",
    "sample_condition",
    "sample_occluders",
]
