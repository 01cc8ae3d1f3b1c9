"""``netvlad index build`` and ``netvlad query``: a saved search index and localisation of photos."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from netvlad.cli import CLIError

log = logging.getLogger(__name__)


def register(sub) -> None:
    """Add this module's sub-commands to `sub` (an argparse subparsers action)."""
    _add_index_build(sub)
    _add_query(sub)


def _add_index_build(sub) -> None:
    from netvlad.cli.options import FEATS_HELP, add_feature_file_options
    from netvlad.index import INDEX_KINDS, IndexConfig

    d = IndexConfig()
    p = sub.add_parser("index", help="build a search index from a feature file")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = isub.add_parser(
        "build",
        help="build and save an index (names, coordinates, model reference travel with it)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Index types: exact (our blockwise exact search), flat (FAISS exact inner product),\n"
        "ivfflat (IVF, --nprobe cells per query), ivfpq (IVF-PQ + exact re-rank of --k-factor*k\n"
        "candidates: small memory), hnsw (graph). Up to ~100k x 4096-D exact search is fast enough;\n"
        "at 1M reduce to 256-512-D (PCA) and use ivfflat or ivfpq. NaN rows of FEATS (images that\n"
        "failed extraction with --skip-bad) are left out with a warning.\n\n" + FEATS_HELP,
        epilog="examples:\n"
        "  netvlad index build f_db.h5 --out city.idx --dataset city.csv\n"
        "  netvlad index build db.bin --dim 4096 --dataset pitts30k_test.mat --out p30k.idx\n"
        "  netvlad index build f_db.h5 --out big.idx --type ivfpq --pq-m 32 --nprobe 64\n"
        "  netvlad index build city_*.h5 --out city.idx --on-disk --type ivfpq --nlist 4096",
    )
    b.add_argument("features", metavar="FEATS", type=Path, nargs="+",
                   help="database feature file(s): several files (e.g. the shards of `extract --shard`) "
                   "form one database, in the order given")
    b.add_argument("--out", metavar="INDEX", type=Path, required=True,
                   help="output index directory (an existing one is replaced only if it is a netvlad index)")
    b.add_argument("--overwrite", action="store_true",
                   help="replace a file at INDEX (a folder holding anything but an index is never replaced)")
    b.add_argument("--type", choices=INDEX_KINDS, default=None,
                   help=f"index type (default: {d.kind}; ivfpq with --on-disk)")
    b.add_argument("--dataset", metavar="SPEC", help="attach the database coordinates of this dataset")
    b.add_argument(
        "--model",
        metavar="MODEL",
        help="record this model (preset or checkpoint path) so `netvlad query` can rebuild it "
        "(default: the model_ref that `netvlad extract` stored in FEATS); its out_dim is the "
        "dimension of a .bin FEATS",
    )
    add_feature_file_options(
        b, ("rows of a .bin/.npy FEATS (default for .bin: the --dataset's database images, in order)",),
        model=False,
    )
    _add_index_params(b)
    b.set_defaults(func=run_build)


def _add_index_params(b) -> None:
    """--nlist, --nprobe, --pq-m, --k-factor, --hnsw-m, --ef-search, --on-disk, --train-size."""
    from netvlad.index import IndexConfig

    d = IndexConfig()
    b.add_argument(
        "--nlist", type=int, default=d.nlist, help="IVF cells (default: about 4*sqrt(N), at most 1024)"
    )
    b.add_argument("--nprobe", type=int, default=d.nprobe, help=f"IVF cells searched (default: {d.nprobe})")
    b.add_argument("--pq-m", type=int, default=d.pq_m, help=f"PQ sub-quantisers (default: {d.pq_m})")
    b.add_argument(
        "--k-factor",
        type=int,
        default=d.refine_k_factor,
        help=f"IVF-PQ candidates re-ranked exactly per result (default: {d.refine_k_factor})",
    )
    b.add_argument("--hnsw-m", type=int, default=d.hnsw_m, help=f"HNSW degree (default: {d.hnsw_m})")
    b.add_argument(
        "--ef-search", type=int, default=d.ef_search, help=f"HNSW search beam (default: {d.ef_search})"
    )
    b.add_argument("--on-disk", action="store_true",
                   help="for databases beyond RAM (ivfflat/ivfpq, netvlad feature files only): train on a "
                   "sample (--train-size), add file by file, keep the inverted lists, names and the "
                   "vectors that ivfpq re-ranks on disk; queries memory-map them")
    b.add_argument("--train-size", type=int, default=d.train_size,
                   help=f"vectors sampled to train IVF/PQ (default: {d.train_size})")


