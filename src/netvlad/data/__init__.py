"""Places: image lists with GPS/UTM geometry and protocol rules, and one loader per format."""

from __future__ import annotations

from netvlad.data.images import ImageLoadError, load_image, to_rgb_array

__all__ = ["ImageLoadError", "load_image", "to_rgb_array"]
