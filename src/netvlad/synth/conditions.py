"""Lighting conditions of the synthetic town and the sensor response of its images.

A :class:`Condition` is the sun, ambient light, sky, fog, night lights and the camera's exposure,
white balance, noise and tone curve; :data:`CONDITIONS` holds the named ones (day, overcast,
sunset, night) and :func:`sample_condition` varies one per image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from netvlad.synth.textures import smooth_noise

__all__ = ["CONDITIONS", "Condition", "cloud_panorama", "develop", "sample_condition"]


@dataclass(frozen=True)
class Condition:
    """Scene lighting and sensor response for one image."""

    name: str = "day"
    sun_azimuth: float = 150.0
    sun_elevation: float = 50.0
    sun: float = 0.55
    ambient: float = 0.65
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    sky_zenith: tuple[float, float, float] = (70.0, 120.0, 200.0)
    sky_horizon: tuple[float, float, float] = (185.0, 205.0, 230.0)
    haze: tuple[float, float, float] = (190.0, 200.0, 215.0)
    fog_distance: float = 350.0
    exposure: float = 1.0
    gamma: float = 1.0
    cloud_shift: float = 0.0
    clouds: float = 0.5
    night: bool = False
    window_light: float = 0.0
    lamp_light: float = 0.0
    noise: float = 0.0


CONDITIONS: dict[str, Condition] = {
    "day": Condition(),
    "overcast": Condition(
        name="overcast",
        sun=0.0,
        ambient=1.0,
        sky_zenith=(150, 155, 165),
        sky_horizon=(200, 202, 205),
        haze=(195, 197, 200),
        fog_distance=220.0,
        clouds=0.9,
        tint=(0.95, 0.97, 1.0),
    ),
    "sunset": Condition(
        name="sunset",
        sun_azimuth=260.0,
        sun_elevation=8.0,
        sun=0.75,
        ambient=0.45,
        tint=(1.15, 0.88, 0.68),
        sky_zenith=(60, 70, 130),
        sky_horizon=(250, 160, 90),
        haze=(230, 160, 110),
        fog_distance=300.0,
        clouds=0.6,
    ),
    "night": Condition(
        name="night",
        sun=0.0,
        ambient=0.07,
        tint=(0.9, 0.9, 1.1),
        sky_zenith=(5, 8, 20),
        sky_horizon=(25, 25, 40),
        haze=(20, 20, 30),
        fog_distance=250.0,
        clouds=0.2,
        night=True,
        window_light=0.85,
        lamp_light=1.6,
        noise=7.0,
        gamma=1.15,
    ),
}


def sample_condition(name: str, rng: np.random.Generator) -> Condition:
    """A random variation of the named condition (sun position, exposure, white balance, clouds)."""
    base = CONDITIONS[name]
    tint = tuple(float(c) * float(g) for c, g in zip(base.tint, rng.uniform(0.9, 1.1, size=3)))
    return replace(
        base,
        sun_azimuth=float(base.sun_azimuth + rng.uniform(-70, 70)),
        sun_elevation=float(np.clip(base.sun_elevation + rng.uniform(-10, 10), 3, 80)),
        exposure=float(base.exposure * rng.uniform(0.8, 1.2)),
        gamma=float(base.gamma * rng.uniform(0.9, 1.1)),
        tint=tint,
        cloud_shift=float(rng.uniform(0, 1)),
    )


def cloud_panorama(seed: int = 7, w: int = 512, h: int = 64) -> np.ndarray:
    """The sky's cloud cover, h×w float32 in 0..1 around the full horizon (a fixed seed: every image
    of a town sees the same clouds, shifted by ``Condition.cloud_shift``)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((h, w), np.float32)
    for oh, ow in ((2, 8), (4, 16), (8, 32), (16, 64)):
        out += smooth_noise(rng, oh, ow, h, w) / ow**0.5
    out = (out - out.min()) / (out.max() - out.min())
    return np.clip((out - 0.45) * 2.5, 0, 1)


def develop(color: np.ndarray, condition: Condition, rng, H: int, W: int) -> np.ndarray:
    """Exposure, tint, sensor noise and tone curve: linear colours (H·W×3) → H×W×3 uint8."""
    color *= condition.exposure * np.array(condition.tint, np.float32)
    if condition.noise > 0:
        if rng is None:
            raise ValueError("render: condition has sensor noise but no rng was given")
        # Luminance noise (one draw per pixel, not per channel: a third of the cost).
        color += (rng.standard_normal(H * W, dtype=np.float32) * np.float32(condition.noise))[:, None]
    out = np.clip(color + 0.5, 0, 255).astype(np.uint8).reshape(H, W, 3)
    if condition.gamma != 1.0:  # tone curve as a 256-entry lookup table
        lut = np.clip(255.0 * (np.arange(256) / 255.0) ** condition.gamma + 0.5, 0, 255).astype(np.uint8)
        out = lut[out]
    return out
