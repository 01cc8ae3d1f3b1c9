"""The ``netvlad`` command: the only module that reads argv and configures logging.

Each sub-command family lives in its own module here and exposes ``register(subparsers)``,
which adds its parsers and sets ``func`` (a callable taking the parsed namespace and returning
an exit code).
"""

from __future__ import annotations

import argparse
import logging
import sys

from netvlad import __version__


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2 (or ``code``)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _command_modules():
    # Explicit list (no import-by-filename magic); order is the order in --help.
    from netvlad.cli import (
        convert_cmd,
        dataset_cmd,
        demo_cmd,
        eval_cmd,
        extract_cmd,
        index_cmd,
        models_cmd,
        train_cmd,
        weights_cmd,
    )

    return [models_cmd, dataset_cmd, extract_cmd, eval_cmd, index_cmd, train_cmd, convert_cmd, weights_cmd,
            demo_cmd]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netvlad",
        description="NetVLAD visual place recognition: models, datasets, extraction, search, "
        "evaluation, weakly supervised training. MODEL is a preset name (see `netvlad models`), "
        "a published model's name (see `netvlad weights list`) or a checkpoint path; SPEC is a dataset "
        "file or folder in any supported format.",
    )
    parser.add_argument("--version", action="version", version=f"netvlad {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"netvlad {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        # Library code raises these with messages that name the file and the problem.
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"netvlad {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"netvlad {args.command}: interrupted", file=sys.stderr)
        return 130
