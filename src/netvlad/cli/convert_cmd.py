"""CLI commands: ``convert`` (MatConvNet .mat → checkpoint), ``export`` (ONNX / TorchScript with a
parity check) and ``pairs`` (hloc's pairs-from-retrieval file)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from netvlad._outputs import (
    check_distinct,
    check_output_file,
    is_netvlad_checkpoint,
    is_onnx_model,
    is_torchscript,
)
from netvlad.cli import CLIError

log = logging.getLogger(__name__)


def register(sub) -> None:
    """Add this module's sub-commands to `sub` (an argparse subparsers action)."""
    _add_convert(sub)
    _add_export(sub)
    _add_pairs(sub)


def _add_convert(sub) -> None:
    from netvlad.convert import SUPPORTED_FORMATS, ConvertConfig

    cdef = ConvertConfig()
    p = sub.add_parser(
        "convert",
        help="convert a published NetVLAD model (MATLAB .mat or a PyTorch project's checkpoint)",
        description="Read a foreign model file, recognised by its content: "
        + "; ".join(SUPPORTED_FORMATS)
        + ". The checkpoint written outputs exactly the vector its source outputs for the same image "
        "(same preprocessing, same descriptor order), so descriptors computed with the source stay valid. "
        "Loading never executes code from the file.",
    )
    p.add_argument("mat", type=Path, metavar="FILE")
    p.add_argument(
        "--out", type=Path, required=True, metavar="MODEL", help="checkpoint to write (.pt or .safetensors)"
    )
    p.add_argument(
        "--method",
        default=cdef.method,
        help="head for an ImageNet file (default vlad_preL2_intra), or max|avg for a pytorch-NetVlad model "
        "without pooling weights (the file cannot tell); must agree with a released model's",
    )
    p.add_argument(
        "--crop", default=cdef.crop, help="crop layer for an ImageNet file (default conv5_3/conv5_4/conv5)"
    )
    p.add_argument(
        "--num-clusters",
        type=int,
        default=cdef.num_clusters,
        help=f"K for a new NetVLAD head on an ImageNet file (default {cdef.num_clusters})",
    )
    p.add_argument(
        "--pca",
        type=Path,
        metavar="FILE",
        help="OpenIBL training checkpoint: its PCA file (pca_params_<name>.h5; default: that file next to "
        "the checkpoint, if there)",
    )
    p.add_argument("--overwrite", action="store_true",
                   help="replace a MODEL file that is not a netvlad checkpoint")
    p.set_defaults(func=run_convert)


