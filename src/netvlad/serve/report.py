"""HTML reports: each query beside its top-k matches, a map, and (for an evaluation) the summary.

A report is a folder: ``index.html`` plus ``thumbs/`` (small JPEGs of every image shown), so it can
be moved or shared. It needs no network and no script from elsewhere: the map is inline SVG drawn
from the coordinates, the filters are a few lines of inline JavaScript.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from netvlad._atomic import atomic_write, atomic_write_text

#: written into every report page: how a folder is recognised as ours (and may be rewritten).
MARKER = "<!-- netvlad html report -->"
THUMB_SIDE = 200
_GREEN, _RED = "#1a8f1a", "#c62828"

_STYLE = (
    "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}"
    "td,th{padding:3px 6px;text-align:center;font-size:12px}.q{margin:10px 0;display:flex;gap:6px;"
    "align-items:flex-start;overflow-x:auto}.q svg{flex:none}"
    f".c{{width:{THUMB_SIDE * 4 // 5}px;flex:none;font-size:11px;word-break:break-all}}"
    f".c img{{max-width:100%;border:4px solid #999}}.pos img{{border-color:{_GREEN}}}"
    f".neg img{{border-color:{_RED}}}"
    ".fail{background:#fff0f0}.filters button{margin-right:4px}.hide{display:none}"
)


def check_report_dir(out: str | Path, inputs: Sequence[str | Path] = ()) -> Path:
    """Refuse a report folder that would destroy something: one holding any of ``inputs``, an
    input itself, or a non-empty folder that is not a netvlad report. Returns ``out`` as a Path.

    Raises:
        ValueError: naming the folder and why.
    """
    out = Path(out)
    res = out.resolve()
    for p in inputs:
        rp = Path(p).resolve()
        if rp == res or res in rp.parents:
            raise ValueError(f"{out}: report folder holds the input {p}; choose another folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not is_report_dir(out):
        raise ValueError(f"{out}: folder is not empty and holds no netvlad report; choose an empty folder")
    return out


def is_report_dir(path: str | Path) -> bool:
    """True for a folder with a netvlad report page (safe to write a new report into)."""
    page = Path(path) / "index.html"
    try:
        return page.is_file() and MARKER in page.read_text(encoding="utf-8", errors="replace")[:2000]
    except OSError:
        return False


class _Thumbs:
    """Writes one small JPEG per source image into ``out/thumbs`` (named by path, size and mtime,
    so a changed image gets a new thumbnail); unreadable or missing images get no thumbnail."""

    def __init__(self, out: Path):
        self.dir = out / "thumbs"
        self.done: dict[str, str | None] = {}

    def __call__(self, path: str | Path | None) -> str | None:
        if path is None:
            return None
        key = str(path)
        if key not in self.done:
            self.done[key] = self._write(Path(path))
        return self.done[key]

    def _write(self, path: Path) -> str | None:
        from PIL import Image, ImageOps

        try:
            st = path.stat()
        except OSError:
            return None
        name = (
            hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20] + ".jpg"
        )
        if (self.dir / name).is_file():
            return f"thumbs/{name}"
        try:
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img).convert("RGB")
                img.thumbnail((THUMB_SIDE, THUMB_SIDE))
                atomic_write(self.dir / name, lambda tmp: img.save(tmp, format="JPEG", quality=80))
        except (OSError, ValueError, SyntaxError):
            return None
        return f"thumbs/{name}"


def _img(src: str | None, alt: str) -> str:
    if src is None:
        return f"<div style='height:60px;background:#eee'>{html.escape(alt)}<br>(no image)</div>"
    return f"<img src='{html.escape(src)}' alt='{html.escape(alt)}' loading='lazy'>"


def svg_map(
    db_utm: np.ndarray | None,
    matches: Sequence[tuple[float, float, bool]] = (),
    estimate: Sequence[float] | None = None,
    truth: Sequence[float] | None = None,
    prior: tuple[float, float, float] | None = None,
    size: int = 260,
) -> str:
    """An SVG map in UTM metres (north up): database positions grey, ``matches`` (easting,
    northing, is_positive) green/red with their rank, the ``estimate`` a blue cross, the query's
    ``truth`` a black ring, a ``prior`` (easting, northing, radius) a dashed circle. "" without
    coordinates."""
    if db_utm is None or not len(db_utm):
        return ""
    pts = np.asarray(db_utm, dtype=np.float64)
    lo, hi = np.nanmin(pts, axis=0), np.nanmax(pts, axis=0)
    span = float(max(hi[0] - lo[0], hi[1] - lo[1], 1.0))
    pad = 0.05 * span
    s = (size - 1) / (span + 2 * pad)

    ox, oy = (span - (hi[0] - lo[0])) / 2, (span - (hi[1] - lo[1])) / 2  # centre the shorter side

    def xy(e: float, n: float) -> tuple[float, float]:
        return (e - lo[0] + pad + ox) * s, (hi[1] - n + pad + oy) * s

    parts = [
        f"<svg class='map' width='{size}' height='{size}' viewBox='0 0 {size} {size}' "
        "style='background:#f7f7f2;border:1px solid #ccc'>"
    ]
    step = max(1, len(pts) // 4000)  # a huge database: draw a sample of it
    parts += [
        f"<circle cx='{x:.1f}' cy='{y:.1f}' r='1.5' fill='#aaa'/>"
        for x, y in (xy(e, n) for e, n in pts[::step] if np.isfinite(e) and np.isfinite(n))
    ]
    if prior is not None:
        x, y = xy(prior[0], prior[1])
        parts.append(
            f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{max(prior[2] * s, 2):.1f}' fill='none' "
            "stroke='#555' stroke-dasharray='4 3'/>"
        )
    for rank, (e, n, ok) in reversed(list(enumerate(matches, 1))):
        x, y = xy(e, n)
        parts.append(
            f"<circle class='match' cx='{x:.1f}' cy='{y:.1f}' r='5' fill='{_GREEN if ok else _RED}' "
            f"fill-opacity='0.8'><title>#{rank}</title></circle>"
        )
    if truth is not None:
        x, y = xy(*truth)
        parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='8' fill='none' stroke='#000' stroke-width='2'/>")
    if estimate is not None:
        x, y = xy(*estimate)
        parts.append(
            f"<path class='estimate' d='M{x - 7:.1f} {y:.1f}h14M{x:.1f} {y - 7:.1f}v14' "
            "stroke='#1565c0' stroke-width='3'/>"
        )
    parts.append(f"<text x='4' y='{size - 4}' font-size='10'>{span:.0f} m across</text></svg>")
    return "".join(parts)


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html>{MARKER}<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def write_query_report(
    out: str | Path,
    results: Sequence[dict],
    images: Sequence[str | Path],
    index,
    db_paths: Mapping[str, Path] | None = None,
) -> Path:
    """``netvlad query --html``: each photo beside its top-k database images (score, distance to
    the estimate) and a map. ``results`` are :func:`netvlad.serve.localize.search_images` objects
    for ``images``; ``db_paths`` maps database names to files for thumbnails (None: names only).

    Returns:
        the page, ``out/index.html``.
    """
    out = check_report_dir(out)
    thumbs = _Thumbs(out)
    db_paths = db_paths or {}
    blocks = []
    for res, img in zip(results, images):
        cells = [
            f"<div class='c'>{_img(thumbs(img), res['image'])}<br><b>{html.escape(res['image'])}</b></div>"
        ]
        for r in res["results"]:
            cells.append(
                f"<div class='c'>{_img(thumbs(db_paths.get(r['name'])), r['name'])}<br>#{r['rank']} "
                f"{html.escape(r['name'])}<br>score {r['score']:.3f}</div>"
            )
        prior = res.get("prior")
        svg = svg_map(
            index.utm,
            [(*r["utm"], True) for r in res["results"] if r["utm"]],
            res["location"],
            prior=None if prior is None else (*prior["utm"], prior["radius_m"]),
        )
        where = (
            "estimate: " + ", ".join(f"{v:.6f}" for v in res["location_latlon"])
            if res.get("location_latlon")
            else ""
        )
        blocks.append(f"<div class='q'>{''.join(cells)}<div>{svg}<br>{html.escape(where)}</div></div>")
    top = max((len(r["results"]) for r in results), default=0)
    body = (
        f"<h2>netvlad query: {len(results)} photo(s), top {top}</h2><p>Index: {index.ntotal} images, "
        f"{index.dim}-D. Map: grey = database, coloured = matches, "
        f"blue cross = estimated location.</p>{''.join(blocks)}"
    )
    return atomic_write_text(out / "index.html", _page("netvlad query", body))


def _curve_svg(ns: Sequence[int], curves: Mapping[str, Sequence[float]], w: int = 420, h: int = 240) -> str:
    """recall@N curves as inline SVG (log-free: N on a linear axis)."""
    colours = ["#000", "#1565c0", "#e65100", "#6a1b9a", "#2e7d32", "#ad1457"]
    x0, y0, x1, y1 = 40, 10, w - 10, h - 30
    nmax = max(ns)

    def xy(n, r):
        return x0 + (x1 - x0) * (n - 1) / max(nmax - 1, 1), y1 - (y1 - y0) * r

    parts = [
        f"<svg class='curves' width='{w}' height='{h}'><rect x='{x0}' y='{y0}' width='{x1 - x0}' "
        f"height='{y1 - y0}' fill='none' stroke='#999'/>"
    ]
    for t in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f"<text x='2' y='{xy(1, t)[1] + 4:.0f}' font-size='10'>{100 * t:.0f}%</text>")
    parts.append(
        f"<text x='{x0}' y='{h - 12}' font-size='10'>N = 1</text>"
        f"<text x='{x1 - 40}' y='{h - 12}' font-size='10'>N = {nmax}</text>"
    )
    for ci, (label, vals) in enumerate(curves.items()):
        c = colours[ci % len(colours)]
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(n, v) for n, v in zip(ns, vals)))
        parts.append(
            f"<polyline points='{pts}' fill='none' stroke='{c}' stroke-width='2'/>"
            f"<text x='{x1 - 120}' y='{y1 - 8 - 12 * ci}' font-size='11' fill='{c}'>"
            f"{html.escape(label)}</text>"
        )
    return "".join(parts) + "</svg>"


def _summary_table(res: dict) -> str:
    ns = res["ns"]
    cols = {
        "all": {"num_queries": res["num_queries"], "recall": res["recall"]},
        **res.get("by_condition", {}),
    }
    head = (
        "<tr><th>recall@N</th>"
        + "".join(f"<th>{html.escape(c)} ({v['num_queries']})</th>" for c, v in cols.items())
        + "</tr>"
    )
    rows = "".join(
        f"<tr><td>N = {n}</td>"
        + "".join(f"<td>{100 * float(v['recall'][n]):.2f}%</td>" for v in cols.values())
        + "</tr>"
        for n in ns
    )
    return f"<table border='1'>{head}{rows}</table>"


def write_evaluation_report(
    out: str | Path, res: dict, ds, label: str, k: int = 5, max_queries: int | None = None
) -> Path:
    """``netvlad evaluate --html``: summary table and recall curves, then every evaluated query
    beside its top-``k`` (green border = a positive, red = not), failures (no positive in the
    top k) first, with buttons filtering by condition (day/sunset/night) where the dataset has them.

    Args:
        out: report folder (``index.html`` + ``thumbs/``).
        res: the dict of ``netvlad.metrics.evaluate_dataset`` (``top``, ``hits``, ``first_hit``,
            ``query_indices``, ``recall``, ``ns``, optional ``conditions``/``by_condition``).
        ds: the ``PlaceDataset`` evaluated (names, paths and coordinates are read).
        max_queries: show at most this many queries (failures first); None: all.

    Returns:
        the page.
    """
    out = check_report_dir(out)
    thumbs = _Thumbs(out)
    rows = _query_rows(res, k, ds.all_positives())
    shown = rows if max_queries is None else rows[:max_queries]
    conds = sorted({r["condition"] for r in rows if r["condition"]})
    buttons = "".join(f"<button onclick=\"f('{html.escape(c)}')\">{html.escape(c)}</button>" for c in conds)
    filters = (
        "<p class='filters'>Show: <button onclick=\"f('')\">all</button>"
        "<button onclick=\"f('fail')\">failures</button>" + buttons + "</p>"
    )
    db_paths, q_paths = ds.db_paths(), ds.query_paths()
    has_xy = ds.db_utm is not None and np.isfinite(np.asarray(ds.db_utm, dtype=np.float64)).any()
    blocks = []
    for r in shown:
        qi = r["query"]
        cls = "q" + (" fail" if not r["found"] else "")
        cells = [
            f"<div class='c'>{_img(thumbs(q_paths[qi]), ds.query_images[qi])}<br><b>query</b> "
            f"{html.escape(ds.query_images[qi])}<br>{html.escape(r['condition'] or '')} first positive: "
            f"{r['rank'] if r['rank'] else 'none in top ' + str(res['top'].shape[1])}</div>"
        ]
        for rank, (di, ok) in enumerate(zip(r["top"], r["hits"]), 1):
            cells.append(
                f"<div class='c {'pos' if ok else 'neg'}'>{_img(thumbs(db_paths[di]), ds.db_images[di])}"
                f"<br>#{rank} {html.escape(ds.db_images[di])}</div>"
            )
        svg = ""
        if has_xy:
            db_utm = np.asarray(ds.db_utm, dtype=np.float64)
            svg = svg_map(
                db_utm,
                [(*db_utm[d], bool(h)) for d, h in zip(r["top"], r["hits"])],
                db_utm[r["top"][0]] if len(r["top"]) else None,
                truth=np.asarray(ds.query_utm, dtype=np.float64)[qi],
                size=200,
            )
        blocks.append(
            f"<div class='{cls}' data-cond='{html.escape(r['condition'] or '')}' "
            f"data-fail='{0 if r['found'] else 1}'>{''.join(cells)}{svg}</div>"
        )
    curves = {"all": [res["recall"][n] for n in res["ns"]]}
    for c, v in res.get("by_condition", {}).items():
        curves[c] = [v["recall"][n] for n in res["ns"]]
    more = "" if len(shown) == len(rows) else f" (the first {len(shown)} of {len(rows)} shown)"
    script = (
        "<script>function f(c){for(const e of document.querySelectorAll('div.q')){e.classList.toggle("
        "'hide',!(c===''||(c==='fail'?e.dataset.fail==='1':e.dataset.cond===c)))}}</script>"
    )
    body = (
        f"<h2>{html.escape(label)}</h2><p>{res['num_queries']} queries, {res['num_db']} database images, "
        f"{res['dim']}-D. Each query beside its top {k}: green = a positive (within the positive radius), "
        f"red = not; failures (no positive in the top {k}) first{more}. Map: grey = database, "
        f"black ring = the query's true position, blue cross = the top-1 match.</p>"
        f"{_summary_table(res)}{_curve_svg(res['ns'], curves)}{filters}{''.join(blocks)}{script}"
    )
    return atomic_write_text(out / "index.html", _page(label, body))


def _query_rows(res: dict, k: int, positives: Sequence[np.ndarray]) -> list[dict]:
    """Per evaluated query: its index, condition, top-k ids with positive flags, first positive
    rank; failures (no positive in the top k) first, then by first-positive rank, then query order."""
    rows = []
    conds = res.get("conditions")
    for j, qi in enumerate(res["query_indices"]):
        top = [int(t) for t in np.asarray(res["top"][j])[:k] if t >= 0]
        pos = set(np.asarray(positives[int(qi)]).tolist())
        hits = [t in pos for t in top]
        first = int(res["first_hit"][j])
        rows.append(
            {
                "query": int(qi),
                "condition": None if conds is None else str(conds[j]),
                "top": top,
                "hits": hits,
                "rank": first + 1 if first >= 0 else None,
                "found": 0 <= first < k,
            }
        )
    rows.sort(key=lambda r: (r["found"], r["rank"] or 10**9))
    return rows
