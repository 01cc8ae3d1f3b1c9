"""The fault matrix: every bad input a demanding user gives, one row each, one test over all rows.

Each row builds its inputs in ``tmp_path`` (a copy of a tiny kit: a 64-D model, six 16×16 photos,
a CSV dataset naming them, their feature files and an index), runs one command in-process through
``netvlad.cli.main`` and asserts:

- the exit code (2: a refused input; 1: the dataset doctor found errors; 0: handled as documented);
- that the message names the file or the field at fault (the row's fragments);
- that no traceback is printed and an error is one line (argparse's usage lines aside);
- that no input changed: the sha256 of every file and the list of every folder under ``tmp_path``
  before and after, and no file left behind by a refusal;
- where a row is handled rather than refused (odd image modes, --skip-bad), an oracle: the
  descriptor of a converted image equals the descriptor of the RGB pixels the test writes down.

Fault injection with a rerun compared to an undisturbed run is in this file for SIGKILL of
``extract`` and ``train`` (at a seeded random point once the partial file or first checkpoint shows
progress) and for ``synth-town`` on a full disk (a real size-limited tmpfs when running as root,
skipped with the reason otherwise). The other injections live next to the code they exercise, and
are not repeated here:

- SIGKILL of ``index build`` (mid-save and random): tests/test_outputs.py,
  ``test_index_build_killed_at_random_points_then_rerun_equals_an_undisturbed_run``;
- SIGKILL of ``synth-town``, rerun byte-identical, another seed refused:
  tests/test_generation_faults.py, ``test_killed_synth_town_resumes_byte_identical`` and
  ``test_another_seed_is_refused_then_fully_replaced``;
- full disk on a real size-limited tmpfs (root only; skipped with the reason otherwise) and the
  same with ENOSPC injected in-process, reruns byte-identical: tests/test_outputs.py,
  ``test_full_disk_extract_on_a_real_small_disk``, ``test_full_disk_other_writers_on_a_real_small_disk``,
  ``test_full_disk_injected_is_one_line_and_the_rerun_is_identical``;
- two concurrent writers (the second refused with the holder's PID; a killed holder's lock is
  free): tests/test_outputs.py, ``test_second_extract_is_refused_with_the_holders_pid``,
  ``test_lock_of_a_killed_holder_is_free_and_names_the_pid_while_alive``,
  ``test_index_build_and_train_take_the_lock``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from netvlad import io
from netvlad.cli import main
from netvlad.extract import compute_representation
from netvlad.models import PRESETS, create_model, load_model, save_model
from test_image_faults import bomb_png
from test_outputs import small_disk  # noqa: F401 - the size-limited tmpfs fixture (root only)

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}


# ----------------------------------------------------------------------------------------- the kit


def tiny_model():
    """A real preset cut at its first layer, max pooling (no clusters to initialise): 64-D, instant."""
    return create_model(PRESETS["resnet18-netvlad"].replace(method="max", crop="conv1"), weights="random",
                        seed=0)


def _noise(seed: int, side: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


#: The kit's dataset: four database images 100 m apart, two queries at the first and third.
KIT_CSV = """# name: kit
split,path,easting,northing
db,img/db0.png,500000.0,4000000.0
db,img/db1.png,500100.0,4000000.0
db,img/db2.png,500200.0,4000000.0
db,img/db3.png,500300.0,4000000.0
query,img/q0.png,500003.0,4000000.0
query,img/q1.png,500203.0,4000000.0
"""


@pytest.fixture(scope="module")
def kit_dir(tmp_path_factory) -> Path:
    """model.pt, img/ (six 16×16 PNGs), ds.csv, db.h5 + q.h5 (extracted with model.pt), idx/."""
    root = tmp_path_factory.mktemp("kit")
    save_model(tiny_model(), root / "model.pt")
    raw = PRESETS["resnet18-netvlad"].replace(crop="conv1", num_clusters=4)
    save_model(create_model(raw, weights="random", seed=0), root / "raw.pt")  # NetVLAD, not initialised
    (root / "img").mkdir()
    for i, name in enumerate(["db0", "db1", "db2", "db3", "q0", "q1"]):
        Image.fromarray(_noise(i)).save(root / "img" / f"{name}.png")
    (root / "ds.csv").write_text(KIT_CSV)
    quiet = ["--no-progress", "--workers", "0"]
    assert main(["extract", str(root / "model.pt"), "--dataset", str(root / "ds.csv"),
                 "--out", str(root / "f.h5"), *quiet]) == 0
    (root / "f_db.h5").rename(root / "db.h5")
    (root / "f_query.h5").rename(root / "q.h5")
    assert main(["index", "build", str(root / "db.h5"), "--out", str(root / "idx"), "--type", "exact",
                 "--dataset", str(root / "ds.csv"), "--model", str(root / "model.pt")]) == 0
    return root


@dataclass
class Kit:
    """A row's working folder: a fresh copy of the kit; ``k / "name"`` is a path in it."""

    root: Path

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    def photos(self, *files: tuple[str, Callable[[Path], object]]) -> Path:
        """photos/ with a good 16×16 PNG (good.png) and each (name, writer) of ``files``."""
        folder = self.root / "photos"
        folder.mkdir(exist_ok=True)
        Image.fromarray(_noise(10)).save(folder / "good.png")
        for name, write in files:
            write(folder / name)
        return folder

    def text(self, name: str, content: str) -> Path:
        (self.root / name).write_text(content)
        return self.root / name


# ----------------------------------------------------------------------------------------- bad files


def truncated_jpeg(path: Path) -> None:
    Image.fromarray(_noise(20, 32)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:400])  # header intact, scan data cut


def zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def text_file(path: Path) -> None:
    path.write_text("this is not a photo\n")


def bomb(path: Path) -> None:
    bomb_png(path)


def _cmyk_k0(seed: int) -> np.ndarray:
    cmy = _noise(seed)
    return np.concatenate([cmy, np.zeros((16, 16, 1), np.uint8)], axis=2)


def cmyk_jpeg(path: Path) -> None:
    Image.fromarray(_cmyk_k0(37), "CMYK").save(path, quality=95)


