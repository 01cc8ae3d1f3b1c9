"""Peak memory of one image's forward pass vs its pixel count: the basis of ``--max-pixels``.

For each (preset, square side) a fresh subprocess builds the preset (random backbone, clusters from
two small random images), makes one side×side input, records ``ru_maxrss``, runs the extraction
forward pass (fp32, channels_last, inference mode: what ``netvlad extract`` runs) and records
``ru_maxrss`` again. "forward MB" is the difference: the activations of that pass, weights and input
excluded. It is compared with ``netvlad.extract.estimate_forward_bytes`` (the model's largest
activation, found with forward hooks on a small input and scaled to the pixel count, times a factor).

    .venv/bin/python benchmarks/image_memory.py                          # VGG-16, 500..2000 px
    .venv/bin/python benchmarks/image_memory.py --presets resnet18-netvlad lite0-netvlad alexnet-netvlad
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys
import numpy as np, torch
from netvlad import extract
from netvlad.extract.run import _forward, _prepared
from netvlad.models import PRESETS, create_model, init_clusters
name, side, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
extract.tune_malloc()
model = create_model(PRESETS[name], weights="random")
if model.method.is_vlad:
    rng = np.random.default_rng(0)
    init_clusters(model, [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8) for _ in range(2)],
                  progress=False)
cfg = extract.ExtractConfig(progress=False)
x = torch.randn(1, 3, side, side)
with _prepared(model, "cpu", True) as dev, torch.inference_mode():
    _forward(model, x[:, :, :64, :64], cfg, dev)  # warm-up: oneDNN's own buffers
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _forward(model, x, cfg, dev)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
est = extract.estimate_forward_bytes(model, side, side)
print(json.dumps({"forward_mb": (after - before) / 1024, "estimate_mb": est / 2**20}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["vgg16-netvlad"])
    ap.add_argument("--sides", nargs="+", type=int, default=[500, 1000, 1500, 2000])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"{'preset':<18} {'side':>5} {'Mpx':>6} {'forward MB':>11} {'B/px':>6} {'estimate MB':>12} "
          f"{'est/meas':>8}")
    for name in args.presets:
        for side in args.sides:
            r = subprocess.run([sys.executable, "-c", CHILD, name, str(side), str(args.threads)],
                               capture_output=True, text=True, check=True)
            m = json.loads(r.stdout.strip().splitlines()[-1])
            px = side * side
            print(f"{name:<18} {side:>5} {px / 1e6:>6.2f} {m['forward_mb']:>11.0f} "
                  f"{m['forward_mb'] * 2**20 / px:>6.0f} {m['estimate_mb']:>12.0f} "
                  f"{m['estimate_mb'] / max(m['forward_mb'], 1e-9):>8.2f}", flush=True)


if __name__ == "__main__":
    main()
