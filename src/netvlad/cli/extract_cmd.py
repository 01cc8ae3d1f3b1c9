"""``netvlad extract``: descriptors of a dataset's images or of a folder of images into a feature file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from netvlad.cli import CLIError, workers_arg


def register(sub) -> None:
    """Add this module's sub-commands to `sub` (an argparse subparsers action)."""
    _add_extract(sub)


def _add_extract(sub) -> None:
    p = sub.add_parser(
        "extract", help="extract descriptors into a feature file (resumable)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run MODEL over images and store one descriptor per image.\n\n"
        "Output: HDF5 (names + descriptors + model fingerprint/preprocessing attributes, and model_ref:\n"
        "the preset name or the checkpoint's absolute path, for `netvlad index build`/`query`), MATLAB's\n"
        "headerless float32 .bin (image-major), or hloc's layout (a group per image name with\n"
        "global_descriptor). An interrupted run leaves OUT.partial.h5 and resumes on the next run;\n"
        "an existing OUT from the same model and image list is reported up to date, one from another\n"
        "model/dimension/list is refused unless --overwrite.\n\n"
        "--split all (the default with --dataset) writes two files: OUT with _db and _query inserted\n"
        "before the extension (feats.h5 -> feats_db.h5, feats_query.h5), because database and query\n"
        "names are relative to different roots and may collide.\n\n"
        "With --skip-bad an unreadable image gets a NaN row and is listed in the file's bad_images\n"
        "attribute (rows stay aligned with the dataset); hloc output leaves such images out. A\n"
        "decompression bomb (a header over Pillow's 179 Mpx limit) is such an image, and so is an\n"
        "image over --max-pixels with --oversize refuse.\n\n"
        "Photos from phones store their rotation as an EXIF tag: --images honours it by default,\n"
        "--dataset ignores it as the benchmarks' ground truth does; --exif-orientation and\n"
        "--no-exif-orientation override either.\n\n"
        "More than one process: `torchrun --nproc_per_node P [--nnodes N ...] -m netvlad extract ...`\n"
        "(gloo on CPU, nccl on CUDA) writes one shard per rank next to OUT and rank 0 assembles OUT,\n"
        "identical to a single-process run; a rerun after a failure resumes only the missing rows.\n"
        "Without torchrun, --shard I/N and `netvlad features merge` do the same by hand.",
        epilog="examples:\n"
        "  netvlad extract vgg16-netvlad.pt --dataset pitts30k_test.mat --image-root /data/pitts --out f.h5\n"
        "  netvlad extract model.pt --images photos/ --out photos.h5 --bf16\n"
        "  netvlad extract model.pt --images photos/ --out photos.h5 --precision int8\n"
        "  netvlad extract model.pt --images photos/ --list names.txt --out q.bin --format bin\n"
        "  torchrun --nproc_per_node 2 -m netvlad extract model.pt --images photos/ --out photos.h5\n"
        "  netvlad extract model.pt --images photos/ --out photos.h5 --shard $SLURM_ARRAY_TASK_ID/8")
    _add_inputs_and_output(p)
    _add_compute_options(p)
    add_image_options(p, exif_default="on with --images, off with --dataset (its protocol)")
    p.add_argument("--shard", metavar="I/N",
                   help="extract only shard I of N (0 <= I < N) into OUT.shard-IIIII-of-NNNNN.h5, for a job "
                   "array or a set of machines; `netvlad features merge` assembles the shards into OUT. "
                   "Shards are whole batches dealt by image size, so the merged file equals a single "
                   "run's. Under torchrun (WORLD_SIZE > 1) each rank takes its shard and rank 0 merges "
                   "by itself: no --shard needed")
    add_patch_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _add_inputs_and_output(p) -> None:
    """MODEL, --dataset/--images, --image-root, --split, --list, --out, --format."""
    from netvlad.data.images import IMAGE_EXTENSIONS

    p.add_argument("model", metavar="MODEL", help="preset name or checkpoint path")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", metavar="SPEC", help="dataset file or folder (any supported format)")
    src.add_argument("--images", metavar="DIR", type=Path,
                     help=f"folder of images, searched recursively for {'/'.join(sorted(IMAGE_EXTENSIONS))}")
    p.add_argument("--image-root", metavar="DIR", help="with --dataset: where its images are")
    p.add_argument("--split", choices=("db", "query", "all"), default="all",
                   help="with --dataset: which images (default: all, two files)")
    p.add_argument("--list", metavar="FILE", type=Path,
                   help="with --images: image names relative to DIR, one per line (# comments allowed)")
    p.add_argument("--out", metavar="FEATS", type=Path, required=True, help="output file")
    p.add_argument("--format", choices=("h5", "bin", "hloc"), default="h5",
                   help="output format (default: h5)")


