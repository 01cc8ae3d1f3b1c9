"""City scale: an on-disk IVF index over N × 256-D descriptors, and sharded extraction.

Index part: N structured synthetic descriptors (places on a 64-dimensional subspace of the 256-D
space, several noisy views per place, unit norm) are generated in chunks into netvlad feature
files (one per chunk, as `extract --shard` or several cities would give). Then

    netvlad index build CHUNK... --on-disk --type ivfpq

runs as a subprocess: its wall time and peak RSS (its own ``VmHWM``; see :func:`_run_child`) are
the build's cost, ``du`` of the folder its size. 1,000 queries (new views of
random database places) are searched through ``netvlad.index.load_index`` (memory-mapped lists);
recall@1 is measured against the exact top-1, computed blockwise over the chunks.

Extraction part: the same images extracted by one process and by ``torchrun --nproc_per_node 2``
(gloo), interleaved, repeated; the two files must be identical.

    nice -n 5 python benchmarks/scale.py --n 10000000            # index part, 10 M
    nice -n 5 python benchmarks/scale.py --part extract --images 48
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}

LATENT, VIEWS, NOISE = 64, 5, 0.5


def _basis(dim: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((LATENT, dim)).astype(np.float32) / np.sqrt(LATENT)


def _views(places: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Unit-norm noisy views of the given place ids (a place's centre depends only on its id)."""
    centres = _centres(places, dim, _basis(dim))
    rng = np.random.default_rng(seed)
    x = centres + NOISE / np.sqrt(dim) * rng.standard_normal(centres.shape, dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _centres(places: np.ndarray, dim: int, basis: np.ndarray) -> np.ndarray:
    # A place's latent vector is a hash of its id: reproducible for queries without storing it.
    bits = (places.astype(np.uint64)[:, None] * np.uint64(0x9E3779B97F4A7C15)
            + np.arange(LATENT, dtype=np.uint64)[None, :] * np.uint64(0xBF58476D1CE4E5B9))
    bits ^= bits >> np.uint64(31)
    bits *= np.uint64(0x94D049BB133111EB)
    bits ^= bits >> np.uint64(29)
    u = (bits >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # uniform [0, 1)
    r, phi = np.sqrt(-2 * np.log1p(-u[:, : LATENT // 2])), 2 * np.pi * u[:, LATENT // 2:]  # Box-Muller
    z = np.concatenate([r * np.cos(phi), r * np.sin(phi)], axis=1).astype(np.float32)
    c = z @ basis
    return c / np.linalg.norm(c, axis=1, keepdims=True)


def generate(folder: Path, n: int, dim: int, chunk: int) -> list[Path]:
    """N descriptors in feature files of ``chunk`` rows; row i is a view of place i // VIEWS."""
    from netvlad import io

    files = []
    for j, start in enumerate(range(0, n, chunk)):
        stop = min(n, start + chunk)
        path = folder / f"part{j:03d}.h5"
        rows = np.arange(start, stop)
        x = _views(rows // VIEWS, dim, seed=j)
        names = [f"p{j:03d}/{i:09d}.jpg" for i in rows]
        io.write_features(path, names, x, {"fingerprint": "synthetic", "preprocessing": {}})
        files.append(path)
        print(f"  generated {path.name}: rows {start}..{stop}", flush=True)
    return files


def exact_top1(files: list[Path], q: np.ndarray, block: int = 131072) -> np.ndarray:
    """Exact top-1 database row per query, blockwise over the chunk files (ties: smaller row)."""
    from netvlad import io

    best = np.full(len(q), -np.inf, dtype=np.float32)
    arg = np.full(len(q), -1, dtype=np.int64)
    offset = 0
    for f in files:
        with io.FeatureRows(f) as rows:
            for start, _, x in rows.blocks(block, with_names=False):
                s = q @ x.T
                j = s.argmax(axis=1)
                v = s[np.arange(len(q)), j]
                better = v > best
                best[better], arg[better] = v[better], offset + start + j[better]
            offset += len(rows)
    return arg


def _run_child(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of a subprocess.

    The peak is the child's own ``VmHWM`` (``/proc/PID/status``), read every 0.1 s until it exits.
    Why not ``getrusage(RUSAGE_CHILDREN).ru_maxrss``: Linux carries the high-water mark of the memory
    image a process had before ``exec`` into it, and a child started by (v)fork had its parent's,
    so that figure is at least this benchmark's own peak (several GB after generating the chunks).
    """
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=ENV)
    peak_kib = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return wall, peak_kib / 2**20


def _generated(folder: Path, n: int, dim: int, chunk: int) -> list[Path]:
    """The chunk files in ``folder`` if a complete earlier run wrote them (same N, D, chunk), else new."""
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / "generated.json"
    want = {"n": n, "dim": dim, "chunk": chunk, "latent": LATENT, "views": VIEWS, "noise": NOISE}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return sorted(folder.glob("part*.h5"))
    for old in folder.glob("part*.h5"):
        old.unlink()
    files = generate(folder, n, dim, chunk)
    stamp.write_text(json.dumps(want))
    return files


def index_part(args, work: Path) -> dict:
    from netvlad.index import load_index
    from netvlad.index.ondisk import nbytes_on_disk

    t = time.perf_counter()
    files = _generated(args.features_dir or work, args.n, args.dim, args.chunk)
    gen_s = time.perf_counter() - t
    data_bytes = sum(f.stat().st_size for f in files)
    out = work / "city.idx"
    cmd = [sys.executable, "-m", "netvlad", "index", "build", *map(str, files), "--out", str(out),
           "--on-disk", "--type", args.type, "--nlist", str(args.nlist), "--nprobe", str(args.nprobe),
           "--pq-m", str(args.pq_m), "--train-size", str(args.train_size), "--k-factor", str(args.k_factor)]
    print("  " + " ".join(cmd[1:4]) + " ... " + " ".join(cmd[-14:]), flush=True)
    build_s, peak_gib = _run_child(cmd)
    size = nbytes_on_disk(out)

    rng = np.random.default_rng(123)
    places = rng.integers(0, args.n // VIEWS, args.queries)
    q = _views(places, args.dim, seed=10_000)
    t = time.perf_counter()
    truth = exact_top1(files, q)
    exact_s = time.perf_counter() - t

    index = load_index(out)
    index.search(q[:10], 1)  # first touch of the maps
    runs = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        _, ids = index.search(q, 1)
        runs.append(time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(min(100, len(q))):
        index.search(q[i], 1)
    single_ms = (time.perf_counter() - t) / min(100, len(q)) * 1e3
    recall = float((ids[:, 0] == truth).mean())
    return {"n": args.n, "dim": args.dim, "chunks": len(files), "type": args.type, "nlist": args.nlist,
            "nprobe": args.nprobe, "pq_m": args.pq_m, "k_factor": args.k_factor,
            "train_size": args.train_size, "generate_s": round(gen_s, 1),
            "features_gib": round(data_bytes / 2**30, 2), "build_s": round(build_s, 1),
            "build_peak_rss_gib": round(peak_gib, 2), "index_gib": round(size / 2**30, 3),
            "batch_qps_median": round(len(q) / statistics.median(runs), 1),
            "single_query_ms": round(single_ms, 2), "recall_at_1_vs_exact": round(recall, 4),
            "exact_blockwise_s": round(exact_s, 1), "queries": len(q)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def extract_part(args, work: Path) -> dict:
    """One process vs torchrun with 2 processes on the same images, interleaved, median of repeats."""
    import torch
    from PIL import Image

    from netvlad.models import PRESETS, create_model, init_clusters, save_model

    rng = np.random.default_rng(0)
    imgs = work / "imgs"
    imgs.mkdir()
    for i in range(args.images):
        small = rng.integers(0, 256, (args.height // 8, args.width // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((args.width, args.height), Image.Resampling.BILINEAR).save(
            imgs / f"{i:04d}.jpg", quality=90)
    model = create_model(PRESETS[args.model].replace(num_clusters=16), weights="random", seed=0)
    init_clusters(model, [np.asarray(Image.open(p)) for p in sorted(imgs.iterdir())[:4]], progress=False)
    save_model(model, work / "model.pt")
    base = ["-m", "netvlad", "extract", str(work / "model.pt"), "--images", str(imgs), "--no-progress",
            "--batch-size", str(args.batch_size)]
    times: dict[str, list[float]] = {"1 process": [], "torchrun 2 processes": []}
    for r in range(args.repeats):
        for label in times:
            out = work / f"{label[0]}_{r}.h5"
            pre = [sys.executable] if label == "1 process" else \
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                 "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
            t = time.perf_counter()
            subprocess.run([*pre, *base, "--out", str(out)], check=True, stdout=subprocess.DEVNULL,
                           env={**ENV, "GLOO_SOCKET_IFNAME": "lo"})
            times[label].append(time.perf_counter() - t)
    from netvlad import io

    a, b = (io.read_features(work / f"{c}_0.h5") for c in ("1", "t"))
    same = a[0] == b[0] and a[1].tobytes() == b[1].tobytes()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"images": args.images, "size": f"{args.width}x{args.height}", "model": args.model,
            "torch_threads_one_process": torch.get_num_threads(),
            "median_s": {k: round(v, 2) for k, v in med.items()},
            "images_per_s": {k: round(args.images / v, 2) for k, v in med.items()},
            "ratio_2proc_over_1proc": round(med["1 process"] / med["torchrun 2 processes"], 3),
            "identical_files": bool(same), "repeats": args.repeats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("index", "extract", "all"), default="all")
    p.add_argument("--n", type=int, default=10_000_000, help="database descriptors (default 10 M)")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--chunk", type=int, default=1_000_000, help="rows per generated feature file")
    p.add_argument("--type", choices=("ivfpq", "ivfflat"), default="ivfpq")
    p.add_argument("--nlist", type=int, default=4096)
    p.add_argument("--nprobe", type=int, default=64)
    p.add_argument("--pq-m", type=int, default=32)
    p.add_argument("--k-factor", type=int, default=64)
    p.add_argument("--train-size", type=int, default=200_000)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--images", type=int, default=48, help="extraction part: images")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--model", default="vgg16-netvlad", help="extraction part: preset (random weights)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    p.add_argument("--features-dir", type=Path, default=None,
                   help="keep the generated descriptors here and reuse them when a run with the same "
                        "--n/--dim/--chunk wrote them (generating 10 M takes several minutes)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="netvlad-scale-", dir=args.workdir))
    results = {"uptime": os.popen("uptime").read().strip()}
    try:
        if args.part in ("extract", "all"):
            results["extract"] = extract_part(args, work)
            print(json.dumps(results["extract"], indent=1), flush=True)
        if args.part in ("index", "all"):
            results["index"] = index_part(args, work)
            print(json.dumps(results["index"], indent=1), flush=True)
    finally:
        results["uptime_end"] = os.popen("uptime").read().strip()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