# Odd image modes: (file name, writer, the RGB pixels the writer's file stands for, written here by
# the conversion's definition, not by asking Pillow to convert).
def _grey3(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _grey() -> np.ndarray:
    return _noise(30)[..., 0]


def _palette() -> tuple[np.ndarray, np.ndarray]:
    idx = np.random.default_rng(31).integers(0, 4, (16, 16)).astype(np.uint8)
    pal = np.array([[255, 0, 0], [0, 128, 255], [20, 200, 20], [250, 250, 250]], np.uint8)
    return idx, pal


def _bits() -> np.ndarray:
    return np.random.default_rng(32).integers(0, 2, (16, 16)).astype(bool)


def _u16() -> np.ndarray:
    return np.random.default_rng(33).integers(0, 65536, (16, 16)).astype(np.uint16)


def _alpha() -> np.ndarray:
    return np.random.default_rng(34).integers(0, 256, (16, 16, 1), dtype=np.uint8)


def _write_palette(path):
    idx, pal = _palette()
    img = Image.fromarray(idx, "P")
    img.putpalette(pal.ravel().tolist())
    img.save(path)


ODD_MODES = {
    # name: (writer, expected RGB uint8 H×W×3)
    "grey.png": (lambda p: Image.fromarray(_grey(), "L").save(p), lambda: _grey3(_grey())),
    "sixteen.png": (lambda p: Image.fromarray(_u16()).save(p),  # 16-bit grey: scaled by 255/65535
                    lambda: _grey3(np.floor(_u16() / 65535 * 255 + 0.5).astype(np.uint8))),
    "palette.png": (_write_palette, lambda: _palette()[1][_palette()[0]]),
    "rgba.png": (lambda p: Image.fromarray(np.concatenate([_noise(35), _alpha()], 2), "RGBA").save(p),
                 lambda: _noise(35)),  # alpha dropped, as every photo tool that flattens does
    "la.png": (lambda p: Image.fromarray(np.concatenate([_grey()[..., None], _alpha()], 2), "LA").save(p),
               lambda: _grey3(_grey())),
    "onebit.png": (lambda p: Image.fromarray(_bits()).convert("1").save(p),
                   lambda: _grey3((_bits() * 255).astype(np.uint8))),
    "cmyk.tif": (lambda p: Image.fromarray(_cmyk_k0(36), "CMYK").save(p),  # K = 0: RGB = 255 − CMY
                 lambda: 255 - _noise(36)),
}


# ----------------------------------------------------------------------------------------- bad checkpoints


class RunsCode:
    """Unpickling this creates ``marker``: a checkpoint that would run code when loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def malicious_torch(k: Kit) -> Path:
    """A torch checkpoint (zip) whose pickle would mkdir ``pwned`` — beside a real model's tensors."""
    m = tiny_model()
    torch.save({"format": "netvlad-checkpoint", "version": 1, "config": m.config.to_dict(),
                "state_dict": m.state_dict(), "extra": RunsCode(k / "pwned")}, k / "evil.pt")
    return k / "evil.pt"


def malicious_pickle(k: Kit) -> Path:
    (k / "evil.pkl").write_bytes(pickle.dumps(RunsCode(k / "pwned")))
    return k / "evil.pkl"


def _config() -> dict:
    return tiny_model().config.to_dict()


def _payload(**change) -> dict:
    m = tiny_model()
    payload = {"format": "netvlad-checkpoint", "version": 1, "config": m.config.to_dict(),
               "state_dict": m.state_dict(), "extra": {}}
    payload.update(change)
    return payload


def ckpt(k: Kit, name: str = "bad.pt", **change) -> Path:
    torch.save(_payload(**change), k / name)
    return k / name


def nan_ckpt(k: Kit, name: str = "diverged.pt") -> Path:
    m = tiny_model()
    with torch.no_grad():
        m.backbone.conv1.weight[1, 2, 3, 4] = float("nan")
    return save_model(m, k / name)


def bare_state_dict(k: Kit) -> Path:
    torch.save(tiny_model().state_dict(), k / "sd.pt")
    return k / "sd.pt"


def other_model(k: Kit) -> Path:
    """The kit's architecture with other weights: not the model that built the kit's index."""
    return save_model(create_model(PRESETS["resnet18-netvlad"].replace(method="max", crop="conv1"),
                                   weights="random", seed=1), k / "m1.pt")


def mismatched_ckpt(k: Kit) -> Path:
    state = tiny_model().state_dict()
    state["backbone.conv1.weight"] = state["backbone.conv1.weight"][:32]  # 32 filters, config says 64
    return ckpt(k, "mismatch.pt", state_dict=state)


def truncated_ckpt(k: Kit) -> Path:
    data = (k / "model.pt").read_bytes()
    (k / "cut.pt").write_bytes(data[: len(data) // 2])
    return k / "cut.pt"


def random_bytes(k: Kit, name: str = "model.bin") -> Path:
    (k / name).write_bytes(np.random.default_rng(0).bytes(4096))
    return k / name


# ----------------------------------------------------------------------------------------- bad datasets


def bad_csv(k: Kit, header: str = "split,path,easting,northing", rows: tuple[str, ...] = (),
            name: str = "bad.csv") -> Path:
    return k.text(name, "\n".join([header, *rows]) + "\n")


GOOD_ROWS = ("db,img/db0.png,500000.0,4000000.0", "query,img/q0.png,500003.0,4000000.0")


def csv_missing_column(k):
    return bad_csv(k, "split,easting,northing", ("db,500000.0,4000000.0",))


def csv_no_coordinates(k):
    return bad_csv(k, "split,path", ("db,img/db0.png",))


def csv_non_numeric(k):
    return bad_csv(k, rows=(*GOOD_ROWS, "db,img/db1.png,five hundred,4000000.0"))


def csv_unknown_split(k):
    return bad_csv(k, rows=(*GOOD_ROWS, "train,img/db1.png,500100.0,4000000.0"))


def csv_empty(k):
    return k.text("bad.csv", "")


def csv_missing_images(k):
    return bad_csv(k, rows=(*GOOD_ROWS, "db,img/gone.png,500100.0,4000000.0"))


def csv_duplicates(k):
    return bad_csv(k, rows=(*GOOD_ROWS, "db,img/db0.png,500100.0,4000000.0"))


def mat_not_matlab(k):
    return k.text("bad.mat", "<html>404 not found</html>\n")


def mat_without_dbstruct(k):
    import scipy.io

    scipy.io.savemat(k / "bad.mat", {"something": np.zeros((2, 2))})
    return k / "bad.mat"


def npz_missing_key(k):
    np.savez(k / "bad.npz", utmDb=np.zeros((1, 2)))  # no utmQ
    k.text("bad_imageNames_index.txt", "img/db0.png\n")
    k.text("bad_imageNames_query.txt", "img/q0.png\n")
    return k / "bad.npz"


def npz_without_lists(k):
    np.savez(k / "lonely.npz", utmDb=np.zeros((1, 2)), utmQ=np.zeros((1, 2)))
    return k / "lonely.npz"


# ----------------------------------------------------------------------------------------- bad feature files


def truncated_h5(k, name="cut.h5"):
    data = (k / "db.h5").read_bytes()
    (k / name).write_bytes(data[: len(data) // 2])
    return k / name


def partial_h5(k):
    """An unfinished feature file (an interrupted extract's OUT.partial.h5) given as an input."""
    names, desc, _ = io.read_features(k / "db.h5")
    w = io.FeatureWriter(k / "half.h5", names, desc.shape[1], attrs={"fingerprint": "m"})
    w.open()
    w.write([0, 1], desc[:2])
    w.close()
    return io.partial_path(k / "half.h5")


def foreign_fingerprint(k, name="other_q.h5"):
    """The kit's query rows, as if written by another model of the same dimension."""
    names, desc, _ = io.read_features(k / "q.h5")
    return io.write_features(k / name, names, desc, {"fingerprint": "f" * 64})


def other_dim(k, name="q8.h5"):
    names, desc, _ = io.read_features(k / "q.h5")
    return io.write_features(k / name, names, desc[:, :8] / np.linalg.norm(desc[:, :8], axis=1)[:, None])


def unnormalised(k, name="raw.h5"):
    names, desc, attrs = io.read_features(k / "db.h5")
    return io.write_features(k / name, names, desc * 3.0, {"fingerprint": attrs["fingerprint"]})


def other_names(k, name="elsewhere.h5"):
    names, desc, attrs = io.read_features(k / "db.h5")
    return io.write_features(k / name, [f"other/{n}" for n in names], desc,
                             {"fingerprint": attrs["fingerprint"]})


# ----------------------------------------------------------------------------------------- bad folders


TINY_TOWN = "--size tiny --width 32 --height 24 --no-progress"


def users_folder(k, name="mine"):
    (k / name).mkdir()
    (k / name / "thesis.tex").write_text("precious\n")
    return k / name


def other_town(k):
    """A town folder of an interrupted seed-0 run (in-progress manifest, journal, one image)."""
    from netvlad.synth import SynthConfig
    from netvlad.synth.manifest import FORMAT, JOURNAL, MANIFEST, made_from

    town = k / "town"
    (town / "train" / "images").mkdir(parents=True)
    img = town / "train" / "images" / "000000.jpg"
    Image.fromarray(_noise(40)).save(img)
    cfg = SynthConfig(seed=0, size="tiny", width=32, height=24)
    (town / MANIFEST).write_text(json.dumps({"format": FORMAT, "version": 1, "state": "in progress",
                                             **made_from(cfg)}))
    (town / JOURNAL).write_text(json.dumps({"file": "train/images/000000.jpg", "size": img.stat().st_size,
                                            "sha256": hashlib.sha256(img.read_bytes()).hexdigest()}) + "\n")
    return town


def town_without_manifest(k):
    town = k / "town"
    (town / "train" / "images").mkdir(parents=True)
    Image.fromarray(_noise(41)).save(town / "train" / "images" / "000000.jpg")
    return town


# ----------------------------------------------------------------------------------------- oracles


def skipped(name: str):
    """--skip-bad: the image's row is NaN and its name is in bad_images; the good image's row is not."""

    def check(k: Kit) -> None:
        names, desc, attrs = io.read_features(k / "f.h5")
        assert attrs["bad_images"] == [name]
        assert np.isnan(desc[names.index(name)]).all() and np.isfinite(desc[names.index("good.png")]).all()

    return check


def converted(name: str):
    """The row of ``name`` is the descriptor of the RGB pixels ODD_MODES writes down for it."""

    def check(k: Kit) -> None:
        names, desc, _ = io.read_features(k / "f.h5")
        want = compute_representation(load_model(k / "model.pt"), ODD_MODES[name][1]())
        np.testing.assert_allclose(desc[names.index(name)], want, atol=1e-5)

    return check


def finite(name: str):
    def check(k: Kit) -> None:
        names, desc, _ = io.read_features(k / "f.h5")
        assert np.isfinite(desc[names.index(name)]).all()

    return check


def made(name: str):
    return lambda k: (k / name).exists() or pytest.fail(f"{name} was not written")


def no_code_ran(k: Kit) -> None:
    assert not (k / "pwned").exists(), "loading the checkpoint ran code from it"


def cropped_report(k: Kit) -> None:
    """--crop-dim 8: the report and its label carry the dimension evaluated, 8 (not the file's 64)."""
    rep = json.loads((k / "r.json").read_text())
    assert rep["dim"] == rep["crop_dim"] == 8 and rep["label"] == "kit (db.h5, 8-D)"


# ----------------------------------------------------------------------------------------- the matrix


@dataclass(frozen=True)
class Row:
    """One fault: ``make`` builds the bad input in the kit copy (its path replaces ``F`` in ``argv``;
    ``K/x`` is the kit's file x), the command is run, and its exit status must be ``code`` with a
    message holding every fragment of ``says`` (stderr's error line for 2, all output otherwise)."""

    id: str
    make: Callable[[Kit], Path | None] | None
    argv: str
    code: int
    says: tuple[str, ...]
    check: Callable[[Kit], object] | None = None  # an oracle after the run

    def args(self, k: Kit) -> list[str]:
        made_path = self.make(k) if self.make else None

        def sub(tok: str) -> str:
            if tok == "F" or tok.startswith("F/"):
                return str(made_path) + tok[1:]
            return str(k / tok[2:]) if tok.startswith("K/") else tok

        return [sub(t) for t in self.argv.split()]


def row(id, make, argv, code, *says, check=None):
    return Row(id, make, argv, code, tuple(says), check)


def photos(*files):
    return lambda k: k.photos(*files)


def over_photo(name: str, write: Callable[[Path], object]):
    """A dataset whose second database image is photos/``name``."""

    def make(k: Kit) -> Path:
        k.photos((name, write))
        return bad_csv(k, rows=(*GOOD_ROWS, f"db,photos/{name},500100.0,4000000.0"), name="photos.csv")

    return make


def run_dir_with(make_ckpt: Callable[[Kit], Path]):
    """A run folder (config.json naming the kit's files) whose ckpt_latest.pt is ``make_ckpt``'s file."""
    from netvlad.train import TrainConfig

    def make(k: Kit) -> Path:
        run = k / "run"
        run.mkdir()
        cli = {"train": str(k / "ds.csv"), "val": str(k / "ds.csv"), "model": str(k / "model.pt"),
               "weights": None, "train_images": None, "val_images": None}
        info = {"train": TrainConfig(num_workers=0).to_dict(), "cli": cli}
        (run / "config.json").write_text(json.dumps(info))
        make_ckpt(k).rename(run / "ckpt_latest.pt")
        return run

    return make


def break_index(k: Kit) -> None:
    (k / "idx" / "meta.json").write_text("{")


QUIET = "--no-progress --workers 0"
EXTRACT = f"extract K/model.pt --images F --out K/f.h5 {QUIET}"
EXTRACT_DS = f"extract K/model.pt --dataset F --out K/f.h5 {QUIET}"
EXTRACT_MODEL = f"extract F --images K/img --out K/f.h5 {QUIET}"
EVALUATE = "evaluate --dataset K/ds.csv --db K/db.h5 --queries K/q.h5"
TRAIN = "train --train K/ds.csv --val K/ds.csv --model K/model.pt --out K/run"
PCA = f"pca K/model.pt --dataset K/ds.csv --dim 8 --out K/w.pt {QUIET}"
BOMB = "decompression bomb"

IMAGES = [
    row("extract-truncated-jpeg", photos(("cut.jpg", truncated_jpeg)), EXTRACT, 2, "cut.jpg", "truncated"),
    row("extract-truncated-jpeg-skip-bad", photos(("cut.jpg", truncated_jpeg)), EXTRACT + " --skip-bad", 0,
        "cut.jpg", check=skipped("cut.jpg")),
    row("extract-zero-bytes", photos(("empty.jpg", zero_bytes)), EXTRACT, 2, "empty.jpg", "not an image"),
    row("extract-text-named-jpg", photos(("notes.jpg", text_file)), EXTRACT, 2, "notes.jpg", "not an image"),
    row("extract-text-named-jpg-skip-bad", photos(("notes.jpg", text_file)), EXTRACT + " --skip-bad", 0,
        "notes.jpg", check=skipped("notes.jpg")),
    row("extract-bomb", photos(("bomb.png", bomb)), EXTRACT, 2, "bomb.png", BOMB),
    row("extract-bomb-skip-bad", photos(("bomb.png", bomb)), EXTRACT + " --skip-bad", 0, "bomb.png",
        check=skipped("bomb.png")),
    *(row(f"extract-{name.split('.')[0]}", photos((name, write)), EXTRACT, 0, "f.h5: wrote",
          check=converted(name)) for name, (write, _) in ODD_MODES.items()),
    row("extract-cmyk-jpeg", photos(("cmyk.jpg", cmyk_jpeg)), EXTRACT,
        0, "f.h5: wrote", check=finite("cmyk.jpg")),
    row("extract-over-max-pixels-refused", photos(), EXTRACT + " --max-pixels 100 --oversize refuse", 2,
        "good.png", "max_pixels 100", "refused"),
    row("extract-over-max-pixels-downscaled", photos(), EXTRACT + " --max-pixels 100", 0, "good.png",
        "downscaled to 10×10"),
    row("query-truncated-jpeg", photos(("cut.jpg", truncated_jpeg)),
        "query K/idx F/cut.jpg --model K/model.pt", 2, "cut.jpg", "truncated"),
    row("query-bomb", photos(("bomb.png", bomb)), "query K/idx F/bomb.png", 2, "bomb.png", BOMB),
    row("query-zero-bytes", photos(("empty.jpg", zero_bytes)), "query K/idx F/empty.jpg", 2, "empty.jpg"),
    row("query-palette", photos(("palette.png", ODD_MODES["palette.png"][0])),
        "query K/idx F/palette.png --model K/model.pt", 0, "palette.png: estimated location"),
    row("doctor-bomb", over_photo("bomb.png", bomb), "dataset check F --no-progress", 1, "bomb.png", BOMB),
    row("doctor-truncated-decode", over_photo("cut.jpg", truncated_jpeg),
        "dataset check F --decode --no-progress", 1, "cut.jpg", "truncated"),
    row("doctor-text-named-jpg", over_photo("notes.jpg", text_file), "dataset check F --no-progress", 1,
        "notes.jpg"),
    row("init-images-with-a-bomb", photos(("bomb.png", bomb)),
        "init K/raw.pt --images F --out K/i.pt --quiet", 2, "bomb.png", BOMB),
]

DATASETS = [
    row("dataset-info-csv-missing-column", csv_missing_column, "dataset info F",
        2, "bad.csv", "column 'path'", "missing"),
    row("evaluate-csv-no-coordinates", csv_no_coordinates, "evaluate --dataset F --db K/db.h5", 2, "bad.csv",
        "'easting','northing'"),
    row("extract-csv-non-numeric", csv_non_numeric, EXTRACT_DS, 2, "bad.csv", "line 4", "'easting'",
        "'five hundred'"),
    row("train-csv-unknown-split", csv_unknown_split, TRAIN.replace("--train K/ds.csv", "--train F"), 2,
        "bad.csv", "line 4", "'split'", "'train'"),
    row("pca-csv-empty", csv_empty, PCA.replace("--dataset K/ds.csv", "--dataset F"), 2, "bad.csv", "header"),
    row("dataset-convert-csv-empty", csv_empty, "dataset convert F K/d.mat", 2, "bad.csv", "header"),
    row("extract-dataset-missing-image", csv_missing_images, EXTRACT_DS, 2, "img/gone.png", "not found"),
    row("doctor-missing-image", csv_missing_images, "dataset check F --no-progress", 1, "gone.png"),
    row("doctor-duplicate-names", csv_duplicates, "dataset check F --no-progress",
        1, "ERROR [duplicate-name]", "img/db0.png"),
    row("extract-duplicate-names", csv_duplicates, EXTRACT_DS, 2, "duplicate image name 'img/db0.png'"),
    row("dataset-info-not-matlab", mat_not_matlab, "dataset info F", 2, "bad.mat", "MATLAB"),
    row("evaluate-not-matlab", mat_not_matlab, "evaluate --dataset F --db K/db.h5", 2, "bad.mat", "MATLAB"),
    row("init-mat-without-dbstruct", mat_without_dbstruct,
        "init K/raw.pt --dataset F --images K/img --out K/i.pt --quiet", 2, "bad.mat", "dbStruct"),
    row("dataset-info-npz-missing-key", npz_missing_key, "dataset info F", 2, "bad.npz", "utmQ", "missing"),
    row("dataset-check-npz-without-lists", npz_without_lists, "dataset check F --no-progress",
        2, "lonely.npz", "imageNames"),
    row("dataset-info-missing-file", None, "dataset info K/gone.csv", 2, "gone.csv", "no such file"),
]

FEATURES = [
    row("evaluate-truncated-db", truncated_h5, "evaluate --dataset K/ds.csv --db F --queries K/q.h5",
        2, "cut.h5", "truncated"),
    row("index-build-truncated", truncated_h5, "index build F --out K/i", 2, "cut.h5", "truncated"),
    row("pairs-truncated-queries", truncated_h5, "pairs --db K/db.h5 --queries F --out K/p.txt", 2, "cut.h5",
        "truncated"),
    row("evaluate-partial-db", partial_h5, "evaluate --dataset K/ds.csv --db F --queries K/q.h5", 2,
        "half.partial.h5", "partial feature file"),
    row("index-build-partial", partial_h5, "index build F --out K/i",
        2, "half.partial.h5", "partial feature file"),
    row("evaluate-text-as-db", lambda k: k.text("n.h5", "hi\n"), "evaluate --dataset K/ds.csv --db F",
        2, "n.h5", "a text file, not a feature file"),
    row("pairs-photo-as-db", None, "pairs --db K/img/db0.png --out K/p.txt", 2, "db0.png",
        "an image file, not a feature file"),
    row("evaluate-mixed-models", foreign_fingerprint, "evaluate --dataset K/ds.csv --db K/db.h5 --queries F",
        2, "db.h5", "other_q.h5", "fingerprint ffffffffffffffff", "--allow-mixed-models"),
    row("pairs-mixed-models", foreign_fingerprint, "pairs --db K/db.h5 --queries F --out K/p.txt", 2, "db.h5",
        "other_q.h5", "fingerprint ffffffffffffffff", "--allow-mixed-models"),
    row("evaluate-other-dimension", other_dim, "evaluate --dataset K/ds.csv --db K/db.h5 --queries F",
        2, "q8.h5", "8-D"),
    row("evaluate-features-of-another-dataset", other_names,
        "evaluate --dataset K/ds.csv --db F --queries K/q.h5", 2, "elsewhere.h5", "img/db0.png"),
    row("index-build-unnormalised", unnormalised, "index build F --out K/i",
        2, "raw.h5", "not L2-normalised"),
    row("query-other-model", other_model, "query K/idx K/img/q0.png --model F",
        2, "m1.pt", "idx", "fingerprint"),
    row("query-broken-index", break_index, "query K/idx K/img/q0.png", 2, "meta.json"),
]

NOT_CKPT = "not a model checkpoint"
CHECKPOINTS = [
    row("describe-random-bytes", random_bytes, "describe F", 2, "model.bin", NOT_CKPT),
    row("describe-photo-as-model", None, "describe K/img/db0.png",
        2, "db0.png", "an image file, " + NOT_CKPT),
    row("extract-text-checkpoint", lambda k: k.text("model.txt", "101\n"), EXTRACT_MODEL, 2, "model.txt",
        "a text file", NOT_CKPT),
    row("describe-malicious-torch", malicious_torch, "describe F", 2, "evil.pt", "could run code",
        check=no_code_ran),
    row("extract-malicious-pickle", malicious_pickle, EXTRACT_MODEL, 2, "evil.pkl", "could run code",
        check=no_code_ran),
    row("convert-malicious-torch", malicious_torch, "convert F --out K/c.pt", 2, "evil.pt", "could run code",
        check=no_code_ran),
    row("train-malicious-model", malicious_torch, TRAIN.replace("K/model.pt", "F"), 2, "evil.pt",
        "could run code", check=no_code_ran),
    row("describe-nan-weights", nan_ckpt, "describe F",
        2, "diverged.pt", "'backbone.conv1.weight'", "NaN/inf"),
    row("extract-nan-weights", nan_ckpt, EXTRACT_MODEL,
        2, "diverged.pt", "'backbone.conv1.weight'", "NaN/inf"),
    row("pca-nan-weights", nan_ckpt, PCA.replace("K/model.pt", "F"), 2, "diverged.pt", "NaN/inf"),
    row("query-nan-weights", nan_ckpt, "query K/idx K/img/q0.png --model F", 2, "diverged.pt", "NaN/inf"),
    row("train-nan-weights", nan_ckpt, TRAIN.replace("K/model.pt", "F"), 2, "diverged.pt", "NaN/inf"),
    row("describe-wrong-format-tag", lambda k: ckpt(k, format="someone-else"), "describe F", 2, "bad.pt",
        "not a netvlad checkpoint"),
    row("describe-bare-state-dict", bare_state_dict, "describe F", 2, "sd.pt", "netvlad convert"),
    row("describe-newer-version", lambda k: ckpt(k, version=99), "describe F", 2, "bad.pt", "version 99",
        "upgrade"),
    row("extract-weights-not-matching-config", mismatched_ckpt, EXTRACT_MODEL, 2, "mismatch.pt",
        "do not match the config", "size mismatch for backbone.conv1.weight"),
    row("describe-unknown-config-field", lambda k: ckpt(k, config={**_config(), "colour": 1}),
        "describe F", 2, "bad.pt", "'colour'"),
    row("describe-no-state-dict", lambda k: ckpt(k, state_dict=None), "describe F",
        2, "bad.pt", "state_dict"),
    row("describe-unknown-backbone", lambda k: ckpt(k, config={**_config(), "backbone": "vgg99"}),
        "describe F", 2, "bad.pt", "'vgg99'"),
    row("describe-truncated", truncated_ckpt, "describe F", 2, "cut.pt", NOT_CKPT),
    row("describe-matlab-file", mat_without_dbstruct, "describe F", 2, "bad.mat", "netvlad convert"),
    row("convert-random-bytes", random_bytes, "convert F --out K/c.pt",
        2, "model.bin", "unrecognised binary"),
    row("convert-text", lambda k: k.text("m.mat", "hello\n"), "convert F --out K/c.pt",
        2, "m.mat", "a text file"),
    row("train-resume-nan-checkpoint", run_dir_with(nan_ckpt), "train --out F --resume --no-progress", 2,
        "ckpt_latest.pt", "NaN/inf"),
    row("train-resume-random-bytes", run_dir_with(random_bytes), "train --out F --resume --no-progress", 2,
        "ckpt_latest.pt", NOT_CKPT),
    row("train-resume-malicious", run_dir_with(malicious_torch), "train --out F --resume --no-progress", 2,
        "ckpt_latest.pt", "could run code", check=no_code_ran),
]

FLAGS = [
    row("query-k-0", None, "query K/idx K/img/q0.png --k 0", 2, "--k"),
    row("pairs-k-0", None, "pairs --db K/db.h5 --out K/p.txt --k 0", 2, "--k"),
    row("extract-batch-size-0", photos(), EXTRACT + " --batch-size 0", 2, "--batch-size"),
    row("pca-batch-size-0", None, PCA + " --batch-size 0", 2, "--batch-size"),
    row("extract-workers-negative", photos(), EXTRACT + " --workers -2", 2, "--workers", "-2"),
    row("pca-workers-negative", None, PCA + " --workers -2", 2, "--workers", "-2"),
    row("train-workers-negative", None, "train --out K/run --num-workers -2", 2, "--num-workers", "-2"),
    row("evaluate-crop-dim-too-large", None, EVALUATE + " --crop-dim 999",
        2, "--crop-dim 999", "64-D", "db.h5"),
    row("evaluate-crop-dim-0", None, EVALUATE + " --crop-dim 0", 2, "--crop-dim"),
    row("evaluate-crop-dim-labelled", None, EVALUATE + " --crop-dim 8 --report K/r.json", 0, "(db.h5, 8-D)",
        check=cropped_report),
    row("evaluate-ns-0", None, EVALUATE + " --ns 0 5", 2, "--ns"),
    row("describe-unknown-preset", None, "describe vgg17-netvlad", 2, "vgg17-netvlad", "vgg16-netvlad"),
    row("extract-unknown-preset", None, f"extract vgg17-netvlad --images K/img --out K/f.h5 {QUIET}", 2,
        "vgg17-netvlad", "not a preset"),
    row("train-unknown-preset", None, TRAIN.replace("K/model.pt", "vgg17-netvlad"), 2, "vgg17-netvlad",
        "not a preset"),
    row("init-unknown-preset", None, "init vgg17-netvlad --images K/img --out K/i.pt", 2, "vgg17-netvlad",
        "not a preset"),
    row("convert-bad-method", None, "convert K/model.pt --method vlad_bogus --out K/c.pt", 2, "'vlad_bogus'"),
    row("extract-max-side-negative", photos(), EXTRACT + " --max-side -1", 2, "--max-side"),
    row("extract-max-pixels-negative", photos(), EXTRACT + " --max-pixels -5", 2, "--max-pixels"),
    row("extract-oversize-bogus", photos(), EXTRACT + " --oversize crop", 2, "--oversize", "'crop'"),
    row("extract-device-cuda-without-cuda", photos(), EXTRACT + " --device cuda", 2, "device 'cuda'"),
    row("extract-device-bogus", photos(), EXTRACT + " --device gpu0", 2, "device 'gpu0'"),
    row("index-build-bad-type", None, "index build K/db.h5 --out K/i --type annoy", 2, "--type", "'annoy'"),
    row("pca-dim-too-large", None, PCA.replace("--dim 8", "--dim 64"), 2, "--dim"),
    row("pca-dim-auto-without-val", None, PCA.replace("--dim 8", "--dim auto"), 2, "--dim auto", "--val"),
    row("pca-dim-not-a-number", None, PCA.replace("--dim 8", "--dim big"), 2, "--dim", "'big'"),
    row("train-random-backbone", None, "train --train K/ds.csv --val K/ds.csv --out K/run",
        2, "vgg16-netvlad", "--weights random"),
    row("synth-town-bad-size", None, "synth-town --out K/town --size huge", 2, "--size", "'huge'"),
    row("synth-town-zero-width", None, "synth-town --out K/town --width 0",
        2, "image size 0x240", "too small"),
]

ALSO_INPUT = "is also an input"
PATHS = [
    row("extract-missing-model", None, EXTRACT_MODEL.replace("F", "K/gone.pt"), 2, "gone.pt"),
    row("extract-missing-image-folder", None, EXTRACT.replace("F", "K/nowhere"), 2, "nowhere"),
    row("evaluate-missing-db", None, "evaluate --dataset K/ds.csv --db K/gone.h5", 2, "gone.h5", "not found"),
    row("index-build-missing-features", None, "index build K/gone.h5 --out K/i", 2, "gone.h5", "not found"),
    row("query-missing-index", None, "query K/gone.idx K/img/q0.png", 2, "gone.idx"),
    row("query-missing-photo", None, "query K/idx K/gone.jpg", 2, "gone.jpg", "not found"),
    row("pairs-missing-db", None, "pairs --db K/gone.h5 --out K/p.txt", 2, "gone.h5", "not found"),
    row("describe-missing", None, "describe K/gone.pt", 2, "gone.pt"),
    row("convert-missing", None, "convert K/gone.mat --out K/c.pt", 2, "gone.mat", "no such file"),
    row("train-missing-train-set", None, TRAIN.replace("--train K/ds.csv", "--train K/gone.csv"),
        2, "gone.csv"),
    row("pca-missing-dataset", None, PCA.replace("K/ds.csv", "K/gone.csv"), 2, "gone.csv"),
    row("init-missing-image-folder", None, "init K/raw.pt --images K/nowhere --out K/i.pt --quiet",
        2, "nowhere"),
    # an output that is also an input: refused, even with --overwrite
    row("extract-out-is-the-model", None,
        f"extract K/model.pt --images K/img --out K/model.pt --overwrite {QUIET}", 2, "model.pt", ALSO_INPUT),
    row("index-build-out-is-its-input", None, "index build K/db.h5 --out K/db.h5 --overwrite", 2, "db.h5",
        ALSO_INPUT),
    row("evaluate-report-is-the-db", None, EVALUATE + " --report K/db.h5", 2, "db.h5", ALSO_INPUT),
    row("evaluate-plot-is-the-queries", None, EVALUATE + " --plot K/q.h5 --overwrite", 2, "q.h5", ALSO_INPUT),
    row("pairs-out-is-the-queries", None, "pairs --db K/db.h5 --queries K/q.h5 --out K/q.h5 --overwrite", 2,
        "q.h5", ALSO_INPUT),
    row("convert-out-is-its-input", None, "convert K/model.pt --out K/model.pt --overwrite", 2, "model.pt",
        ALSO_INPUT),
    row("dataset-convert-out-is-its-input", None, "dataset convert K/ds.csv K/ds.csv --overwrite",
        2, "ds.csv", ALSO_INPUT),
    row("init-out-is-the-model", None, "init K/raw.pt --images K/img --out K/raw.pt --overwrite", 2, "raw.pt",
        ALSO_INPUT),
    row("pca-out-is-the-model", None, PCA.replace("K/w.pt", "K/model.pt") + " --overwrite", 2, "model.pt",
        ALSO_INPUT),
    row("train-out-is-the-train-set", None, TRAIN.replace("--out K/run", "--out K/ds.csv"), 2, "ds.csv",
        ALSO_INPUT),
    # an output in a folder that does not exist yet: the folder is made
    row("extract-out-in-missing-folder", None, f"extract K/model.pt --images K/img --out K/no/f.h5 {QUIET}",
        0, "no/f.h5: wrote", check=made("no/f.h5")),
    row("evaluate-report-in-missing-folder", None, EVALUATE + " --report K/no/r.json", 0, "no/r.json",
        check=made("no/r.json")),
    row("pairs-out-in-missing-folder", None, "pairs --db K/db.h5 --out K/no/p.txt", 0, "no/p.txt",
        check=made("no/p.txt")),
    row("index-build-out-in-missing-folder", None, "index build K/db.h5 --out K/no/idx", 0, "no/idx",
        check=made("no/idx/meta.json")),
    row("init-out-in-missing-folder", None, "init K/raw.pt --images K/img --out K/no/i.pt --quiet",
        0, "no/i.pt", check=made("no/i.pt")),
    row("dataset-convert-out-in-missing-folder", None, "dataset convert K/ds.csv K/no/d.mat", 0, "no/d.mat",
        check=made("no/d.mat")),
    # an existing output that is not ours: a folder of the user's files is never touched
    row("index-build-out-is-a-users-folder", users_folder, "index build K/db.h5 --out F --overwrite",
        2, "mine", "thesis.tex", "never emptied"),
    row("train-out-is-a-users-folder", users_folder, TRAIN.replace("K/run", "F"), 2, "mine", "thesis.tex"),
    row("synth-town-out-is-a-users-folder", users_folder, "synth-town --out F --overwrite", 2, "mine",
        "thesis.tex"),
    row("extract-out-is-a-folder", users_folder, f"extract K/model.pt --images K/img --out F {QUIET}",
        2, "mine", "is a folder"),
    row("evaluate-report-is-a-users-file", lambda k: k.text("notes.json", '{"my": "notes"}'),
        EVALUATE + " --report F", 2, "notes.json", "--overwrite"),
    row("pairs-out-is-a-users-file", lambda k: k.text("todo.txt", "buy milk\n"), "pairs --db K/db.h5 --out F",
        2, "todo.txt", "--overwrite"),
    row("convert-out-is-a-users-file", lambda k: k.text("n.pt", "mine\n"), "convert K/model.pt --out F",
        2, "n.pt", "--overwrite"),
    row("synth-town-other-seed", other_town, f"synth-town --out F --seed 1 {TINY_TOWN}", 2, "town", "seed 0",
        "--overwrite"),
    row("synth-town-files-without-manifest", town_without_manifest, f"synth-town --out F {TINY_TOWN}",
        2, "town", "town.json"),
]

ROWS = [*IMAGES, *DATASETS, *FEATURES, *CHECKPOINTS, *FLAGS, *PATHS]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """Every file (its sha256) and folder under ``root``, by relative path."""
    return {p.relative_to(root).as_posix(): "folder" if p.is_dir() else sha256(p)
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def kit(kit_dir, tmp_path) -> Kit:
    shutil.copytree(kit_dir, tmp_path / "kit")
    return Kit(tmp_path / "kit")


@pytest.mark.parametrize("r", ROWS, ids=[r.id for r in ROWS])
def test_fault(r: Row, kit: Kit, capsys, caplog):
    argv = r.args(kit)
    before = tree(kit.root)
    caplog.set_level(logging.WARNING)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    shown = out + err + caplog.text
    assert code == r.code, shown
    assert "Traceback" not in shown
    if code == 2:
        # one error line, the last; before it only argparse's usage or one-line warnings of ours
        lines = err.strip().splitlines()
        assert [ln for ln in lines if ": error: " in ln] == lines[-1:], err
        assert lines[-1].startswith("netvlad "), err
        assert all(ln.startswith(("usage: ", " ", "netvlad ")) for ln in lines[:-1]), err
        text = lines[-1]
    else:
        text = shown
    for fragment in r.says:
        assert fragment in text, (fragment, text)
    after = tree(kit.root)
    assert {p: after.get(p) for p in before} == before, "an input changed"
    if code != 0:
        assert sorted(set(after) - set(before)) == [], "a refusal left files behind"
    if r.check:
        r.check(kit)


# ----------------------------------------------------------------------------------------- SIGKILL + rerun

# Both runners only widen the window between steps (a sleep), so that a kill lands mid-run on any
# machine; what they compute is the CLI's own work, on one thread as the in-process runs below.
_EXTRACT_RUNNER = """
import sys, time
import torch
from netvlad import io
torch.set_num_threads(1)
write_rows, write = io.FeatureWriter._write_rows, io.FeatureWriter.write
def slow_rows(self, rows, block):
    time.sleep(0.03)
    write_rows(self, rows, block)
def reporting_write(self, rows, desc):
    write(self, rows, desc)
    print("rows on disk", self.done, flush=True)
io.FeatureWriter._write_rows, io.FeatureWriter.write = slow_rows, reporting_write
from netvlad.cli import main
sys.exit(main(sys.argv[1:]))
"""

_TRAIN_RUNNER = """
import sys, time
import torch
import netvlad.train.loop as loop
from netvlad.backbones import BACKBONES
from train_helpers import TinyBackbone
torch.set_num_threads(1)
BACKBONES["tiny"] = TinyBackbone
loss = loop.triplet_ranking_loss
def slow_loss(*a, **k):
    time.sleep(0.05)
    return loss(*a, **k)
loop.triplet_ranking_loss = slow_loss
from netvlad.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _kill(proc: subprocess.Popen, delay: float) -> None:
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill: widen the window"


def test_extract_killed_at_a_random_point_resumes_to_the_undisturbed_bytes(kit_dir, tmp_path, one_thread,
                                                                            capsys):
    rng = np.random.default_rng(7)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(imgs / f"{i:03d}.png")
    model = kit_dir / "model.pt"

    def argv(out):
        return f"extract {model} --images {imgs} --out {out} --batch-size 2 {QUIET}".split()

    assert main(argv(tmp_path / "ref.h5")) == 0
    out = tmp_path / "f.h5"
    proc = subprocess.Popen([sys.executable, "-c", _EXTRACT_RUNNER, *argv(out)], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith("rows on disk"), proc.stderr.read()  # the partial file grew
    _kill(proc, rng.uniform(0, 0.4))
    assert not out.exists() and io.partial_path(out).exists()
    capsys.readouterr()
    assert main(argv(out)) == 0  # the same command again
    said = capsys.readouterr().out
    assert f"resuming {out}: " in said and " of 40 rows done" in said
    names, desc, _ = io.read_features(out)
    ref_names, ref, _ = io.read_features(tmp_path / "ref.h5")
    assert names == ref_names and desc.tobytes() == ref.tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.h5", "imgs", "ref.h5"]  # no partial, no lock


def test_train_killed_at_a_random_point_resumes_to_the_undisturbed_weights(tmp_path, monkeypatch, one_thread,
                                                                           capsys):
    from netvlad.backbones import BACKBONES
    from netvlad.data import save_csv
    from train_helpers import TinyBackbone, make_places
    from train_helpers import tiny_model as tiny_train_model

    monkeypatch.setitem(BACKBONES, "tiny", TinyBackbone)
    ckpt = save_model(tiny_train_model(), tmp_path / "tiny.pt")
    tr = save_csv(make_places(tmp_path / "tr", n_places=6, seed=0), tmp_path / "train.csv")
    va = save_csv(make_places(tmp_path / "va", n_places=4, seed=1), tmp_path / "val.csv")
    args = ["--train", str(tr), "--val", str(va), "--model", str(ckpt), "--n-neg-choice", "10",
            "--num-workers", "0", "--n-test-rank-sample", "8", "--recall-ns", "1", "5",
            "--cluster-images", "12", "--limit-batches", "3", "--epochs", "2", "--save-frequency", "4",
            "--no-progress"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert main(["train", *args, "--out", str(ref)]) == 0
    proc = subprocess.Popen([sys.executable, "-c", _TRAIN_RUNNER, "train", *args, "--out", str(run)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    while not (run / "ckpt_latest.pt").exists():  # the first checkpoint: there is something to resume
        assert proc.poll() is None, proc.stderr.read()
        assert time.perf_counter() - t0 < 120
        time.sleep(0.005)
    _kill(proc, np.random.default_rng(8).uniform(0, 0.3))
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--no-progress"]) == 0
    assert "resuming from epoch " in capsys.readouterr().out
    want = torch.load(ref / "ckpt_latest.pt", weights_only=True)["state_dict"]
    got = torch.load(run / "ckpt_latest.pt", weights_only=True)["state_dict"]
    assert want.keys() == got.keys() and all(torch.equal(got[k], want[k]) for k in want)

    def epochs(folder):
        return [(r["epoch"], r["val_recall"]) for r in map(json.loads, (folder / "metrics.jsonl").open())
                if r["type"] == "epoch"]

    assert epochs(run) == epochs(ref)


def test_synth_town_on_a_full_disk_then_rerun_equals_an_undisturbed_town(request, tmp_path, capsys):
    """The case tests/test_outputs.py's real-tmpfs tests leave out: a town generation that fills the
    disk is one line naming the file, and the rerun after freeing space is byte-identical."""
    disk = request.getfixturevalue("small_disk")  # 4 MiB tmpfs; skipped, saying why, unless root
    args = "--size tiny --width 32 --height 24 --photos procedural --no-progress".split()
    assert main(["synth-town", "--out", str(tmp_path / "ref"), *args]) == 0
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    (disk / "filler").write_bytes(b"\0" * (free - (150 << 10)))  # room for a few images only
    town = disk / "town"
    capsys.readouterr()
    assert main(["synth-town", "--out", str(town), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"netvlad synth-town: error: {town}/"), err
    assert ": disk full (no space left on device); " in err and (town / "town.partial.jsonl").is_file()
    (disk / "filler").unlink()
    assert main(["synth-town", "--out", str(town), *args]) == 0
    assert tree(town) == tree(tmp_path / "ref")


# ----------------------------------------------------------------------------- the library behind the rows


def test_library_refuses_an_unavailable_device_and_negative_workers():
    from netvlad.extract import ExtractConfig
    from netvlad.models import check_device

    assert check_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda:1': .*(CUDA support|CUDA device\(s\) visible)"):
            check_device("cuda:1")
        with pytest.raises(ValueError, match="device 'cuda'"):
            load_model("lite0-max", device="cuda")
    with pytest.raises(ValueError, match="device 'gpu0': not a torch device"):
        ExtractConfig(device="gpu0")
    with pytest.raises(ValueError, match="num_workers must be >= 0 .* got -2"):
        ExtractConfig(num_workers=-2)


def test_metrics_log_full_disk_names_the_file_and_keeps_no_half_record(tmp_path, monkeypatch):
    import errno

    from netvlad._outputs import DiskFullError
    from netvlad.train.runlog import MetricsLog

    log = MetricsLog(tmp_path / "metrics.jsonl", True)
    log.write({"type": "epoch", "epoch": 0})
    before = (tmp_path / "metrics.jsonl").read_bytes()
    real = os.write

    def fills_up(fd, data):  # the disk takes 5 bytes, then is full
        if len(data) > 5:
            return real(fd, bytes(data[:5]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", fills_up)
    with pytest.raises(DiskFullError, match=r"metrics\.jsonl: disk full .*--resume"):
        log.write({"type": "batch", "epoch": 1, "loss": 0.5})
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


def test_a_new_run_into_a_run_stopped_before_its_first_checkpoint_starts_a_new_log(tmp_path, monkeypatch,
                                                                                   one_thread):
    import netvlad.train.loop as loop
    from netvlad.backbones import BACKBONES
    from netvlad.data import save_csv
    from train_helpers import TinyBackbone, make_places
    from train_helpers import tiny_model as tiny_train_model

    monkeypatch.setitem(BACKBONES, "tiny", TinyBackbone)
    ckpt = save_model(tiny_train_model(), tmp_path / "tiny.pt")
    tr = save_csv(make_places(tmp_path / "tr", n_places=6, seed=0), tmp_path / "train.csv")
    run = tmp_path / "run"
    argv = ["train", "--train", str(tr), "--val", str(tr), "--model", str(ckpt), "--out", str(run),
            "--n-neg-choice", "10", "--num-workers", "0", "--n-test-rank-sample", "8", "--recall-ns", "1",
            "--cluster-images", "12", "--limit-batches", "1", "--epochs", "1", "--no-progress"]

    def ctrl_c(*a, **k):  # in the first batch: the off-the-shelf record is written, no checkpoint yet
        raise KeyboardInterrupt

    real = loop.mine
    monkeypatch.setattr(loop, "mine", ctrl_c)
    assert main(argv) == 130
    assert not (run / "ckpt_latest.pt").exists() and (run / "metrics.jsonl").is_file()
    monkeypatch.setattr(loop, "mine", real)
    assert main(argv) == 0  # the same command: a new run in its own folder
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs if r["type"] == "epoch"] == [0, 1]  # epoch 0 once, not twice
