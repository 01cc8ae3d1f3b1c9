"""hloc's pairs-from-retrieval workflow on feature files: select the database and query rows as
hloc's ``--db_prefix``/``--db_list``/``--query_prefix``/``--query_list`` do, pair each query with
its nearest database images (:func:`netvlad.index.pairs_from_retrieval`) and write hloc's
``pairs.txt`` (one ``query_name db_name`` line per pair).

``netvlad pairs`` is this module plus argument parsing; from Python::

    from netvlad.io import load_global_features
    from netvlad.retrieval.pairs import pairs_from_features, write_pairs

    db = load_global_features("global-feats-netvlad.h5")
    result = pairs_from_features(db, db_prefix="db/", query_prefix="query/", k=50)
    write_pairs("pairs-netvlad.txt", result.pairs)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from netvlad._atomic import atomic_write_text
from netvlad.index.pairs import pairs_from_retrieval
from netvlad.io import GlobalFeatures, align_features, read_image_lists, select_names

log = logging.getLogger(__name__)

#: hloc's default number of retrieved database images per query (pairs_from_retrieval ``num_matched``).
DEFAULT_NUM_PAIRS = 50
#: hloc's pairs_from_retrieval script drops pairs scoring below 0 (``min_score=0``).
DEFAULT_MIN_SCORE = 0.0


@dataclasses.dataclass
class PairsResult:
    """What :func:`pairs_from_features` found.

    Attributes:
        pairs: ``(query_name, db_name)`` pairs, grouped by query, best first.
        num_queries: queries kept by the selection (NaN rows left out).
        num_db: database images kept by the selection (NaN rows left out).
        k: pairs asked per query.
        min_score: the similarity floor used (None: none).
    """

    pairs: list[tuple[str, str]]
    num_queries: int
    num_db: int
    k: int
    min_score: float | None

    def to_json(self) -> dict:
        """The counts and settings as a JSON-ready dict (the pairs themselves left out)."""
        return {"num_pairs": len(self.pairs), "num_queries": self.num_queries, "num_db": self.num_db,
                "k": self.k, "min_score": self.min_score}


def select_features(feats: GlobalFeatures, prefix: str | Sequence[str] | None = None,
                    list_file: str | Path | None = None, role: str = "") -> GlobalFeatures:
    """The rows of ``feats`` that hloc's prefix/list selection keeps, NaN rows left out (warned).

    Args:
        feats: a loaded feature file (N rows).
        prefix: keep the names starting with it (one prefix or several: any of them).
        list_file: keep the names an hloc image list names (its last component may be a glob).
        role: "database" or "query", for messages.

    Returns:
        the selected rows (M ≤ N), in the list's order for a list, else in the file's order.
    """
    listed = read_image_lists(list_file) if list_file is not None else None
    names = select_names(feats.names, prefix, listed, what=str(feats.path))
    wanted_from = f"{list_file}'s" if list_file is not None else "the selected"
    desc = align_features(feats, names, role, wanted_from=wanted_from)
    kept, dropped = dataclasses.replace(feats, names=names, descriptors=desc).finite()
    if dropped:
        log.warning("%s: %d %s image(s) with NaN descriptors (failed extraction) left out: %s", feats.path,
                    len(dropped), role, ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""))
    return kept


def pairs_from_features(db: GlobalFeatures, queries: GlobalFeatures | None = None, *,
                        k: int = DEFAULT_NUM_PAIRS, min_score: float | None = DEFAULT_MIN_SCORE,
                        db_prefix: str | Sequence[str] | None = None, db_list: str | Path | None = None,
                        query_prefix: str | Sequence[str] | None = None,
                        query_list: str | Path | None = None) -> PairsResult:
    """hloc's pairs from retrieval on loaded feature files (``netvlad pairs`` without the files).

    Args:
        db: database features (:func:`netvlad.io.load_global_features`), N×D.
        queries: query features, Q×D; None: ``db`` holds both (hloc's single descriptor file),
            told apart by prefixes or lists.
        k: pairs per query (fewer when the database is smaller or ``min_score`` drops some).
        min_score: drop pairs whose similarity (inner product) is below it; None keeps all ``k``.
        db_prefix, db_list: the database selection (at most one of them), as hloc's.
        query_prefix, query_list: the query selection, as hloc's.

    Returns:
        a :class:`PairsResult`.

    Raises:
        ValueError: ``k`` < 1, an empty database, a name with whitespace (the pairs format cannot
            hold it), or a selection that keeps nothing.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    db_sel = select_features(db, db_prefix, db_list, "database")
    q_sel = select_features(db if queries is None else queries, query_prefix, query_list, "query")
    if not len(db_sel):
        raise ValueError(f"{db.path}: no database descriptors")
    # hloc's pairs file separates the two names by a space: a name holding one cannot be read back.
    bad = [n for n in q_sel.names + db_sel.names if any(c.isspace() for c in n)]
    if bad:
        raise ValueError(
            f"image name {bad[0]!r} contains whitespace; hloc's pairs format cannot represent it")
    pairs = pairs_from_retrieval(q_sel.names, q_sel.descriptors, db_sel.names, db_sel.descriptors,
                                 k, min_score)
    return PairsResult(pairs, len(q_sel), len(db_sel), k, min_score)


def write_pairs(path: str | Path, pairs: Sequence[tuple[str, str]]) -> None:
    """Write hloc's pairs file atomically: one ``query_name db_name`` line per pair."""
    atomic_write_text(Path(path), "".join(f"{q} {d}\n" for q, d in pairs))


def is_pairs_file(path: str | Path) -> bool:
    """A text file of 'query_name db_name' lines (its first 64 KiB) whose names look like image
    paths (a file suffix or a folder): a two-word line such as 'buy milk' is a user's text."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    lines = head.decode("utf-8", errors="strict" if len(head) < 1 << 16 else "ignore").splitlines()
    if len(head) == 1 << 16:
        lines = lines[:-1]  # cut at the read's end

    def is_pair(line: str) -> bool:
        words = line.split()
        return len(words) == 2 and all("/" in w or Path(w).suffix for w in words)

    return bool(lines) and all(map(is_pair, lines))
