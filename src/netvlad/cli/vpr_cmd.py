"""``netvlad benchmark vpr``: one model over several place-recognition datasets (registered by eval_cmd,
beside ``benchmark retrieval``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from netvlad._atomic import atomic_write_text
from netvlad.cli import CLIError, workers_arg


def register_benchmark_vpr(bsub) -> None:
    """``benchmark vpr``: one model over several place-recognition datasets."""
    from netvlad.data.formats import SUITE
    from netvlad.extract import ExtractConfig
    from netvlad.metrics import PROTOCOLS
    from netvlad.retrieval import VPR_NS

    d = ExtractConfig()
    v = bsub.add_parser(
        "vpr",
        help="recall@1/5/10 of MODEL on MSLS, Pittsburgh, Tokyo 24/7, Nordland, ... (one table)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run MODEL over several place-recognition datasets found under --root and print one\n"
        "table: recall@N per dataset and protocol (MSLS under Mapillary's protocol and NetVLAD's, the\n"
        "others under NetVLAD's), with the number the model's paper or README reports beside ours\n"
        "for a published model (`netvlad weights list`), on the row of the protocol it used.\n\n"
        "Datasets are found by name under --root, in gmberton's layout (ROOT/pitts30k/images/test/...),\n"
        "MSLS also in its own (ROOT/msls/train_val/...); any other NAME is ROOT/NAME in any supported\n"
        "format (ROOT/pitts30k_test.mat). Known names: " + ", ".join(SUITE) + ".",
        epilog="example:\n  netvlad benchmark vpr vgbench-resnet18-netvlad-msls --datasets msls_val \\\n"
        "      pitts30k_test tokyo247 --root /data/datasets --features feats/ --report r.json --plot r.png",
    )
    v.add_argument("model", metavar="MODEL", help="preset name, published model name or checkpoint path")
    v.add_argument("--datasets", nargs="+", required=True, metavar="NAME")
    v.add_argument("--root", type=Path, required=True, metavar="DIR", help="the folder holding the datasets")
    v.add_argument("--protocols", nargs="+", choices=PROTOCOLS,
                   help="evaluate every dataset under these (default: each dataset's own, and netvlad too "
                   "for MSLS)")
    v.add_argument("--ns", type=int, nargs="+", default=list(VPR_NS), metavar="N",
                   help=f"the Ns of recall@N (default: {' '.join(map(str, VPR_NS))})")
    v.add_argument("--reported", metavar="NAME",
                   help="put this published model's reported numbers beside ours (default: MODEL's own when "
                   "MODEL is a published model's name)")
    v.add_argument("--features", type=Path, metavar="DIR",
                   help="keep feature files NAME_db.h5 / NAME_query.h5 here: an interrupted run resumes, a "
                   "finished dataset is reused")
    v.add_argument("--report", type=Path, metavar="R.json")
    v.add_argument("--plot", type=Path, metavar="R.png",
                   help="bar chart of recall@N, the published numbers marked")
    v.add_argument("--batch-size", type=int, default=d.batch_size)
    v.add_argument("--workers", type=workers_arg, default=d.num_workers, help="image-decoding processes")
    v.add_argument("--device", default=d.device)
    v.add_argument("--max-side", type=int, default=d.max_side, metavar="PX",
                   help="resize so the longest side is at most PX pixels; 0: native resolution "
                   "(default: the model's preprocessing)")
    v.add_argument("--overwrite", action="store_true",
                   help="replace an R.json / R.png that is not a netvlad report / plot")
    v.add_argument("--no-progress", action="store_true")
    v.set_defaults(func=run_benchmark_vpr)


def _reported(args):
    """(entry name, {(dataset, protocol): {N: percent}}) from the catalogue, or (None, {})."""
    from netvlad.models import PRESETS
    from netvlad.retrieval import reported_results
    from netvlad.weights import find_weights, published

    if args.reported:
        entry = find_weights(args.reported)
    elif args.model not in PRESETS and not Path(args.model).exists():
        entry = published(args.model)
    else:
        entry = None
    if entry is None:
        return None, {}
    return entry.name, reported_results(entry.results, entry.project)


def run_benchmark_vpr(args) -> int:
    """`netvlad benchmark vpr`."""
    from netvlad._outputs import check_distinct, check_output_file, png_text
    from netvlad.cli.eval_cmd import is_report
    from netvlad.extract import ExtractConfig
    from netvlad.retrieval import benchmark_vpr, plot_vpr
    from netvlad.retrieval.vpr import PLOT_TAG as VPR_PLOT_TAG
    from netvlad.weights import load_model, model_reference

    if any(n < 1 for n in args.ns):
        raise CLIError(f"--ns must be positive, got {args.ns}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_side is not None and args.max_side < 0:
        raise CLIError(f"--max-side must be >= 0 (0: native resolution), got {args.max_side}")
    if args.features is not None and args.features.is_file():
        raise CLIError(f"{args.features}: is a file; --features names a folder for the feature files")
    inputs = [("MODEL", args.model), ("--root", args.root)]
    check_distinct([("--report", args.report), ("--plot", args.plot)])
    if args.report is not None:
        check_output_file(args.report, inputs=inputs, is_ours=is_report, kind="netvlad report",
                          overwrite=args.overwrite)
    if args.plot is not None:
        check_output_file(args.plot, inputs=inputs, is_ours=lambda p: png_text(p).get(VPR_PLOT_TAG[0]) ==
                          VPR_PLOT_TAG[1], kind="netvlad plot", overwrite=args.overwrite)
    reported_from, reported = _reported(args)
    model = load_model(args.model, device=args.device)
    cfg = ExtractConfig(batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                        max_side=args.max_side, progress=not args.no_progress,
                        model_ref=model_reference(args.model))
    res = benchmark_vpr(model, args.datasets, args.root, protocols=args.protocols, ns=args.ns,
                        reported=reported, features_dir=args.features, config=cfg, model_name=str(args.model),
                        reported_from=reported_from, log=None if args.no_progress else print)
    paper = f"; paper: as reported for {reported_from}" if reported_from else ""
    print(f"{args.model}: recall@N (%){paper}")
    print(res.table())
    if args.report:
        atomic_write_text(args.report, json.dumps(res.to_json(), indent=1) + "\n")
        print(f"report: {args.report}")
    if args.plot:
        plot_vpr(res, args.plot)
        print(f"plot: {args.plot}")
    return 0
