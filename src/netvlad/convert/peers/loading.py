"""Reading a PyTorch checkpoint without running code from it, and finding it inside an archive.

``torch.load(weights_only=True)`` only rebuilds tensors and plain containers. Training scripts of
the NetVLAD projects also pickle numpy numbers (pytorch-NetVlad's recalls and best score, the VG
benchmark's recall array), which need numpy's scalar/array reconstructors and dtypes: those, and
nothing else, are allow-listed. Anything more (a class, ``os.system``) is refused, naming it.

A run folder downloaded from Google Drive arrives as a zip (or tar) of checkpoints: the best one
is picked by the names the projects give it.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from netvlad._sniff import sniff

__all__ = ["CheckpointFile", "checkpoint_file", "load_torch_file", "split_checkpoint", "strip_module"]

#: Names the projects give their best checkpoint (OpenIBL, pytorch-NetVlad and Patch-NetVLAD;
#: the VG benchmark), in order of preference.
BEST_NAMES = ("model_best.pth.tar", "best_model.pth")
CHECKPOINT_SUFFIXES = (".pth", ".pth.tar", ".pt", ".ckpt")
#: Members of torch.save's first (tar) format: a torch file, not an archive of files.
_TORCH_TAR_MEMBERS = {"sys_info", "pickle", "storages", "tensors"}
_NUMERIC_DTYPES = (
    "BoolDType", "Int8DType", "Int16DType", "Int32DType", "Int64DType", "UInt8DType", "UInt16DType",
    "UInt32DType", "UInt64DType", "Float16DType", "Float32DType", "Float64DType", "Complex64DType",
    "Complex128DType", "ByteDType", "UByteDType", "ShortDType", "UShortDType", "IntDType", "UIntDType",
    "LongDType", "ULongDType", "LongLongDType", "ULongLongDType", "LongDoubleDType",
)  # fmt: skip


@dataclass
class CheckpointFile:
    """A checkpoint on disk (maybe extracted from an archive).

    Attributes:
        path: the file to load.
        label: how messages name it (``archive.zip:run/model_best.pth.tar`` for a member).
        notes: what the user should know about the choice (which archive member was taken).
    """

    path: Path
    label: str
    notes: list[str] = field(default_factory=list)


def _numpy_globals() -> list:
    """numpy's number and array reconstructors, under their numpy 1.x and 2.x module names."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    allowed: list = [np.dtype, np.ndarray]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((core.multiarray.scalar, f"{module}.scalar"))
        allowed.append((core.multiarray._reconstruct, f"{module}._reconstruct"))
    dtypes = getattr(np, "dtypes", None)
    allowed += [getattr(dtypes, n) for n in _NUMERIC_DTYPES if hasattr(dtypes, n)]
    return allowed


