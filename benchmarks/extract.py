"""Extraction speed end to end (JPEG decode → descriptor → HDF5 file) against this CPU's FLOP limit.

VGG-16-NetVLAD at 640×480 costs 187.9 GFLOP per image (conv1_1..conv5_3; NetVLAD is < 0.5%).
docs/perf-facts.md measured 545 GFLOP/s fp32 and 1060 GFLOP/s bf16 on its 2-core AMD Zen 5 machine
(ceilings 2.9 and 5.6 img/s). Machines of "the same kind" differ (an Intel Xeon with AMX was seen:
~320 GFLOP/s fp32, ~2400 GFLOP/s bf16 conv), so the ceiling used here is measured in the same run:
the best throughput of oneDNN's 3×3 convolutions at VGG-16's own layer shapes (channels_last,
inference mode), which is what the CNN can reach at best on this machine. The perf-facts ceiling is
printed too. Targets: >= 90% of the fp32 ceiling with the library defaults, >= 85% of the bf16
ceiling with ``bf16=True``. Lite0-NetVLAD is reported in img/s.

Weights are random (speed does not depend on them); NetVLAD clusters come from random unit
descriptors. ``--agreement`` compares fp32 and bf16 retrieval on real photos (mvtbdata's campus
walk, Lite0 ImageNet weights with clusters from the campus database images; VGG random).

    .venv/bin/python benchmarks/extract.py                   # default: 8 images x 3 repeats
    .venv/bin/python benchmarks/extract.py --images 40 --repeats 3 --compare-malloc
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from netvlad.data.images import load_image
from netvlad.extract import ExtractConfig, compute_descriptors, default_num_workers, extract_features
from netvlad.models import create_model, init_clusters

VGG_GFLOP_640x480 = 187.9
PEAK_GFLOPS = {"fp32": 545.0, "bf16": 1060.0}


# (Cin, Cout, H, W) of VGG-16's 3×3 convs at 480×640: the shapes whose speed bounds extraction.
_VGG_CONV_SHAPES = [(64, 64, 480, 640), (128, 128, 240, 320), (256, 256, 120, 160), (512, 512, 60, 80)]


def measure_conv_peak(bf16: bool = False, repeats: int = 5) -> float:
    """GFLOP/s of the fastest VGG-16 conv shape (median of ``repeats``), channels_last, inference."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    best = 0.0
    with torch.inference_mode():
        for cin, cout, h, w in _VGG_CONV_SHAPES:
            conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(dtype).to(memory_format=torch.channels_last)
            x = torch.randn(1, cin, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
            conv(x)
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                conv(x)
                times.append(time.perf_counter() - t)
            best = max(best, 2 * cin * cout * 9 * h * w / statistics.median(times) / 1e9)
    return best


def make_jpegs(folder: Path, n: int, size=(640, 480), seed: int = 0) -> list[Path]:
    """n photo-like JPEGs (smooth colour field + fine noise, quality 90) of size (w, h)."""
    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        p = folder / f"img{i:04d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        paths.append(p)
    return paths


def random_clusters(model, n: int = 2000, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model.local_dim, generator=g).abs()  # post-ReLU-like, then preL2
    model.head.init_from_descriptors(x / x.norm(dim=1, keepdim=True), seed=43)


def time_extract(model, paths: list[Path], cfg: ExtractConfig, repeats: int, workdir: Path) -> list[float]:
    """End-to-end images/s of extract_features (a fresh file each repeat), after a warm-up batch."""
    extract_features(model, paths[: cfg.batch_size], [p.name for p in paths[: cfg.batch_size]],
                     workdir / "warm.h5", cfg, overwrite=True, progress=False)
    rates = []
    for r in range(repeats):
        t = time.perf_counter()
        extract_features(model, paths, [p.name for p in paths], workdir / f"run{r}.h5", cfg, overwrite=True,
                         progress=False)
        rates.append(len(paths) / (time.perf_counter() - t))
    return rates


def time_forward(model, size=(640, 480), bf16: bool = False, repeats: int = 3) -> float:
    """Median images/s of the model's forward alone (batch 1, channels_last, inference_mode)."""
    model.eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, size[1], size[0]).contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else torch.autocast("cpu", enabled=False)
    times = []
    with torch.inference_mode(), ctx:
        model(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t)
    model.to(memory_format=torch.contiguous_format)
    return 1.0 / statistics.median(times)


def campus_paths() -> tuple[list[Path], list[Path]]:
    import mvtbdata

    root = Path(mvtbdata.__file__).parent / "images" / "campus"
    return sorted(root.glob("*.png")), sorted((root / "holdout").glob("*.png"))


def bf16_agreement(model, db: list[Path], queries: list[Path], radius_frames: int = 2) -> dict:
    """fp32 vs bf16 on real photos: top-1 agreement (queries vs db, and every image vs all others),
    min cosine between the two descriptors of an image, and recall@1 of each (a query's positives
    are db photos within ``radius_frames`` frame numbers of it on the walk)."""
    paths = db + queries
    f32 = compute_descriptors(model, paths, progress=False)
    b16 = compute_descriptors(model, paths, progress=False, bf16=True)
    nd = len(db)

    def top1(d):
        s = d[nd:] @ d[:nd].T
        all_s = d @ d.T
        np.fill_diagonal(all_s, -np.inf)
        return s.argmax(1), all_s.argmax(1)

    (q32, a32), (q16, a16) = top1(f32), top1(b16)
    frame = np.array([int(p.stem[1:]) for p in paths])
    pos = np.abs(frame[nd:, None] - frame[None, :nd]) <= radius_frames
    return {
        "query_top1_agree": float((q32 == q16).mean()),
        "all_top1_agree": float((a32 == a16).mean()),
        "min_cosine": float((f32 * b16).sum(1).min()),
        "recall@1_fp32": float(pos[np.arange(len(queries)), q32].mean()),
        "recall@1_bf16": float(pos[np.arange(len(queries)), q16].mean()),
        "n": len(paths),
    }


