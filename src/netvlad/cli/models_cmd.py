"""CLI: ``netvlad models``, ``netvlad describe MODEL``, ``netvlad init MODEL`` (off-the-shelf NetVLAD)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from netvlad.cli import CLIError


def register(sub) -> None:
    """Add this module's sub-commands to `sub` (an argparse subparsers action)."""
    from netvlad.models import InitConfig

    p = sub.add_parser("models", help="list the model presets",
                       description="List the model presets: backbone, crop, method, K, output size, "
                       "preprocessing and where the backbone weights come from.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_models)

    p = sub.add_parser("describe", help="show a model's layers, output size, preprocessing, state",
                       description="Describe MODEL (a preset name or a checkpoint): layers, output "
                       "dimension, preprocessing, whether its NetVLAD layer is initialised, fingerprint.")
    p.add_argument("model", metavar="MODEL", help="preset name or checkpoint file")
    p.add_argument("--weights", default=None,
                   help="backbone weights for a preset: imagenet, random or a state-dict FILE")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_describe)

    d = InitConfig()
    p = sub.add_parser(
        "init", help="initialise NetVLAD clusters from images and save a ready checkpoint",
        description="The paper's off-the-shelf NetVLAD: sample local descriptors from images (from "
        "DIR, or a dataset's database), k-means them into K clusters, set the soft-assignment, save.")
    p.add_argument("model", metavar="MODEL", help="preset name or checkpoint file")
    p.add_argument("--images", metavar="DIR", help="folder of images (searched recursively); with "
                   "--dataset, the dataset's image root")
    p.add_argument("--dataset", metavar="SPEC", help="sample from this dataset's database images")
    p.add_argument("--out", metavar="CKPT", required=True,
                   help="checkpoint to write (.pt, or .safetensors)")
    p.add_argument("--per-image", type=int, default=d.per_image,
                   help=f"descriptors per image ({d.per_image})")
    p.add_argument("--max-images", type=int, default=d.max_images,
                   help=f"images sampled at random at most ({d.max_images})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed for sampling and k-means ({d.seed})")
    p.add_argument("--max-side", type=int, default=None,
                   help="downscale images to this longer side; saved as the model's preprocessing")
    p.add_argument("--weights", default=None,
                   help="backbone weights for a preset: imagenet, random or a state-dict FILE")
    p.add_argument("--device", default="cpu", help="torch device (cpu)")
    from netvlad.cli.extract_cmd import add_image_options

    add_image_options(p, exif_default="on for an --images folder, off with --dataset (its protocol)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true", help="replace a CKPT that is not a netvlad checkpoint")
    p.set_defaults(func=run_init)


def describe_preprocess(pre) -> str:
    """One line saying how pixels become the network input."""
    if pre.resize is not None:
        size = f"resized to {pre.resize[0]}×{pre.resize[1]} (H×W, aspect ignored" + (
            ", after normalisation: bilinear on the float tensor)" if pre.resize_stage == "tensor" else ")")
    else:
        size = "full resolution" if pre.max_side is None else f"longer side <= {pre.max_side}"
    if pre.style == "matconvnet":
        return f"matconvnet: RGB 0-255 minus mean {pre.mean}, no std, {size}"
    return f"imagenet: RGB 0-1, mean {pre.mean}, std {pre.std}, {size}"


_ORDER_TEXT = {
    "matlab": "d·K+k (MATLAB's: cluster index fastest)",
    "torch": "k·D+d (cluster-major, as the PyTorch projects it was converted from)",
}


def describe_order(order: str) -> str:
    """Words for a ``vlad_order``."""
    return _ORDER_TEXT[order]


def _weights_text(cfg) -> str:
    if cfg.pretrained is None:
        return "random (--weights imagenet|FILE, or netvlad convert)"
    return f"{cfg.pretrained} (installed package)" if cfg.backbone == "lite0" else str(cfg.pretrained)


def run_models(args) -> int:
    import torch

    from netvlad.backbones import build_backbone
    from netvlad.models import PRESETS, config_out_dim

    rows = []
    for name, cfg in PRESETS.items():
        _, out_dim = config_out_dim(cfg)
        if cfg.crop is None:  # show the layer the backbone actually crops at, not "default"
            with torch.device("meta"):
                crop = build_backbone(cfg.backbone).crop
        else:
            crop = cfg.crop
        rows.append({"name": name, "backbone": cfg.backbone, "crop": crop,
                     "method": cfg.method, "K": cfg.num_clusters if "vlad" in cfg.method else "-",
                     "out_dim": out_dim, "preprocessing": cfg.preprocess.style,
                     "weights": cfg.pretrained or "random"})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    print("\nMODEL may be any of these names or a checkpoint file. NetVLAD presets need `netvlad init` "
          "(or a trained/converted checkpoint) before use; VGG/AlexNet/ResNet backbones are random "
          "unless given --weights.")
    return 0


def _load(model: str, weights: str | None):
    from netvlad.models import PRESETS
    from netvlad.weights import load_model, published

    source = str(model)
    if not Path(model).exists() and model in PRESETS:
        source = f"{model} (preset)"
    elif not Path(model).exists() and (entry := published(model)) is not None:
        source = f"{model} (published by {entry.project}; licence: {entry.licence})"
    return load_model(model, weights=weights), source


