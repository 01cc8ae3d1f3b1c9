"""Image-retrieval benchmarks (``demoRetrieval``): Oxford 5k, Paris 6k, INRIA Holidays and the
revisited Oxford/Paris (Radenović et al., CVPR 2018), with readers for their ground-truth files.

- Oxford / Paris (``dbVGG``): ``images/`` (Paris: ``images/<landmark>/``), ``groundtruth/`` with
  ``<q>_query.txt`` (``[oxc1_]name x1 y1 x2 y2``), ``<q>_good.txt``, ``<q>_ok.txt``,
  ``<q>_junk.txt``; Paris drops the images of ``corrupt.txt``. Positives good ∪ ok, junk ignored;
  ground-truth names missing from the database still count in |positives| (MATLAB ID 0).
  ``crop`` queries: ROI grown by half the receptive field per side (98 px for VGG-16 conv5_3),
  clipped, cropped and saved as JPEG quality 75; ``full``: the whole database image.
- Holidays (``dbHolidays``): ``jpg/`` (``rot``: ``jpg_rotated/``), sorted; queries are the images
  whose numeric stem is a multiple of 100; positives are the images after a query up to the next
  query; the query itself is ignored. Images above 1024×768 = 786,432 px are downscaled (bicubic,
  antialiased, JPEG quality 75), smaller ones copied byte for byte.
- Revisited (``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl``, images in ``jpg/``): Easy (pos = easy,
  junk = junk + hard), Medium (pos = easy + hard, junk = junk), Hard (pos = hard, junk = junk +
  easy); queries cropped to their bounding box; mAP and mP@{1,5,10}.

Place-recognition suites (:mod:`netvlad.retrieval.vpr`): one model over MSLS, Pittsburgh, Tokyo 24/7,
Nordland, St Lucia, SF-XL, SPED, ... under each dataset's protocol, the published numbers beside.
"""

from __future__ import annotations

from netvlad.retrieval.benchmark import (
    RetrievalResult,
    benchmark_retrieval,
    crop_box,
    crop_queries,
    downscale_images,
    evaluate_retrieval,
)
from netvlad.retrieval.readers import (
    BENCHMARKS,
    RetrievalBenchmark,
    load_benchmark,
    load_pickle_safely,
    read_holidays,
    read_oxford_paris,
    read_revisited,
)
from netvlad.retrieval.vpr import (
    VPR_NS,
    VprBenchmark,
    VprRow,
    benchmark_vpr,
    plot_vpr,
    reported_results,
)

__all__ = [
    "RetrievalResult",
    "BENCHMARKS",
    "VPR_NS",
    "VprBenchmark",
    "VprRow",
    "benchmark_vpr",
    "plot_vpr",
    "reported_results",
    "RetrievalBenchmark",
    "benchmark_retrieval",
    "crop_box",
    "crop_queries",
    "downscale_images",
    "evaluate_retrieval",
    "load_benchmark",
    "load_pickle_safely",
    "read_holidays",
    "read_oxford_paris",
    "read_revisited",
]
