"""``netvlad evaluate``, ``netvlad plot`` and ``netvlad benchmark retrieval``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from netvlad._atomic import atomic_write, atomic_write_text
from netvlad.cli import CLIError

log = logging.getLogger(__name__)


def register(sub) -> None:
    """Add this module's sub-commands to `sub` (an argparse subparsers action)."""
    from netvlad.metrics import DEFAULT_NS

    p = sub.add_parser(
        "evaluate",
        help="recall@N of feature files on a place-recognition dataset",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="recall@N exactly as the original testFromFn: exact squared-L2 ranking (yael_nn; the\n"
        "descriptors need not be L2-normalised), a hit when any database image within the positive\n"
        "radius (25 m) is in the top N, every query in the denominator (no positive = failure), the\n"
        "dataset's rules applied (Tokyo 24/7 panorama de-duplication, TokyoTM same-timestamp exclusion)\n"
        "and a per-condition breakdown when the dataset labels its queries (Tokyo 24/7\n"
        "day/sunset/night).\n\n"
        "Images that failed extraction (--skip-bad: NaN rows, bad_images attribute) are reported: such\n"
        "a query counts as a failure, such a database image is never retrieved. Database and query\n"
        "files must come from the same model (same fingerprint) unless --allow-mixed-models.\n\n"
        + FEATS_HELP,
        epilog="examples:\n"
        "  netvlad evaluate --dataset pitts30k_test.mat --db f_db.h5 --queries f_query.h5\n"
        "  netvlad evaluate --dataset pitts30k_test.mat --db db.bin --queries q.bin --dim 4096\n"
        "  netvlad evaluate --dataset pitts30k_test --db pnv_db/globalfeats.npy --db-names index.txt \\\n"
        "      --queries pnv_q/globalfeats.npy --query-names query.txt\n"
        "  netvlad evaluate --dataset tokyo247.mat --db f_db.h5 --queries f_query.h5 --crop-dim 256 \\\n"
        "      --report tokyo.json --plot tokyo.png",
    )
    p.add_argument(
        "--dataset", metavar="SPEC", required=True, help="dataset file or folder (any supported format)"
    )
    p.add_argument("--db", metavar="FEATS", type=Path, required=True, help="database feature file")
    p.add_argument(
        "--queries",
        metavar="FEATS",
        type=Path,
        help="query feature file (default: the query names are looked up in --db)",
    )
    add_feature_file_options(
        p,
        names_help=(
            "rows of a --db .bin/.npy file (default for .bin: the dataset's database images, in order)",
            "rows of a --queries .bin/.npy file (default for .bin: the dataset's queries, in order)",
        ),
    )
    p.add_argument(
        "--ns",
        type=int,
        nargs="+",
        default=DEFAULT_NS,
        metavar="N",
        help="the Ns of recall@N (default: 1-5, 10-100 step 5)",
    )
    p.add_argument(
        "--crop-dim",
        type=int,
        metavar="D",
        help="keep the first D dimensions and re-normalise (after PCA whitening)",
    )
    p.add_argument("--sample", type=int, metavar="N", help="evaluate N queries drawn with seed 43")
    add_protocol_options(p)
    add_mixed_models_flag(p)
    add_rerank_options(p)
    p.add_argument("--report", type=Path, metavar="R.json", help="write summary + per-query ranks and hits")
    p.add_argument("--plot", type=Path, metavar="R.png", help="write the recall@N curve")
    p.add_argument("--html", type=Path, metavar="DIR",
                   help="write a browsable report into DIR: summary and curves, then every query beside its "
                   "top 5 (green = positive), failures first, filters by condition")
    p.add_argument("--label", help="curve/report label (default: the dataset name and db file name)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --report/--plot files that are not netvlad reports/plots (never an input)")
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser(
        "plot",
        help="recall@N curves of several evaluate reports on one plot",
        description="Plot the recall@N curves of reports written by `netvlad evaluate --report`.",
        epilog="example:\n  netvlad plot a.json b.json --out curves.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("reports", nargs="+", type=Path, metavar="REPORT.json")
    p.add_argument("--out", type=Path, required=True, metavar="P.png")
    p.add_argument("--title", default="recall@N")
    p.add_argument("--overwrite", action="store_true", help="replace a P.png that is not a netvlad plot")
    p.set_defaults(func=run_plot)

    p = sub.add_parser("benchmark", help="image-retrieval (mAP) and place-recognition (recall@N) benchmarks")
    bsub = p.add_subparsers(dest="benchmark_command", metavar="KIND", required=True)
    r = bsub.add_parser(
        "retrieval",
        help="Oxford 5k / Paris 6k / Holidays / revisited Oxford, Paris mAP of MODEL",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Extract descriptors with MODEL and compute mAP (trapezoidal AP) as demoRetrieval:\n"
        "Oxford/Paris positives good+ok, junk ignored, `crop` queries (ROI grown by half the receptive\n"
        "field, 98 px for VGG-16) or `full`; Holidays query excluded, images downscaled to <=1024x768;\n"
        "revisited Oxford/Paris Easy/Medium/Hard.\n\n"
        "Root layouts: Oxford/Paris ROOT/images + ROOT/groundtruth; Holidays ROOT/jpg (or jpg_rotated\n"
        "with --rot); revisited ROOT/gnd_<name>.pkl + ROOT/jpg.",
        epilog="example:\n  netvlad benchmark retrieval --dataset oxford5k --root /data/oxford5k \\\n"
        "      vgg16-netvlad.pt --dims 4096 256",
    )
    r.add_argument("model", metavar="MODEL", help="preset name or checkpoint path")
    r.add_argument(
        "--dataset", required=True, choices=("oxford5k", "paris6k", "holidays", "roxford5k", "rparis6k")
    )
    r.add_argument("--root", type=Path, required=True, metavar="DIR")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument(
        "--crop", dest="crop", action="store_true", default=True, help="cropped queries (default)"
    )
    mode.add_argument("--full", dest="crop", action="store_false", help="full-image queries")
    r.add_argument("--rot", action="store_true", help="Holidays: the manually rotated images (jpg_rotated/)")
    r.add_argument(
        "--dims",
        type=int,
        nargs="+",
        metavar="D",
        help="dimensions to report (default: the full dimension and 256)",
    )
    r.add_argument("--batch-size", type=int, default=1, help="images per batch (default 1, as the original)")
    r.add_argument("--device", default="cpu")
    r.add_argument(
        "--max-side",
        type=int,
        default=0,
        metavar="PX",
        help="cap the longest image side at PX pixels (default 0: native resolution, as the protocol, "
        "whatever the model's preprocessing says)",
    )
    r.add_argument("--report", type=Path, metavar="R.json")
    r.add_argument("--overwrite", action="store_true", help="replace an R.json that is not a netvlad report")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=run_benchmark)
    from netvlad.cli.vpr_cmd import register_benchmark_vpr

    register_benchmark_vpr(bsub)