def run_describe(args) -> int:
    m, source = _load(args.model, args.weights)
    cfg = m.config
    bb = m.backbone
    info = {
        "model": source,
        "backbone": cfg.backbone, "crop": cfg.crop, "backbone_weights": cfg.pretrained or "random",
        "stride": getattr(bb, "stride", None), "local_dim": m.local_dim,
        "method": cfg.method, "num_clusters": cfg.num_clusters if m.method.is_vlad else None,
        "whiten_dim": cfg.whiten_dim, "out_dim": m.out_dim,
        "vlad_order": cfg.vlad_order if m.method.is_vlad else None,
        "preprocess": cfg.preprocess.to_dict(), "initialized": m.initialized,
        "parameters": sum(p.numel() for p in m.parameters()),
        "layers": m.layer_names(), "fingerprint": m.fingerprint(),
    }
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    head = ", ".join(filter(None, [cfg.method, f"K={cfg.num_clusters}" if m.method.is_vlad else "",
                                   f"whitening to {cfg.whiten_dim}" if cfg.whiten_dim else ""]))
    ready = "yes" if m.initialized else (
        f"NO: run `netvlad init {args.model} --images DIR --out CKPT` before extracting or training")
    lines = [
        ("model", source),
        ("backbone", f"{cfg.backbone} cropped at {cfg.crop} (D={m.local_dim}, stride {info['stride']})"),
        ("weights", _weights_text(cfg)),
        ("head", head),
        ("output dim", str(m.out_dim)),
        *([("vlad order", describe_order(cfg.vlad_order))] if m.method.is_vlad else []),
        ("preprocessing", describe_preprocess(cfg.preprocess)),
        ("initialised", ready),
        ("parameters", f"{info['parameters']:,}"),
        ("fingerprint", info["fingerprint"]),
        ("layers", " ".join(info["layers"])),
    ]
    for k, v in lines:
        print(f"{k + ':':<15}{v}")
    return 0


def list_images(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, sorted)."""
    if not root.is_dir():
        raise CLIError(f"--images {root}: not a folder")
    from netvlad.data.images import list_images as find_images

    return [root / name for name in find_images(root)]


def run_init(args) -> int:
    from dataclasses import replace

    from netvlad.cli.extract_cmd import image_settings
    from netvlad.extract import ExtractConfig, ModelImageReader
    from netvlad.models import init_clusters, save_model

    if args.dataset is None and args.images is None:
        raise CLIError("give --images DIR or --dataset SPEC")
    if args.per_image < 1 or args.max_images < 1:
        raise CLIError("--per-image and --max-images must be >= 1")
    from netvlad._outputs import check_output_file, is_netvlad_checkpoint

    inputs = [("MODEL", args.model), ("--weights", args.weights), ("--images", args.images),
              ("--dataset", args.dataset)]
    check_output_file(args.out, inputs=inputs, is_ours=is_netvlad_checkpoint, kind="netvlad checkpoint",
                      overwrite=args.overwrite)
    m, _ = _load(args.model, args.weights)
    if not m.method.is_vlad:
        raise CLIError(f"{args.model}: method {m.method} has no clusters to initialise")
    if args.dataset is not None:
        from netvlad.data import load_dataset  # engineer C's loaders

        ds = load_dataset(args.dataset, images=args.images)
        paths = list(ds.db_paths())
        where = f"the {ds.num_db} database images of {args.dataset}"
    else:
        paths = list_images(Path(args.images))
        where = f"{len(paths)} images under {args.images}"
    if not paths:
        raise CLIError(f"no images found ({where})")
    if m.config.pretrained is None:
        print(f"netvlad init: warning: {args.model} has a random backbone; its descriptors carry no "
              "visual meaning (use --weights imagenet|FILE or a converted model)", file=sys.stderr)
    if args.max_side is not None:
        if args.max_side < 1:
            raise CLIError("--max-side must be >= 1")
        m.set_preprocess(replace(m.preprocess, max_side=args.max_side))
    # Images read as extraction reads them: upright photos, and no photo over --max-pixels.
    cfg = ExtractConfig(device=args.device, **image_settings(args, exif_default=args.dataset is None))
    m.to(args.device)
    res = init_clusters(m, paths, per_image=args.per_image, max_images=args.max_images, seed=args.seed,
                        progress=not args.quiet, loader=ModelImageReader(m, cfg))
    extra = {"init": {"source": where, "num_images": res.num_images, "num_descriptors": res.num_descriptors,
                      "alpha": res.alpha, "per_image": args.per_image, "seed": args.seed}}
    out = save_model(m.cpu(), args.out, extra=extra)
    print(f"initialised {m.config.num_clusters} clusters from {res.num_descriptors} descriptors of "
          f"{res.num_images} of {where} (alpha={res.alpha:.4g})")
    print(f"wrote {out} (out_dim {m.out_dim}, fingerprint {m.fingerprint()[:16]})")
    return 0
