"""Ground-truth readers: Oxford 5k / Paris 6k text files, Holidays file names, revisited pickles."""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netvlad.data.images import list_images

log = logging.getLogger(__name__)

BENCHMARKS = ("oxford5k", "paris6k", "holidays", "roxford5k", "rparis6k")
HOLIDAYS_MAX_PIXELS = 1024 * 768
JPEG_QUALITY = 75  # MATLAB imwrite's default, used for the cached crops and downscaled images
# Official sizes (asserted by the original); other sizes only warn, so subsets work.
_EXPECTED = {
    "oxford5k": (5063, 55),
    "paris6k": (6392, 55),
    "holidays": (1491, 500),
    "roxford5k": (4993, 70),
    "rparis6k": (6322, 70),
}
@dataclass
class RetrievalBenchmark:
    """A retrieval benchmark's image lists and ground truth.

    Attributes:
        name: benchmark name.
        db_root: folder the database (and query) image names are relative to.
        db_images: N database image names.
        query_images: Q query image names (each is also a database image).
        query_db_ids: (Q,) database index of each query image.
        query_rois: Q×4 ROIs (x1, y1, x2, y2 as in the files) or None.
        protocols: {name: (positives, junk, num_positives)}: Q arrays of database ids each
            (positive ids < 0 stand for ground-truth images missing from the database) and the
            |positives| per query (None: count the entries).
    """

    name: str
    db_root: Path
    db_images: list[str]
    query_images: list[str]
    query_db_ids: np.ndarray
    query_rois: np.ndarray | None = None
    protocols: dict[str, tuple] = field(default_factory=dict)

    def db_paths(self) -> list[Path]:
        """Absolute database image paths."""
        return [self.db_root / n for n in self.db_images]

    def check_size(self) -> None:
        """Warn when the image/query counts differ from the official benchmark's."""
        exp = _EXPECTED.get(self.name.replace("_rot", ""))
        if exp and (len(self.db_images), len(self.query_images)) != exp:
            log.warning(
                "%s: %d images and %d queries (the official benchmark has %d and %d)",
                self.name,
                len(self.db_images),
                len(self.query_images),
                *exp,
            )


def _read_lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def read_oxford_paris(root: str | Path, name: str = "oxford5k") -> RetrievalBenchmark:
    """Read Oxford 5k or Paris 6k (``images/`` + ``groundtruth/``; Paris ``corrupt.txt``).

    Raises:
        FileNotFoundError: missing folders or a query image missing from ``images/``.
        ValueError: a malformed ``*_query.txt``.
    """
    root = Path(root)
    gt = root / "groundtruth"
    if not gt.is_dir():
        raise FileNotFoundError(f"{gt}: ground-truth folder not found")
    images = list_images(root / "images")
    if name == "paris6k":
        corrupt_files = [
            p for p in (root / "corrupt.txt", gt / "corrupt.txt", root / "paris_corrupt.txt") if p.is_file()
        ]
        corrupt = {Path(s).stem for p in corrupt_files for s in _read_lines(p)}
        images = [n for n in images if Path(n).stem not in corrupt]
    # Oxford matches by file name, Paris by basename across landmark subfolders: both by stem.
    ids = {Path(n).stem: i for i, n in enumerate(images)}
    qfiles = sorted(gt.glob("*_query.txt"))
    if not qfiles:
        raise FileNotFoundError(f"{gt}: no *_query.txt files")
    qnames, rois, pos, junk, npos, qids = [], [], [], [], [], []
    for qf in qfiles:
        parts = qf.read_text().split()
        if len(parts) != 5:
            raise ValueError(f"{qf}: expected 'name x1 y1 x2 y2', got {' '.join(parts)!r}")
        stem = parts[0][5:] if parts[0].startswith("oxc1_") else parts[0]
        if stem not in ids:
            raise FileNotFoundError(f"{qf}: query image {stem!r} is not in {root / 'images'}")
        base = str(qf)[: -len("_query.txt")]
        lists = {}
        for kind in ("good", "ok", "junk"):
            f = Path(f"{base}_{kind}.txt")
            if not f.is_file():
                raise FileNotFoundError(f"{f}: ground-truth list missing")
            lists[kind] = list(dict.fromkeys(_read_lines(f)))
        p = list(dict.fromkeys(lists["good"] + lists["ok"]))
        pos.append(np.array([ids.get(s, -1) for s in p], dtype=np.int64))
        npos.append(len(p))
        junk.append(np.array([ids[s] for s in lists["junk"] if s in ids], dtype=np.int64))
        qnames.append(images[ids[stem]])
        qids.append(ids[stem])
        rois.append([float(v) for v in parts[1:]])
    bench = RetrievalBenchmark(
        name,
        root / "images",
        images,
        qnames,
        np.array(qids, np.int64),
        np.array(rois, np.float64),
        {"default": (pos, junk, npos)},
    )
    bench.check_size()
    return bench


