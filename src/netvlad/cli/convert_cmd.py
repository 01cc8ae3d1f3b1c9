"""CLI commands: ``convert`` (MatConvNet .mat → checkpoint), ``export`` (ONNX / TorchScript with a
parity check) and ``pairs`` (hloc's pairs-from-retrieval file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from netvlad._atomic import atomic_write_text
from netvlad._outputs import (
    check_distinct,
    check_output_file,
    is_netvlad_checkpoint,
    is_onnx_model,
    is_torchscript,
)
from netvlad.cli import CLIError

#: hloc's default number of retrieved database images per query (pairs_from_retrieval ``num_matched``).
DEFAULT_NUM_PAIRS = 50


def register(sub) -> None:
    """Add this module's sub-commands to `sub` (an argparse subparsers action)."""
    from netvlad.convert import SUPPORTED_FORMATS, ConvertConfig
    from netvlad.export import ExportConfig

    cdef, edef = ConvertConfig(), ExportConfig()
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

    p = sub.add_parser(
        "pairs",
        help="write hloc's pairs-from-retrieval file from global descriptors",
        description="For each query (in file order; sorted names for an hloc file) write its K nearest "
        "database images, best first, one "
        "'query_name db_name' pair per line (hloc's pairs_from_retrieval format). FEATS are netvlad feature "
        "files or hloc global-descriptor files. As in hloc, a database image with the query's own name is "
        "skipped. Neighbours are ranked by squared L2 distance, as NetVLAD's original search (the same "
        "order as hloc's inner product on L2-normalised descriptors). Database and query files must come "
        "from the same model unless --allow-mixed-models.",
    )
    p.add_argument("--db", type=Path, required=True, metavar="FEATS")
    p.add_argument("--queries", type=Path, required=True, metavar="FEATS")
    p.add_argument(
        "--k", type=int, default=DEFAULT_NUM_PAIRS, help=f"pairs per query (default {DEFAULT_NUM_PAIRS})"
    )
    p.add_argument("--out", type=Path, required=True, metavar="pairs.txt")
    from netvlad.cli.eval_cmd import add_mixed_models_flag

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
    check_output_file(args.out, inputs=[("FILE", args.mat)], is_ours=is_netvlad_checkpoint,
                      kind="netvlad checkpoint", overwrite=args.overwrite)
    config = ConvertConfig(method=args.method, crop=args.crop, num_clusters=args.num_clusters)
    inputs = [args.mat] + ([args.pca] if args.pca is not None else [])
    if any(args.out.resolve() == p.resolve() for p in inputs):
        raise CLIError(f"--out {args.out} is an input file; choose another path")
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


def _read_global(path: Path) -> tuple[list[str], np.ndarray, str | None]:
    """Names, N×D descriptors and model fingerprint (None for hloc files) of a netvlad feature file
    or an hloc global-feature file."""
    from netvlad.io import FeatureFileError, read_features, read_hloc

    if not path.is_file():
        raise FileNotFoundError(f"{path}: feature file not found")
    try:
        names, desc, attrs = read_features(path)
        fingerprint = attrs.get("fingerprint") or None
    except FeatureFileError as first:
        try:
            names, desc = read_hloc(path)
            fingerprint = None
        except FeatureFileError:
            raise first from None
    keep = np.isfinite(desc).all(axis=1)  # rows of images that failed extraction are NaN
    names = [n for n, k in zip(names, keep) if k]
    return names, np.ascontiguousarray(desc[keep], dtype=np.float32), fingerprint


def pairs_from_retrieval(
    query_names: list[str], query_desc: np.ndarray, db_names: list[str], db_desc: np.ndarray, k: int
) -> list[tuple[str, str]]:
    """hloc's pairs: per query (in order) its ``k`` nearest database names by squared L2, best first.

    Squared L2 is NetVLAD's ranking (``yael_nn``); on L2-normalised database rows it is also hloc's
    inner-product order, and unlike inner product it stays right on rows that are not normalised.
    A database entry with the query's own name is never paired with it (hloc masks these).

    Args:
        query_names: Q names; query_desc: Q×D.
        db_names: N names; db_desc: N×D.
        k: pairs per query (fewer when the database is smaller).
    """
    from netvlad.index import topk

    if query_desc.shape[1] != db_desc.shape[1]:
        raise ValueError(
            f"query descriptors are {query_desc.shape[1]}-D but database ones {db_desc.shape[1]}-D"
        )
    if not len(query_names) or not len(db_names):
        return []
    db_index = {n: i for i, n in enumerate(db_names)}
    overlap = any(n in db_index for n in query_names)
    _, ids = topk(query_desc, db_desc, min(k + int(overlap), len(db_names)), metric="l2")
    pairs = []
    for qi, q in enumerate(query_names):
        row = [db_names[j] for j in ids[qi] if j >= 0 and db_names[j] != q]
        pairs.extend((q, d) for d in row[:k])
    return pairs


def is_pairs_file(path: Path) -> bool:
    """A text file of 'query_name db_name' lines (its first 64 KiB)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    lines = head.decode("utf-8", errors="strict" if len(head) < 1 << 16 else "ignore").splitlines()
    if len(head) == 1 << 16:
        lines = lines[:-1]  # cut at the read's end
    return bool(lines) and all(len(line.split()) == 2 for line in lines)


def run_pairs(args) -> int:
    if args.k < 1:
        raise CLIError(f"--k must be >= 1, got {args.k}")
    from netvlad.cli.eval_cmd import check_same_model

    check_output_file(args.out, inputs=[("--db", args.db), ("--queries", args.queries)],
                      is_ours=is_pairs_file, kind="pairs file", overwrite=args.overwrite)
    db_names, db_desc, db_fp = _read_global(args.db)
    q_names, q_desc, q_fp = _read_global(args.queries)
    if not db_names:
        raise CLIError(f"{args.db}: no database descriptors")
    if args.queries.resolve() != args.db.resolve():
        check_same_model(args.db, db_fp, args.queries, q_fp, args.allow_mixed_models)
    bad = [n for n in q_names + db_names if any(c.isspace() for c in n)]
    if bad:
        raise CLIError(f"image name {bad[0]!r} contains whitespace; hloc's pairs format cannot represent it")
    pairs = pairs_from_retrieval(q_names, q_desc, db_names, db_desc, args.k)
    out = Path(args.out)
    atomic_write_text(out, "".join(f"{q} {d}\n" for q, d in pairs))
    print(
        f"wrote {len(pairs)} pairs for {len(q_names)} queries "
        f"({min(args.k, len(db_names))} per query) to {out}"
    )
    return 0