def _add_compute_options(p) -> None:
    """--batch-size, --workers, --device, precision, --compile, --skip-bad, --overwrite, --max-side."""
    from netvlad.extract import ExtractConfig

    d = ExtractConfig()
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"images per batch; sizes are grouped automatically (default: {d.batch_size})")
    p.add_argument("--workers", type=workers_arg, default=d.num_workers,
                   help="image-decoding worker processes (default: 0 on CPU, where workers steal "
                   "cycles from the compute threads; up to 4 on CUDA; 0 = decode in the main process)")
    p.add_argument("--device", default=d.device, help=f"torch device (default: {d.device})")
    p.add_argument("--half", action="store_true", help="store float16 descriptors")
    p.add_argument("--amp", action="store_true", help="autocast: float16 on CUDA, bfloat16 on CPU")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 autocast (about 2x faster on CPUs with AVX512_BF16)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16", "int8"), default=None,
                   help="compute precision: bf16 pays only on CPUs with AVX512_BF16/AMX (emulated, "
                   "slower than fp32, elsewhere); int8 quantizes the backbone, calibrated on 8 of the "
                   "images (CPU; ~2x fp32 on AVX2); fp16 is CUDA (default: fp32, or as --bf16/--amp say)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile with freezing (fp32/bf16; fuses ReLU into the convolutions; "
                   "the first batch of each image size compiles for about a minute)")
    p.add_argument("--skip-bad", action="store_true",
                   help="record unreadable images (NaN rows, bad_images attribute) instead of stopping")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output from another run")
    p.add_argument("--max-side", type=int, default=d.max_side, metavar="PX",
                   help="resize so the longest side is at most PX pixels, overriding the model's "
                   "preprocessing; 0 keeps native resolution (default: the model's)")


def add_patch_options(p) -> None:
    """--patches [PRESET], --patch-sizes, --patch-strides, --patch-dim (Patch-NetVLAD features)."""
    from netvlad.extract import PATCH_PRESETS

    p.add_argument("--patches", nargs="?", const="speed", choices=tuple(PATCH_PRESETS), metavar="PRESET",
                   help="also write Patch-NetVLAD patch features (for evaluate --rerank patch) next to each "
                   "output, OUT.patches.h5 (feats_db.h5 -> feats_db.patches.h5): NetVLAD over sliding "
                   "windows of the feature map, whitened with the model's PCA when it has one. PRESET: "
                   "speed (5x5 cells, stride 1; the default) or performance (2x2, 5x5, 8x8). A storage "
                   "estimate is printed first; resumable like the global features")
    p.add_argument("--patch-sizes", type=int, nargs="+", metavar="N",
                   help="window sides in feature-map cells (overrides the preset)")
    p.add_argument("--patch-strides", type=int, nargs="+", metavar="N", help="window steps, one per size "
                   "(default: 1 each)")
    p.add_argument("--patch-dim", type=int, metavar="D", help="keep the first D whitened dimensions (the "
                   "paper's num_pcs; needs a model with PCA-whitening)")