def read_holidays(root: str | Path, rotated: bool = False, images: str | None = None) -> RetrievalBenchmark:
    """Read INRIA Holidays from ``root/jpg`` (``rotated``: ``root/jpg_rotated``) or ``root/images``.

    Queries: numeric stem mod 100 == 0; positives: the following images up to the next query;
    ignored: the query itself (it is in the database).
    """
    root = Path(root)
    folder = root / (images or ("jpg_rotated" if rotated else "jpg"))
    names = list_images(folder)
    if not names:
        raise FileNotFoundError(f"{folder}: no images")
    try:
        stems = [int(Path(n).stem) for n in names]
    except ValueError as exc:
        raise ValueError(f"{folder}: Holidays image names must be numeric (e.g. 100000.jpg): {exc}") from exc
    qidx = [i for i, s in enumerate(stems) if s % 100 == 0]
    if not qidx or qidx[0] != 0:
        raise ValueError(f"{folder}: the first image ({names[0]}) must be a query (stem multiple of 100)")
    bounds = [*qidx, len(names)]
    pos = [np.arange(a + 1, b, dtype=np.int64) for a, b in zip(bounds[:-1], bounds[1:])]
    junk = [np.array([q], np.int64) for q in qidx]
    bench = RetrievalBenchmark(
        "holidays_rot" if rotated else "holidays",
        folder,
        names,
        [names[i] for i in qidx],
        np.array(qidx, np.int64),
        None,
        {"default": (pos, junk, None)},
    )
    bench.check_size()
    return bench


class _SafeUnpickler(pickle.Unpickler):
    """Only plain containers and numpy arrays: ground-truth pickles never need anything else, and
    loading a pickle must not run code from the file."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "list"),
        ("builtins", "dict"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("builtins", "str"),
        ("builtins", "int"),
        ("builtins", "float"),
        ("builtins", "bytes"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only lists, dicts and numpy arrays)")


def load_pickle_safely(path: str | Path):
    """Load a pickle that may only hold builtins containers and numpy arrays.

    Raises:
        ValueError: the file needs anything else (named in the message) or is not a pickle.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            return _SafeUnpickler(f, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise ValueError(f"{path}: {exc}") from exc


def read_revisited(root: str | Path, name: str = "roxford5k") -> RetrievalBenchmark:
    """Read revisited Oxford/Paris: ``root/gnd_<name>.pkl`` and images in ``root/jpg/<name>.jpg``.

    The pickle is ``{'imlist', 'qimlist', 'gnd': [{'bbx', 'easy', 'hard', 'junk'}, ...]}`` with
    0-based indices into ``imlist``.
    """
    root = Path(root)
    pkl = root / f"gnd_{name}.pkl"
    if not pkl.is_file():
        raise FileNotFoundError(f"{pkl}: ground-truth pickle not found")
    cfg = load_pickle_safely(pkl)
    try:
        imlist, qimlist, gnd = list(cfg["imlist"]), list(cfg["qimlist"]), list(cfg["gnd"])
        if len(gnd) != len(qimlist):
            raise ValueError(f"{len(gnd)} gnd entries for {len(qimlist)} queries")
        g = [{k: np.asarray(e[k], dtype=np.int64).ravel() for k in ("easy", "hard", "junk")} for e in gnd]
        bbx = np.array([np.asarray(e["bbx"], dtype=np.float64) for e in gnd]).reshape(-1, 4)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{pkl}: not a revisited ground-truth file ({exc})") from exc
    names = [f"{n}.jpg" for n in imlist]
    ids = {n: i for i, n in enumerate(imlist)}
    missing = [q for q in qimlist if q not in ids]
    if missing:
        raise ValueError(f"{pkl}: query images not in imlist: {', '.join(missing[:5])}")

    def cat(*a):
        return np.unique(np.concatenate(a)).astype(np.int64)

    protocols = {
        "easy": ([e["easy"] for e in g], [cat(e["junk"], e["hard"]) for e in g], None),
        "medium": ([cat(e["easy"], e["hard"]) for e in g], [e["junk"] for e in g], None),
        "hard": ([e["hard"] for e in g], [cat(e["junk"], e["easy"]) for e in g], None),
    }
    bench = RetrievalBenchmark(
        name,
        root / "jpg",
        names,
        [f"{q}.jpg" for q in qimlist],
        np.array([ids[q] for q in qimlist], np.int64),
        bbx,
        protocols,
    )
    bench.check_size()
    return bench


def load_benchmark(name: str, root: str | Path, rotated: bool = False) -> RetrievalBenchmark:
    """Read one of ``BENCHMARKS`` from its root folder."""
    if name in ("oxford5k", "paris6k"):
        return read_oxford_paris(root, name)
    if name == "holidays":
        return read_holidays(root, rotated=rotated)
    if name in ("roxford5k", "rparis6k"):
        return read_revisited(root, name)
    raise ValueError(f"unknown retrieval benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
