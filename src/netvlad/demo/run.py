"""`run_demo`: both steps of the demo, their log lines and ``summary.json``."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from netvlad._atomic import atomic_write_text
from netvlad.demo.campus import campus_walk, run_campus
from netvlad.demo.config import DemoConfig, check_demo_dependencies
from netvlad.demo.town import format_table, run_town_training


def run_demo(config: DemoConfig | None = None, log=print) -> dict:
    """Both steps; prints progress and where the outputs are; returns every result and path."""
    import torch

    config = config or DemoConfig()
    check_demo_dependencies()
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run_demo(config, log)
    finally:
        torch.set_num_threads(threads)


def _run_demo(config: DemoConfig, log) -> dict:
    import torch

    from netvlad.models import create_model

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(0)

    log("== step 1/2: real photos (mvtbdata campus walk, pretrained EfficientNet-Lite0 NetVLAD)")
    campus = campus_walk(frame_window=config.frame_window)
    model = create_model(config.model)
    if config.campus_max_side is not None:
        model.set_preprocess(dataclasses.replace(model.preprocess, max_side=config.campus_max_side))
    camp = run_campus(
        model, campus, out / "campus", config.extract_batch_size, config.device, config.progress
    )
    log(
        f"campus: {len(campus.db_paths)} database photos, {len(campus.query_paths)} queries: "
        + ", ".join(f"recall@{n} = {v:.2f}" for n, v in camp["recall"].items())
    )
    t1 = time.perf_counter()

    log("== step 2/2: training on a synthetic town")
    town = run_town_training(config, out, log=log)
    table = format_table(town["table"], (1, 5, 10))
    log("test area recall (%):\n" + table)
    t2 = time.perf_counter()
    summary = {
        "campus_recall": camp["recall"],
        "town_recall": {k: {int(n): v for n, v in r.items()} for k, r in town["table"].items()},
        "whiten_dim": town["whiten_dim"],
        "seconds": {"campus": t1 - t0, "town": t2 - t1, "total": t2 - t0},
        "config": dataclasses.asdict(config),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str))
    log(f"outputs in {out.resolve()}:")
    log(f"  {camp['html']}  (each campus query beside its top-5 matches)")
    log(f"  {town['curves']}  (recall@N curves)")
    log(f"  {town['town'].out}  (the generated town: JPEGs, CSV + .mat datasets)")
    log(f"  {out / 'run'}  (training run: checkpoints, metrics.jsonl, curves.png)")
    log(f"  {out / 'summary.json'}")
    log(f"demo finished in {t2 - t0:.0f} s")
    return {"campus": camp, "town": town, "summary": summary, "table": table}