def _row(name, compute, batch, n, rates, fwd, limit):
    med = statistics.median(rates)
    lim = f"{limit:.2f}" if limit else "-"
    pct = f"{100 * med / limit:.0f}%" if limit else "-"
    fpct = f"{100 * fwd / limit:.0f}%" if limit else "-"
    print(f"| {name} | {compute} | {batch} | {n}×{len(rates)} | {med:.2f} "
          f"({min(rates):.2f}–{max(rates):.2f}) | {fwd:.2f} | {lim} | {pct} | {fpct} |", flush=True)
    return {"model": name, "compute": compute, "img_s": med, "forward_img_s": fwd, "limit": limit}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8, help="images per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=ExtractConfig().batch_size)
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: the library's)")
    ap.add_argument("--no-bf16", action="store_true")
    ap.add_argument("--no-lite0", action="store_true")
    ap.add_argument("--agreement", action="store_true",
                    help="fp32 vs bf16 retrieval on mvtbdata campus photos")
    ap.add_argument("--no-tune-malloc", action="store_true", help="(used by --compare-malloc)")
    ap.add_argument("--compare-malloc", action="store_true",
                    help="also time fp32 VGG without mallopt tuning, in a subprocess")
    ap.add_argument("--json", action="store_true", help="print only a JSON line of the fp32 VGG result")
    args = ap.parse_args(argv)

    cfg = ExtractConfig(batch_size=args.batch_size, num_workers=args.workers, progress=False,
                        tune_malloc=not args.no_tune_malloc)
    vgg = create_model("vgg16-netvlad", seed=0)
    random_clusters(vgg)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = make_jpegs(tmp, args.images)
        if args.json:
            rates = time_extract(vgg, paths, cfg, args.repeats, tmp)
            print(json.dumps({"img_s": statistics.median(rates), "rates": rates}))
            return 0
        peak32 = measure_conv_peak()
        peak16 = measure_conv_peak(bf16=True)
        workers = cfg.num_workers if cfg.num_workers is not None else default_num_workers(cfg.device)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {cfg.batch_size}, "
              f"{workers} decode workers, mallopt tuning {'on' if cfg.tune_malloc else 'off'}; "
              f"480×640 JPEG → HDF5 end to end; limit = {VGG_GFLOP_640x480} GFLOP/img ÷ peak")
        print(f"measured conv peak here: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s "
              f"(perf-facts machine: {PEAK_GFLOPS['fp32']:.0f} / {PEAK_GFLOPS['bf16']:.0f}; ceilings there "
              f"{PEAK_GFLOPS['fp32'] / VGG_GFLOP_640x480:.2f} / "
              f"{PEAK_GFLOPS['bf16'] / VGG_GFLOP_640x480:.2f} img/s)")
        print("| model | compute | batch | images×runs | end-to-end img/s median (min–max) "
              "| forward-only img/s | limit img/s | end-to-end % of limit | forward % of limit |")
        print("|---|---|---|---|---|---|---|---|---|")
        lim32 = peak32 / VGG_GFLOP_640x480
        _row("VGG-16-NetVLAD", "fp32", cfg.batch_size, len(paths),
             time_extract(vgg, paths, cfg, args.repeats, tmp), time_forward(vgg), lim32)
        if args.compare_malloc:
            cmd = [sys.executable, __file__, "--json", "--no-tune-malloc", "--images", str(args.images),
                   "--repeats", str(args.repeats), "--batch-size", str(args.batch_size)]
            if args.workers is not None:
                cmd += ["--workers", str(args.workers)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res = json.loads(proc.stdout.splitlines()[-1])
            _row("VGG-16-NetVLAD, no mallopt", "fp32", cfg.batch_size, len(paths), res["rates"], float("nan"),
                 lim32)
        if not args.no_bf16:
            bcfg = ExtractConfig(**{**cfg.__dict__, "bf16": True})
            _row("VGG-16-NetVLAD", "bf16", cfg.batch_size, len(paths),
                 time_extract(vgg, paths, bcfg, args.repeats, tmp), time_forward(vgg, bf16=True),
                 peak16 / VGG_GFLOP_640x480)
        lite = None
        if not args.no_lite0:
            lite = create_model("lite0-netvlad", seed=0)
            random_clusters(lite)
            lpaths = make_jpegs(tmp, max(args.images, 4 * cfg.batch_size), seed=1)
            _row("Lite0-NetVLAD", "fp32", cfg.batch_size, len(lpaths),
                 time_extract(lite, lpaths, cfg, args.repeats, tmp), time_forward(lite), None)
    if args.agreement:
        db, q = campus_paths()
        print("\nfp32 vs bf16 on mvtbdata campus photos (20 db + 5 held-out queries, 640×426 PNG):")
        print("| model | query top-1 agree | all-pairs top-1 agree | min cosine | R@1 fp32 | R@1 bf16 |")
        print("|---|---|---|---|---|---|")
        models = [("VGG-16-NetVLAD (random weights)", vgg)]
        if lite is not None:
            init_clusters(lite, [load_image(p) for p in db], progress=False)
            models.append(("Lite0-NetVLAD (ImageNet, clusters from campus db)", lite))
        for name, m in models:
            r = bf16_agreement(m, db, q)
            print(f"| {name} | {r['query_top1_agree']:.2f} | {r['all_top1_agree']:.2f} "
                  f"| {r['min_cosine']:.4f} | {r['recall@1_fp32']:.2f} | {r['recall@1_bf16']:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