def _add_export(sub) -> None:
    from netvlad.export import ExportConfig

    edef = ExportConfig()
    p = sub.add_parser(
        "export",
        help="export a model to ONNX and/or TorchScript, checking parity",
        description="Export MODEL (preset or checkpoint) with dynamic batch, height and width. The graph "
        "takes the preprocessed B×3×H×W float32 image and returns the L2-normalised descriptor. After "
        "writing, onnxruntime (and TorchScript) outputs are compared with PyTorch's on random images; a max "
        "abs difference above --tolerance exits with status 1.",
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--onnx", type=Path, metavar="OUT.onnx")
    p.add_argument("--torchscript", type=Path, metavar="OUT.pt")
    p.add_argument("--opset", type=int, default=edef.opset, help=f"ONNX opset (default {edef.opset})")
    p.add_argument(
        "--exporter",
        choices=("dynamo", "torchscript"),
        default=edef.exporter,
        help=f"ONNX exporter (default {edef.exporter}; torchscript = the legacy, faster tracer)",
    )
    p.add_argument(
        "--check-size",
        type=int,
        nargs=3,
        action="append",
        metavar=("B", "H", "W"),
        help="parity-check input shape (repeatable; default "
        + ", ".join("x".join(map(str, s)) for s in edef.check_sizes)
        + ")",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=edef.tolerance,
        help=f"max allowed abs difference (default {edef.tolerance:g})",
    )
    p.add_argument("--no-check", action="store_true", help="skip the parity check")
    p.add_argument("--overwrite", action="store_true",
                   help="replace output files that are not ONNX / TorchScript files (never MODEL)")
    p.set_defaults(func=run_export)


def _add_pairs(sub) -> None:
    from netvlad.cli.options import FEATS_HELP, add_feature_file_options, add_mixed_models_flag
    from netvlad.retrieval.pairs import DEFAULT_MIN_SCORE, DEFAULT_NUM_PAIRS

    p = sub.add_parser(
        "pairs",
        help="write hloc's pairs-from-retrieval file from global descriptors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="For each query write its K nearest database images, best first, one\n"
        "'query_name db_name' pair per line (hloc's pairs_from_retrieval format and selection).\n"
        "Queries come in file order (sorted names for an hloc file), or in list order with --query-list.\n"
        "As in hloc, a database image with the query's own name is skipped, and pairs whose similarity\n"
        "(inner product of the L2-normalised descriptors) is below --min-score (default 0: hloc drops\n"
        "negative similarities) are dropped, so such a query gets fewer than K pairs.\n\n"
        "Selection as hloc's --db_prefix/--db_list/--query_prefix/--query_list: a prefix keeps the names\n"
        "of the file that start with it (several prefixes: any of them); a list file names the images\n"
        "(first field of each line, '#' lines skipped; its last component may be a glob). Without\n"
        "--queries one file holds both, selected by prefixes or lists.\n\n"
        "Neighbours are ranked by squared L2 distance, as NetVLAD's original search (the same order as\n"
        "hloc's inner product on L2-normalised descriptors). Database and query files must come from the\n"
        "same model unless --allow-mixed-models.\n\n" + FEATS_HELP,
        epilog="examples:\n"
        "  netvlad pairs --db db.h5 --queries q.h5 --k 50 --out pairs-netvlad.txt\n"
        "  netvlad pairs --db global-feats-netvlad.h5 --db-prefix db/ --query-prefix query/ --out pairs.txt\n"
        "  netvlad pairs --db db.bin --queries q.bin --dim 4096 --db-names db.txt --query-names q.txt \\\n"
        "      --min-score none --out pairs.txt",
    )
    p.add_argument("--db", type=Path, required=True, metavar="FEATS", help="database feature file")
    p.add_argument("--queries", type=Path, metavar="FEATS",
                   help="query feature file (default: --db, as hloc's descriptors/db_descriptors)")
    add_feature_file_options(p, ("rows of a --db .bin/.npy file", "rows of a --queries .bin/.npy file"))
    for role, flag in (("database", "db"), ("query", "query")):
        g = p.add_mutually_exclusive_group()
        g.add_argument(f"--{flag}-prefix", nargs="+", metavar="PREFIX",
                       help=f"{role} images: the file's names starting with PREFIX (hloc's {flag}_prefix)")
        g.add_argument(f"--{flag}-list", type=Path, metavar="FILE",
                       help=f"{role} images: the names listed in FILE (hloc's {flag}_list)")
    p.add_argument(
        "--k", type=int, default=DEFAULT_NUM_PAIRS, help=f"pairs per query (default {DEFAULT_NUM_PAIRS})"
    )
    p.add_argument(
        "--min-score", type=_min_score, default=DEFAULT_MIN_SCORE, metavar="S",
        help=f"drop pairs whose similarity is below S (default {DEFAULT_MIN_SCORE:g}, as hloc's "
        "pairs_from_retrieval; 'none' keeps all K pairs of every query)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="pairs.txt")
    add_mixed_models_flag(p)
    p.add_argument("--overwrite", action="store_true", help="replace an --out file that is not a pairs file")
    p.set_defaults(func=run_pairs)


# --------------------------------------------------------------------------- convert


def run_convert(args) -> int:
    from netvlad.cli.models_cmd import describe_order, describe_preprocess
    from netvlad.convert import ConvertConfig, convert_file
    from netvlad.models import save_model

    if args.num_clusters < 2:
        raise CLIError(f"--num-clusters must be >= 2, got {args.num_clusters}")
    if args.method is not None:
        from netvlad.layers import parse_method

        parse_method(args.method)  # a bad --method is refused before the file is read
    check_output_file(args.out, inputs=[("FILE", args.mat), ("--pca", args.pca)],
                      is_ours=is_netvlad_checkpoint, kind="netvlad checkpoint", overwrite=args.overwrite)
    config = ConvertConfig(method=args.method, crop=args.crop, num_clusters=args.num_clusters)
    options = {} if args.pca is None else {"pca": args.pca}
    model, info = convert_file(args.mat, config, **options)
    save_model(model, args.out, extra={"converted_from": info.to_dict()})
    print(
        f"{args.mat}: {info.format}: {info.arch} cropped at {info.crop}, head {info.method}"
        + (f" (K={info.num_clusters})" if info.num_clusters else "")
        + (f", WPCA to {info.whiten_dim}-D" if info.whiten_dim else "")
    )
    print(f"preprocessing: {describe_preprocess(model.preprocess)}")
    if model.method.is_vlad:
        print(f"vlad order: {describe_order(model.config.vlad_order)}")
    print(f"wrote {args.out}: out_dim {model.out_dim}, fingerprint {model.fingerprint()[:16]}")
    for note in info.notes:
        print(f"note: {note}")
    return 0


# --------------------------------------------------------------------------- export


def run_export(args) -> int:
    from netvlad.export import (
        ExportConfig,
        ParityError,
        check_onnx,
        check_torchscript,
        export_onnx,
        export_torchscript,
    )
    from netvlad.layers import UninitializedError
    from netvlad.weights import load_model

    if args.onnx is None and args.torchscript is None:
        raise CLIError("nothing to do: give --onnx OUT.onnx and/or --torchscript OUT.pt")
    sizes = tuple(tuple(s) for s in args.check_size) if args.check_size else ExportConfig().check_sizes
    if any(min(s) < 1 for s in sizes):
        raise CLIError(f"--check-size values must be positive, got {sizes}")
    check_distinct([("--onnx", args.onnx), ("--torchscript", args.torchscript)])
    for out, is_ours, kind in ((args.onnx, is_onnx_model, "ONNX model"),
                               (args.torchscript, is_torchscript, "TorchScript file")):
        if out is not None:
            check_output_file(out, inputs=[("MODEL", args.model)], is_ours=is_ours, kind=kind,
                              overwrite=args.overwrite)
    config = ExportConfig(
        opset=args.opset, exporter=args.exporter, check_sizes=sizes, tolerance=args.tolerance
    )
    model = load_model(args.model)
    status = 0
    try:
        targets = []
        if args.onnx is not None:
            export_onnx(model, args.onnx, config)
            targets.append((args.onnx, check_onnx))
        if args.torchscript is not None:
            export_torchscript(model, args.torchscript, config)
            targets.append((args.torchscript, check_torchscript))
    except UninitializedError as exc:
        raise CLIError(str(exc)) from None
    for path, check in targets:
        print(f"wrote {path} (input 'image' B×3×H×W preprocessed, output 'descriptor' B×{model.out_dim})")
        if args.no_check:
            continue
        try:
            diff = check(model, path, config)
            print(f"parity {path}: max abs difference {diff:.3g} (tolerance {config.tolerance:g}) OK")
        except ParityError as exc:
            print(f"parity FAILED: {exc}")
            status = 1
    return status


# --------------------------------------------------------------------------- pairs


def _min_score(text: str) -> float | None:
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def run_pairs(args) -> int:
    from netvlad.cli.options import feature_dim
    from netvlad.io import check_same_model, load_named_features
    from netvlad.retrieval.pairs import is_pairs_file, pairs_from_features, write_pairs

    if args.k < 1:
        raise CLIError(f"--k must be >= 1, got {args.k}")
    inputs = [("--db", args.db), ("--queries", args.queries), ("--db-names", args.db_names),
              ("--query-names", args.query_names), ("--db-list", args.db_list),
              ("--query-list", args.query_list)]
    check_output_file(args.out, inputs=inputs, is_ours=is_pairs_file, kind="pairs file",
                      overwrite=args.overwrite)
    dim = feature_dim(args.dim, args.model)
    db = load_named_features(args.db, args.db_names, dim=dim, names_option="--db-names")
    q = None
    if args.queries is None:
        if args.query_names is not None:
            raise CLIError("--query-names names the rows of a --queries file; give --queries too")
    else:
        q = load_named_features(args.queries, args.query_names, dim=dim, names_option="--query-names")
        if args.queries.resolve() != args.db.resolve():
            check_same_model(args.db, db.fingerprint, args.queries, q.fingerprint, args.allow_mixed_models,
                             "--allow-mixed-models")
    result = pairs_from_features(db, q, k=args.k, min_score=args.min_score,
                                 db_prefix=args.db_prefix, db_list=args.db_list,
                                 query_prefix=args.query_prefix, query_list=args.query_list)
    out = Path(args.out)
    write_pairs(out, result.pairs)
    floor = "" if args.min_score is None else f", similarity >= {args.min_score:g}"
    print(
        f"wrote {len(result.pairs)} pairs for {result.num_queries} queries "
        f"({min(args.k, result.num_db)} per query at most{floor}) to {out}"
    )
    return 0
