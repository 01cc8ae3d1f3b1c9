"""CLI: ``netvlad train`` (trainWeakly), ``netvlad pick-best`` (pickBestNet) and ``netvlad pca`` (addPCA).

Parsing and printing only: the work is `netvlad.train.start_run` / `resume_run`, `pick_best` /
`export_best` / `cleanup` and `netvlad.train.pca.add_pca`. The training options are the fields
of `TrainConfig`, with their help texts.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from netvlad.cli import CLIError, workers_arg
from netvlad.train.config import TrainConfig
from netvlad.train.runs import RUN_DIR_ENTRIES, is_run_dir  # noqa: F401 - part of this module's API
from netvlad.whitening import DEFAULT_MAX_SAMPLES

_NOT_CLI = {"amp"}  # added by hand below (next to --device)
_TYPES = {"num_workers": workers_arg}


def _add_config_args(p) -> None:
    """One option per `TrainConfig` field; help and hints from the field's metadata."""
    d = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_CLI:
            continue
        flag = "--" + f.name.replace("_", "-")
        val = getattr(d, f.name)
        help_ = f.metadata.get("help", f.name.replace("_", " "))
        if isinstance(val, bool):
            if val:
                p.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                               help=f"disable: {help_}")
            else:
                p.add_argument(flag, dest=f.name, action="store_true", help=help_)
        elif isinstance(val, tuple):
            p.add_argument(flag, dest=f.name, type=f.metadata.get("type", str), nargs="+", default=None,
                           help=f"{help_} (default: {' '.join(map(str, val)) or 'none'})")
        else:
            typ = _TYPES.get(f.name) or f.metadata.get("type") or {"int": int, "float": float}.get(
                type(val).__name__, str
            )
            p.add_argument(flag, dest=f.name, type=typ, default=None, choices=f.metadata.get("choices"),
                           help=f"{help_} (default: {val})")


def register(sub) -> None:
    """Add ``train``, ``pick-best`` and ``pca``."""
    _register_train(sub)
    _register_pick_best(sub)
    _register_pca(sub)


