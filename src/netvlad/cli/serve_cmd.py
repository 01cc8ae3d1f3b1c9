"""``netvlad serve``: the localisation service (HTTP API and the page with the map)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path

from netvlad.cli import CLIError

log = logging.getLogger(__name__)
TOKEN_ENV = "NETVLAD_SERVE_TOKEN"


def register(sub) -> None:
    """Add ``serve`` to `sub` (an argparse subparsers action)."""
    from netvlad.cli.extract_cmd import add_image_options

    p = sub.add_parser(
        "serve",
        help="serve an index over HTTP: POST /localize, and a page with a map at /",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Load INDEX and its model once and answer localisation requests:\n"
        "  GET  /            a page: drop a photo, see the top-k database images and a map\n"
        "  POST /localize    multipart field 'image' (+ optional k, lat, lon, radius_m): the JSON\n"
        "                    object `netvlad query --json` prints for one image\n"
        "  GET  /healthz     200 when ready;   GET /api/index  what is loaded\n"
        "Concurrent requests are batched for the model. Binds 127.0.0.1 unless --host says\n"
        "otherwise; another address needs --token (or $" + TOKEN_ENV + "), or --insecure.\n"
        "With a token, API calls send 'Authorization: Bearer TOKEN'; a browser opens\n"
        "http://HOST:PORT/?token=TOKEN once (a cookie keeps it). Needs the serve extra:\n"
        '  pip install "netvlad[serve]"',
        epilog="examples:\n  netvlad serve city.idx\n"
        "  netvlad serve city.idx --model model.pt --port 8080\n"
        "  NETVLAD_SERVE_TOKEN=s3cret netvlad serve city.idx --host 0.0.0.0\n"
        "  curl -F image=@photo.jpg -F k=3 http://127.0.0.1:8000/localize",
    )
    p.add_argument("index", metavar="INDEX", type=Path, help="index folder (`netvlad index build`)")
    p.add_argument("--model", metavar="MODEL", help="model (default: the one the index records)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free port)")
    p.add_argument("--token", help=f"require this bearer token (default: ${TOKEN_ENV} if set)")
    p.add_argument(
        "--insecure", action="store_true", help="allow binding a non-loopback address without a token"
    )
    p.add_argument(
        "--db-root",
        type=Path,
        metavar="DIR",
        help="folder the index's image names are relative to, for thumbnails (default: the "
        "index's --dataset image root when it can be found)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=20.0,
        help="largest request body in MB; bigger ones get 413 (default: 20)",
    )
    p.add_argument("--k-max", type=int, default=100, help="most results a request may ask for (default: 100)")
    p.add_argument(
        "--max-batch", type=int, default=8, help="most concurrent requests one model call takes (default: 8)"
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=5.0,
        help="how long a batch waits for more requests (default: 5 ms)",
    )
    add_image_options(p, exif_default="on: a phone photo is described upright")
    p.set_defaults(func=run_serve)


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_serve(args) -> int:
    """`netvlad serve`."""
    try:
        import uvicorn

        from netvlad.serve.app import ServeConfig, create_app
    except ImportError as exc:
        raise CLIError(
            f'the service needs the serve extra ({exc.name} is missing): pip install "netvlad[serve]"'
        ) from exc
    from netvlad.cli.extract_cmd import image_settings
    from netvlad.index import load_index
    from netvlad.serve import check_model_for_index, index_max_side
    from netvlad.serve.localize import db_image_paths
    from netvlad.weights import load_model

    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token and not args.insecure:
        raise CLIError(
            f"--host {args.host} is reachable from other machines: give --token (or ${TOKEN_ENV}) "
            "or --insecure"
        )
    if args.max_upload_mb <= 0 or args.k_max < 1 or args.max_batch < 1 or args.max_wait_ms < 0:
        raise CLIError("--max-upload-mb must be > 0, --k-max and --max-batch ≥ 1, --max-wait-ms ≥ 0")
    index = load_index(args.index)
    ref = args.model or index.meta.get("model")
    if not ref:
        raise CLIError(
            f"{args.index} records no model; pass --model MODEL (the one that extracted its features)"
        )
    model = load_model(ref, device=args.device)
    check_model_for_index(index, model, ref, args.index)
    cfg = ServeConfig(
        k_max=args.k_max,
        k_default=min(5, args.k_max),
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        device=args.device,
        token=token,
        max_side=index_max_side(index),
        **image_settings(args, exif_default=True),
    )
    app = create_app(
        index, model, cfg, db_paths=db_image_paths(index, args.db_root, args.index), model_ref=ref
    )
    where = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"netvlad serve: {args.index} ({index.ntotal} images, {index.dim}-D, model {ref}) on "
        f"http://{where}:{args.port}/" + (" (bearer token required)" if token else ""),
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="info" if args.verbose else "warning",
        workers=1,
        access_log=bool(args.verbose),
    )
    return 0
