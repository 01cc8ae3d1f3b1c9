"""Peak memory of one image's forward pass vs its pixel count: the basis of ``--max-pixels``.

For each (preset, square side) a fresh subprocess builds the preset (random backbone, clusters from
two small random images), makes one side×side input, records ``ru_maxrss``, runs the extraction
forward pass (fp32, channels_last, inference mode: what ``netvlad extract`` runs) and records
``ru_maxrss`` again. "forward MB" is the difference: the activations of that pass, weights and input
excluded. It is compared with ``netvlad.extract.estimate_forward_bytes`` (the peak of live tensor
bytes during a forward pass of a 128×128 probe, scaled to the pixel count).

    .venv/bin/python benchmarks/image_memory.py --sides 1000 2000 2896
    .venv/bin/python benchmarks/image_memory.py --presets resnet18-netvlad resnet50-netvlad \
        lite0-netvlad alexnet-netvlad --sides 1000 1500

Results (2-core CPU machine shared with other jobs, torch 2.13.0+cpu, 2 threads; MB = MiB):

    preset              side    Mpx  forward MB   B/px  estimate MB est/meas
    vgg16-netvlad       1000   1.00         491    515          488     0.99
    vgg16-netvlad       2000   4.00        1990    522         1953     0.98
    vgg16-netvlad       2896   8.39        4182    523         4095     0.98
    resnet18-netvlad    1000   1.00         135    141          122     0.91
    resnet18-netvlad    1500   2.25         302    141          275     0.91
    resnet50-netvlad    1000   1.00         347    364          214     0.61
    resnet50-netvlad    1500   2.25         816    380          481     0.59
    lite0-netvlad       1000   1.00         376    394          224     0.60
    lite0-netvlad       1500   2.25         715    333          504     0.71
    alexnet-netvlad     1000   1.00          49     51           24     0.50
    alexnet-netvlad     1500   2.25         134     63           55     0.41

2896² = 8.39 Mpx is the default ``--max-pixels`` (2**23): 4182 MiB = 4.4 GB for VGG-16. End to end,
``netvlad extract vgg16-max --images DIR`` with defaults on one 10000×10000 JPEG (downscaled to
2896×2896 with a warning) peaked at 4.97 GB RSS for the whole process (``ru_maxrss`` of the child).
The estimate counts live tensors only; the allocator's fragmentation and oneDNN's temporaries make
the real peak up to ~2× larger for ResNet-50, EfficientNet-Lite0 and AlexNet.
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
