"""Options several commands share (argparse only): how feature files, re-ranking and model mixing
are asked for, and the --dim/--model reading of a .bin file's dimension."""

from __future__ import annotations

from pathlib import Path

from netvlad.cli import CLIError

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


def add_mixed_models_flag(p) -> None:
    """``--allow-mixed-models`` on parser ``p`` (evaluate, pairs)."""
    p.add_argument(
        "--allow-mixed-models",
        action="store_true",
        help="compare database and query features written by different models (refused by default: "
        "their descriptors live in different spaces)",
    )