def _add_query(sub) -> None:
    q = sub.add_parser(
        "query",
        help="localise photos: top-k database images and the estimated location",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Describe each IMAGE with the index's model (or --model), search the index and print\n"
        "the top-k database images, their scores and coordinates; the estimated location is the\n"
        "top-1 image's coordinates. Photos are turned upright by their EXIF orientation tag unless\n"
        "--no-exif-orientation; one over --max-pixels is downscaled with a warning (or refused with\n"
        "--oversize refuse); an unreadable photo or a decompression bomb is a one-line error.",
        epilog="examples:\n  netvlad query city.idx photo1.jpg photo2.jpg --k 5\n"
        "  netvlad query city.idx photo.jpg --model model.pt --json\n"
        "  netvlad query city.idx photo.jpg --near 40.4435,-79.9435 --radius 50 --html report/",
    )
    q.add_argument("index", metavar="INDEX", type=Path)
    q.add_argument("images", metavar="IMAGE", type=Path, nargs="+")
    q.add_argument(
        "--model", metavar="MODEL", help="model to describe the images (default: the one the index records)"
    )
    q.add_argument("--k", type=int, default=5, help="results per image (default: 5)")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--near", metavar="LAT,LON",
                   help="position prior: a GPS fix in degrees (needs --radius and an index with coordinates)")
    q.add_argument("--radius", type=float, metavar="M",
                   help="the fix's uncertainty in metres (1 sigma): matches beyond 3 sigma are dropped and "
                   "the rest re-weighted by the fix's likelihood")
    q.add_argument("--html", type=Path, metavar="DIR",
                   help="also write an HTML page (each photo beside its top-k, with a map) into DIR")
    q.add_argument("--db-root", type=Path, metavar="DIR",
                   help="folder the index's image names are relative to, for --html thumbnails "
                   "(default: the index's --dataset image root when it can be found)")
    q.add_argument("--device", default="cpu")
    q.add_argument("--batch-size", type=int, default=1)
    from netvlad.cli.extract_cmd import add_image_options

    add_image_options(q, exif_default="on: a phone photo is described upright")
    from netvlad.cli.options import add_rerank_options

    add_rerank_options(q, query=True)
    q.set_defaults(func=run_query)


def run_build(args) -> int:
    """`netvlad index build`."""
    from netvlad._outputs import OutputLock, check_output_dir
    from netvlad.index import IndexConfig
    from netvlad.index.faiss_index import is_index_dir

    # Checked before any work, then again under the lock by SearchIndex.save.
    inputs = [*(("FEATS", f) for f in args.features), ("--dataset", args.dataset), ("--model", args.model),
              ("--names", args.names)]
    check_output_dir(args.out, inputs=inputs, is_ours=is_index_dir, kind="netvlad index folder",
                     overwrite=args.overwrite, replaces_file=True)
    args.type = args.type or ("ivfpq" if args.on_disk else IndexConfig().kind)
    if args.on_disk and args.type not in ("ivfflat", "ivfpq"):
        raise CLIError(f"--on-disk builds an ivfflat or ivfpq index, not {args.type}")
    if len(args.features) > 1 and args.names is not None:
        raise CLIError("--names names the rows of one .bin/.npy FEATS; give one file with it")
    with OutputLock(args.out, "building"):
        return _build_on_disk(args) if args.on_disk else _build(args)


def _build_inputs(args) -> dict:
    """The dataset, model and model reference the build options name (keyword arguments of the
    library's index builders)."""
    from netvlad.data import load_dataset
    from netvlad.weights import model_reference

    model = None
    if args.model:
        from netvlad.weights import load_model

        model = load_model(args.model)
    return {"dataset": load_dataset(args.dataset) if args.dataset else None, "dataset_spec": args.dataset,
            "model": model, "model_ref": model_reference(args.model) if args.model else None,
            "overwrite": args.overwrite}


def _built_line(built) -> str:
    """What the build says after its first words: coordinates, model, left-out rows."""
    no_model = ", no model recorded (netvlad query will need --model)"
    return (f"{' with coordinates' if built.coordinates else ''}"
            + (f", model {built.model}" if built.model else no_model)
            + (f"; {built.left_out} NaN descriptor(s) left out" if built.left_out else ""))


def _build_on_disk(args) -> int:
    """`netvlad index build --on-disk`: FEATS read a block at a time."""
    from netvlad.index import build_ondisk_index_from_files
    from netvlad.index.ondisk import nbytes_on_disk

    built = build_ondisk_index_from_files(
        args.features, args.out, args.type, model_label=f"--model {args.model}", nlist=args.nlist,
        nprobe=args.nprobe, pq_m=args.pq_m, refine_k_factor=args.k_factor, train_size=args.train_size,
        **_build_inputs(args))
    index = built.index
    print(f"{args.out}: on-disk {args.type} index of {index.ntotal} {index.dim}-D descriptors from "
          f"{len(args.features)} file(s), {nbytes_on_disk(args.out) / 2**20:.1f} MiB"
          + _built_line(built))
    return 0


def _build(args) -> int:
    from netvlad.cli.options import feature_dim
    from netvlad.index import build_index_from_files

    built = build_index_from_files(
        args.features, args.out, args.type, names_file=args.names, dim=feature_dim(args.dim, None),
        options={"names_file": "--names", "model": f"--model {args.model}"}, nlist=args.nlist,
        nprobe=args.nprobe, pq_m=args.pq_m, refine_k_factor=args.k_factor, hnsw_m=args.hnsw_m,
        ef_search=args.ef_search, train_size=args.train_size, **_build_inputs(args))
    print(f"{args.out}: {args.type} index of {built.index.ntotal} {built.index.dim}-D descriptors"
          + _built_line(built))
    return 0


