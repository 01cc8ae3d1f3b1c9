"""NetVLAD layer: our vectorised layer vs a per-cluster loop vs a broadcast residual tensor.

Training configuration of the paper: K=64 clusters, D=512 (VGG-16 conv5_3), 30×40 maps (640×480
input), batch 48 (4 tuples of 12 images). All three compute the same function (preL2 → soft-assign
→ residual sums → intra-norm → L2; outputs are checked to agree):

- ours:      ``netvlad.layers.NetVLAD`` — V = AᵀX − (Σ_i a_ik) c_k, one bmm.
- loop:      one B×D×N residual per cluster in a Python loop (Nanne/pytorch-NetVlad's ``forward``).
- broadcast: one B×K×D×N residual tensor (hloc's ``NetVLADLayer``).

Each (variant, batch) runs in a fresh subprocess so ``ru_maxrss`` is its own; "peak" is the
maximum RSS minus the RSS before the first forward (inputs and weights excluded). Times are medians.

The broadcast tensor alone is B·K·D·N·4 bytes (7.5 GB at B=48) and fwd+bwd needs several of them,
so variants whose estimated peak exceeds ``--mem-budget-gb`` run at the largest batch that fits,
and the ratios are taken against ours at that same batch (all costs are linear in B).

    .venv/bin/python benchmarks/layer.py                     # B=48 for ours, matched batch for ratios
    .venv/bin/python benchmarks/layer.py --mem-budget-gb 20  # everything at B=48 (needs ~20 GB free)
    .venv/bin/python benchmarks/layer.py --threads 1         # steadier when other jobs share the CPU
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from netvlad.layers import NetVLAD


class LoopNetVLAD(nn.Module):
    """Per-cluster loop, as in Nanne/pytorch-NetVlad (netvlad.py, ``NetVLAD.forward``)."""

    def __init__(self, dim, k):
        super().__init__()
        self.conv = nn.Conv2d(dim, k, 1, bias=False)
        self.centroids = nn.Parameter(torch.rand(k, dim))
        self.k = k

    def forward(self, x):
        n, c = x.shape[:2]
        x = F.normalize(x, p=2, dim=1)
        soft = F.softmax(self.conv(x).view(n, self.k, -1), dim=1)
        xf = x.view(n, c, -1)
        vlad = torch.zeros([n, self.k, c], dtype=x.dtype, device=x.device)
        for k in range(self.k):
            residual = xf.unsqueeze(0).permute(1, 0, 2, 3) - self.centroids[k:k + 1, :].expand(
                xf.size(-1), -1, -1).permute(1, 2, 0).unsqueeze(0)
            residual *= soft[:, k:k + 1, :].unsqueeze(2)
            vlad[:, k:k + 1, :] = residual.sum(dim=-1)
        vlad = F.normalize(vlad, p=2, dim=2)
        return F.normalize(vlad.transpose(1, 2).reshape(n, -1), p=2, dim=1)


class BroadcastNetVLAD(nn.Module):
    """One B×D×K×N residual tensor, as in hloc (extractors/netvlad.py, ``NetVLADLayer.forward``)."""

    def __init__(self, dim, k):
        super().__init__()
        self.conv = nn.Conv1d(dim, k, 1, bias=False)
        self.centroids = nn.Parameter(torch.rand(dim, k))

    def forward(self, x):
        b = x.size(0)
        x = F.normalize(x.flatten(2), p=2, dim=1)
        scores = F.softmax(self.conv(x), dim=1)
        diff = x.unsqueeze(2) - self.centroids.unsqueeze(0).unsqueeze(-1)
        desc = (scores.unsqueeze(1) * diff).sum(dim=-1)  # B×D×K
        desc = F.normalize(desc, dim=1)
        return F.normalize(desc.reshape(b, -1), dim=1)


def build(variant: str, dim: int, k: int, seed: int = 0) -> nn.Module:
    """The variant with shared random weights (so outputs can be compared)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, dim, generator=g) * 3
    c = torch.rand(k, dim, generator=g) / dim**0.5
    if variant.startswith("ours"):
        m = NetVLAD(dim, k, pre_l2=True, intra_norm=True)
        with torch.no_grad():
            m.assignment.weight.copy_(w.view(k, dim, 1, 1))
            m.centroids.copy_(c)
            m.initialized.fill_(True)
    elif variant == "loop":
        m = LoopNetVLAD(dim, k)
        with torch.no_grad():
            m.conv.weight.copy_(w.view(k, dim, 1, 1))
            m.centroids.copy_(c)
    elif variant == "broadcast":
        m = BroadcastNetVLAD(dim, k)
        with torch.no_grad():
            m.conv.weight.copy_(w.view(k, dim, 1))
            m.centroids.copy_(c.T)
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return m


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(variant: str, batch: int, dim: int, k: int, h: int, w: int, reps: int, threads: int = 0) -> dict:
    """Run in a fresh process: median fwd and fwd+bwd ms, and peak RSS above the start."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = build(variant, dim, k)
    x = torch.randn(batch, dim, h, w)
    if variant == "ours-cl":
        x = x.contiguous(memory_format=torch.channels_last)
    base = _rss_mb()
    fwd = []
    with torch.no_grad():
        for _ in range(reps + 1):
            t = time.perf_counter()
            m(x)
            fwd.append(time.perf_counter() - t)
    peak_fwd = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    xg = x.clone().requires_grad_(True)
    train = []
    for _ in range(reps + 1):
        t = time.perf_counter()
        m(xg).sum().backward()
        train.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"variant": variant, "batch": batch, "fwd_ms": 1e3 * statistics.median(fwd[1:]),
            "train_ms": 1e3 * statistics.median(train[1:]), "peak_fwd_mb": peak_fwd, "peak_mb": peak}


def run(variant: str, batch: int, a) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--batch", str(batch), "--dim", str(a.dim),
           "-k", str(a.k), "--height", str(a.height), "--width", str(a.width), "--reps", str(a.reps),
           "--threads", str(a.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def est_peak_gb(variant: str, batch: int, a) -> float:
    """Rough fwd+bwd peak: 4 residual-sized tensors for broadcast, 64 saved per-cluster ones for loop."""
    n = a.height * a.width
    if variant == "broadcast":
        return 4 * batch * a.k * a.dim * n * 4 / 2**30
    if variant == "loop":
        return 1.5 * batch * a.k * a.dim * n * 4 / 2**30
    return 4 * batch * a.dim * n * 4 / 2**30


def check_agreement(a) -> float:
    x = torch.randn(2, a.dim, 6, 5)
    ref = build("ours", a.dim, a.k)(x)
    return max((build(v, a.dim, a.k)(x) - ref).abs().max().item() for v in ("loop", "broadcast"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("-k", type=int, default=64)
    p.add_argument("--height", type=int, default=30)
    p.add_argument("--width", type=int, default=40)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per run (0: torch's default); 1 is steadier on a busy machine")
    p.add_argument("--mem-budget-gb", type=float, default=4.0,
                   help="largest estimated peak a variant may use; beyond it the batch is reduced")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.batch, a.dim, a.k, a.height, a.width, a.reps, a.threads)))
        return 0
    print(f"NetVLAD layer, K={a.k}, D={a.dim}, {a.height}x{a.width} maps, target batch {a.batch}, "
          f"torch {torch.__version__}, {a.threads or torch.get_num_threads()} threads, median of {a.reps}")
    print(f"outputs agree with ours to {check_agreement(a):.1e} (max abs diff)")
    fits = {v: max([b for b in range(1, a.batch + 1) if est_peak_gb(v, b, a) <= a.mem_budget_gb] or [1])
            for v in ("loop", "broadcast")}
    matched = min(fits.values())
    rows = [run("ours", a.batch, a), run("ours-cl", a.batch, a)]
    if matched < a.batch:
        rows += [run("ours", matched, a)]
    rows += [run(v, matched, a) for v in ("loop", "broadcast")]
    ours = {r["batch"]: r for r in rows if r["variant"] == "ours"}
    hdr = (f"{'variant':<10} {'batch':>5} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak fwd MB':>12} "
           f"{'peak MB':>9} {'fwd+bwd vs ours':>16} {'peak vs ours':>13}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        o = ours[r["batch"]]
        print(f"{r['variant']:<10} {r['batch']:>5} {r['fwd_ms']:>9.1f} {r['train_ms']:>11.1f} "
              f"{r['peak_fwd_mb']:>12.0f} {r['peak_mb']:>9.0f} {r['train_ms'] / o['train_ms']:>15.1f}x "
              f"{r['peak_mb'] / max(o['peak_mb'], 1):>12.1f}x")
    if matched < a.batch:
        print(f"loop/broadcast ran at batch {matched} (the broadcast tensor at batch {a.batch} is "
              f"{a.batch * a.k * a.dim * a.height * a.width * 4 / 2**30:.1f} GB; --mem-budget-gb "
              f"{a.mem_budget_gb:g}); ratios are against ours at the same batch.")
    o = ours[matched]
    loop = next(r for r in rows if r["variant"] == "loop")
    bc = next(r for r in rows if r["variant"] == "broadcast")
    print(f"targets: fwd+bwd >= 8x faster than loop: {loop['train_ms'] / o['train_ms']:.1f}x "
          f"[{'PASS' if loop['train_ms'] >= 8 * o['train_ms'] else 'FAIL'}]; "
          f"peak <= 1/10 of broadcast: 1/{bc['peak_mb'] / max(o['peak_mb'], 1):.1f} "
          f"[{'PASS' if bc['peak_mb'] >= 10 * o['peak_mb'] else 'FAIL'}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
