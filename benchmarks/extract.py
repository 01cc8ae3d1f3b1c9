"""Extraction speed end to end (JPEG decode → descriptor → HDF5 file) against two bounds measured in
the same run, per precision (fp32, bf16, int8; eager and ``torch.compile`` with freezing).

- **Per-layer conv-only bound**: each of the backbone's convolutions (VGG-16: 13) timed alone at its
  own input shape (batch ``--bound-batch``, channels_last, inference mode, weights in the
  precision's dtype; int8: a quantized conv on a quantized input; glibc malloc tuned as extraction
  does); the sum of their times bounds any layer-by-layer network. ReLU, pooling, NetVLAD,
  decoding and writing are extra.
- **Best-shape bound**: the fastest of those layers' GFLOP/s applied to every FLOP of the network
  (what the hardware reaches on its most favourable shape; no layer-by-layer network reaches it).

The image rate is the median over ``--repeats`` runs; configurations are interleaved within each
repeat so that load from other processes hits them alike (report ``uptime`` with the numbers).
``--profile`` prints each conv's time alone (ms per image, GFLOP/s, share of the bound) and a
torch.profiler breakdown of one eager forward pass by operator (convolution vs ReLU vs pooling).
``--conv1`` times alternatives for conv1_1 (3 input channels, the least efficient layer):
zero-padded input channels and an im2col GEMM. ``--agreement`` compares retrieval under each
precision with fp32 on real photos (mvtbdata's campus walk; Lite0 ImageNet weights with clusters
from the campus database; VGG-16 random weights) and, with ``--town DIR`` (a ``netvlad synth-town``
folder), on a synthetic town's test split.

    .venv/bin/python benchmarks/extract.py --precisions fp32 int8 --compile --profile
    .venv/bin/python benchmarks/extract.py --precisions bf16 --images 8 --repeats 1 --bound-batch 1
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from netvlad.data import load_image
from netvlad.extract import ExtractConfig, compute_descriptors, extract_features, tune_malloc
from netvlad.extract.precision import int8_isa, native_bf16
from netvlad.models import create_model, init_clusters

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# --- the bounds -------------------------------------------------------------------------------

def conv_layers(model, size=(640, 480)) -> list[tuple[str, torch.nn.Conv2d, tuple[int, ...]]]:
    """(name, conv, input shape at batch 1) of every Conv2d in the backbone, in forward order."""
    names = {}
    if hasattr(model.backbone, "_layer_modules"):
        for name, mods in model.backbone._layer_modules():
            for m in mods:
                for sub in m.modules():
                    names.setdefault(id(sub), name)
    found = []
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: found.append((n, mod, tuple(inp[0].shape))))
             for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            model.backbone.eval()(torch.zeros(1, 3, size[1], size[0]))
    finally:
        for h in hooks:
            h.remove()
    return [(names.get(id(m), n), m, s) for n, m, s in found]


def conv_gflop(conv: torch.nn.Conv2d, shape) -> float:
    """GFLOP (2 per multiply-add) of ``conv`` on one input of ``shape`` (1×C×H×W)."""
    with torch.inference_mode():
        oh, ow = conv(torch.zeros(shape)).shape[-2:]
    kh, kw = conv.kernel_size
    return 2 * conv.in_channels // conv.groups * conv.out_channels * kh * kw * oh * ow / 1e9


def _layer_op(conv: torch.nn.Conv2d, shape, batch: int, precision: str):
    """A zero-argument callable running ``conv`` alone at (batch, *shape[1:]) in ``precision``."""
    x = torch.randn(batch, *shape[1:]).contiguous(memory_format=torch.channels_last)
    if precision == "int8":
        import torch.ao.nn.quantized as nnq

        torch.backends.quantized.engine = "x86"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            q = nnq.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           groups=conv.groups)
            w = conv.weight.detach().float()
            scale = w.abs().amax(dim=(1, 2, 3)).clamp_min(1e-8) / 127
            q.set_weight_bias(torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long),
                                                         0, torch.qint8), conv.bias.detach().float())
            q.scale, q.zero_point = 0.05, 0
            xq = torch.quantize_per_tensor(x, 0.05, 64, torch.quint8)
        return lambda: q(xq)
    c = copy.deepcopy(conv).to(DTYPES[precision]).to(memory_format=torch.channels_last)
    x = x.to(DTYPES[precision])
    return lambda: c(x)


def layer_times(layers, precisions, batch: int, repeats: int) -> dict[str, list[float]]:
    """Median seconds per image of each layer alone, per precision (repeats interleaved)."""
    times = {p: [[] for _ in layers] for p in precisions}
    with torch.inference_mode():
        for p in precisions:  # warm-up: oneDNN primitive creation, weight reorders
            for _, conv, shape in layers:
                _layer_op(conv, shape, batch, p)()
        for _ in range(repeats):
            for p in precisions:
                for i, (_, conv, shape) in enumerate(layers):
                    op = _layer_op(conv, shape, batch, p)
                    op()
                    t = time.perf_counter()
                    op()
                    times[p][i].append((time.perf_counter() - t) / batch)
    return {p: [statistics.median(ts) for ts in v] for p, v in times.items()}


def bounds(gflops: list[float], secs: list[float]) -> tuple[float, float]:
    """(per-layer bound img/s, best-shape bound img/s) from per-image GFLOP and seconds per layer."""
    best = max(g / s for g, s in zip(gflops, secs))
    return 1.0 / sum(secs), best / sum(gflops)


# --- end to end --------------------------------------------------------------------------------

def make_jpegs(folder: Path, n: int, size=(640, 480), seed: int = 0) -> list[Path]:
    """n photo-like JPEGs (smooth colour field + fine noise, quality 90) of size (w, h)."""
    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        img = np.clip(img + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        p = folder / f"img{seed}_{i:04d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        paths.append(p)
    return paths


def random_clusters(model, n: int = 2000, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model.local_dim, generator=g).abs()  # post-ReLU-like, then preL2
    model.head.init_from_descriptors(x / x.norm(dim=1, keepdim=True), seed=43)


def _run_once(model, paths, cfg, out: Path) -> float:
    t = time.perf_counter()
    extract_features(model, paths, [p.name for p in paths], out, cfg, overwrite=True, progress=False)
    return len(paths) / (time.perf_counter() - t)


def time_configs(model, configs: dict[str, ExtractConfig], paths, repeats: int, workdir: Path
                 ) -> dict[str, list[float]]:
    """End-to-end images/s per config, repeats interleaved; each config has its own model copy so
    compiled/quantized variants stay built; the first (untimed) run of each compiles/calibrates."""
    models = {k: copy.deepcopy(model) for k in configs}
    for k, cfg in configs.items():
        t = time.perf_counter()
        _run_once(models[k], paths[: cfg.batch_size], cfg, workdir / "warm.h5")
        print(f"  warm-up {k}: {time.perf_counter() - t:.0f} s", flush=True)
    rates = {k: [] for k in configs}
    for _ in range(repeats):
        for k, cfg in configs.items():
            rates[k].append(_run_once(models[k], paths, cfg, workdir / f"{k}.h5"))
    return rates


# --- profiles and conv1_1 alternatives ----------------------------------------------------------

def op_profile(model, precision: str, size=(640, 480)) -> list[tuple[str, float]]:
    """(operator, share of self CPU time) of one eager forward pass at batch 1, largest first."""
    from torch.profiler import ProfilerActivity, profile

    m = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, size[1], size[0]).contiguous(memory_format=torch.channels_last)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), ctx:
        m(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            m(x)
    ev = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in ev)
    return sorted(((k, t / total) for k, t in ev if t > 0), key=lambda kv: -kv[1])


class Im2colConv3x3(torch.nn.Module):
    """A 3×3/pad-1 convolution as one GEMM over the 9 shifted views (K = 9·Cin), channels_last out."""

    def __init__(self, conv: torch.nn.Conv2d):
        super().__init__()
        w = conv.weight.detach()  # Cout×Cin×3×3 -> (3·3·Cin)×Cout, rows ordered (dy, dx, c)
        self.register_buffer("w", w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous())
        self.register_buffer("b", conv.bias.detach().clone())

    def forward(self, x):
        b, c, h, w = x.shape
        xp = torch.nn.functional.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # B×(H+2)×(W+2)×C
        cols = torch.cat([xp[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], dim=3)
        y = torch.addmm(self.b, cols.reshape(-1, 9 * c), self.w).reshape(b, h, w, -1)
        return y.permute(0, 3, 1, 2)  # a channels_last view


def conv1_alternatives(conv: torch.nn.Conv2d, shape, batch: int, repeats: int, precisions
                       ) -> list[tuple[str, str, float, float]]:
    """(variant, precision, ms per image, max abs diff vs fp32 direct) for conv1_1's alternatives."""
    x = torch.randn(batch, *shape[1:]).contiguous(memory_format=torch.channels_last) * 50
    with torch.inference_mode():
        ref = conv(x)
        out = []
        for p in precisions:
            dt = DTYPES.get(p)
            if dt is None:
                continue
            variants = {"direct": copy.deepcopy(conv).to(dt).to(memory_format=torch.channels_last)}
            for cin in (4, 8, 16):
                pc = torch.nn.Conv2d(cin, conv.out_channels, 3, padding=1)
                pc.weight.zero_()
                pc.weight[:, : conv.in_channels] = conv.weight
                pc.bias.copy_(conv.bias)
                variants[f"pad to {cin} ch"] = pc.to(dt).to(memory_format=torch.channels_last)
            variants["im2col GEMM"] = Im2colConv3x3(conv).to(dt)
            for name, mod in variants.items():
                xin = x.to(dt)
                if name.startswith("pad"):
                    xin = torch.nn.functional.pad(xin, (0, 0, 0, 0, 0, mod.in_channels - x.shape[1]))
                    xin = xin.contiguous(memory_format=torch.channels_last)
                y = mod(xin)
                ts = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    mod(xin)
                    ts.append(time.perf_counter() - t)
                diff = float((y.float() - ref).abs().max())
                out.append((name, p, 1e3 * statistics.median(ts) / batch, diff))
    return out


