"""Output paths that never destroy an input or a user's file, per-output locks, full-disk errors.

Why: a mistyped ``--out`` must not turn a feature file into an index folder, empty a folder of
the user's files or overwrite the report that was meant as an input; two processes writing the
same output must not undo each other's work; a full disk must be a one-line error that says how
much space to free, never a traceback or a file that later reads as something else.

The rules every writing command applies (see README "When things go wrong"):

- an output that is also an input (same file after resolving relative paths and symlinks) is
  refused, even with ``--overwrite``;
- an existing output file is replaced only when it is netvlad's own artefact of the same kind
  (recognised by its content, never by its name), when it is empty, or with ``--overwrite``;
- an existing folder is written into or replaced only when it is empty or holds only what
  netvlad itself writes there; a folder holding anything else is never touched, whatever the flags.

A leaf utility (standard library only): every part of the package may import it.
"""

from __future__ import annotations

from netvlad._outputs.disk import DiskFullError, disk_full_error, format_bytes, free_bytes, is_disk_full
from netvlad._outputs.lock import OutputBusyError, OutputLock, lock_path
from netvlad._outputs.paths import (
    OutputError,
    check_distinct,
    check_not_input,
    check_output_dir,
    check_output_file,
    folder_holds_only,
    is_netvlad_checkpoint,
    is_onnx_model,
    is_torchscript,
    json_object_with,
    png_text,
    same_file,
)

__all__ = [
    "DiskFullError",
    "OutputBusyError",
    "OutputError",
    "OutputLock",
    "check_distinct",
    "check_not_input",
    "check_output_dir",
    "check_output_file",
    "disk_full_error",
    "folder_holds_only",
    "format_bytes",
    "free_bytes",
    "is_disk_full",
    "is_netvlad_checkpoint",
    "is_onnx_model",
    "is_torchscript",
    "json_object_with",
    "lock_path",
    "png_text",
    "same_file",
]
