"""``netvlad features merge``: assemble the shards of `extract --shard I/N` into one feature file."""

from __future__ import annotations

import argparse
from pathlib import Path

from netvlad.cli import CLIError


def register(sub) -> None:
    """Add this module's sub-commands to `sub` (an argparse subparsers action)."""
    p = sub.add_parser("features", help="feature files: merge the shards of a sharded extraction")
    fsub = p.add_subparsers(dest="features_command", metavar="ACTION", required=True)
    m = fsub.add_parser(
        "merge", help="assemble the shards of `extract --shard I/N` into one feature file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check that the SHARDs are all N shards of one run (same image list, model,\n"
        "preprocessing, batch size and shard count; none missing, none twice, all complete) and write\n"
        "OUT: the file a single `netvlad extract` would have written (same names in the same order,\n"
        "same descriptors, same identity attributes). Resumable and atomic; the shards are kept\n"
        "unless --remove-shards.",
        epilog="example:\n  netvlad features merge feats.shard-*-of-00008.h5 --out feats.h5 --remove-shards")
    m.add_argument("shards", metavar="SHARD", type=Path, nargs="+", help="shard files (OUT.shard-I-of-N.h5)")
    m.add_argument("--out", metavar="FEATS", type=Path, required=True, help="the merged feature file")
    m.add_argument("--overwrite", action="store_true", help="replace an existing OUT from another run")
    m.add_argument("--remove-shards", action="store_true", help="delete the shards once OUT is complete")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(func=run_merge)


def run_merge(args) -> int:
    """`netvlad features merge`."""
    from netvlad import io
    from netvlad._outputs import check_not_input
    from netvlad.extract import merge_shards

    check_not_input(args.out, [("SHARD", s) for s in args.shards])
    if args.out.is_dir():
        raise CLIError(f"{args.out}: is a folder; give the path of the feature file to write")
    out = merge_shards(args.shards, args.out, overwrite=args.overwrite, progress=not args.no_progress)
    attrs = io.read_attrs(out)
    if args.remove_shards:
        for s in args.shards:
            s.unlink(missing_ok=True)
    bad = attrs.get("bad_images", [])
    print(f"{out}: {attrs['num_images']} images from {len(args.shards)} shards, {attrs['dim']}-D "
          f"{attrs['dtype']}" + (f", {len(bad)} bad image(s)" if bad else "")
          + ("; shards removed" if args.remove_shards else ""))
    return 0
