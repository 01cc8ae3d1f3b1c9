"""CLI: ``netvlad train`` (trainWeakly), ``netvlad pick-best`` (pickBestNet) and ``netvlad pca`` (addPCA)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from netvlad._atomic import atomic_write
from netvlad.cli import CLIError, workers_arg
from netvlad.train.config import TrainConfig

_HELP = {
    "epochs": "nEpoch",
    "batch_size": "query tuples per SGD step (batchSize)",
    "lr": "base learning rate (demo.m: 1e-3 for Pitts30k)",
    "lr_down_freq": "halve the LR every this many epochs (lrDownFreq)",
    "lr_down_factor": "LR divisor (lrDownFactor)",
    "margin": "triplet margin on squared distances",
    "n_neg_choice": "random negatives per query visit (nNegChoice)",
    "n_neg_cap": "max negatives per tuple (nNegCap)",
    "n_neg_cache": "hard negatives remembered per query (nNegCache)",
    "comp_feats_frequency": "refresh the feature cache every N queries; doubles at each LR drop",
    "save_frequency": "write ckpt_latest.pt every N queries",
    "backprop_from": "lowest trained layer; 'auto' = conv5_1 (VGG) / conv2 (AlexNet); 'all' = everything",
    "jitter_scale": "scale factors, one drawn per tuple (jitterScale)",
    "cache_dtype": "feature cache storage",
    "mining_pca_dim": "PCA-reduce the cache to this dimension for mining only",
    "compute_batch_size": "batch size for cache/val extraction",
    "num_workers": "image decoding processes for cache/val extraction (0 = in the main process)",
    "n_test_sample": "val queries for recall (seed 43)",
    "n_test_rank_sample": "val queries for the rank loss (seed 43); 0 = skip",
    "recall_ns": "Ns of recall@N",
    "cluster_images": "images for NetVLAD cluster initialisation",
    "limit_batches": "at most N batches per epoch (smoke runs)",
    "limit_queries": "train on a fixed random subset of N queries",
    "seed": "query-order seed (MATLAB rng(42 + epoch))",
    "query_sampling": "queries per epoch: uniform (each once), msls (drawn with MSLS's night/sideways "
    "weights), auto (msls on an MSLS dataset)",
}
_NOT_CLI = {"amp"}  # added by hand below


def _add_config_args(p) -> None:
    d = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_CLI:
            continue
        flag = "--" + f.name.replace("_", "-")
        val = getattr(d, f.name)
        help_ = _HELP.get(f.name, f.name.replace("_", " "))
        if isinstance(val, bool):
            if val:
                p.add_argument(
                    "--no-" + f.name.replace("_", "-"),
                    dest=f.name,
                    action="store_false",
                    help=f"disable: {help_}",
                )
            else:
                p.add_argument(flag, dest=f.name, action="store_true", help=help_)
        elif isinstance(val, tuple):
            typ = float if f.name == "jitter_scale" else int
            p.add_argument(
                flag,
                dest=f.name,
                type=typ,
                nargs="+",
                default=None,
                help=f"{help_} (default: {' '.join(map(str, val)) or 'none'})",
            )
        else:
            typ = {"int": int, "float": float}.get(type(val).__name__, str)
            if f.name in ("mining_pca_dim", "limit_batches", "limit_queries"):
                typ = int
            typ = workers_arg if f.name == "num_workers" else typ
            choices = ("float16", "bfloat16", "float32") if f.name == "cache_dtype" else None
            p.add_argument(
                flag, dest=f.name, type=typ, default=None, choices=choices, help=f"{help_} (default: {val})"
            )


def register(sub) -> None:
    """Add ``train``, ``pick-best`` and ``pca``."""
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
    p.add_argument("--out", metavar="RUN_DIR", type=Path, required=True, help="run directory")
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
    p.add_argument(
        "--device", default="cpu", help="torch device (cpu, cuda, cuda:1); per rank under torchrun"
    )
    p.add_argument("--amp", action="store_true", help="CUDA autocast (bfloat16) for the tuple forward")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_config_args(p)
    p.set_defaults(func=run_train)

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

    from netvlad.whitening import DEFAULT_MAX_SAMPLES

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


def _init_distributed(device: str) -> str:
    """Join the torchrun group if launched by torchrun; returns this rank's device."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    use_cuda = device.startswith("cuda")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def _require_weights(model_spec: str, weights: str | None) -> None:
    """Refuse to train a preset whose backbone would silently start from random weights."""
    from netvlad.models import PRESETS

    if weights is not None or model_spec not in PRESETS or Path(model_spec).exists():
        return
    if PRESETS[model_spec].pretrained is None:
        raise CLIError(
            f"--model {model_spec} ships no backbone weights: training would start from a random "
            "backbone. Pass --weights imagenet (downloads torchvision's), --weights FILE (a backbone "
            "state dict, e.g. from `netvlad convert`), or --weights random to do so knowingly"
        )