# ---------------------------------------------------------------------------------------------

#: tEXt entry of every plot `plot_curves` writes: what lets a later run recognise and replace it.
PLOT_TAG = ("netvlad", "recall@N curves")


def is_report(path: Path) -> bool:
    """An ``evaluate --report`` or ``benchmark retrieval --report`` file (by its keys)."""
    from netvlad._outputs import json_object_with

    return json_object_with(path, ("recall", "ns", "num_queries")) or json_object_with(
        path, ("benchmark", "results"))


def is_plot(path: Path) -> bool:
    """A PNG written by :func:`plot_curves`."""
    from netvlad._outputs import png_text

    return png_text(path).get(PLOT_TAG[0]) == PLOT_TAG[1]


def check_outputs(inputs, overwrite: bool, report: Path | None = None, plot: Path | None = None) -> None:
    """--report / --plot may be no input, not each other, and replace only our own files."""
    from netvlad._outputs import check_distinct, check_output_file

    check_distinct([("--report", report), ("--plot", plot)])
    if report is not None:
        check_output_file(report, inputs=inputs, is_ours=is_report, kind="netvlad report",
                          overwrite=overwrite)
    if plot is not None:
        check_output_file(plot, inputs=inputs, is_ours=is_plot, kind="netvlad plot", overwrite=overwrite)


