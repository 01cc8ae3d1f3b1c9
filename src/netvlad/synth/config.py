"""Configuration of the synthetic town: one dataclass, with size presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SynthConfig:
    """Everything that shapes a generated town; the same config and seed give the same bytes.

    Distances are metres, angles degrees, headings compass bearings (0 = north = +y, 90 = east = +x).
    """

    seed: int = 0
    size: str = "small"
    # Blocks (nx, ny) of each split's district. Districts are disjoint towns `district_gap` apart,
    # so no facade is seen from two splits (Pittsburgh's train/val/test are disjoint areas too).
    blocks: dict[str, tuple[int, int]] = field(
        default_factory=lambda: {"train": (3, 2), "val": (2, 1), "test": (2, 2)}
    )
    # Queries per split; database images come from `db_spacing` and `n_headings`.
    n_queries: dict[str, int] = field(default_factory=lambda: {"train": 120, "val": 40, "test": 100})
    width: int = 320
    height: int = 240
    hfov_deg: float = 70.0
    camera_height: float = 2.5
    # Street View-like: a panorama every few metres, cut into `n_headings` views.
    db_spacing: float = 8.0
    n_headings: int = 4
    lane_offset: float = 1.5
    block_size: tuple[float, float] = (40.0, 70.0)
    street_skew_deg: float = 4.0
    road_half_width: float = 5.0
    setback: tuple[float, float] = (7.0, 10.0)
    building_width: tuple[float, float] = (7.0, 22.0)
    building_height: tuple[float, float] = (6.0, 28.0)
    park_prob: float = 0.12
    texels_per_metre: float = 10.0
    max_photos: int = 48
    # Photo sources in order of preference; "procedural" alone forces the photo-free fallback.
    photo_sources: tuple[str, ...] = ("mvtbdata", "skimage")
    view_distance: float = 160.0
    lamp_spacing: float = 28.0
    # Query-time appearance: condition name -> probability.
    query_conditions: dict[str, float] = field(
        default_factory=lambda: {"day": 0.3, "overcast": 0.2, "sunset": 0.2, "night": 0.3}
    )
    db_condition: str = "day"
    db_occluders: tuple[float, float] = (0.8, 0.8)  # mean vehicles, mean people per image
    query_occluders: tuple[float, float] = (2.0, 2.0)
    query_position_jitter: float = 2.5  # lateral, metres (uniform ±)
    query_heading_jitter_deg: float = 10.0
    jpeg_quality: int = 90
    zone: str = "17T"
    # South-west corner of the town: Pittsburgh, UTM 17T (the Pitts250k area).
    origin_utm: tuple[float, float] = (584000.0, 4477000.0)
    district_gap: float = 1000.0

    def __post_init__(self) -> None:
        for split in SPLITS:
            if split not in self.blocks or split not in self.n_queries:
                raise ValueError(f"SynthConfig: blocks and n_queries need an entry for split {split!r}")
            nx, ny = self.blocks[split]
            if nx < 1 or ny < 1:
                raise ValueError(f"SynthConfig: blocks[{split!r}] must be at least (1, 1), got {(nx, ny)}")
        if self.width < 16 or self.height < 16:
            raise ValueError(f"SynthConfig: image size {self.width}x{self.height} is too small (min 16x16)")
        if not 10.0 <= self.hfov_deg <= 150.0:
            raise ValueError(f"SynthConfig: hfov_deg must be in [10, 150], got {self.hfov_deg}")
        if self.n_headings < 1 or self.db_spacing <= 0:
            raise ValueError("SynthConfig: n_headings must be >= 1 and db_spacing > 0")
        unknown = set(self.query_conditions) - set(CONDITION_NAMES)
        if unknown or self.db_condition not in CONDITION_NAMES:
            bad = sorted(unknown) or [self.db_condition]
            raise ValueError(f"SynthConfig: unknown condition(s) {bad}; choose from {list(CONDITION_NAMES)}")

    @classmethod
    def preset(cls, size: str = "small", **overrides) -> SynthConfig:
        """The config of a size preset ("tiny", "small", "medium", "large"), with field overrides."""
        if size not in SIZE_PRESETS:
            raise ValueError(f"unknown town size {size!r}; choose from {sorted(SIZE_PRESETS)}")
        return dataclasses.replace(cls(), size=size, **{**SIZE_PRESETS[size], **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CONDITION_NAMES = ("day", "overcast", "sunset", "night")

# Image counts (they depend on the random layout) are for seed 0.
SIZE_PRESETS: dict[str, dict] = {
    # ~290 images: unit tests and `netvlad demo --quick`.
    "tiny": {
        "blocks": {"train": (2, 1), "val": (1, 1), "test": (1, 1)},
        "n_queries": {"train": 24, "val": 12, "test": 16},
        "db_spacing": 12.0,
        "max_photos": 12,
    },
    # ~1.2k images (424 train database views): the demo.
    "small": {},
    # ~3.1k images: benchmarks/paper_claims.py.
    "medium": {
        "blocks": {"train": (5, 4), "val": (3, 2), "test": (3, 3)},
        "n_queries": {"train": 400, "val": 120, "test": 200},
    },
    # ~9k images (atlas ~134 MB).
    "large": {
        "blocks": {"train": (9, 7), "val": (4, 4), "test": (5, 4)},
        "n_queries": {"train": 1200, "val": 300, "test": 500},
        "db_spacing": 7.0,
    },
}
