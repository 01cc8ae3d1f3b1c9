"""Query crops, Holidays downscaling, and mAP of a model or of descriptors on a benchmark."""

from __future__ import annotations

import dataclasses
import math
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netvlad._matlab import matlab_round
from netvlad.metrics import evaluate_map
from netvlad.retrieval.readers import HOLIDAYS_MAX_PIXELS, JPEG_QUALITY, RetrievalBenchmark, load_benchmark


def crop_box(roi: Sequence[float], grow: float, width: int, height: int) -> tuple[int, int, int, int]:
    """MATLAB ``dbVGG`` crop: round(ROI + grow·[−1 −1 1 1]) clipped to the image with 1-based
    inclusive pixel indices, returned as a 0-based half-open PIL box (left, top, right, bottom)."""
    r = matlab_round(np.asarray(roi, np.float64) + grow * np.array([-1, -1, 1, 1]))
    x1, y1 = max(1, int(r[0])), max(1, int(r[1]))
    x2, y2 = min(width, int(r[2])), min(height, int(r[3]))
    if x2 < x1 or y2 < y1:
        raise ValueError(f"empty crop for ROI {list(roi)} in a {width}×{height} image")
    return x1 - 1, y1 - 1, x2, y2


def crop_queries(bench: RetrievalBenchmark, out_root: str | Path, grow: float) -> list[Path]:
    """Write each query's ROI crop (grown by ``grow`` px per side) as JPEG q75 under ``out_root``.

    Existing crops are kept (cached, as the original does).

    Returns:
        Q paths of the cropped query images.
    """
    from PIL import Image

    if bench.query_rois is None:
        raise ValueError(f"{bench.name}: no query ROIs to crop")
    out_root = Path(out_root)
    paths = []
    for name, roi in zip(bench.query_images, bench.query_rois):
        dst = out_root / name
        if not dst.is_file():
            src = bench.db_root / name
            with Image.open(src) as im:
                im = im.convert("RGB")
                box = crop_box(roi, grow, im.width, im.height)
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_name(f".{dst.name}.tmp")
                im.crop(box).save(tmp, format="JPEG", quality=JPEG_QUALITY)
                tmp.replace(dst)
        paths.append(dst)
    return paths


def downscale_images(
    src_root: str | Path,
    names: Sequence[str],
    dst_root: str | Path,
    max_pixels: int = HOLIDAYS_MAX_PIXELS,
    progress: bool = True,
) -> Path:
    """Holidays protocol: images above ``max_pixels`` are resized by sqrt(max_pixels / pixels)
    (bicubic with antialiasing, like MATLAB imresize) and saved as JPEG q75; smaller ones are
    copied byte for byte. Cached: existing outputs are kept.

    Returns:
        ``dst_root``.
    """
    from PIL import Image
    from tqdm import tqdm

    src_root, dst_root = Path(src_root), Path(dst_root)
    for name in tqdm(names, desc="downscale", disable=not progress):
        dst = dst_root / name
        if dst.is_file():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tmp")
        with Image.open(src_root / name) as im:
            pixels = im.width * im.height
            if pixels > max_pixels:
                s = math.sqrt(max_pixels / pixels)
                size = (max(1, math.ceil(im.width * s)), max(1, math.ceil(im.height * s)))
                im.convert("RGB").resize(size, Image.BICUBIC).save(tmp, format="JPEG", quality=JPEG_QUALITY)
            else:
                shutil.copyfile(src_root / name, tmp)
        tmp.replace(dst)
    return dst_root


def evaluate_retrieval(
    bench: RetrievalBenchmark, db_desc: np.ndarray, q_desc: np.ndarray, dims: Sequence[int | None] = (None,)
) -> dict:
    """mAP (×100) of descriptors on a benchmark, per dimension (None = full; others crop+renorm).

    Returns:
        {"benchmark", "num_db", "num_queries", "results": {dim: evaluate_map dict}}.
    """
    if db_desc.shape[0] != len(bench.db_images) or q_desc.shape[0] != len(bench.query_images):
        raise ValueError(
            f"{bench.name}: got {db_desc.shape[0]} database and {q_desc.shape[0]} query descriptors "
            f"for {len(bench.db_images)} images and {len(bench.query_images)} queries"
        )
    results = {}
    for d in dims:
        d = None if (d is None or d >= db_desc.shape[1]) else int(d)
        res = evaluate_map(db_desc, q_desc, bench.protocols, crop_dim=d)
        results[res["dim"]] = res
    return {
        "benchmark": bench.name,
        "num_db": len(bench.db_images),
        "num_queries": len(bench.query_images),
        "results": results,
    }