def add_protocol_options(p) -> None:
    """``--protocol``, ``--predictions``, ``--cities`` and ``--subtask`` of ``evaluate``."""
    from netvlad.data.formats import SUBTASKS
    from netvlad.metrics import PROTOCOLS

    p.add_argument("--protocol", choices=PROTOCOLS,
                   help="how recall is counted: netvlad (recallAtN: every query in the denominator) or msls "
                   "(Mapillary's evaluate.py: queries without a positive left out, recall@N and mAP@N, Ns 1 "
                   "5 10 20); default: the dataset's (msls for MSLS, netvlad otherwise)")
    p.add_argument("--predictions", type=Path, metavar="P.txt",
                   help="write the MSLS challenge prediction file: per query its key, then the keys of its "
                   "top database images (as many as the largest N), keys without .jpg; for test cities "
                   "(no coordinates) it is the only output")
    p.add_argument("--cities", metavar="LIST",
                   help="MSLS: cities, comma-separated, or train / val / test (default: val = cph,sf)")
    p.add_argument("--subtask", choices=SUBTASKS, help="MSLS: evaluate this subtask's rows (default: all)")


def is_prediction_file(path: Path) -> bool:
    """A prediction file written by ``evaluate --predictions`` (by its first line)."""
    from netvlad.metrics.msls import PREDICTIONS_HEADER

    with open(path, encoding="utf-8", errors="replace") as f:
        return f.readline().rstrip("\n") == PREDICTIONS_HEADER


#: How FEATS arguments are read (evaluate, index build and pairs print it in --help).
FEATS_HELP = (
    "FEATS, recognised by content: a netvlad feature file (netvlad extract), an hloc global-feature\n"
    "file (a group per image holding global_descriptor), a MATLAB .bin (serialAllFeats: headerless\n"
    "float32, image-major: give --dim D or --model MODEL) or Patch-NetVLAD's globalfeats.npy. A .bin or\n"
    ".npy file stores no image names: its rows follow an image list (--*-names FILE, one name per line:\n"
    "for .npy the file given to Patch-NetVLAD's feature_extract.py as --dataset_file_path), and a row\n"
    "count that differs from the list's is an error."
)


def add_feature_file_options(p, names_help: tuple[str, ...], model: bool = True) -> None:
    """``--dim``, ``--model`` and the names-file options (``--db-names``/``--query-names``, or
    ``--names`` when ``names_help`` has one entry) that reading .bin/.npy feature files needs."""
    flags = ("--names",) if len(names_help) == 1 else ("--db-names", "--query-names")
    for flag, text in zip(flags, names_help):
        p.add_argument(flag, type=Path, metavar="FILE", help=f"image list naming the {text}")
    p.add_argument("--dim", type=int, metavar="D", help="descriptor dimension of a MATLAB .bin file "
                   "(checked against the other formats)")
    if model:
        p.add_argument("--model", metavar="MODEL", help="the model that computed the features: its "
                       "out_dim is the dimension of a .bin file (instead of --dim)")


def feature_dim(dim: int | None, model: str | None) -> int | None:
    """The descriptor dimension given by ``--dim`` or by ``--model``'s out_dim (None: neither)."""
    if dim is not None:
        if dim < 1:
            raise CLIError(f"--dim must be >= 1, got {dim}")
        return dim
    if model is None:
        return None
    from netvlad.weights import load_model

    return int(load_model(model).out_dim)


