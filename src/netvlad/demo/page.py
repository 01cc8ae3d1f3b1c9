"""The demo's HTML page: each campus query beside its top-k matches."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from netvlad._atomic import atomic_write, atomic_write_text

if TYPE_CHECKING:  # campus.py imports this module to write its page
    from netvlad.demo.campus import Campus


def write_matches_html(
    path: Path, campus: Campus, ranked: np.ndarray, scores: np.ndarray, recall: dict
) -> Path:
    """An HTML page: each query beside its top-k matches (green border = a true positive).

    Thumbnails are written next to the page (``thumbs/``), so the folder can be moved or shared.
    """
    from PIL import Image

    thumbs = path.parent / "thumbs"
    thumbs.mkdir(exist_ok=True)

    def thumb(p: Path) -> str:
        name = f"{p.stem}.jpg"
        with Image.open(p) as img:
            img = img.convert("RGB")
            img.thumbnail((240, 240))
            atomic_write(thumbs / name, lambda tmp: img.save(tmp, format="JPEG", quality=85))
        return f"thumbs/{name}"

    rows = []
    for qi, qp in enumerate(campus.query_paths):
        cells = [f'<td><img src="{thumb(qp)}"><br><b>query</b> frame {campus.query_frames[qi]}</td>']
        for r, (di, sc) in enumerate(zip(ranked[qi], scores[qi])):
            ok = int(di) in set(campus.positives[qi].tolist())
            colour = "#1a8f1a" if ok else "#c62828"
            cells.append(
                f'<td><img src="{thumb(campus.db_paths[di])}" style="border:4px solid {colour}"><br>'
                f"#{r + 1} frame {campus.db_frames[di]} (score {sc:.3f})</td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    rec = ", ".join(f"recall@{n} = {v:.2f}" for n, v in recall.items())
    doc = (
        "<!doctype html><meta charset='utf-8'><title>netvlad demo: campus walk</title>"
        "<style>body{font-family:sans-serif} td{text-align:center;padding:4px;font-size:12px}</style>"
        f"<h2>Campus walk: 5 held-out queries vs 20 database photos</h2><p>{html.escape(rec)}. "
        "Green = within one frame of the query along the walk (the ground truth), red = not.</p>"
        f"<table>{''.join(rows)}</table>"
    )
    return atomic_write_text(path, doc)
