"""What a town folder was made from, so that a rerun never mixes two towns.

``OUT/town.json`` is the manifest. A run writes it first with ``"state": "in progress"`` and what
the town is made from (netvlad version, seed, full config), then records each image as it lands
(name, size, sha256) in the journal ``OUT/town.partial.jsonl``, and at the end replaces the
manifest atomically with ``"state": "complete"`` plus the size and sha256 of every file, and
deletes the journal.

Policy of a rerun into a folder (`prepare_folder`):

* no manifest and no town files: a new town (other files in the folder are left alone);
* a manifest made from the same version and config: resume. Images recorded in the journal or the
  complete manifest whose size and sha256 still match are kept, every other image is rendered
  again (rendering is deterministic per seed, so the result is byte-identical to an undisturbed
  run), and unplanned images and temp files of a killed run are removed. The manifest also holds
  the town's fingerprint (geometry and texels, `Town.fingerprint`): when it differs (installed
  photo packages changed since), no image is kept;
* a manifest made from another version, seed or config, an unreadable manifest, or town files
  without a manifest: refused, unless ``overwrite``: then the old town's files are deleted first
  (the manifest last) and the town is generated from scratch. ``overwrite`` always starts over.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from netvlad._atomic import atomic_write, atomic_write_text
from netvlad._version import __version__
from netvlad.synth.config import SPLITS, SynthConfig

MANIFEST = "town.json"
JOURNAL = "town.partial.jsonl"
FORMAT = "netvlad-synth-town"
IN_PROGRESS, COMPLETE = "in progress", "complete"
IMAGE_FOLDERS = ("images", "queries")
# `netvlad._atomic` temp files: ".<name>.<8 hex>.tmp[.ext]", left behind only by a killed process.
_TEMP = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def made_from(config: SynthConfig) -> dict:
    """The identity of a town: netvlad version, seed and full config (JSON-normalised)."""
    return {
        "netvlad": __version__,
        "seed": config.seed,
        "config": json.loads(json.dumps(config.to_dict())),
    }


def file_record(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _file_matches(path: Path, rec: dict) -> bool:
    try:
        if path.stat().st_size != rec.get("size"):
            return False
        return hashlib.sha256(path.read_bytes()).hexdigest() == rec.get("sha256")
    except OSError:
        return False


def _town_files(out: Path) -> list[Path]:
    """Files of our layout in `out` (whatever town they belong to), temp files of killed runs included."""
    found = [p for p in (out / JOURNAL, out / "map.png") if p.exists()]
    for split in SPLITS:
        root = out / split
        found += [p for p in (root / f"synth_{split}.csv", root / f"synth_{split}.mat") if p.exists()]
        for folder in (root, *(root / f for f in IMAGE_FOLDERS)):
            if folder.is_dir():
                found += [p for p in folder.iterdir() if p.is_file() and _TEMP.match(p.name)]
        for f in IMAGE_FOLDERS:
            if (root / f).is_dir():
                found += sorted((root / f).glob("*.jpg"))
    found += [p for p in out.iterdir() if p.is_file() and _TEMP.match(p.name)] if out.is_dir() else []
    return found


def _differences(old: dict, new: dict) -> str:
    if old.get("netvlad") != new["netvlad"]:
        return f"netvlad {old.get('netvlad') or 'unknown'} (this run: {new['netvlad']})"
    oc, nc = old.get("config") or {}, new["config"]
    if oc.get("seed") != nc["seed"]:
        return f"seed {oc.get('seed')} (this run: {nc['seed']})"
    keys = sorted(k for k in set(oc) | set(nc) if oc.get(k) != nc.get(k))
    shown = ", ".join(f"{k} {oc.get(k)!r}, this run {nc.get(k)!r}" for k in keys[:4])
    return f"another config ({shown})"


def _read_records(out: Path, manifest: dict) -> dict[str, dict]:
    """File records of a same-identity folder: the complete manifest's, then the journal's."""
    recs = dict(manifest.get("files") or {})
    journal = out / JOURNAL
    if journal.is_file():
        for line in journal.read_text(errors="replace").splitlines():
            try:
                r = json.loads(line)
                recs[r["file"]] = {"size": int(r["size"]), "sha256": str(r["sha256"])}
            except (ValueError, KeyError, TypeError):
                continue  # the line being written when the run was killed
    return recs


def prepare_folder(
    out: Path, config: SynthConfig, overwrite: bool = False
) -> tuple[dict[str, dict], str | None]:
    """Apply the rerun policy (module docstring) to `out` before anything is written.

    Returns:
        {relative path: {"size", "sha256"}} of the files already there that verify and may be kept
        (empty for a new town or after ``overwrite``), and the town fingerprint their manifest
        records (None if none); they may only be kept for a town with that fingerprint.

    Raises:
        ValueError: the folder holds another town, an unreadable manifest or town files without a
            manifest, and ``overwrite`` is False.
    """
    ident = made_from(config)
    path = out / MANIFEST
    problem, manifest = None, None
    if path.exists():
        try:
            manifest = json.loads(path.read_text())
            if not isinstance(manifest, dict) or "config" not in manifest:
                raise ValueError("no config recorded")
        except (ValueError, OSError) as exc:
            problem = f"{path}: unreadable town manifest ({exc})"
        else:
            if manifest.get("format") != FORMAT:  # written by netvlad before manifests had a format
                manifest = {"netvlad": None, "config": manifest["config"]}
            if (manifest.get("netvlad"), manifest["config"]) != (ident["netvlad"], ident["config"]):
                problem = f"{out}: holds a town made with {_differences(manifest, ident)}"
    elif _town_files(out):
        problem = f"{out}: holds town files but no {MANIFEST} (from an unknown run)"
    if overwrite:
        clear_folder(out)
        return {}, None
    if problem:
        raise ValueError(f"{problem}; use another folder, or --overwrite (overwrite=True) to replace it")
    if manifest is None:
        return {}, None
    recs = _read_records(out, manifest)
    kept = {rel: r for rel, r in recs.items() if _file_matches(out / rel, r)}
    return kept, manifest.get("town_sha256")


def clear_folder(out: Path) -> None:
    """Delete a town's files from `out` (the manifest last, so a kill midway still refuses reuse)."""
    for p in _town_files(out):
        p.unlink(missing_ok=True)
    for split in SPLITS:
        for folder in (*(out / split / f for f in IMAGE_FOLDERS), out / split):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    (out / MANIFEST).unlink(missing_ok=True)