def read_feature_file(path: Path, names_file: Path | None, flag: str, dim: int | None,
                      default_names: list[str] | None = None, default_from: str = ""):
    """:func:`netvlad.io.load_global_features` with the row names of a nameless file taken from
    ``names_file`` (the ``flag`` option), else — for a MATLAB .bin only, which MATLAB writes in
    dataset order — from ``default_names``."""
    from netvlad.io import NAMELESS_SOURCES, feature_file_kind, load_global_features, read_image_list

    kind = feature_file_kind(path)
    if kind not in NAMELESS_SOURCES:
        if names_file is not None:
            raise CLIError(f"{flag} names the rows of a .bin or .npy file; {path} stores its own names")
        return load_global_features(path, dim=dim)
    if names_file is not None:
        names, names_from = read_image_list(names_file), str(names_file)
    elif kind == "matlab-bin" and default_names is not None:
        names, names_from = default_names, default_from
        log.info("%s: rows taken as %s, in order", path, default_from)
    else:
        where = " (the --dataset_file_path given to Patch-NetVLAD's feature_extract.py)" \
            if kind == "patchnetvlad-npy" else ""
        raise CLIError(f"{path}: a {'.npy' if where else '.bin'} file stores no image names: give "
                       f"{flag} FILE, the image list its rows follow{where}, one name per line")
    return load_global_features(path, dim=dim, names=names, names_from=names_from)


def add_rerank_options(p, query: bool = False) -> None:
    """--rerank, --rerank-top, --patch-scorer, --db-patches and (evaluate) --query-patches or (query)
    --db-features."""
    from netvlad.rerank import DEFAULT_TOP_N, METHODS, SCORERS

    p.add_argument("--rerank", choices=METHODS, help="re-rank the top --rerank-top candidates: patch "
                   "(Patch-NetVLAD: patch features from `netvlad extract --patches`), aqe (query expansion), "
                   "dba (database-side augmentation), kreciprocal (k-reciprocal, OpenIBL's settings)")
    p.add_argument("--rerank-top", type=int, default=DEFAULT_TOP_N, metavar="N",
                   help=f"candidates re-ranked per query (default: {DEFAULT_TOP_N})")
    p.add_argument("--patch-scorer", choices=SCORERS, default="spatial",
                   help="--rerank patch: rapid spatial scoring (fast) or RANSAC (default: spatial)")
    if query:
        p.add_argument("--db-patches", type=Path, metavar="FILE", help="--rerank patch: the database's patch "
                       "features (`netvlad extract --patches` over the images the index was built from)")
        p.add_argument("--db-features", type=Path, metavar="FEATS", help="--rerank aqe|dba|kreciprocal: the "
                       "database feature file the index was built from")
        return
    p.add_argument("--db-patches", type=Path, metavar="FILE",
                   help="database patch features (default: --db with .patches before .h5)")
    p.add_argument("--query-patches", type=Path, metavar="FILE",
                   help="query patch features (default: --queries with .patches before .h5)")


def open_patch_file(path: Path, flag: str):
    """A netvlad.io.PatchFile, or a one-line CLIError naming the file and the fix."""
    from netvlad.io import FeatureFileError, PatchFile

    if not path.is_file():
        raise CLIError(f"{path}: no patch features there ({flag}); write them with `netvlad extract "
                       "--patches` or name the file with " + flag)
    try:
        return PatchFile(path)
    except (FeatureFileError, OSError) as exc:
        raise CLIError(str(exc)) from None


def make_reranker(args, query_names, db_names, q, db):
    """The re-ranker of --rerank (None without it); q, db: the global descriptors, as ranked."""
    from netvlad.extract import patch_file_for
    from netvlad.io import FeatureFileError
    from netvlad.rerank import build_reranker

    if args.rerank is None:
        if args.db_patches or args.query_patches:
            raise CLIError("--db-patches and --query-patches go with --rerank patch")
        return None
    if args.rerank_top < 1:
        raise CLIError(f"--rerank-top must be >= 1, got {args.rerank_top}")
    if args.rerank != "patch":
        return build_reranker(args.rerank, top_n=args.rerank_top, queries=q, db=db)
    dbf = open_patch_file(args.db_patches or patch_file_for(args.db), "--db-patches")
    qpath = args.query_patches or patch_file_for(getattr(args, "queries", None) or args.db)
    qf = dbf if qpath == dbf.path else open_patch_file(qpath, "--query-patches")
    if dbf.attrs.get("fingerprint") != qf.attrs.get("fingerprint") and not args.allow_mixed_models:
        raise CLIError(f"{qf.path} and {dbf.path} were written by different models; pass "
                       "--allow-mixed-models to compare them anyway")
    try:
        return build_reranker("patch", top_n=args.rerank_top, query_patches=qf, db_patches=dbf,
                              query_names=query_names, db_names=db_names, scorer=args.patch_scorer)
    except (ValueError, FeatureFileError) as exc:
        raise CLIError(str(exc)) from None