# --- retrieval agreement ------------------------------------------------------------------------

def campus_recall(model, precisions, compiled: bool) -> dict[str, tuple[float, float, float]]:
    """Per precision: (recall@1, query top-1 agreement with fp32, min cosine with fp32) on the campus."""
    from netvlad.demo import campus_walk

    campus = campus_walk(frame_window=2)
    paths = campus.db_paths + campus.query_paths
    nd = len(campus.db_paths)
    res, ref = {}, None
    for p in ["fp32"] + [p for p in precisions if p != "fp32"]:
        d = compute_descriptors(model, paths, progress=False, precision=p, compile=compiled and p != "int8")
        top1 = (d[nd:] @ d[:nd].T).argmax(1)
        rec = float(np.mean([t in pos for t, pos in zip(top1, campus.positives)]))
        if ref is None:
            ref = (d, top1)
        res[p] = (rec, float((top1 == ref[1]).mean()), float((d * ref[0]).sum(1).min()))
    return res


def town_recall(model, town: Path, precisions) -> dict[str, dict[int, float]]:
    """recall@1/5 of ``model`` on the town's test split per precision."""
    from netvlad.data import load_dataset
    from netvlad.index import topk
    from netvlad.metrics import recall_at_n

    ds = load_dataset(str(next((town / "test").glob("*.csv"))), images=town / "test")
    out = {}
    for p in ["fp32"] + [p for p in precisions if p != "fp32"]:
        db = compute_descriptors(model, ds.db_paths(), progress=False, precision=p)
        q = compute_descriptors(model, ds.query_paths(), progress=False, precision=p)
        _, ranked = topk(q, db, k=5)
        out[p] = recall_at_n(ranked, ds.all_positives(), ns=[1, 5])
    return out


