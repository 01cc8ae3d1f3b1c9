"""``netvlad evaluate``, ``netvlad plot`` and ``netvlad benchmark retrieval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from netvlad._atomic import atomic_write_text
from netvlad.cli import CLIError
from netvlad.cli.options import (
    FEATS_HELP,
    add_feature_file_options,
    add_mixed_models_flag,
    add_rerank_options,
    feature_dim,
)


def register(sub) -> None:
    """Add this module's sub-commands to `sub` (an argparse subparsers action)."""
    _add_evaluate(sub)
    _add_plot(sub)
    _add_benchmark(sub)


def _add_evaluate(sub) -> None:
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
    _add_evaluate_inputs(p)
    _add_evaluate_settings(p)
    add_protocol_options(p)
    add_mixed_models_flag(p)
    add_rerank_options(p)
    _add_evaluate_outputs(p)
    p.set_defaults(func=run_evaluate)


def _add_evaluate_inputs(p) -> None:
    """--dataset, --db, --queries and the options that read .bin/.npy files."""
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


def _add_evaluate_settings(p) -> None:
    """--ns, --crop-dim, --sample, --rank-loss."""
    from netvlad.metrics import DEFAULT_NS, RANK_SAMPLE

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
    p.add_argument("--rank-loss", action="store_true",
                   help="also compute the original's rank loss of the ranking on this set (testCoreRank: "
                   f"up to {RANK_SAMPLE} queries drawn with seed 43, each against its non-trivial positives "
                   "and 1000 random negatives, margin 0.1; lower is better); printed with the recall table "
                   "and written to --report")


def _add_evaluate_outputs(p) -> None:
    """--report, --plot, --html, --label, --overwrite."""
    p.add_argument("--report", type=Path, metavar="R.json", help="write summary + per-query ranks and hits")
    p.add_argument("--plot", type=Path, metavar="R.png", help="write the recall@N curve")
    p.add_argument("--html", type=Path, metavar="DIR",
                   help="write a browsable report into DIR: summary and curves, then every query beside its "
                   "top 5 (green = positive), failures first, filters by condition")
    p.add_argument("--label", help="curve/report label (default: the dataset name and db file name)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --report/--plot files that are not netvlad reports/plots (never an input)")


def _add_plot(sub) -> None:
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


def _add_benchmark(sub) -> None:
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

def is_report(path: Path) -> bool:
    """An ``evaluate --report`` or ``benchmark retrieval --report`` file (by its keys)."""
    from netvlad._outputs import json_object_with

    return json_object_with(path, ("recall", "ns", "num_queries")) or json_object_with(
        path, ("benchmark", "results"))


def check_outputs(inputs, overwrite: bool, report: Path | None = None, plot: Path | None = None) -> None:
    """--report / --plot may be no input, not each other, and replace only our own files."""
    from netvlad._outputs import check_distinct, check_output_file
    from netvlad.metrics import is_recall_plot

    check_distinct([("--report", report), ("--plot", plot)])
    if report is not None:
        check_output_file(report, inputs=inputs, is_ours=is_report, kind="netvlad report",
                          overwrite=overwrite)
    if plot is not None:
        check_output_file(plot, inputs=inputs, is_ours=is_recall_plot, kind="netvlad plot",
                          overwrite=overwrite)


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


#: How evaluate's flags are named in the library's messages.
_EVAL_OPTIONS = {"db_names": "--db-names", "query_names": "--query-names", "query_path": "--queries",
                 "crop_dim": "--crop-dim",
                 "allow_mixed": "--allow-mixed-models", "db_patches": "--db-patches",
                 "query_patches": "--query-patches"}