def patch_settings(args):
    """The PatchConfig of --patches/--patch-* (None without --patches)."""
    from netvlad.extract import PatchConfig

    given = args.patch_sizes or args.patch_strides or args.patch_dim is not None
    if args.patches is None:
        if given:
            raise CLIError("--patch-sizes, --patch-strides and --patch-dim go with --patches")
        return None
    over = {}
    if args.patch_sizes:
        over["sizes"] = tuple(args.patch_sizes)
        over["strides"] = tuple(args.patch_strides or [1] * len(args.patch_sizes))
    elif args.patch_strides:
        over["strides"] = tuple(args.patch_strides)
    if args.patch_dim is not None:
        over["dim"] = args.patch_dim
    try:
        return PatchConfig.preset(args.patches, **over)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def add_image_options(p, exif_default: str, oversize: bool = True) -> None:
    """--max-pixels, --oversize and --exif-orientation/--no-exif-orientation (shared with query, init)."""
    from netvlad.extract import DEFAULT_MAX_PIXELS, OVERSIZE_MODES

    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="most network-input pixels in one forward pass, after preprocessing (default: "
                   f"{DEFAULT_MAX_PIXELS}, about 4.4 GB of activations for VGG-16 fp32 at ~520 bytes/pixel); "
                   "equal-size images share a batch only up to it, a larger image is handled as "
                   "--oversize says; 0: no bound (one huge photo can then take the machine)")
    if oversize:
        p.add_argument("--oversize", choices=OVERSIZE_MODES, default="downscale",
                       help="an image over --max-pixels: downscale it (keeping its aspect ratio; a "
                       "warning names it and the size used) or refuse it as a bad image (default: "
                       "downscale)")
    p.add_argument("--exif-orientation", action=argparse.BooleanOptionalAction, default=None,
                   help=f"apply the photos' EXIF orientation tag (default: {exif_default})")


def image_settings(args, exif_default: bool) -> dict:
    """ExtractConfig fields from the options of :func:`add_image_options`."""
    if args.max_pixels < 0:
        raise CLIError(f"--max-pixels must be >= 0 (0: no bound), got {args.max_pixels}")
    return {"max_pixels": args.max_pixels or None, "oversize": getattr(args, "oversize", "downscale"),
            "exif_orientation": exif_default if args.exif_orientation is None else args.exif_orientation}


def _jobs(args):
    """The feature files this run writes (netvlad.extract.jobs)."""
    from netvlad.extract.jobs import dataset_jobs, folder_job

    if args.images is not None:
        if args.image_root or args.split != "all":
            raise CLIError("--image-root and --split go with --dataset, not --images")
        return [folder_job(args.images, args.out, args.list)]
    if args.list is not None:
        raise CLIError("--list goes with --images")
    return dataset_jobs(args.dataset, args.out, args.split, args.image_root)


def _check_output(args, out: Path, paths: list[Path]) -> None:
    """OUT may be no input (model, list, dataset, image) and no folder (README: When things go wrong)."""
    from netvlad._outputs import check_not_input

    inputs = [("MODEL", args.model), ("--list", args.list), ("--dataset", args.dataset)]
    check_not_input(out, [*inputs, *(("image", p) for p in paths)])
    if out.is_dir():
        raise CLIError(f"{out}: is a folder; give the path of the feature file to write")


def _sharding(args) -> tuple[tuple[int, int] | None, int, int, str]:
    """(--shard as (I, N) or None, torch rank, world size, this rank's device)."""
    from netvlad.extract import init_distributed, parse_shard

    shard = None
    if args.shard is not None:
        try:
            shard = parse_shard(args.shard)
        except ValueError as exc:
            raise CLIError(f"--shard: {exc}") from exc
        if args.format != "h5":
            raise CLIError("--shard writes HDF5 shards; merge them (netvlad features merge), then convert")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and shard is not None:
        raise CLIError("--shard is for runs without torchrun; under torchrun every rank takes its own shard")
    rank, world, device = init_distributed(args.device)
    return shard, rank, world, device


def _extract_shard(model, paths, names, out: Path, cfg, shard: tuple[int, int]) -> None:
    from netvlad import io
    from netvlad.extract import extract_shard

    statuses = []
    path = extract_shard(model, paths, names, out, shard[0], shard[1], cfg, on_status=statuses.append)
    if path == out:
        print(f"{out}: up to date (already merged), nothing to extract")
        return
    if statuses and statuses[0].kind == "resume":
        print(statuses[0].message)
    attrs = io.read_attrs(path)
    print(f"{path}: shard {shard[0]} of {shard[1]}, {attrs['num_images']} of {attrs['run_num_images']} "
          f"images; when all {shard[1]} are done: netvlad features merge "
          f"{out.with_name(out.stem)}.shard-*-of-{shard[1]:05d}.h5 --out {out}")