def benchmark_retrieval(
    model,
    name: str,
    root: str | Path,
    crop: bool = True,
    dims: Sequence[int | None] = (None, 256),
    rotated: bool = False,
    grow: float | None = None,
    batch_size: int = 1,
    device: str = "cpu",
    progress: bool = True,
    max_side: int | None = 0,
) -> dict:
    """Extract descriptors with ``model`` and compute the benchmark's mAP.

    Args:
        model: a ready PlaceModel.
        name: one of ``BENCHMARKS``.
        root: the benchmark's folder.
        crop: Oxford/Paris: ``crop`` queries (ROI grown by ``grow``) or ``full`` images.
            Revisited queries are always cropped to their bounding box (``grow`` 0).
        dims: dimensions to report (None = full; e.g. 256 = first 256 dims re-normalised).
        rotated: Holidays ``rot`` (``jpg_rotated/``).
        grow: ROI growth per side in px (default: half the backbone's receptive field, 98 for
            VGG-16 conv5_3).
        batch_size, device, progress: passed to ``netvlad.extract.compute_descriptors``.
        max_side: ``ExtractConfig.max_side``: 0 (default) runs at native resolution whatever the
            model's preprocessing says, as the protocols do (demoRetrieval never resizes; Holidays
            images are first downscaled to ≤1024×768 by the protocol itself); None keeps the
            model's resize; a positive value caps the longest side.

    Returns:
        the :func:`evaluate_retrieval` dict plus "queries" ("crop"/"full"), "grow" and "max_side".
    """
    from netvlad.extract import compute_descriptors

    bench = load_benchmark(name, root, rotated=rotated)
    root = Path(root)
    if name == "holidays":
        small = root / f"{bench.db_root.name}_1024x768"
        bench.db_root = downscale_images(bench.db_root, bench.db_images, small, progress=progress)
    kw = {"batch_size": batch_size, "device": device, "progress": progress, "max_side": max_side}
    db = compute_descriptors(model, bench.db_paths(), **kw)
    mode = "full"
    if name in ("roxford5k", "rparis6k"):
        grow, mode = 0.0, "crop"
    elif name in ("oxford5k", "paris6k") and crop:
        mode = "crop"
        if grow is None:
            rf = getattr(getattr(model, "backbone", None), "receptive_field", None)
            if rf is None:
                warnings.warn(
                    "the model's backbone has no receptive_field; queries cropped to the bare ROI",
                    stacklevel=2,
                )
                rf = 0
            grow = rf / 2
    if mode == "crop":
        qpaths = crop_queries(bench, root / f"images_crop_{int(round(2 * grow))}", grow)
        q = compute_descriptors(model, qpaths, **kw)
    else:
        q = db[bench.query_db_ids]
    out = evaluate_retrieval(bench, db, q, dims)
    out["queries"] = mode
    out["grow"] = grow
    out["max_side"] = max_side
    return out


@dataclass
class RetrievalResult:
    """A retrieval benchmark's mAP as named fields (the dict `benchmark_retrieval` returns).

    Attributes:
        benchmark: its name; num_db, num_queries: its size.
        results: {dim: `netvlad.metrics.evaluate_map` dict ("dim", "num_queries", "protocols":
            {name: {"map" ×100, "mp@k" ×100, "ap"}})}.
        queries: "crop" or "full"; grow: ROI growth per side in px; max_side: the extraction's.
    """

    benchmark: str
    num_db: int
    num_queries: int
    results: dict
    queries: str | None = None
    grow: float | None = None
    max_side: int | None = None

    @classmethod
    def from_dict(cls, res: dict) -> RetrievalResult:
        return cls(**{f.name: res.get(f.name) for f in dataclasses.fields(cls)})

    def to_json(self, model: str | Path) -> dict:
        """The JSON report of ``netvlad benchmark retrieval --report`` (`model`: what was run)."""
        return {
            "benchmark": self.benchmark,
            "model": str(model),
            "queries": self.queries,
            "grow": self.grow,
            "max_side": self.max_side,
            "num_db": self.num_db,
            "num_queries": self.num_queries,
            "results": {str(d): r for d, r in self.results.items()},
        }

    def table(self) -> list[str]:
        """The lines ``netvlad benchmark retrieval`` prints: a header, then mAP % per dimension."""
        protocols = list(next(iter(self.results.values()))["protocols"])
        head = f"{self.benchmark} ({self.queries} queries): {self.num_queries} queries, {self.num_db} images"
        lines = [head, "   dim " + "".join(f"{p:>10}" for p in protocols) + "   (mAP %)"]
        for dim, r in self.results.items():
            lines.append(f"{dim:>6} " + "".join(f"{r['protocols'][p]['map']:>10.2f}" for p in protocols))
        return lines
