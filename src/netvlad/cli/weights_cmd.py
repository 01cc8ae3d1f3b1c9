"""CLI: ``netvlad weights list`` and ``netvlad weights get NAME`` (published models by name)."""

from __future__ import annotations

import json
from pathlib import Path

from netvlad.cli import CLIError

_DIR_HELP = "cache folder (default: $NETVLAD_HOME, else the user cache folder, e.g. ~/.cache/netvlad)"


def register(sub) -> None:
    """Add ``weights list|get`` to `sub` (an argparse subparsers action)."""
    p = sub.add_parser(
        "weights", help="published NetVLAD models: list them, download + convert one",
        description="Published NetVLAD models by name. `list` shows what is published, by whom, what "
        "it reproduces and under which licence; `get NAME` downloads the file once (resumable, "
        "sha256-checked on every use), converts it once and prints the checkpoint's path. Every "
        "command taking MODEL also takes these names.")
    p.set_defaults(func=lambda args: _usage(p))
    actions = p.add_subparsers(dest="weights_action", metavar="ACTION")

    q = actions.add_parser("list", help="the catalogue of published models",
                           description="The catalogue: name, project, training set, what each model "
                           "reproduces, size, format, licence, whether it is in the cache, and where its "
                           "URL was found.")
    q.add_argument("--json", action="store_true", help="print JSON (every catalogue field, plus 'cached')")
    q.add_argument("--dir", metavar="DIR", type=Path, default=None, help=_DIR_HELP)
    q.set_defaults(func=run_list)

    q = actions.add_parser("get", help="download (once) and convert (once) a published model",
                           description="Download NAME's file into the cache (resuming an interrupted "
                           "download), verify its sha256 (the catalogue's, or the one recorded at the "
                           "first download), convert it once, and print where the checkpoint is. "
                           "Offline? The error names the URL and the path where a file fetched by hand "
                           "is accepted.")
    q.add_argument("name", metavar="NAME", help="a name from `netvlad weights list`")
    q.add_argument("--dir", metavar="DIR", type=Path, default=None, help=_DIR_HELP)
    q.add_argument("--quiet", action="store_true", help="no progress bar; print only the checkpoint's path")
    q.add_argument("--redownload", action="store_true",
                   help="discard the cached download and its recorded sha256, and fetch it again")
    q.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server (30)")
    q.set_defaults(func=run_get)


def _usage(parser) -> int:
    parser.print_help()
    return 2


def run_list(args) -> int:
    from netvlad.weights import cache_status, list_weights, resolve_catalogue

    cat = resolve_catalogue(None)
    entries = list_weights(cat)
    if args.json:
        rows = [{**e.to_dict(), "cached": cache_status(e, args.dir)} for e in entries]
        print(json.dumps(rows, indent=1, ensure_ascii=False))
        return 0
    head = ("NAME", "PROJECT", "TRAINED ON", "SIZE", "FORMAT", "LICENCE", "CACHED")
    rows = [(e.name, e.project, e.trained_on, _size(e.size), e.format, e.licence, cache_status(e, args.dir))
            for e in entries]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*head).rstrip())
    for e, row in zip(entries, rows):
        print(line.format(*row).rstrip())
        results = e.results_text()
        print(f"    reproduces: {e.reproduces}" + (f" ({results})" if results else ""))
        print(f"    source:     {e.source_url}")
    for item in cat.not_included:
        print(f"not included: {item.get('name')}: {item.get('reason')}")
    print("\n`netvlad weights get NAME` downloads and converts one; every MODEL argument takes NAME too.")
    return 0


def _size(size: int | None) -> str:
    return "?" if size is None else f"{size / 2**20:.0f} MiB"


def run_get(args) -> int:
    from netvlad.weights import find_weights, get_weights

    if args.timeout <= 0:
        raise CLIError(f"--timeout must be > 0, got {args.timeout}")
    path = get_weights(args.name, cache_dir=args.dir, progress=not args.quiet, timeout=args.timeout,
                       redownload=args.redownload)
    if args.quiet:
        print(path)
        return 0
    entry = find_weights(args.name)
    results = entry.results_text()
    print(f"{entry.name}: {path}")
    print(f"  project:    {entry.project} ({entry.licence})")
    print(f"  reproduces: {entry.reproduces}" + (f" ({results})" if results else ""))
    print("use it (every MODEL argument takes the name or the checkpoint's path):")
    env = "" if args.dir is None else f"NETVLAD_HOME={args.dir} "
    print(f"  {env}netvlad extract {entry.name} --images DIR --out feats.h5")
    where = "" if args.dir is None else f", cache_dir={str(args.dir)!r}"
    print(f"  python: netvlad.create_model({entry.name!r}, pretrained=True{where})")
    return 0
