"""CLI commands: ``netvlad dataset info|convert|check``."""

from __future__ import annotations

import json
from pathlib import Path

from netvlad.cli import CLIError


def register(sub) -> None:
    """Add this module's sub-commands to `sub` (an argparse subparsers action)."""
    from netvlad.data.doctor import DEFAULT_MIN_NEGATIVES, CheckConfig

    defaults = CheckConfig()
    p = sub.add_parser(
        "dataset",
        help="inspect, convert and check place-recognition datasets",
        description="SPEC is a .csv, a dbStruct .mat (v5 or v7.3), a Patch-NetVLAD .npz or name "
        "(pitts30k_test, tokyo247), a folder with database/ and queries/ (@-named or EXIF-GPS "
        "photos), an MSLS folder (train_val/, test/; SPEC?cities=cph,sf&subtask=all) or a dataset in "
        "gmberton's layout (images/{train,val,test}/; SPEC?split=val). A file or folder in the working "
        "directory named like a Patch-NetVLAD dataset is taken instead of it, with a warning naming "
        "both (write ./NAME to mean the path).",
    )
    dsub = p.add_subparsers(dest="dataset_command", metavar="ACTION")

    pi = dsub.add_parser("info", help="counts, radii, extent, zone, rules")
    pi.add_argument("spec", metavar="SPEC")
    pi.add_argument("--images", metavar="ROOT", help="image root (overrides the format's default)")
    pi.add_argument("--json", action="store_true", help="print the summary as JSON")
    pi.set_defaults(func=run_info)

    pc = dsub.add_parser("convert", help="write SPEC as our CSV or as a MATLAB dbStruct .mat")
    pc.add_argument("spec", metavar="SPEC")
    pc.add_argument("out", metavar="OUT")
    pc.add_argument("--to", choices=["csv", "mat"], help="output format (default: from OUT's extension)")
    pc.add_argument("--images", metavar="ROOT", help="image root of SPEC")
    pc.add_argument("--overwrite", action="store_true",
                    help="replace an existing OUT (never SPEC); without it an existing OUT is refused, since "
                    "a dataset file we wrote cannot be told from the user's own")
    pc.set_defaults(func=run_convert)

    pk = dsub.add_parser(
        "check",
        help="doctor: missing images, queries without positives, duplicates, ...",
        description="Exit status 1 when errors are found, 0 with warnings only.",
    )
    pk.add_argument("spec", metavar="SPEC")
    pk.add_argument("--images", metavar="ROOT", help="image root (overrides the format's default)")
    pk.add_argument(
        "--min-negatives",
        type=int,
        default=defaults.min_negatives,
        metavar="N",
        help=f"error when a query has fewer than N negatives (default: warn below {DEFAULT_MIN_NEGATIVES})",
    )
    pk.add_argument("--no-images", action="store_true", help="skip opening the image files")
    pk.add_argument(
        "--decode",
        action="store_true",
        default=defaults.decode,
        help="fully decode every image (slow; default reads headers only)",
    )
    pk.add_argument(
        "--outlier-km",
        type=float,
        default=defaults.outlier_km,
        help="distance from the median position that can flag an outlier (default %(default)s)",
    )
    pk.add_argument("--max-listed", type=int, default=defaults.max_listed, help="files named per finding")
    pk.add_argument("--no-progress", action="store_true")
    pk.set_defaults(func=run_check)
    p.set_defaults(func=lambda args: _no_action(p))


def _no_action(parser) -> int:
    parser.print_help()
    return 2


def _load(args, progress=True):
    from netvlad.data import load_dataset

    return load_dataset(args.spec, images=args.images, progress=progress)


def run_info(args) -> int:
    ds = _load(args)
    s = ds.summary()
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"dataset        {s['name']}")
    print(f"database       {s['num_db']} images  (root {s['db_root']})")
    print(f"queries        {s['num_queries']} images  (root {s['query_root']})")
    print(f"zone           {s['zone'] or 'unknown / local frame'}")
    print(f"extent         {s['extent_m'][0]:.1f} m (easting) x {s['extent_m'][1]:.1f} m (northing)")
    print(
        f"radii          positive {s['pos_radius']:g} m, training positive {s['train_pos_radius']:g} m, "
        f"trivial {s['trivial_radius']:g} m"
    )
    print(f"rules          {', '.join(s['rules']) or 'none'}")
    print(f"protocol       {s['protocol']}")
    print(
        f"timestamps     {'yes' if s['timestamps'] else 'no'};  headings {'yes' if s['headings'] else 'no'}"
    )
    if s["db_groups"] is not None:
        print(f"panoramas      {s['db_groups']} groups")
    if "query_conditions" in s:
        print("conditions     " + ", ".join(f"{k} {v}" for k, v in s["query_conditions"].items()))
    for note in ds.notes:
        print(f"note           {note}")
    return 0


def run_convert(args) -> int:
    from netvlad.data import save_csv, save_mat

    out = Path(args.out)
    to = args.to or {".csv": "csv", ".mat": "mat"}.get(out.suffix.lower())
    if to is None:
        raise CLIError(f"cannot tell the output format from {out.name!r}: pass --to csv|mat")
    from netvlad._outputs import check_output_file

    check_output_file(out, inputs=[("SPEC", args.spec), ("--images", args.images)],
                      kind="dataset file", overwrite=args.overwrite)
    ds = _load(args)
    (save_csv if to == "csv" else save_mat)(ds, out)
    print(f"wrote {out} ({to}: {ds.num_db} database, {ds.num_queries} queries)")
    return 0


def run_check(args) -> int:
    from netvlad.data.doctor import CheckConfig
    from netvlad.data.formats import check_spec

    cfg = CheckConfig(
        check_images=not args.no_images,
        decode=args.decode,
        min_negatives=args.min_negatives,
        outlier_km=args.outlier_km,
        max_listed=args.max_listed,
        progress=not args.no_progress,
    )
    rep = check_spec(args.spec, images=args.images, config=cfg)  # + MSLS metadata, gmberton's layout
    print(rep.format(cfg.max_listed))
    return 1 if rep.errors else 0