class TownWriter:
    """Writes a town's files and keeps the manifest and journal up to date (see module docstring)."""

    def __init__(self, out: Path, config: SynthConfig, town_sha256: str, kept: dict[str, dict]):
        self.out = Path(out)
        self.ident = {**made_from(config), "town_sha256": town_sha256}
        self.records = dict(kept)
        self._journal = None

    def start(self, planned: set[str]) -> None:
        """Write the in-progress manifest and a fresh journal of the kept files; remove images not in
        `planned` (relative paths) and temp files of killed runs."""
        self.out.mkdir(parents=True, exist_ok=True)
        head = {"format": FORMAT, "version": 1, "state": IN_PROGRESS, **self.ident}
        atomic_write_text(self.out / MANIFEST, json.dumps(head, indent=1))
        for p in _town_files(self.out):
            rel = p.relative_to(self.out).as_posix()
            if _TEMP.match(p.name) or (p.suffix == ".jpg" and rel not in planned):
                p.unlink(missing_ok=True)
        self.records = {k: v for k, v in self.records.items() if k in planned}
        lines = "".join(json.dumps({"file": k, **v}) + "\n" for k, v in sorted(self.records.items()))
        atomic_write_text(self.out / JOURNAL, lines)
        self._journal = open(self.out / JOURNAL, "a", encoding="utf-8")  # noqa: SIM115 - closed in finish/close

    def has(self, rel: str) -> bool:
        return rel in self.records

    def write(self, rel: str, data: bytes) -> None:
        """Write `data` to ``out/rel`` atomically, then record it in the journal."""
        atomic_write(self.out / rel, lambda tmp: Path(tmp).write_bytes(data))
        rec = file_record(data)
        self.records[rel] = rec
        self._journal.write(json.dumps({"file": rel, **rec}) + "\n")
        self._journal.flush()

    def finish(self, meta: dict, files: list[Path]) -> Path:
        """Record `files` (written outside `write`) too and complete the manifest atomically."""
        for p in files:
            self.records[p.relative_to(self.out).as_posix()] = file_record(p.read_bytes())
        body = {
            "format": FORMAT,
            "version": 1,
            "state": COMPLETE,
            **self.ident,
            **meta,
            "files": dict(sorted(self.records.items())),
        }
        path = atomic_write_text(self.out / MANIFEST, json.dumps(body, indent=1))
        self.close()
        (self.out / JOURNAL).unlink(missing_ok=True)
        return path

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