def load_torch_file(path: str | Path, label: str | None = None) -> Any:
    """``torch.load`` with ``weights_only=True`` plus numpy numbers; never executes code from the file.

    Args:
        path: a ``torch.save`` file (zip or legacy format).
        label: the name messages use (default: ``path``).

    Raises:
        ValueError: the file needs other globals to load (the message names the first one) or is
            not a readable torch file.
    """
    label = label or str(path)
    guard = getattr(torch.serialization, "safe_globals", None)
    ctx = guard(_numpy_globals()) if guard is not None else contextlib.nullcontext()
    try:
        with ctx:
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        module, _, name = found.group(1).rpartition(".") if found else ("", "", "")
        if not (module and name):  # a damaged pickle (a cut-off name such as "co."), not a forbidden one
            detail = re.search(r"WeightsUnpickler error: ([^\n]+)", str(exc))
            why = detail.group(1) if detail and not found else "its data is damaged or cut short"
            raise ValueError(f"{label}: not a readable PyTorch checkpoint ({why})") from None
        raise ValueError(
            f"{label}: refused: loading it would need {found.group(1)}, which could run code; only "
            "tensors, plain containers and numpy numbers are accepted (nothing in the file was executed)"
        ) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, IndexError... for damaged files
        raise ValueError(f"{label}: not a readable PyTorch checkpoint ({_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0].strip()}" if lines else type(exc).__name__


# --------------------------------------------------------------------------- archives


def _is_checkpoint_name(name: str) -> bool:
    base = PurePosixPath(name).name.lower()
    return base.endswith(CHECKPOINT_SUFFIXES) and not base.startswith("._")


def pick_member(names: list[str], label: str) -> tuple[str, str]:
    """The checkpoint to convert among an archive's file names → (name, why).

    A project's "best" checkpoint wins; otherwise the archive must hold exactly one checkpoint.

    Raises:
        ValueError: no checkpoint, or several without a single best one (the message lists them).
    """
    candidates = [n for n in names if _is_checkpoint_name(n) and "__MACOSX" not in n]
    if not candidates:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError(
            f"{label}: an archive holding no checkpoint (*{', *'.join(CHECKPOINT_SUFFIXES)}); "
            f"it has: {shown or 'nothing'}"
        )
    for best in BEST_NAMES:
        found = [n for n in candidates if PurePosixPath(n).name == best]
        if len(found) == 1:
            return found[0], f"the archive's best checkpoint ({best})"
        if len(found) > 1:
            raise ValueError(f"{label}: several {best} in the archive ({', '.join(found)}); extract the one "
                             "you want and convert it")
    if len(candidates) == 1:
        return candidates[0], "the archive's only checkpoint"
    raise ValueError(
        f"{label}: several checkpoints in the archive and none named {' or '.join(BEST_NAMES)}: "
        f"{', '.join(candidates)}; extract the one you want and convert it"
    )


def _sibling_pca_name(member: str) -> str:
    """OpenIBL's PCA file for a checkpoint: pca_params_<name up to its first dot>.h5, same folder."""
    p = PurePosixPath(member)
    return str(p.with_name(f"pca_params_{p.name.split('.')[0]}.h5"))


def _extract(read, member: str, folder: Path) -> Path:
    # Only the base name is used on disk, so a member named ../x cannot escape the folder.
    out = folder / PurePosixPath(member).name
    with read(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    return out


@contextlib.contextmanager
def checkpoint_file(path: str | Path) -> Iterator[CheckpointFile]:
    """The checkpoint to convert: ``path`` itself, or the one chosen in a zip/tar archive.

    An archive member (with OpenIBL's ``pca_params_<name>.h5`` beside it, if there) is copied into
    a temporary folder that is removed when the context exits.

    Raises:
        ValueError: an archive without a single checkpoint to choose, or an unreadable archive.
    """
    path = Path(path)
    kind = sniff(path)
    if kind not in ("zip", "tar"):
        yield CheckpointFile(path, str(path))
        return
    try:
        if kind == "zip":
            archive: Any = zipfile.ZipFile(path)
            names = [i.filename for i in archive.infolist() if not i.is_dir()]
            read = archive.open
        else:
            archive = tarfile.open(path)
            names = [m.name for m in archive.getmembers() if m.isfile()]
            if _TORCH_TAR_MEMBERS <= set(names):
                archive.close()
                raise ValueError(
                    f"{path}: a checkpoint in PyTorch's oldest (tar) format, which cannot be loaded without "
                    "running code from it; re-save it with torch.save in a PyTorch you trust, then convert"
                )
            read = archive.extractfile
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
        raise ValueError(f"{path}: unreadable {kind} archive ({exc})") from None
    with archive, tempfile.TemporaryDirectory(prefix="netvlad-convert-") as tmp:
        member, why = pick_member(names, str(path))
        try:
            file = _extract(read, member, Path(tmp))
            pca = _sibling_pca_name(member)
            if pca in names:
                _extract(read, pca, Path(tmp))
        except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
            raise ValueError(f"{path}: cannot extract {member} ({exc})") from None
        yield CheckpointFile(file, f"{path}:{member}", [f"converted {member}: {why}"])


# --------------------------------------------------------------------------- checkpoint structure


def split_checkpoint(obj: Any, label: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A loaded checkpoint → (state dict, the other top-level entries).

    Accepts a bare state dict or a training checkpoint holding one under ``state_dict``
    (pytorch-NetVlad, Patch-NetVLAD, OpenIBL) or ``model_state_dict`` (the VG benchmark).

    Raises:
        ValueError: a netvlad checkpoint (nothing to convert), or no state dict inside.
    """
    from netvlad.models.checkpoint import FORMAT

    if not isinstance(obj, Mapping):
        raise ValueError(f"{label}: holds a {type(obj).__name__}, not a state dict or a training checkpoint")
    if obj.get("format") == FORMAT:
        raise ValueError(
            f"{label}: already a netvlad checkpoint; use it directly as MODEL (no conversion needed)"
        )
    container: dict[str, Any] = {}
    state: Any = obj
    for key in ("state_dict", "model_state_dict"):
        if isinstance(obj.get(key), Mapping):
            state, container = obj[key], {k: v for k, v in obj.items() if k != key}
            break
    tensors = {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(str(k) for k in list(obj)[:8])
        raise ValueError(f"{label}: no state dict (name -> tensor) found; top-level keys: {keys or 'none'}")
    return tensors, container


def strip_module(state: dict[str, torch.Tensor], label: str) -> tuple[dict[str, torch.Tensor], bool]:
    """Drop DataParallel's ``module`` path components (``module.x``, ``encoder.module.x``).

    Returns:
        (state dict with plain names, whether any name changed).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        plain = ".".join(p for p in key.split(".") if p != "module")
        if plain in out:
            raise ValueError(f"{label}: keys {key!r} and another both become {plain!r} without 'module.'")
        out[plain] = value
    return out, list(out) != list(state)