# --- main ---------------------------------------------------------------------------------------

def _print_profile(layers, gflops, secs, precisions):
    print("\nPer-layer profile: each convolution alone, ms per image (GFLOP/s), share of the per-layer bound")
    heads = " | ".join(f"{p} ms (GFLOP/s, share)" for p in precisions)
    print(f"| layer | input | GFLOP/img | {heads} |")
    print("|---|---|---|" + "---|" * len(precisions))
    for i, (name, _, shape) in enumerate(layers):
        cells = [f"{1e3 * secs[p][i]:.1f} ({gflops[i] / secs[p][i]:.0f}, "
                 f"{100 * secs[p][i] / sum(secs[p]):.1f}%)" for p in precisions]
        print(f"| {name} | {shape[1]}×{shape[2]}×{shape[3]} | {gflops[i]:.2f} | " + " | ".join(cells) + " |")
    print(f"| total | | {sum(gflops):.1f} | "
          + " | ".join(f"{1e3 * sum(secs[p]):.0f}" for p in precisions) + " |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8, help="images per timed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=ExtractConfig().batch_size)
    ap.add_argument("--bound-batch", type=int, default=8, help="batch of the per-layer conv timings")
    ap.add_argument("--size", default="640x480", help="W×H of the images (default 640x480)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"],
                    choices=["fp32", "bf16", "int8"])
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (freezing) for fp32/bf16")
    ap.add_argument("--no-eager", action="store_true", help="with --compile: time only compiled variants")
    ap.add_argument("--profile", action="store_true", help="per-layer and per-operator profiles")
    ap.add_argument("--conv1", action="store_true", help="time conv1_1 alternatives")
    ap.add_argument("--agreement", action="store_true", help="retrieval per precision vs fp32 (campus)")
    ap.add_argument("--agreement-vgg", action="store_true", help="with --agreement: VGG-16 (random) too")
    ap.add_argument("--town", type=Path, help="with --agreement: a synth-town folder (its test split)")
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))

    vgg = create_model("vgg16-netvlad", seed=0)
    random_clusters(vgg)
    # Extraction tunes glibc malloc (ExtractConfig.tune_malloc); the bounds must run under the same
    # allocator, or each large conv output (VGG's conv1 at batch 8: 629 MB) pays fresh page faults
    # that the network does not: that made conv1_1 look 3-4x slower than it is.
    tuned = tune_malloc()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU ISA {torch.backends.cpu.get_cpu_capability()}, native bf16 {native_bf16()}, "
          f"int8 via {int8_isa()}, malloc tuned {tuned}; load average {os.getloadavg()}")
    layers = conv_layers(vgg, size)
    gflops = [conv_gflop(c, s) for _, c, s in layers]
    secs = layer_times(layers, args.precisions, args.bound_batch, args.repeats)
    print(f"VGG-16 conv1_1..conv5_3 at {size[0]}×{size[1]}: {sum(gflops):.1f} GFLOP/img in "
          f"{len(layers)} convs; bounds from each conv alone at batch {args.bound_batch}, "
          f"median of {args.repeats}")
    lim = {p: bounds(gflops, secs[p]) for p in args.precisions}
    for p in args.precisions:
        best_i = max(range(len(layers)), key=lambda i: gflops[i] / secs[p][i])
        print(f"  {p}: per-layer bound {lim[p][0]:.2f} img/s; best shape {layers[best_i][0]} "
              f"{gflops[best_i] / secs[p][best_i]:.0f} GFLOP/s -> best-shape bound {lim[p][1]:.2f} img/s")

    configs = {}
    for p in args.precisions:
        if not args.no_eager:
            configs[p] = ExtractConfig(batch_size=args.batch_size, progress=False, precision=p)
        if args.compile and p != "int8":
            configs[f"{p}+compile"] = ExtractConfig(batch_size=args.batch_size, progress=False, precision=p,
                                                    compile=True)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images, size)
        rates = time_configs(vgg, configs, paths, args.repeats, Path(tmp))
    print(f"\nEnd to end: {size[0]}×{size[1]} JPEG → HDF5, batch {args.batch_size}, {args.images} images × "
          f"{args.repeats} runs (interleaved); load average after {os.getloadavg()}")
    print("| model | compute | img/s median (min–max) | per-layer bound | % of it "
          "| best-shape bound | % of it |")
    print("|---|---|---|---|---|---|---|")
    for k, r in rates.items():
        med = statistics.median(r)
        pl, bs = lim[k.split("+")[0]]
        print(f"| VGG-16-NetVLAD | {k} | {med:.3f} ({min(r):.3f}–{max(r):.3f}) | {pl:.3f} "
              f"| {100 * med / pl:.0f}% | {bs:.3f} | {100 * med / bs:.0f}% |", flush=True)
    if args.profile:
        _print_profile(layers, gflops, secs, args.precisions)
        for p in [p for p in args.precisions if p != "int8"]:
            prof = op_profile(vgg, p, size)
            print(f"\n{p} eager forward, batch 1, self CPU time by operator: "
                  + ", ".join(f"{k} {100 * s:.1f}%" for k, s in prof[:6]))
    if args.conv1:
        name, conv, shape = layers[0]
        print(f"\n{name} alternatives (batch {args.bound_batch}, median of {args.repeats}; "
              "max |diff| vs fp32 direct):")
        print("| variant | precision | ms/img | max abs diff |")
        print("|---|---|---|---|")
        alts = conv1_alternatives(conv, shape, args.bound_batch, args.repeats, args.precisions)
        for v, p, ms, diff in alts:
            print(f"| {v} | {p} | {ms:.1f} | {diff:.2e} |")
    if args.agreement:
        lite = create_model("lite0-netvlad", seed=0)
        from netvlad.demo import campus_walk

        init_clusters(lite, campus_walk().db_paths, loader=load_image, progress=False)
        print("\nRetrieval per precision on mvtbdata's campus walk (positives within 2 frames):")
        print("| model | precision | R@1 | query top-1 = fp32's | min cosine with fp32 |")
        print("|---|---|---|---|---|")
        models = [("Lite0-NetVLAD (ImageNet, clusters from campus db)", lite)]
        if args.agreement_vgg:
            models.append(("VGG-16-NetVLAD (random)", vgg))
        for name, m in models:
            for p, (rec, agree, cos) in campus_recall(m, args.precisions, args.compile).items():
                print(f"| {name} | {p}{'+compile' if args.compile and p != 'int8' else ''} | {rec:.2f} "
                      f"| {agree:.2f} | {cos:.4f} |", flush=True)
        if args.town:
            print(f"\nLite0-NetVLAD on {args.town} test split (clusters from the campus):")
            for p, rec in town_recall(lite, args.town, args.precisions).items():
                print(f"  {p}: R@1 {rec[1]:.3f}  R@5 {rec[5]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
