"""Localisation service throughput: `netvlad serve` under 1, 4 and 16 concurrent clients against the
offline extraction rate of the same model, measured in the same run.

Set-up: ``--images`` photo-like JPEGs (320×240 unless ``--size``), Lite0-NetVLAD (ImageNet
weights, clusters from random unit descriptors: speed does not depend on them) saved as a
checkpoint, a flat index of the images with grid coordinates, and the real server (``python -m
netvlad serve``, uvicorn, default settings unless ``--max-batch``/``--max-wait-ms``) on a free
loopback port. Rounds interleave the offline rate (``extract_features`` of the same images into an
HDF5 file with the library defaults of ``netvlad extract``, in a fresh process that loads the same
checkpoint, as the server does) with each client count, so a machine shared
with other work slows both alike; medians over rounds are reported. Clients are asyncio tasks of
one httpx client in this process, each posting a photo (round-robin), waiting for the answer and
posting the next, for ``--seconds``.

    .venv/bin/python benchmarks/service.py                       # 3 rounds x 30 s per client count
    .venv/bin/python benchmarks/service.py --rounds 2 --seconds 10 --json service.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract import make_jpegs, random_clusters  # noqa: E402

from netvlad.extract import compute_descriptors  # noqa: E402
from netvlad.index import build_index  # noqa: E402
from netvlad.models import create_model, save_model  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def setup(tmp: Path, n: int, model_name: str, size: tuple[int, int]):
    """Images, the model checkpoint and an index of the images (zone 17T, a 20 m grid)."""
    paths = make_jpegs(tmp, n, size=size)
    model = create_model(model_name, seed=0)
    if hasattr(model.head, "init_from_descriptors"):
        random_clusters(model)
    ckpt = tmp / "model.pt"
    save_model(model, ckpt)
    desc = compute_descriptors(model, paths, progress=False)
    side = int(np.ceil(np.sqrt(n)))
    utm = np.array([[589000.0 + 20 * (i % side), 4477000.0 + 20 * (i // side)] for i in range(n)])
    meta = {"fingerprint": model.fingerprint(), "model": str(ckpt), "zone": "17T"}
    build_index(desc, "flat", names=[p.name for p in paths], utm=utm, meta=meta).save(tmp / "idx")
    return model, paths, tmp / "idx", ckpt


def offline_rate(ckpt: Path, folder: Path, out: Path) -> float:
    """Images/s of extract_features with the library defaults (what `netvlad extract` runs), in a
    fresh process that loads the checkpoint as the server does; model loading and a warm-up batch
    are not timed."""
    code = (
        "import sys, time\nfrom pathlib import Path\n"
        "from netvlad.extract import ExtractConfig, extract_features\nfrom netvlad.models import load_model\n"
        "m = load_model(sys.argv[1]); paths = sorted(Path(sys.argv[2]).glob('*.jpg'))\n"
        "names = [p.name for p in paths]; cfg = ExtractConfig(progress=False)\n"
        "extract_features(m, paths[:8], names[:8], sys.argv[3], cfg, overwrite=True)\n"
        "t = time.perf_counter(); extract_features(m, paths, names, sys.argv[3], cfg, overwrite=True)\n"
        "print(len(paths) / (time.perf_counter() - t))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    res = subprocess.run([sys.executable, "-c", code, str(ckpt), str(folder), str(out)], env=env,
                         capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


async def load(url: str, blobs: list[bytes], clients: int, seconds: float) -> dict:
    """``clients`` concurrent posters for ``seconds``: requests/s and latency percentiles (ms)."""
    import httpx

    lat: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as c:

        async def client(j: int) -> None:
            nonlocal errors
            i = j
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                r = await c.post(url + "/localize", files={"image": (f"q{i}.jpg", blobs[i % len(blobs)])})
                if r.status_code != 200:
                    errors += 1
                elif time.perf_counter() <= deadline:
                    lat.append(time.perf_counter() - t)
                i += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(client(j) for j in range(clients)))
        wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {"clients": clients, "done": len(lat), "errors": errors, "req_s": len(lat) / min(wall, seconds),
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None}


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def _median(vals) -> float | None:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def start_server(index: Path, port: int, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "netvlad", "serve", str(index), "--port", str(port), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError("server not ready")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--model", default="lite0-netvlad")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"), help="JPEG size")
    ap.add_argument("--seconds", type=float, default=30.0,
                    help="per client count and round (several batch times: 16 clients wait ~2 batches)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-batch", type=int, default=None, help="server --max-batch (default: its default)")
    ap.add_argument("--max-wait-ms", type=float, default=None)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra = [] if args.max_batch is None else ["--max-batch", str(args.max_batch)]
    extra += [] if args.max_wait_ms is None else ["--max-wait-ms", str(args.max_wait_ms)]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, paths, index, ckpt = setup(tmp, args.images, args.model, tuple(args.size))
        blobs = [p.read_bytes() for p in paths]
        url = f"http://127.0.0.1:{port}"
        proc = start_server(index, port, extra)
        try:
            wait_ready(url, proc)
            asyncio.run(load(url, blobs, 2, 3.0))  # warm-up: first batches, thumbnails of nothing
            offline, served = [], {c: [] for c in args.clients}
            for r in range(args.rounds):
                offline.append(offline_rate(ckpt, tmp, tmp / "f.h5"))
                print(f"round {r + 1}: offline extract {offline[-1]:.2f} img/s", flush=True)
                for c in args.clients:
                    res = asyncio.run(load(url, blobs, c, args.seconds))
                    served[c].append(res)
                    print(f"round {r + 1}: {c:>2} clients {res['req_s']:.2f} req/s  "
                          f"p50 {_ms(res['p50_ms'])}  p99 {_ms(res['p99_ms'])}  "
                          f"({res['done']} done, {res['errors']} errors)", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    load_after = os.getloadavg()
    off = statistics.median(offline)
    rows = []
    for c, runs in served.items():
        rows.append({"clients": c, "req_s": statistics.median(x["req_s"] for x in runs),
                     "p50_ms": _median(x["p50_ms"] for x in runs),
                     "p99_ms": _median(x["p99_ms"] for x in runs),
                     "errors": sum(x["errors"] for x in runs)})
    print(f"\n{args.model}, {args.images} JPEGs {args.size[0]}x{args.size[1]}, {args.rounds} rounds x "
          f"{args.seconds:.0f} s, "
          f"torch threads {os.cpu_count()} cores; load average before {load_before[0]:.2f} "
          f"after {load_after[0]:.2f}")
    print(f"offline extract: {off:.2f} img/s (median; rounds {', '.join(f'{x:.2f}' for x in offline)})")
    print("| clients | req/s | vs offline | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['req_s']:.2f} | {100 * r['req_s'] / off:.0f}% | {_ms(r['p50_ms'])} | "
              f"{_ms(r['p99_ms'])} | {r['errors']} |")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "images": args.images, "offline_img_s": offline,
                                         "served": served, "summary": rows,
                                         "loadavg": [load_before, load_after]}, indent=1))


if __name__ == "__main__":
    main()