def rerank_photos(args, index, model, settings: dict, prior) -> list[dict]:
    """`netvlad query --rerank`: describe the photos, search the top --rerank-top, re-rank, keep --k."""
    from netvlad.extract import PatchConfig, compute_patches
    from netvlad.io import align_features, load_global_features
    from netvlad.rerank import MemoryPatchStore, build_reranker, rerank_results
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
    if args.rerank != "patch":
        db = align_features(load_global_features(args.db_features), index.names, "database")
        return rerank_results(res, build_reranker(args.rerank, top_n=args.rerank_top, queries=desc, db=db),
                              args.k)
    dbf = open_patch_file(args.db_patches, "--db-patches")
    if dbf.attrs.get("fingerprint") != model.fingerprint():
        raise CLIError(f"{args.db_patches} was written by another model than {args.model or 'the index'}'s")
    whitened = getattr(model, "whitening", None) is not None and dbf.dim < model.out_dim
    cfg = PatchConfig(sizes=tuple(s for s, _ in dbf.scales), strides=tuple(t for _, t in dbf.scales),
                      dim=dbf.dim if whitened else None)
    photos = compute_patches(model, args.images, cfg, device=args.device, max_side=max_side, num_workers=0,
                             progress=False, **{"exif_orientation": True, **settings})
    store = MemoryPatchStore(labels, photos, dbf.scales)
    rr = build_reranker("patch", top_n=args.rerank_top, query_patches=store, db_patches=dbf,
                        query_names=labels, db_names=index.names, scorer=args.patch_scorer)
    try:
        return rerank_results(res, rr, args.k)
    finally:
        dbf.close()


def add_mixed_models_flag(p) -> None:
    """``--allow-mixed-models`` on parser ``p`` (evaluate, pairs)."""
    p.add_argument(
        "--allow-mixed-models",
        action="store_true",
        help="compare database and query features written by different models (refused by default: "
        "their descriptors live in different spaces)",
    )


def check_same_model(db_path: Path, db_fp: str | None, q_path: Path, q_fp: str | None,
                     allow_mixed: bool = False) -> None:
    """Refuse database and query features from two models (CLIError naming both fingerprints).

    A file without a fingerprint (hloc, MATLAB .bin, or written without one) cannot be checked:
    one warning says so. With ``allow_mixed`` a mismatch is a warning instead of an error.
    """
    unknown = [str(p) for p, fp in ((db_path, db_fp), (q_path, q_fp)) if not fp]
    if unknown:
        log.warning(
            "%s: no model fingerprint (an hloc or MATLAB file, or one written without it): cannot "
            "check that database and query descriptors come from the same model",
            " and ".join(dict.fromkeys(unknown)),
        )
        return
    if db_fp == q_fp:
        return
    msg = (
        f"{db_path} (model fingerprint {db_fp[:16]}) and {q_path} (model fingerprint {q_fp[:16]}) "
        "were written by different models: their descriptors are not comparable"
    )
    if not allow_mixed:
        raise CLIError(f"{msg}; pass --allow-mixed-models to compare them anyway")
    log.warning("%s; comparing them anyway (--allow-mixed-models)", msg)