#: What `netvlad train` writes into a run directory (netvlad.train.loop), hidden temporaries aside.
RUN_DIR_ENTRIES = (
    "config.json", "metrics.jsonl", "ckpt_latest.pt", "epoch_*.pt", "cache_r*.pt", "curves*.png"
)


def is_run_dir(path: Path) -> bool:
    """A folder holding only a training run's files (and a config.json of a training run, if any)."""
    from netvlad._outputs import folder_holds_only, json_object_with

    if not folder_holds_only(path, RUN_DIR_ENTRIES):
        return False
    return not (path / "config.json").exists() or json_object_with(path / "config.json", ("train",))


def _check_run_dir(args) -> None:
    """--out may be no input, and a new run goes only into a new, empty or run folder."""
    from netvlad._outputs import check_not_input, check_output_dir

    inputs = [("--train", args.train), ("--val", args.val), ("--train-images", args.train_images),
              ("--val-images", args.val_images), ("--model", args.model), ("--weights", args.weights)]
    if args.resume:  # the run's own folder: files the user added there stay, nothing is removed
        check_not_input(args.out, inputs)
    else:
        check_output_dir(args.out, inputs=inputs, is_ours=is_run_dir, kind="training run folder")


def run_train(args) -> int:
    from netvlad._outputs import OutputLock

    _check_run_dir(args)
    # One process per run directory; under torchrun rank 0 speaks for the group.
    lock = OutputLock(args.out, "training into")
    if int(os.environ.get("RANK", "0")) == 0:
        lock.acquire()
    try:
        return _train(args)
    finally:
        lock.release()


def _train(args) -> int:
    from netvlad.data import load_dataset
    from netvlad.train import fit
    from netvlad.weights import load_model

    run_dir: Path = args.out
    if args.resume:
        info_path = run_dir / "config.json"
        if not info_path.is_file():
            raise CLIError(f"{run_dir}: nothing to resume (no config.json)")
        info = json.loads(info_path.read_text())
        base = TrainConfig.from_dict(info["train"])
        # Only the length of the run may change on resume; the rest must stay as it was.
        cfg = dataclasses.replace(base, epochs=args.epochs or base.epochs)
        cli = info.get("cli", {})
        train_spec, val_spec = cli.get("train"), cli.get("val")
        train_images, val_images = cli.get("train_images"), cli.get("val_images")
        model_spec, weights = cli.get("model"), cli.get("weights")
    else:
        if not args.train or not args.val:
            raise CLIError("--train and --val are required (or --resume)")
        cfg = _config_from_args(args, TrainConfig())
        train_spec, val_spec, train_images, val_images = (
            args.train,
            args.val,
            args.train_images,
            args.val_images,
        )
        model_spec, weights = args.model, args.weights
        _require_weights(model_spec, weights)
    device = _init_distributed(args.device)
    model = load_model(model_spec, weights=weights)
    train_ds = load_dataset(train_spec, train_images, purpose="train")
    val_ds = load_dataset(val_spec, val_images)
    cli_info = {
        "train": str(train_spec),
        "val": str(val_spec),
        "train_images": train_images,
        "val_images": val_images,
        "model": str(model_spec),
        "weights": weights,
    }
    fit(
        model,
        train_ds,
        val_ds,
        cfg,
        run_dir,
        device=device,
        progress=not args.no_progress,
        resume=args.resume,
        run_info={"cli": cli_info},
        log=print,
    )
    from netvlad.train.dist import rank_world

    if rank_world()[0] == 0:
        print(f"run finished: {run_dir} (choose an epoch with `netvlad pick-best {run_dir}`)")
    return 0


