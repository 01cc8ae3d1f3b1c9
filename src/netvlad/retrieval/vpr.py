"""``benchmark vpr``: one model over several place-recognition datasets, one table, the papers' numbers
beside ours.

Each dataset is found under a folder of datasets by its suite name
(:func:`netvlad.data.formats.find_suite_dataset`: ``msls_val``, ``pitts30k_test``, ``tokyo247``,
``nordland``, ...), its descriptors are computed (kept in ``features_dir`` when given, so an
interrupted run resumes and a finished dataset is not computed again) and evaluated under each
protocol: the dataset's own (MSLS: Mapillary's, others: NetVLAD's recallAtN) and, for MSLS, also
NetVLAD's (every query counted), which is how the VG benchmark reports MSLS.

A published model's catalogue entry states what its paper or README reports ("Pitts30k R@1" →
83.2); :func:`reported_results` places each number on the (dataset, protocol) row it was measured
under.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

VPR_NS = (1, 5, 10)
#: tEXt entry of the plots :func:`plot_vpr` writes.
PLOT_TAG = ("netvlad", "benchmark vpr")

#: Dataset labels used in published results → suite names.
RESULT_LABELS = {
    "pitts30k": "pitts30k_test",
    "pitts30k-test": "pitts30k_test",
    "pitts30k-val": "pitts30k_val",
    "pitts250k": "pitts250k_test",
    "pitts250k-test": "pitts250k_test",
    "pitts250k-val": "pitts250k_val",
    "tokyo 24/7": "tokyo247",
    "tokyo247": "tokyo247",
    "msls": "msls_val",
    "msls-val": "msls_val",
    "nordland": "nordland",
    "st lucia": "st_lucia",
    "st_lucia": "st_lucia",
    "sf-xl": "sf_xl_test",
    "sf-xl-test": "sf_xl_test",
    "sped": "sped",
}
#: Projects that count every MSLS query (no-positive queries as failures): their MSLS numbers sit on
#: the netvlad-protocol row; every other project's on the msls row.
COUNTS_EVERY_MSLS_QUERY = ("deep-visual-geo-localization-benchmark",)

_RESULT_KEY = re.compile(r"^(?P<ds>.+?)\s+R@(?P<n>\d+)$")


def reported_results(results: dict[str, float], project: str = "") -> dict[tuple[str, str], dict[int, float]]:
    """Published numbers by (suite dataset, protocol): {("pitts30k_test", "netvlad"): {1: 83.2}}.

    Keys of a catalogue entry's ``results`` look like "Pitts30k R@1"; keys naming no suite dataset
    are left out. Values are percentages, as published.
    """
    out: dict[tuple[str, str], dict[int, float]] = {}
    for key, value in results.items():
        m = _RESULT_KEY.match(str(key).strip())
        if not m:
            continue
        name = RESULT_LABELS.get(m.group("ds").strip().lower())
        if name is None:
            continue
        protocol = "msls" if name.startswith("msls") and project not in COUNTS_EVERY_MSLS_QUERY else "netvlad"
        out.setdefault((name, protocol), {})[int(m.group("n"))] = float(value)
    return out


@dataclass
class VprRow:
    """One dataset under one protocol.

    Attributes:
        dataset: the suite name; spec: the SPEC it was loaded from; protocol: netvlad or msls.
        num_db: database images; num_queries: queries in the denominator; num_queries_total: all
            queries (MSLS leaves those without a positive out).
        recall: {N: fraction}; map: {N: mean AP@N} (msls only); reported: {N: percent published}.
    """

    dataset: str
    spec: str
    protocol: str
    num_db: int
    num_queries: int
    num_queries_total: int
    recall: dict[int, float]
    map: dict[int, float] | None = None
    reported: dict[int, float] = field(default_factory=dict)


@dataclass
class VprBenchmark:
    """The result of :func:`benchmark_vpr`: rows in dataset, then protocol order."""

    model: str
    ns: list[int]
    rows: list[VprRow]
    reported_from: str | None = None
    features_dir: str | None = None

    def to_json(self) -> dict:
        """JSON-ready dict (N keys as strings, recall as fractions, reported as published percents)."""

        def keyed(d):
            return None if d is None else {str(k): v for k, v in d.items()}

        rows = []
        for r in self.rows:
            d = asdict(r)
            d.update(recall=keyed(r.recall), map=keyed(r.map), reported=keyed(r.reported))
            rows.append(d)
        return {"benchmark": "vpr", "model": self.model, "ns": list(self.ns),
                "reported_from": self.reported_from, "features_dir": self.features_dir, "results": rows}

    def table(self) -> str:
        """Plain text: a row per dataset and protocol, recall@N in %, the published number after '/'."""
        any_rep = any(r.reported for r in self.rows)
        head = f"{'dataset':<16} {'protocol':<8} {'queries':>13} {'database':>9}"
        head += "".join(f"{f'R@{n}' + (' / paper' if any_rep else ''):>16}" for n in self.ns)
        lines = [head]
        for r in self.rows:
            q = f"{r.num_queries}" if r.num_queries == r.num_queries_total else \
                f"{r.num_queries}/{r.num_queries_total}"
            line = f"{r.dataset:<16} {r.protocol:<8} {q:>13} {r.num_db:>9}"
            for n in self.ns:
                cell = f"{100 * r.recall[n]:.2f}"
                if any_rep:
                    cell += f" / {r.reported[n]:.1f}" if n in r.reported else " / -"
                line += f"{cell:>16}"
            lines.append(line)
        return "\n".join(lines)


def _descriptors(model, ds, name: str, features_dir: Path | None, config) -> tuple[np.ndarray, np.ndarray]:
    """Database and query descriptors of ``ds``: from/into ``features_dir`` (resumable), else in memory."""
    from netvlad.extract import compute_descriptors, extract_features
    from netvlad.io import read_features

    out = []
    splits = (("db", ds.db_paths(), ds.db_images), ("query", ds.query_paths(), ds.query_images))
    for split, paths, names in splits:
        if features_dir is None:
            out.append(compute_descriptors(model, paths, config, label=f"{name} {split}"))
            continue
        path = features_dir / f"{name}_{split}.h5"
        extract_features(model, paths, names, path, config)
        stored, desc, _ = read_features(path)
        if stored != list(names):
            raise ValueError(f"{path}: its image list is not {name}'s {split} list")
        out.append(desc)
    return out[0], out[1]


def benchmark_vpr(
    model,
    datasets: Sequence[str],
    root: str | Path,
    protocols: Sequence[str] | None = None,
    ns: Sequence[int] = VPR_NS,
    reported: dict[tuple[str, str], dict[int, float]] | None = None,
    features_dir: str | Path | None = None,
    config=None,
    model_name: str = "",
    reported_from: str | None = None,
    log=None,
) -> VprBenchmark:
    """Run ``model`` over suite datasets under ``root`` and evaluate each under its protocols.

    Args:
        model: a ready PlaceModel.
        datasets: suite names (``msls_val``, ``pitts30k_test``, ``tokyo247``, ...; any other name is
            ``root/NAME`` in any supported format).
        root: the folder holding the datasets.
        protocols: evaluate every dataset under these (``netvlad``, ``msls``); default each
            dataset's own, and for MSLS also ``netvlad``.
        ns: the Ns of recall@N.
        reported: published numbers by (dataset, protocol) (:func:`reported_results`).
        features_dir: keep feature files ``NAME_db.h5`` / ``NAME_query.h5`` here: an interrupted run
            resumes, a finished dataset is reused (refused if another model wrote it).
        config: :class:`netvlad.extract.ExtractConfig` (batch size, device, max_side, ...).
        model_name, reported_from: recorded in the result.
        log: called with one line per dataset done (e.g. ``print``).

    Returns:
        :class:`VprBenchmark`.
    """
    from netvlad.data import load_dataset
    from netvlad.data.formats import find_suite_dataset
    from netvlad.metrics import PROTOCOLS, evaluate_dataset

    ns = sorted({int(n) for n in ns})
    if not ns or ns[0] < 1:
        raise ValueError(f"Ns must be positive integers, got {ns}")
    for p in protocols or ():
        if p not in PROTOCOLS:
            raise ValueError(f"unknown protocol {p!r}; choose from {', '.join(PROTOCOLS)}")
    if len(set(datasets)) != len(datasets):
        raise ValueError(f"a dataset is listed twice: {' '.join(datasets)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (--root holds the datasets)")
    specs = {name: find_suite_dataset(name, root) for name in datasets}  # all found before any work
    fdir = None if features_dir is None else Path(features_dir)
    if fdir is not None:
        fdir.mkdir(parents=True, exist_ok=True)
    reported = reported or {}
    rows = []
    for name, spec in specs.items():
        ds = load_dataset(spec)
        db, q = _descriptors(model, ds, name, fdir, config)
        chosen = list(protocols) if protocols else [ds.protocol]
        if not protocols and ds.protocol == "msls":
            chosen.append("netvlad")  # how the VG benchmark counts MSLS: every query
        for protocol in chosen:
            res = evaluate_dataset(ds, db, q, ns=ns, protocol=protocol)
            rows.append(VprRow(
                dataset=name, spec=spec, protocol=protocol, num_db=res["num_db"],
                num_queries=res["num_queries"],
                num_queries_total=res.get("num_queries_total", res["num_queries"]),
                recall={int(n): float(res["recall"][n]) for n in ns},
                map={int(n): float(res["map"][n]) for n in ns} if "map" in res else None,
                reported=dict(reported.get((name, protocol), {})),
            ))
            if log is not None:
                log(f"{name} ({protocol}): " + ", ".join(f"R@{n} {100 * res['recall'][n]:.2f}" for n in ns))
    return VprBenchmark(model_name, ns, rows, reported_from, None if fdir is None else str(fdir))


def plot_vpr(result: VprBenchmark, out: str | Path) -> Path:
    """Grouped bars of recall@N per dataset and protocol, published numbers as black ticks (PNG)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from netvlad._atomic import atomic_write

    rows = result.rows
    width = 0.8 / max(len(result.ns), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 3), 4.5), dpi=100)
    x = np.arange(len(rows))
    for j, n in enumerate(result.ns):
        pos = x - 0.4 + width * (j + 0.5)
        ax.bar(pos, [100 * r.recall[n] for r in rows], width, label=f"R@{n}")
        rep = [(p, r.reported[n]) for p, r in zip(pos, rows) if n in r.reported]
        if rep:
            ax.scatter([p for p, _ in rep], [v for _, v in rep], marker="_", s=200, color="black", zorder=3,
                       label="published" if j == 0 else None)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{r.dataset}\n{r.protocol}" for r in rows], fontsize=8)
    ax.set_ylabel("recall@N (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"benchmark vpr: {result.model}" if result.model else "benchmark vpr")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(Path(out), lambda tmp: fig.savefig(tmp, format="png", metadata=dict([PLOT_TAG])),
                     suffix=".tmp.png")
    finally:
        plt.close(fig)
    return Path(out)