def _first_names(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (" ..." if len(names) > n else "")


def bad_descriptor_lines(res: dict, ds) -> list[str]:
    """Human-readable lines about NaN descriptors (failed images) in an evaluation, if any."""
    lines = []
    bq = [ds.query_images[int(i)] for i in res.get("bad_queries", [])]
    bd = [ds.db_images[int(i)] for i in res.get("bad_db", [])]
    if bq:
        lines.append(
            f"{len(bq)} of {res['num_queries']} queries have NaN descriptors (images that failed "
            f"extraction), counted as failures: {_first_names(bq)}"
        )
    if bd:
        lines.append(
            f"{len(bd)} of {res['num_db']} database images have NaN descriptors (images that failed "
            f"extraction), never retrieved: {_first_names(bd)}"
        )
    return lines


def build_report(res: dict, ds, label: str, db_path: Path, q_path: Path | None) -> dict:
    """JSON-ready report: summary first, then one row per evaluated query (deterministic order)."""
    ns = res["ns"]
    report = {
        "label": label,
        "dataset": res.get("dataset"),
        "db_features": str(db_path),
        "query_features": str(q_path if q_path is not None else db_path),
        "num_db": res["num_db"],
        "num_queries": res["num_queries"],
        "dim": res["dim"],
        "crop_dim": res["crop_dim"],
        "sample": res["sample"],
        "seed": res["seed"],
        "ns": ns,
        "recall": {str(n): res["recall"][n] for n in ns},
        # Images that failed extraction (NaN rows): queries count as failures, db images are never ranked.
        "bad_queries": {
            "count": len(res.get("bad_queries", [])),
            "names": [ds.query_images[int(i)] for i in res.get("bad_queries", [])],
        },
        "bad_db": {
            "count": len(res.get("bad_db", [])),
            "names": [ds.db_images[int(i)] for i in res.get("bad_db", [])],
        },
    }
    if "by_condition" in res:
        report["by_condition"] = {
            c: {"num_queries": v["num_queries"], "recall": {str(n): v["recall"][n] for n in ns}}
            for c, v in res["by_condition"].items()
        }
    rows = []
    for j, qi in enumerate(res["query_indices"]):
        first = int(res["first_hit"][j])
        row = {
            "query": ds.query_images[int(qi)],
            "index": int(qi),
            "rank": first + 1 if first >= 0 else None,
            "num_positives": int(res["num_positives"][j]),
            "hits": [int(h) for h in res["hits"][j]],
            "top": [ds.db_images[int(t)] for t in res["top"][j] if t >= 0],
        }
        if "conditions" in res:
            row["condition"] = res["conditions"][j]
        rows.append(row)
    report["queries"] = rows
    return report


def format_recall_table(recall: dict, by_condition: dict | None = None) -> str:
    """Plain-text table: one row per N, a column per condition."""
    cols = ["all", *(by_condition or {})]
    lines = ["     N " + "".join(f"{c:>9}" for c in cols)]
    for n in recall:
        vals = [recall[n], *(by_condition[c]["recall"][n] for c in cols[1:])] if by_condition else [recall[n]]
        lines.append(f"{n:>6} " + "".join(f"{100 * v:>8.2f}%" for v in vals))
    return "\n".join(lines)


def plot_curves(curves: list[tuple[str, list[int], list[float]]], out: Path, title: str = "recall@N") -> Path:
    """Write recall@N curves (label, Ns, fractions) to a PNG with matplotlib's Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for label, ns, vals in curves:
        ax.plot(ns, [100 * v for v in vals], marker="o", markersize=3, label=label)
    ax.set_xlabel("N (number of top retrieved database images)")
    ax.set_ylabel("recall@N (%)")
    ax.set_title(title)
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", metadata=dict([PLOT_TAG])),
                     suffix=".tmp.png")
    finally:
        plt.close(fig)
    return out


def _read_eval_db(args, ds, dim: int | None):
    """The --db file."""
    db = read_feature_file(args.db, args.db_names, "--db-names", dim, list(ds.db_images),
                           "the dataset's database list")
    if args.queries is None and db.names_from != "the file" and args.db_names is None:
        raise CLIError(f"{args.db}: its rows are the dataset's database images only; give the query "
                       "features with --queries")
    return db


def _read_eval_queries(args, ds, dim: int | None, db):
    """The --queries file, or the --db file ``db`` when --queries is omitted."""
    if args.queries is not None:
        return read_feature_file(args.queries, args.query_names, "--query-names", dim,
                                 list(ds.query_images), "the dataset's query list")
    if args.query_names is not None:
        raise CLIError("--query-names names the rows of a --queries file; give --queries too")
    return db


def run_evaluate(args) -> int:
    """`netvlad evaluate`."""
    from netvlad.data import load_dataset
    from netvlad.io import align_features
    from netvlad.metrics import DEFAULT_NS, evaluate_dataset, has_coordinates, protocol_line, protocol_report

    if any(n < 1 for n in args.ns):
        raise CLIError(f"--ns must be positive, got {args.ns}")
    if args.sample is not None and args.sample < 1:
        raise CLIError(f"--sample must be ≥ 1, got {args.sample}")
    if args.crop_dim is not None and args.crop_dim < 1:
        raise CLIError(f"--crop-dim must be ≥ 1 (omit it to keep every dimension), got {args.crop_dim}")
    inputs = [("--dataset", args.dataset), ("--db", args.db), ("--queries", args.queries),
              ("--db-names", args.db_names), ("--query-names", args.query_names)]
    check_outputs(inputs, args.overwrite, args.report, args.plot)
    _check_predictions_output(args, inputs)
    if args.html is not None:
        from netvlad.serve.report import check_report_dir

        check_report_dir(args.html, [p for _, p in inputs if p])
    ds = load_dataset(args.dataset, options={"cities": args.cities, "subtask": args.subtask})
    dim = feature_dim(args.dim, args.model)
    db_feats = _read_eval_db(args, ds, dim)
    db = align_features(db_feats, ds.db_images, "database")
    if args.crop_dim is not None and args.crop_dim > db.shape[1]:
        raise CLIError(f"--crop-dim {args.crop_dim} exceeds the {db.shape[1]}-D descriptors of {args.db}")
    q_feats = _read_eval_queries(args, ds, dim, db_feats)
    q = align_features(q_feats, ds.query_images, "query")
    if db.shape[1] != q.shape[1]:
        raise CLIError(f"{args.db} has {db.shape[1]}-D descriptors but {args.queries} has {q.shape[1]}-D")
    if args.queries is not None and args.queries.resolve() != args.db.resolve():
        check_same_model(args.db, db_feats.fingerprint, args.queries, q_feats.fingerprint,
                         args.allow_mixed_models)
    ns = None if args.ns is DEFAULT_NS else args.ns  # not given: the protocol's Ns
    if args.predictions:
        _write_predictions(args, ds, db, q, ns)
    if not has_coordinates(ds):
        if not args.predictions:
            raise CLIError(f"{args.dataset}: {ds.name} has no coordinates (MSLS test cities): give "
                           "--predictions P.txt to write the challenge's prediction file")
        print(f"{ds.name}: no coordinates (the challenge server holds the ground truth): no recall here")
        return 0
    from netvlad.metrics import crop_to_dim

    rerank = make_reranker(args, ds.query_images, ds.db_images, crop_to_dim(q, args.crop_dim),
                           crop_to_dim(db, args.crop_dim))
    res = evaluate_dataset(ds, db, q, ns=ns, crop_dim=args.crop_dim, sample=args.sample, rerank=rerank,
                           protocol=args.protocol)
    label = args.label or f"{ds.name} ({args.db.name}{f', {args.crop_dim}-D' if args.crop_dim else ''})"
    print(f"{label}: {res['num_queries']} queries, {res['num_db']} database images, {res['dim']}-D")
    if rerank is not None:
        print(f"re-ranked the top {rerank.top_n} with {args.rerank}: "
              f"{1000 * rerank.seconds / max(res['num_queries'], 1):.1f} ms per query")
    for line in bad_descriptor_lines(res, ds):
        print(line)
    print(format_recall_table(res["recall"], res.get("by_condition")))
    if "map" in res:
        print("  mAP@N " + "  ".join(f"{n}: {100 * v:.2f}%" for n, v in res["map"].items()))
    print(protocol_line(res, ds))
    if args.report:
        report = build_report(res, ds, label, args.db, args.queries)
        report.update(protocol_report(res, ds.query_images))
        atomic_write_text(args.report, json.dumps(report, indent=1) + "\n")
        print(f"report: {args.report}")
    if args.plot:
        plot_curves([(label, res["ns"], [res["recall"][n] for n in res["ns"]])], args.plot)
        print(f"plot: {args.plot}")
    if args.html is not None:
        from netvlad.serve.report import write_evaluation_report

        print(f"html: {write_evaluation_report(args.html, res, ds, label)}")
    return 0


def _check_predictions_output(args, inputs) -> None:
    from netvlad._outputs import check_distinct, check_output_file

    if args.predictions is None:
        return
    check_distinct([("--report", args.report), ("--plot", args.plot), ("--predictions", args.predictions)])
    check_output_file(args.predictions, inputs=inputs, is_ours=is_prediction_file, kind="prediction file",
                      overwrite=args.overwrite)


def _write_predictions(args, ds, db, q, ns) -> None:
    from netvlad.metrics import protocol_ns, rank_dataset, write_predictions

    k = max(protocol_ns(args.protocol or ds.protocol, ns))
    ranked = rank_dataset(ds, db, q, k, crop_dim=args.crop_dim)
    write_predictions(args.predictions, ds.query_images, ds.db_images, ranked)
    print(f"predictions: {args.predictions} ({len(ds.query_images)} queries, top {ranked.shape[1]} each)")


def run_plot(args) -> int:
    """`netvlad plot`."""
    check_outputs([("REPORT.json", r) for r in args.reports], args.overwrite, plot=args.out)
    curves = []
    for path in args.reports:
        try:
            rep = json.loads(path.read_text())
            recall = rep["recall"]
            ns = sorted(int(n) for n in recall)
            curves.append((rep.get("label") or path.stem, ns, [float(recall[str(n)]) for n in ns]))
        except FileNotFoundError as exc:
            raise CLIError(f"{path}: report not found") from exc
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CLIError(f"{path}: not an evaluate report (needs a 'recall' object): {exc}") from exc
    plot_curves(curves, args.out, args.title)
    print(f"plot: {args.out}")
    return 0


def run_benchmark(args) -> int:
    """`netvlad benchmark retrieval`."""
    from netvlad.retrieval import benchmark_retrieval
    from netvlad.weights import load_model

    if args.max_side < 0:
        raise CLIError(f"--max-side must be >= 0 (0: native resolution), got {args.max_side}")
    check_outputs([("MODEL", args.model), ("--root", args.root)], args.overwrite, args.report)
    model = load_model(args.model, device=args.device)
    dims = args.dims or [None, 256]
    res = benchmark_retrieval(
        model,
        args.dataset,
        args.root,
        crop=args.crop,
        dims=dims,
        rotated=args.rot,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.no_progress,
        max_side=args.max_side,
    )
    print(
        f"{res['benchmark']} ({res['queries']} queries): {res['num_queries']} queries, {res['num_db']} images"
    )
    protocols = list(next(iter(res["results"].values()))["protocols"])
    print("   dim " + "".join(f"{p:>10}" for p in protocols) + "   (mAP %)")
    for dim, r in res["results"].items():
        print(f"{dim:>6} " + "".join(f"{r['protocols'][p]['map']:>10.2f}" for p in protocols))
    if args.report:
        out = {
            "benchmark": res["benchmark"],
            "model": str(args.model),
            "queries": res["queries"],
            "grow": res["grow"],
            "max_side": args.max_side,
            "num_db": res["num_db"],
            "num_queries": res["num_queries"],
            "results": {str(d): r for d, r in res["results"].items()},
        }
        atomic_write_text(args.report, json.dumps(out, indent=1) + "\n")
    return 0