def _parse_near(text: str) -> tuple[float, float]:
    try:
        lat, lon = (float(v) for v in text.split(","))
    except ValueError:
        raise CLIError(f"--near wants LAT,LON in degrees (e.g. 48.8584,2.2945), got {text!r}") from None
    return lat, lon


def _prior(args, index):
    from netvlad.rerank.prior import PositionPrior

    if (args.near is None) != (args.radius is None):
        raise CLIError("--near and --radius go together (a position and its uncertainty in metres)")
    if args.near is None:
        return None
    if index.utm is None:
        raise CLIError(f"{args.index} holds no coordinates; a position prior needs an index built "
                       "with --dataset")
    lat, lon = _parse_near(args.near)
    try:
        return PositionPrior.from_latlon(lat, lon, args.radius, index.meta.get("zone"))
    except ValueError as exc:
        raise CLIError(f"{args.index}: {exc}") from exc


def run_query(args) -> int:
    """`netvlad query`."""
    from netvlad.index import load_index
    from netvlad.serve import check_model_for_index, index_max_side, search_images
    from netvlad.weights import load_model

    if args.k < 1:
        raise CLIError(f"--k must be ≥ 1, got {args.k}")
    index = load_index(args.index)
    prior = _prior(args, index)
    if args.html is not None:
        from netvlad.serve.report import check_report_dir

        check_report_dir(args.html, inputs=[args.index, *args.images])
    ref = args.model or index.meta.get("model")
    if not ref:
        raise CLIError(
            f"{args.index} records no model; pass --model MODEL (the one that extracted its features)"
        )
    try:
        model = load_model(ref, device=args.device)
    except FileNotFoundError as exc:
        if args.model:
            raise
        raise CLIError(
            f"{args.index} records model {ref}, which cannot be loaded ({exc}); pass --model MODEL"
        ) from exc
    check_model_for_index(index, model, ref, args.index)
    from netvlad.cli.extract_cmd import image_settings

    # Describe the photos at the resolution the database was extracted at.
    if args.rerank:
        res = _rerank_photos(args, index, model, image_settings(args, exif_default=True), prior)
    else:
        res = search_images(index, model, list(args.images), args.k, args.device, args.batch_size,
                            index_max_side(index), prior=prior, **image_settings(args, exif_default=True))
    if args.html is not None:
        from netvlad.serve.localize import db_image_paths
        from netvlad.serve.report import write_query_report

        page = write_query_report(args.html, res, list(args.images), index,
                                  db_paths=db_image_paths(index, args.db_root, args.index))
        if not args.json:
            print(f"report: {page}")
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    for r in res:
        _print_result(r)
    return 0


def _rerank_photos(args, index, model, settings: dict, prior) -> list[dict]:
    """`netvlad query --rerank`: describe the photos, search the top --rerank-top, re-rank, keep --k."""
    from netvlad.rerank import rerank_photo_results
    from netvlad.serve import describe_images, index_max_side, localize_descriptors

    if args.rerank_top < 1:
        raise CLIError(f"--rerank-top must be >= 1, got {args.rerank_top}")
    if index.names is None:
        raise CLIError(f"{args.index} stores no image names: re-ranking needs them")
    need = "--db-patches" if args.rerank == "patch" else "--db-features"
    if getattr(args, need[2:].replace("-", "_")) is None:
        raise CLIError(f"--rerank {args.rerank} needs {need} FILE (see --help)")
    labels = [str(p) for p in args.images]
    max_side = index_max_side(index)
    desc = describe_images(model, args.images, args.device, args.batch_size, max_side, **settings)
    res = localize_descriptors(index, desc, max(args.k, args.rerank_top), labels, [prior] * len(labels))
    return rerank_photo_results(
        res, desc, args.images, index, model, args.rerank, args.k, top_n=args.rerank_top,
        db_features=args.db_features, db_patches=args.db_patches, scorer=args.patch_scorer,
        device=args.device, max_side=max_side, model_label=args.model or "the index",
        options={"db_features": "--db-features", "db_patches": "--db-patches"}, **settings)


def _print_result(r: dict) -> None:
    loc = r["location"]
    where = (
        "no coordinates stored" if loc is None and r["prior"] is None
        else "no database image within the prior's gate" if loc is None
        else f"easting {loc[0]:.1f} northing {loc[1]:.1f}" + (f" (zone {r['zone']})" if r["zone"] else "")
    )
    if r["location_latlon"]:
        where += f", lat {r['location_latlon'][0]:.6f} lon {r['location_latlon'][1]:.6f}"
    print(f"{r['image']}: estimated location {where}")
    for x in r["results"]:
        coords = "" if x["utm"] is None else f"  {x['utm'][0]:.1f} {x['utm'][1]:.1f}"
        print(f"  {x['rank']:>3}  {x['score']:.4f}  {x['name']}{coords}")