def run_evaluate(args) -> int:
    """`netvlad evaluate`."""
    from netvlad.data import load_dataset
    from netvlad.io import load_db_and_queries
    from netvlad.metrics import DEFAULT_NS, RANK_SAMPLE, RecallResult, evaluate_dataset, has_coordinates

    _check_evaluate_args(args)
    ds = load_dataset(args.dataset, options={"cities": args.cities, "subtask": args.subtask})
    pair = load_db_and_queries(ds, args.db, args.queries, db_names=args.db_names,
                               query_names=args.query_names, dim=feature_dim(args.dim, args.model),
                               crop_dim=args.crop_dim, allow_mixed=args.allow_mixed_models,
                               options=_EVAL_OPTIONS)
    ns = None if args.ns is DEFAULT_NS else args.ns  # not given: the protocol's Ns
    if args.predictions:
        _write_predictions(args, ds, pair.db, pair.queries, ns)
    if not has_coordinates(ds):
        if not args.predictions:
            raise CLIError(f"{args.dataset}: {ds.name} has no coordinates (MSLS test cities): give "
                           "--predictions P.txt to write the challenge's prediction file")
        print(f"{ds.name}: no coordinates (the challenge server holds the ground truth): no recall here")
        return 0
    rerank = _reranker(args, ds, pair)
    raw = evaluate_dataset(ds, pair.db, pair.queries, ns=ns, crop_dim=args.crop_dim, sample=args.sample,
                           rerank=rerank, protocol=args.protocol,
                           rank_sample=RANK_SAMPLE if args.rank_loss else 0)
    label = args.label or f"{ds.name} ({args.db.name}{f', {args.crop_dim}-D' if args.crop_dim else ''})"
    _print_evaluation(args, raw, ds, label, rerank)
    _write_evaluation(args, RecallResult.from_dict(raw), raw, ds, label)
    return 0


def _check_evaluate_args(args) -> None:
    """Refuse bad numbers and outputs that would replace an input, before any work."""
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


def _reranker(args, ds, pair):
    """The re-ranker of --rerank (None without it), on the descriptors as they are ranked."""
    from netvlad.metrics import crop_to_dim
    from netvlad.rerank import reranker_from_files

    if args.rerank is None:
        if args.db_patches or args.query_patches:
            raise CLIError("--db-patches and --query-patches go with --rerank patch")
        return None
    if args.rerank_top < 1:
        raise CLIError(f"--rerank-top must be >= 1, got {args.rerank_top}")
    return reranker_from_files(
        args.rerank, queries=crop_to_dim(pair.queries, args.crop_dim), db=crop_to_dim(pair.db, args.crop_dim),
        query_names=ds.query_images, db_names=ds.db_images, db_features=args.db, query_features=args.queries,
        db_patches=args.db_patches, query_patches=args.query_patches, top_n=args.rerank_top,
        scorer=args.patch_scorer, allow_mixed=args.allow_mixed_models, options=_EVAL_OPTIONS)


def _print_evaluation(args, res: dict, ds, label: str, rerank) -> None:
    from netvlad.metrics import bad_descriptor_lines, format_recall_table, protocol_line

    print(f"{label}: {res['num_queries']} queries, {res['num_db']} database images, {res['dim']}-D")
    if rerank is not None:
        print(f"re-ranked the top {rerank.top_n} with {args.rerank}: "
              f"{1000 * rerank.seconds / max(res['num_queries'], 1):.1f} ms per query")
    for line in bad_descriptor_lines(res, ds):
        print(line)
    print(format_recall_table(res["recall"], res.get("by_condition")))
    if "map" in res:
        print("  mAP@N " + "  ".join(f"{n}: {100 * v:.2f}%" for n, v in res["map"].items()))
    if "rank_loss" in res:
        print(f"  rank loss {res['rank_loss']:.6f} (testCoreRank, margin 0.1)")
    print(protocol_line(res, ds))


def _write_evaluation(args, result, raw: dict, ds, label: str) -> None:
    """--report, --plot and --html."""
    from netvlad.metrics import plot_recall_curves

    if args.report:
        atomic_write_text(args.report, result.dumps(ds, label, args.db, args.queries))
        print(f"report: {args.report}")
    if args.plot:
        plot_recall_curves([(label, result.ns, [result.recall[n] for n in result.ns])], args.plot)
        print(f"plot: {args.plot}")
    if args.html is not None:
        from netvlad.serve.report import write_evaluation_report

        print(f"html: {write_evaluation_report(args.html, raw, ds, label)}")


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
    from netvlad.metrics import plot_recall_curves, read_report_curve

    check_outputs([("REPORT.json", r) for r in args.reports], args.overwrite, plot=args.out)
    plot_recall_curves([read_report_curve(path) for path in args.reports], args.out, args.title)
    print(f"plot: {args.out}")
    return 0


def run_benchmark(args) -> int:
    """`netvlad benchmark retrieval`."""
    from netvlad.retrieval import RetrievalResult, benchmark_retrieval
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
    result = RetrievalResult.from_dict(res)
    for line in result.table():
        print(line)
    if args.report:
        atomic_write_text(args.report, json.dumps(result.to_json(args.model), indent=1) + "\n")
    return 0
