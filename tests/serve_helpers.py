"""Shared set-up of the service tests: a tiny index with coordinates, and the real server."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
MODEL = "lite0-max"  # EfficientNet-Lite0 + max pooling: real ImageNet weights offline, no clustering


def photos(folder: Path, n: int) -> list[str]:
    """``n`` distinct 48×64 PNGs in ``folder``; their names relative to its parent."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    names = []
    for i in range(n):
        img = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
        img[: 6 * (i + 1)] = 25 * i
        Image.fromarray(img).save(folder / f"{i:04d}.png")
        names.append(f"{folder.name}/{i:04d}.png")
    return names


def make_index(root: Path, n: int = 8) -> tuple[Path, list[str], np.ndarray]:
    """Photos, their features, a dataset CSV (zone 17T) and a flat index at ``root/idx``.

    Returns:
        (index folder, database names, (n, 2) UTM).
    """
    from netvlad.cli import main

    names = photos(root / "db", n)
    utm = np.array([[589000.0 + 40 * (i % 4), 4477000.0 + 30 * (i // 4)] for i in range(n)])
    rows = ["# name: tiny town", "# zone: 17T", "split,path,easting,northing,zone"]
    rows += [f"db,{nm},{e!r},{m!r},17T" for nm, (e, m) in zip(names, utm.tolist())]
    rows += [f"query,{names[0]},{float(utm[0, 0])!r},{float(utm[0, 1])!r},17T"]
    (root / "ds.csv").write_text("\n".join(rows) + "\n")
    assert (
        main(
            [
                "extract",
                MODEL,
                "--dataset",
                str(root / "ds.csv"),
                "--split",
                "db",
                "--out",
                str(root / "db.h5"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "index",
                "build",
                str(root / "db.h5"),
                "--out",
                str(root / "idx"),
                "--type",
                "flat",
                "--dataset",
                str(root / "ds.csv"),
                "--model",
                MODEL,
            ]
        )
        == 0
    )
    return root / "idx", names, utm


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(index: Path, *extra: str, timeout: float = 60.0):
    """``netvlad serve INDEX`` on a free loopback port; yields its base URL; stopped on exit."""
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "netvlad",
            "serve",
            str(index),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read()}")
            try:
                if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready after {timeout} s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
