"""The ``netvlad`` command: the only module that reads argv and configures logging.

Each sub-command family lives in its own module here and exposes ``register(subparsers)``,
which adds its parsers and sets ``func`` (a callable taking the parsed namespace and returning
an exit code).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings

from netvlad import __version__


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2 (or ``code``)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def workers_arg(text: str) -> int:
    """argparse type of the image-decoding ``--workers`` flags: an int >= 0."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = decode images in the main process), got {n}")
    return n


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    # Users act on the message; our file name, line number and source line only add noise.
    return f"{category.__name__}: {' '.join(str(message).split())}"


class _OncePerText(logging.Filter):
    """Let each distinct warning text through once per command: some libraries repeat one (torch's
    DataLoader worker-count warning comes from two source lines, for every loader)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


class _Formatter(logging.Formatter):
    """Python warnings as ``netvlad CMD: Category: message``; other records as before."""

    def __init__(self, command: str | None):
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.command = command

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "py.warnings":
            return f"netvlad {self.command}: {record.getMessage()}"
        return super().format(record)


@contextlib.contextmanager
def _warnings_through_logging():
    """Route Python warnings to the ``py.warnings`` logger, one line each, each text once."""
    once, old_format = _OncePerText(), warnings.formatwarning
    logger = logging.getLogger("py.warnings")
    warnings.formatwarning = _one_line_warning
    logger.addFilter(once)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        logger.removeFilter(once)
        warnings.formatwarning = old_format


def _command_modules():
    # Explicit list (no import-by-filename magic); order is the order in --help.
    from netvlad.cli import (
        convert_cmd,
        dataset_cmd,
        demo_cmd,
        eval_cmd,
        extract_cmd,
        features_cmd,
        index_cmd,
        models_cmd,
        serve_cmd,
        train_cmd,
        weights_cmd,
    )

    return [models_cmd, dataset_cmd, extract_cmd, features_cmd, eval_cmd, index_cmd, train_cmd, convert_cmd,
            weights_cmd, demo_cmd, serve_cmd]


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
    handler = logging.StreamHandler()
    handler.setFormatter(_Formatter(args.command))
    logging.basicConfig(level=level, handlers=[handler])
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with _warnings_through_logging():
        return _run(args)


def _run(args) -> int:
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"netvlad {args.command}: error: {exc}", file=sys.stderr)
        return exc.code
    except (FileNotFoundError, ValueError, KeyError, OSError) as exc:
        # Library code raises these with messages that name the file and the problem.
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else _disk_full_text(exc) or exc
        print(f"netvlad {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        # h5py, torch and faiss report a full disk as RuntimeError; anything else is a bug to show.
        if not _disk_full_text(exc):
            raise
        print(f"netvlad {args.command}: error: {_disk_full_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"netvlad {args.command}: interrupted", file=sys.stderr)
        return 130


def _disk_full_text(exc: BaseException) -> str | None:
    """One line for a full disk that no library code turned into a DiskFullError, else None."""
    from netvlad._outputs import DiskFullError, is_disk_full

    if isinstance(exc, DiskFullError) or not is_disk_full(exc):
        return None
    where = getattr(exc, "filename", None)
    prefix = f"{where}: " if where else ""
    return f"{prefix}disk full (no space left on device); free some space and rerun"