def run(args) -> int:
    """`netvlad extract`."""
    if args.max_side is not None and args.max_side < 0:
        raise CLIError(f"--max-side must be >= 0 (0: native resolution), got {args.max_side}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    shard, rank, world, device = _sharding(args)
    cfg = _config(args, device)
    patches = patch_settings(args)
    if patches is not None and (shard is not None or world > 1):
        raise CLIError("--patches runs in one process: not with --shard or torchrun")
    jobs = _jobs(args)
    for job in jobs:
        _check_output(args, job.out, job.paths)
        if args.format != "h5" and job.out.exists() and not args.overwrite:
            raise CLIError(f"{job.out}: exists, and {args.format} files carry no model information to check "
                           "it against; pass --overwrite to replace it")
    model = _load_ready_model(args, device)
    for job in jobs:
        # .bin/hloc are written from a finished HDF5 file, which is what makes them resumable.
        h5 = job.out if args.format == "h5" else job.out.with_name(job.out.name + ".h5")
        if shard is not None:
            _extract_shard(model, job.paths, job.names, h5, cfg, shard)
            continue
        up_to_date = _extract_job(model, job, h5, cfg, rank, world)
        if up_to_date is None:
            continue  # a rank other than 0: rank 0 converts and reports
        _finish_job(args, job.out, h5, up_to_date)
        if patches is not None:
            _extract_patches(args, model, job.paths, job.names, job.out, patches, cfg)
    return 0


def _config(args, device: str):
    from netvlad.extract import ExtractConfig
    from netvlad.weights import model_reference

    try:
        return ExtractConfig(batch_size=args.batch_size, num_workers=args.workers, device=device,
                             half=args.half, amp=args.amp, bf16=args.bf16, skip_bad=args.skip_bad,
                             precision=args.precision, compile=args.compile,
                             overwrite=args.overwrite, max_side=args.max_side, progress=not args.no_progress,
                             model_ref=model_reference(args.model),
                             **image_settings(args, exif_default=args.images is not None))
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _load_ready_model(args, device: str):
    from netvlad.weights import load_model

    try:
        model = load_model(args.model, device=device)
        model.check_ready()
    except RuntimeError as exc:  # e.g. NetVLAD clusters not initialised
        raise CLIError(f"{args.model}: {exc}") from exc
    return model


def _extract_job(model, job, h5: Path, cfg, rank: int, world: int) -> bool | None:
    """Extract one file (this process, or this rank under torchrun): whether it was up to date
    already; None on a rank other than 0."""
    from netvlad.extract import extract_features

    statuses = []
    if world > 1:
        from netvlad.extract import RankFailedError, extract_distributed

        try:
            extract_distributed(model, job.paths, job.names, h5, cfg, on_status=statuses.append)
        except RankFailedError as exc:
            raise CLIError(f"rank {rank}: {exc}") from exc
        if statuses and statuses[0].kind == "resume":  # each rank resumes its own shard
            print(f"rank {rank}: {statuses.pop(0).message}")
        if rank:
            return None
    else:
        extract_features(model, job.paths, job.names, h5, cfg, on_status=statuses.append)
    if statuses and statuses[0].kind == "resume":
        print(statuses[0].message)  # the run ended by an interruption or a full disk goes on
    return bool(statuses) and statuses[0].kind == "up-to-date"


def _finish_job(args, out: Path, h5: Path, up_to_date: bool) -> None:
    """Write --format bin/hloc from the finished HDF5 file, and say what was written."""
    from netvlad import io

    attrs = io.read_attrs(h5)
    if args.format != "h5":
        io.export_features(h5, out, args.format, as_half=args.half)
    if h5 != out:
        os.remove(h5)
    bad = attrs.get("bad_images", [])
    state = "up to date" if up_to_date else "wrote"
    print(f"{out}: {state}, {attrs['num_images']} images, {attrs['dim']}-D {attrs['dtype']}"
          + (f", {len(bad)} bad image(s) skipped: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"
             if bad else ""))


def _extract_patches(args, model, paths, names, out: Path, patches, cfg) -> None:
    from netvlad.extract import estimate_patch_bytes, extract_patches, patch_file_for

    target = patch_file_for(out)
    _check_output(args, target, paths)
    est = estimate_patch_bytes(model, paths, patches, cfg)
    print(f"{target}: patch features of {len(paths)} images, scales {patches.scales}: about "
          f"{est / 1e6:.1f} MB ({est / max(len(paths), 1) / 1e3:.1f} kB per image)")
    statuses = []
    try:
        extract_patches(model, paths, names, target, patches, cfg, on_status=statuses.append)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    state = "up to date" if statuses[0].kind == "up-to-date" else "wrote"
    print(f"{target}: {state}, {len(paths)} images")