def _register_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="weakly supervised training from GPS-tagged images (trainWeakly)",
        description="Train a model with the triplet ranking loss and hard-negative mining. Under "
        "torchrun the work is split over the processes (the cache refresh is sharded).",
    )
    p.add_argument("--train", metavar="SPEC", help="training dataset (file or folder, any supported format)")
    p.add_argument("--val", metavar="SPEC", help="validation dataset")
    p.add_argument("--train-images", metavar="DIR", help="image folder of --train when the spec has none")
    p.add_argument("--val-images", metavar="DIR", help="image folder of --val")
    p.add_argument("--out", metavar="RUN_DIR", type=Path,
                   help="run directory (required unless --resume-from names a checkpoint in it)")
    p.add_argument(
        "--model", default="vgg16-netvlad", help="preset name or checkpoint (default: vgg16-netvlad)"
    )
    p.add_argument(
        "--weights",
        default=None,
        metavar="FILE|imagenet|random",
        help="backbone weights for a preset: 'imagenet' (download), a state-dict file, or 'random'; "
        "required for presets that ship no weights (all but lite0), so that a random backbone is a choice",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from ckpt_latest.pt")
    p.add_argument("--resume-from", metavar="CHECKPOINT", type=Path,
                   help="restart the run from one of its saved checkpoints, e.g. RUN_DIR/epoch_003.pt "
                   "(the later epochs are redone)")
    p.add_argument(
        "--device", default="cpu", help="torch device (cpu, cuda, cuda:1); per rank under torchrun"
    )
    amp_help = next(f for f in dataclasses.fields(TrainConfig) if f.name == "amp").metadata["help"]
    p.add_argument("--amp", action="store_true", help=amp_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_config_args(p)
    p.set_defaults(func=run_train)


def _register_pick_best(sub) -> None:
    p = sub.add_parser("pick-best", help="the epoch with the best val recall@N (pickBestNet)")
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    p.add_argument("--n", type=int, default=5, help="the N of recall@N that decides (default: 5)")
    p.add_argument("--cleanup", action="store_true", help="delete the other epochs' checkpoints")
    p.add_argument(
        "--export",
        metavar="MODEL_OUT",
        type=Path,
        help="also save the best model alone (no optimizer or training state)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a MODEL_OUT that is not a netvlad checkpoint"
    )
    p.set_defaults(func=run_pick_best)


def _register_pca(sub) -> None:
    p = sub.add_parser("pca", help="append PCA-whitening learnt on training database images (addPCA)")
    p.add_argument("model", metavar="MODEL", help="preset name or checkpoint path")
    p.add_argument("--dataset", metavar="SPEC", required=True, help="training dataset (its database images)")
    p.add_argument("--images", metavar="DIR", help="image folder when the spec has none")
    p.add_argument(
        "--dim",
        type=_pca_dim,
        default=4096,
        metavar="D|auto",
        help="output dimension (pcaDim; default: 4096); 'auto': the best validation recall@1 among "
        "4096, 2048, 1024, 512, 256, 128 (those the fit can serve), needs --val",
    )
    p.add_argument("--val", metavar="SPEC", help="validation dataset for --dim auto")
    p.add_argument("--val-images", metavar="DIR", help="image folder of --val")
    p.add_argument("--out", metavar="MODEL_OUT", type=Path, required=True, help="output checkpoint")
    p.add_argument("--no-whiten", dest="whiten", action="store_false", help="plain PCA (doWhite = false)")
    p.add_argument(
        "--max-images",
        type=int,
        default=DEFAULT_MAX_SAMPLES,
        help=f"at most this many random database images, seed 43 (default: {DEFAULT_MAX_SAMPLES})",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where descriptors and the fit are cached (default: next to --out)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--workers", type=workers_arg, default=2, help="image-decoding processes (0: none)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a MODEL_OUT that is not a netvlad checkpoint"
    )
    p.set_defaults(func=run_pca)


# ---------------------------------------------------------------------------------------------


def _pca_dim(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None


def _config_from_args(args, base: TrainConfig) -> TrainConfig:
    changes = {}
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if f.name in _NOT_CLI or v is None:
            continue
        if isinstance(getattr(base, f.name), bool):
            if v == getattr(TrainConfig(), f.name):
                continue  # flag not given
        changes[f.name] = v
    if changes.get("backprop_from") == "all":
        changes["backprop_from"] = None
    if args.amp:
        changes["amp"] = True
    return dataclasses.replace(base, **changes)


def run_train(args) -> int:
    from netvlad.train import rank_world, resume_run, start_run
    from netvlad.train.runs import RunSpec

    progress = not args.no_progress
    if args.resume or args.resume_from:
        if args.resume and args.resume_from:
            raise CLIError("give --resume (the latest checkpoint) or --resume-from CHECKPOINT, not both")
        if args.out is None and args.resume_from is None:
            raise CLIError("--resume needs --out RUN_DIR")
        run_dir = resume_run(args.out, args.resume_from, epochs=args.epochs, device=args.device,
                             progress=progress, log=print)
    else:
        if args.out is None:
            raise CLIError("--out RUN_DIR is required")
        if not args.train or not args.val:
            raise CLIError("--train and --val are required (or --resume)")
        spec = RunSpec(args.train, args.val, args.model, args.weights, args.train_images, args.val_images)
        run_dir = start_run(spec, _config_from_args(args, TrainConfig()), args.out, device=args.device,
                            progress=progress, log=print)
    if rank_world()[0] == 0:
        print(f"run finished: {run_dir} (choose an epoch with `netvlad pick-best {run_dir}`)")
    return 0


def run_pick_best(args) -> int:
    from netvlad._outputs import check_output_file, is_netvlad_checkpoint
    from netvlad.train import cleanup, export_best, pick_best, read_run_recalls

    rr = read_run_recalls(args.run_dir)
    epoch, path = pick_best(args.run_dir, args.n)
    if args.export:
        check_output_file(args.export, inputs=[("RUN_DIR", args.run_dir), ("best checkpoint", path)],
                          is_ours=is_netvlad_checkpoint, kind="netvlad checkpoint", overwrite=args.overwrite)
    col = rr.epochs.index(epoch)
    print(f"best epoch by val recall@{args.n}: {epoch}  ({path})")
    print(f"{'N':>4} {'off-the-shelf':>14} {'trained':>9} {'ratio':>7}")
    for i, n in enumerate(rr.recall_ns[:6]):
        tr = rr.recalls[i, col]
        off = rr.offtheshelf[i] if rr.offtheshelf is not None else float("nan")
        ratio = tr / off if off else float("nan")
        print(f"{n:>4} {off:>14.4f} {tr:>9.4f} {ratio:>7.3f}")
    if args.export:
        export_best(args.run_dir, args.export, args.n)
        print(f"saved {args.export}")
    if args.cleanup:
        removed = cleanup(args.run_dir, args.n, delete=True)
        print(f"removed {len(removed)} other epoch checkpoint(s)")
    return 0


def run_pca(args) -> int:
    from netvlad._outputs import check_output_file, is_netvlad_checkpoint
    from netvlad.data import load_dataset
    from netvlad.models import save_model
    from netvlad.train.pca import add_pca
    from netvlad.weights import load_model

    auto = args.dim == "auto"
    if auto and not args.val:
        raise CLIError("--dim auto chooses the dimension by validation recall@1: give --val SPEC")
    if args.val and not auto:
        raise CLIError("--val is used by --dim auto only")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    inputs = [("MODEL", args.model), ("--dataset", args.dataset), ("--images", args.images),
              ("--val", args.val)]
    check_output_file(args.out, inputs=inputs, is_ours=is_netvlad_checkpoint, kind="netvlad checkpoint",
                      overwrite=args.overwrite)
    model = load_model(args.model)
    if model.whitening is not None:
        raise CLIError(f"{args.model}: the model already has a PCA/whitening layer")
    if not auto and (args.dim < 1 or args.dim >= model.out_dim):
        raise CLIError(f"--dim must be in [1, {model.out_dim - 1}] (below the descriptor dimension)")
    ds = load_dataset(args.dataset, args.images, purpose="train")
    val_ds = load_dataset(args.val, args.val_images) if auto else None
    res = add_pca(model, ds, args.dim, whiten=args.whiten, max_images=args.max_images,
                  cache_dir=args.cache_dir or args.out.parent, val_ds=val_ds, batch_size=args.batch_size,
                  device=args.device, num_workers=args.workers, progress=not args.no_progress)
    if res.scores is not None:
        print(f"validation recall@1 on {val_ds.name} ({val_ds.num_queries} queries, "
              f"{val_ds.num_db} database images):")
        for d, r in res.scores.items():
            print(f"  {d:>5}-D  {100 * r:6.2f}%" + ("  <- chosen" if d == res.dim else ""))
    save_model(model, args.out, extra={"pca": res.info})
    print(
        f"saved {args.out} ({'whitened' if res.whiten else 'PCA'} {res.dim}-d, fit on {res.n_samples} "
        f"descriptors, the kept components hold {100 * res.variance_kept:.1f}% of the variance, "
        f"cached in {res.fit_file})"
    )
    return 0