def run_pick_best(args) -> int:
    from netvlad.train import cleanup, pick_best, read_run_recalls

    rr = read_run_recalls(args.run_dir)
    epoch, path = pick_best(args.run_dir, args.n)
    if args.export:
        from netvlad._outputs import check_output_file, is_netvlad_checkpoint

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
        from netvlad.models import load_model, save_model

        if not path.is_file():
            raise CLIError(f"{path}: checkpoint of the best epoch is missing")
        save_model(load_model(path), args.export, extra={"run": str(args.run_dir), "epoch": epoch})
        print(f"saved {args.export}")
    if args.cleanup:
        removed = cleanup(args.run_dir, args.n, delete=True)
        print(f"removed {len(removed)} other epoch checkpoint(s)")
    return 0


def _cached_descriptors(model, paths: list, cache_file: Path, args):
    """Descriptors of ``paths`` (the unwhitened model's), reused from ``cache_file`` when it matches."""
    import numpy as np

    from netvlad.extract import compute_descriptors

    if cache_file.is_file():
        desc = np.load(cache_file)
        if desc.shape == (len(paths), model.out_dim):
            return desc
    desc = compute_descriptors(
        model,
        paths,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.workers,
        progress=not args.no_progress,
    )
    atomic_write(cache_file, lambda tmp: np.save(tmp, desc), suffix=".tmp.npy")
    return desc


def _auto_dim(model, params, val_ds, cache: Path, args) -> tuple[int, dict[int, float]]:
    """`--dim auto`: validation recall@1 of each candidate dimension; prints the table."""
    from netvlad.metrics import evaluate_dataset
    from netvlad.whitening import select_dim

    key = f"pca_{model.fingerprint()[:12]}_val_{val_ds.name}_{val_ds.num_db}_{val_ds.num_queries}"
    vdb = _cached_descriptors(model, val_ds.db_paths(), cache / f"{key}_db.npy", args)
    vq = _cached_descriptors(model, val_ds.query_paths(), cache / f"{key}_q.npy", args)

    def recall_at_1(db, q) -> float:
        return evaluate_dataset(val_ds, db, q, ns=[1])["recall"][1]

    choice = select_dim(params, vdb, vq, recall_at_1, whiten=args.whiten)
    print(f"validation recall@1 on {val_ds.name} ({val_ds.num_queries} queries, "
          f"{val_ds.num_db} database images):")
    for d, r in choice.scores.items():
        print(f"  {d:>5}-D  {100 * r:6.2f}%" + ("  <- chosen" if d == choice.dim else ""))
    return choice.dim, choice.scores


def run_pca(args) -> int:
    from netvlad._outputs import check_output_file, is_netvlad_checkpoint
    from netvlad.data import load_dataset
    from netvlad.models import save_model
    from netvlad.weights import load_model
    from netvlad.whitening import PCAParams, apply_whitening, fit_pca, sample_indices, variance_kept

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
    idx = sample_indices(ds.num_db, args.max_images, 43)
    cache = args.cache_dir or args.out.parent
    cache.mkdir(parents=True, exist_ok=True)
    key = f"pca_{model.fingerprint()[:12]}_{ds.name}_{len(idx)}"
    fit_file = cache / f"{key}.npz"
    params = PCAParams.load(fit_file) if fit_file.is_file() else None
    want = 1 if auto else args.dim  # every fit keeps >= 4096 components where it can: enough for auto
    if params is None or params.max_dim < want:
        paths = ds.db_paths()
        desc = _cached_descriptors(model, [paths[i] for i in idx], cache / f"{key}_descs.npy", args)
        # Keep at least 4096 components (the paper's pcaDim) so later smaller --dim reuse the fit.
        keep = min(max(want, 4096), desc.shape[1], desc.shape[0])
        params = fit_pca(desc, dim=max(keep, want), max_samples=None)
        params.save(fit_file)
    scores = None
    dim = args.dim
    if auto:
        dim, scores = _auto_dim(model, params, val_ds, cache, args)
    apply_whitening(model, params, dim, whiten=args.whiten)  # logs a warning for a too-large dim
    pca_info = {"dim": dim, "whiten": args.whiten, "dataset": ds.name, "n_samples": params.n_samples,
                "fit": fit_file.name}
    if scores is not None:
        pca_info["val"] = {"dataset": val_ds.name, "recall@1": {str(d): r for d, r in scores.items()}}
    save_model(model, args.out, extra={"pca": pca_info})
    print(
        f"saved {args.out} ({'whitened' if args.whiten else 'PCA'} {dim}-d, fit on {params.n_samples} "
        f"descriptors, the kept components hold {100 * variance_kept(params, dim):.1f}% of the variance, "
        f"cached in {fit_file})"
    )
    return 0
