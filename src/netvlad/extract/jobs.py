"""What one ``netvlad extract`` run writes: the images and output file of each feature file.

A folder of images makes one file; a dataset makes one per split (``--split all``: the database and
query files ``OUT_db`` and ``OUT_query``, because their names are relative to different roots and
may collide).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

__all__ = ["ExtractJob", "dataset_jobs", "folder_job", "read_name_list", "split_path"]


@dataclasses.dataclass(frozen=True)
class ExtractJob:
    """One feature file to write.

    Attributes:
        paths: the image files; names: their names in the file (relative to their root), in order;
        out: the feature file.
    """

    paths: list[Path]
    names: list[str]
    out: Path


def read_name_list(list_file: str | Path) -> list[str]:
    """Image names from a list file: one per line, blank lines and ``#`` comments skipped.

    Raises:
        FileNotFoundError: no such file.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"{list_file}: list file not found")
    lines = list_file.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def folder_job(root: str | Path, out: str | Path, list_file: str | Path | None = None) -> ExtractJob:
    """The images of a folder: those ``list_file`` names (relative to ``root``), else every image
    under ``root`` (recursive, sorted POSIX paths).

    Raises:
        FileNotFoundError: ``root`` is not a folder, or no ``list_file``. ValueError: no images.
    """
    from netvlad.data.images import IMAGE_EXTENSIONS, list_images

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    names = read_name_list(list_file) if list_file is not None else list_images(root)
    if not names:
        what = f"{list_file} lists no images" if list_file else \
            f"no images ({'/'.join(sorted(IMAGE_EXTENSIONS))}) under {root}"
        raise ValueError(f"empty image list: {what}")
    return ExtractJob([root / n for n in names], names, Path(out))


def split_path(out: str | Path, split: str) -> Path:
    """Where ``--split all`` writes one split: ``feats.h5`` → ``feats_db.h5`` / ``feats_query.h5``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_{split}{out.suffix}")


def dataset_jobs(spec, out: str | Path, split: str = "all",
                 image_root: str | Path | None = None) -> list[ExtractJob]:
    """The feature files of a dataset's images.

    Args:
        spec: a dataset SPEC (any supported format) or a loaded ``PlaceDataset``.
        out: the output file; with ``split="all"`` two files named by :func:`split_path`.
        split: "db", "query" or "all".
        image_root: where the dataset's images are (default: the dataset's roots).

    Returns:
        one :class:`ExtractJob` per split, database first.
    """
    from netvlad.data import load_dataset

    if split not in ("db", "query", "all"):
        raise ValueError(f"split must be db, query or all, got {split!r}")
    ds = load_dataset(spec, images=image_root) if isinstance(spec, (str, Path)) else spec
    jobs = []
    for part in ("db", "query"):
        if split not in (part, "all"):
            continue
        names = list(ds.db_images if part == "db" else ds.query_images)
        paths = list(ds.db_paths() if part == "db" else ds.query_paths())
        jobs.append(ExtractJob(paths, names, split_path(out, part) if split == "all" else Path(out)))
    return jobs
