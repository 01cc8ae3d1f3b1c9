"""Training runs as a user starts them: what a run is trained from (`RunSpec`), starting one, and
resuming one from its latest checkpoint or from any saved epoch.

The command line and Python do the same thing: ``netvlad train --resume`` is `resume_run`, and a
run's ``config.json`` holds its `RunSpec` (under "cli"), so the datasets and the model are rebuilt
from it on resume whoever started the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from netvlad._outputs import (
    OutputLock,
    check_not_input,
    check_output_dir,
    folder_holds_only,
    json_object_with,
)
from netvlad.data import load_dataset
from netvlad.models import PRESETS
from netvlad.train import dist as D
from netvlad.train.config import TrainConfig
from netvlad.train.loop import fit
from netvlad.weights import load_model

#: What `fit` writes into a run directory, hidden temporaries aside.
RUN_DIR_ENTRIES = (
    "config.json", "metrics.jsonl", "ckpt_latest.pt", "epoch_*.pt", "cache_r*.pt", "curves*.png"
)


def is_run_dir(path: Path) -> bool:
    """A folder holding only a training run's files (and a config.json of a training run, if any)."""
    if not folder_holds_only(path, RUN_DIR_ENTRIES):
        return False
    return not (path / "config.json").exists() or json_object_with(path / "config.json", ("train",))


@dataclass
class RunSpec:
    """What a run is trained from, as the user named it (dataset specs, model, backbone weights).

    Attributes:
        train, val: dataset specs (files or folders in any supported format).
        model: a preset name or a checkpoint path.
        weights: backbone weights of a preset: "imagenet", a state-dict file, "random" or None.
        train_images, val_images: image folders of specs that name none.
    """

    train: str
    val: str
    model: str = "vgg16-netvlad"
    weights: str | None = None
    train_images: str | None = None
    val_images: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (None if v is None else str(v)) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        return cls(**{f.name: d.get(f.name) for f in dataclasses.fields(cls)})

    def inputs(self) -> list[tuple[str, str | None]]:
        """(flag, path) of every input, for the checks that an output is none of them."""
        return [("--train", self.train), ("--val", self.val), ("--train-images", self.train_images),
                ("--val-images", self.val_images), ("--model", self.model), ("--weights", self.weights)]

    def check_weights(self) -> None:
        """Refuse a preset whose backbone would silently start from random weights.

        Raises:
            ValueError: a preset that ships no weights, and no ``weights`` given.
        """
        if self.weights is not None or self.model not in PRESETS or Path(self.model).exists():
            return
        if PRESETS[self.model].pretrained is None:
            raise ValueError(
                f"--model {self.model} ships no backbone weights: training would start from a random "
                "backbone. Pass --weights imagenet (downloads torchvision's), --weights FILE (a backbone "
                "state dict, e.g. from `netvlad convert`), or --weights random to do so knowingly"
            )

    def build(self):
        """(model, training dataset, validation dataset)."""
        model = load_model(self.model, weights=self.weights)
        train_ds = load_dataset(self.train, self.train_images, purpose="train")
        val_ds = load_dataset(self.val, self.val_images)
        return model, train_ds, val_ds


def read_run(run_dir: str | Path) -> tuple[RunSpec, TrainConfig]:
    """The `RunSpec` and `TrainConfig` a run was started with (its config.json).

    Raises:
        FileNotFoundError: no config.json (nothing to resume).
        ValueError: a config.json without the run's specs.
    """
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: nothing to resume (no config.json)")
    info = json.loads(path.read_text())
    if not isinstance(info.get("cli"), dict) or "train" not in info:
        raise ValueError(f"{path}: does not name the run's datasets and model; resume it with `fit` yourself")
    return RunSpec.from_dict(info["cli"]), TrainConfig.from_dict(info["train"])


def start_run(
    spec: RunSpec,
    config: TrainConfig,
    out_dir: str | Path,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Start a run in `out_dir` (new, empty, or a run folder): `fit` on the spec's model and datasets.

    Under torchrun it joins the process group first. One process per run folder (a lock).

    Returns:
        the run directory.
    """
    out_dir = Path(out_dir)
    check_output_dir(out_dir, inputs=spec.inputs(), is_ours=is_run_dir, kind="training run folder")
    with _run_lock(out_dir):
        spec.check_weights()
        device = D.init_distributed(device)
        model, train_ds, val_ds = spec.build()
        return fit(model, train_ds, val_ds, config, out_dir, device=device, progress=progress,
                   run_info={"cli": spec.to_dict()}, log=log)


def resume_run(
    run_dir: str | Path | None = None,
    checkpoint: str | Path | None = None,
    epochs: int | None = None,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Continue a run from its latest checkpoint, or restart it from `checkpoint` (any
    ``epoch_XXX.pt`` of the run: the records after it are dropped and the later epochs redone).

    The datasets and the model are rebuilt from the run's config.json; only the length of the run
    (`epochs`) may change.

    Args:
        run_dir: the run folder (default: the folder of `checkpoint`).
        checkpoint: a checkpoint of the run (default: ``run_dir/ckpt_latest.pt``).

    Returns:
        the run directory.

    Raises:
        ValueError: neither argument, or a checkpoint outside the run folder.
    """
    if run_dir is None and checkpoint is None:
        raise ValueError("resume_run: give the run folder or one of its checkpoints")
    run_dir = Path(run_dir) if run_dir is not None else Path(checkpoint).parent
    if checkpoint is not None and Path(checkpoint).resolve().parent != run_dir.resolve():
        raise ValueError(f"{checkpoint}: not a checkpoint of the run {run_dir} (it must lie in that folder)")
    spec, base = read_run(run_dir)
    config = dataclasses.replace(base, epochs=epochs or base.epochs)
    check_not_input(run_dir, spec.inputs())  # the run's own folder: files the user added there stay
    with _run_lock(run_dir):
        device = D.init_distributed(device)
        model, train_ds, val_ds = spec.build()
        resume = Path(checkpoint) if checkpoint is not None else True
        return fit(model, train_ds, val_ds, config, run_dir, device=device, progress=progress,
                   resume=resume, log=log)


@contextlib.contextmanager
def _run_lock(run_dir: Path):
    """The run folder's lock, held by rank 0 (it speaks for the group under torchrun; the group
    may not be joined yet, so the rank comes from torchrun's environment then)."""
    lock = OutputLock(run_dir, "training into")
    rank = D.rank_world()[0] if D.is_dist() else int(os.environ.get("RANK", "0"))
    if rank == 0:
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
