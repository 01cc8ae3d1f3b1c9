"""Outputs never destroy inputs or a user's files; one writer per output; a full disk is one line.

Per command: an output equal to an input is refused (exit 2, the input's bytes unchanged), a
folder of the user's files is never touched, our own artefact is replaced, --overwrite replaces a
foreign file. Locks: a second writer is refused with the holder's PID, a dead holder's lock is
free. Full disk: a real size-limited tmpfs when running as root, and the same logic with ENOSPC
injected in-process; the rerun after freeing space gives the undisturbed run's bytes. SIGKILL at
a random point of `index build`: the rerun equals an undisturbed run.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from netvlad import io
from netvlad._atomic import atomic_write, make_temp_dir
from netvlad._outputs import (
    DiskFullError,
    OutputBusyError,
    OutputError,
    OutputLock,
    check_not_input,
    check_output_dir,
    check_output_file,
    disk_full_error,
    is_disk_full,
    is_netvlad_checkpoint,
    lock_path,
    png_text,
)
from netvlad.cli import main
from netvlad.index.faiss_index import is_index_dir, load_index
from netvlad.models.config import Preprocess

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS)])}


@pytest.fixture(autouse=True)
def _one_faiss_thread():
    # On a loaded 2-core machine FAISS's OpenMP spin-waits make tiny builds much slower.
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name -> sha256)."""
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class FakeModel(torch.nn.Module):
    """A stand-in PlaceModel: deterministic L2-normalised descriptors of any size from pixel means,
    so a test can make big rows (several HDF5 chunks) from a few tiny images in milliseconds."""

    def __init__(self, dim: int = 32768):
        super().__init__()
        self.out_dim = dim
        self.preprocess = Preprocess()
        self.register_buffer("freq", torch.linspace(0.1, 50.0, dim))

    def check_ready(self) -> None:
        pass

    def fingerprint(self) -> str:
        return f"fake-{self.out_dim}"

    def forward(self, x):
        m = x.float().mean(dim=(2, 3))
        y = torch.sin(m[:, :1] * self.freq + m[:, 1:2]) + torch.cos(m[:, 2:3] * self.freq / 7)
        return y / y.norm(dim=1, keepdim=True)


def make_images(folder: Path, n: int, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")
        names.append(f"{i:03d}.png")
    return names


@pytest.fixture
def fake_model(monkeypatch):
    """`netvlad extract MODEL` loads a FakeModel (the CLI imports load_model at call time)."""
    import netvlad.models

    model = FakeModel()
    monkeypatch.setattr(netvlad.models, "load_model", lambda *a, **k: model)
    return model


@pytest.fixture
def setup(tmp_path):
    """Two feature files and a CSV dataset naming their images (evaluate, pairs, index build)."""
    rng = np.random.default_rng(0)
    db_names = [f"db/{i:03d}.jpg" for i in range(30)]
    q_names = [f"q/{i:03d}.jpg" for i in range(6)]
    io.write_features(tmp_path / "db.h5", db_names, unit(rng, 30, 16), {"fingerprint": "m"})
    io.write_features(tmp_path / "q.h5", q_names, unit(rng, 6, 16), {"fingerprint": "m"})
    rows = ["# name: tiny", "split,path,easting,northing,zone"]
    rows += [f"db,{n},{500000.0 + 10 * i!r},4000000.0,17T" for i, n in enumerate(db_names)]
    rows += [f"query,{n},{500000.0 + 50 * i!r},4000005.0,17T" for i, n in enumerate(q_names)]
    (tmp_path / "ds.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def refused(capsys, argv, *inputs) -> str:
    """Run the CLI, expect exit 2 with one error line and the ``inputs`` byte-for-byte unchanged."""
    before = {p: sha(p) for p in inputs}
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"netvlad {argv[0]}: error: "), err
    assert {p: sha(p) for p in inputs} == before
    return err


# ------------------------------------------------------------------------------ the helper


def test_same_file_after_resolving_relative_paths_symlinks_and_hard_links(tmp_path, monkeypatch):
    f = tmp_path / "f.h5"
    f.write_bytes(b"x")
    (tmp_path / "link.h5").symlink_to(f)
    os.link(f, tmp_path / "hard.h5")
    monkeypatch.chdir(tmp_path)
    for alias in ("f.h5", "./sub/../f.h5", "link.h5", "hard.h5", str(f)):
        with pytest.raises(OutputError, match=r"is also an input \(--db "):
            check_not_input(alias, [("--db", f)])
    # a missing output can still name an input (a missing one: nothing to destroy, yet refused)
    with pytest.raises(OutputError, match="is also an input"):
        check_not_input("gone.h5", [("--db", tmp_path / "x" / ".." / "gone.h5")])
    check_not_input("other.h5", [("--db", f), ("--queries", None)])


def test_output_file_rules(tmp_path):
    foreign, ours, empty = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    foreign.write_text('{"user": 1}')
    ours.write_text('{"recall": {}}')
    empty.touch()

    def is_ours(p):
        return "recall" in json.loads(p.read_text())

    with pytest.raises(OutputError, match=r"a\.json: exists and is not a report; refusing.*--overwrite"):
        check_output_file(foreign, is_ours=is_ours, kind="report")
    assert check_output_file(foreign, is_ours=is_ours, kind="report", overwrite=True) == foreign
    assert check_output_file(ours, is_ours=is_ours) == ours
    assert check_output_file(empty, is_ours=is_ours) == empty  # nothing to lose
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path, overwrite=True)
    with pytest.raises(OutputError, match="is also an input"):
        check_output_file(ours, inputs=[("REPORT", ours)], is_ours=is_ours, overwrite=True)


def test_output_folder_rules(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(OutputError, match=r"user: folder holds files netvlad did not write \(thesis"):
            check_output_dir(user, is_ours=lambda p: False, overwrite=overwrite, replaces_file=True)
    assert (user / "thesis.tex").read_text() == "precious"
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty")
    check_output_dir(user, is_ours=lambda p: True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "file", overwrite=True)  # cannot be replaced by this command
    check_output_dir(tmp_path / "file", overwrite=True, replaces_file=True)


def test_recognisers(tmp_path):
    from safetensors.torch import save_file

    torch.save({"format": "netvlad-checkpoint", "state_dict": {}}, tmp_path / "ours.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    save_file({"w": torch.zeros(2)}, tmp_path / "ours.safetensors", metadata={"format": "netvlad-checkpoint"})
    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    assert is_netvlad_checkpoint(tmp_path / "ours.pt")
    assert is_netvlad_checkpoint(tmp_path / "ours.safetensors")
    assert not is_netvlad_checkpoint(tmp_path / "other.pt")
    assert not is_netvlad_checkpoint(tmp_path / "other.safetensors")
    from netvlad._outputs import is_onnx_model, is_torchscript

    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "m.ts")
    torch.onnx.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),), tmp_path / "m.onnx", dynamo=False)
    assert is_torchscript(tmp_path / "m.ts") and is_onnx_model(tmp_path / "m.onnx")
    assert not is_torchscript(tmp_path / "ours.pt") and not is_onnx_model(tmp_path / "m.ts")
    from netvlad.metrics import PLOT_TAG
    from netvlad.metrics import is_recall_plot as is_plot
    from netvlad.metrics import plot_recall_curves as plot_curves

    plot_curves([("a", [1, 2], [0.5, 0.7])], tmp_path / "p.png")
    assert png_text(tmp_path / "p.png")[PLOT_TAG[0]] == PLOT_TAG[1] and is_plot(tmp_path / "p.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.png")
    assert png_text(tmp_path / "photo.png") == {} and not is_plot(tmp_path / "photo.png")


# ------------------------------------------------------------------------------ per command


def test_index_build_never_replaces_its_input_or_a_users_folder(setup, capsys):
    feats = setup / "db.h5"
    (setup / "alias.h5").symlink_to(feats)
    for out in (feats, setup / "alias.h5"):
        for extra in ([], ["--overwrite"]):
            err = refused(capsys, ["index", "build", str(feats), "--out", str(out), *extra], feats)
            assert "is also an input (FEATS" in err
    user = setup / "photos"
    user.mkdir()
    (user / "holiday.jpg").write_bytes(b"jpeg bytes")
    before = snapshot(user)
    for extra in ([], ["--overwrite"]):
        err = refused(capsys, ["index", "build", str(feats), "--out", str(user), *extra])
        assert "folder holds files netvlad did not write (holiday.jpg)" in err
    assert snapshot(user) == before
    # our own index is replaced (by another kind), a foreign file only with --overwrite
    out = setup / "idx"
    assert main(["index", "build", str(feats), "--out", str(out), "--type", "exact"]) == 0
    assert main(["index", "build", str(feats), "--out", str(out), "--type", "flat"]) == 0
    assert load_index(out).kind == "flat" and is_index_dir(out)
    (setup / "notes.txt").write_text("mine")
    refused(capsys, ["index", "build", str(feats), "--out", str(setup / "notes.txt")], setup / "notes.txt")
    assert main(["index", "build", str(feats), "--out", str(setup / "notes.txt"), "--overwrite"]) == 0
    assert is_index_dir(setup / "notes.txt")
    leftovers = [p.name for p in setup.iterdir() if p.name.startswith(".") or p.name.endswith(".lock")]
    assert leftovers == []


def test_index_folder_follows_the_umask(setup):
    old = os.umask(0o022)
    try:
        assert main(["index", "build", str(setup / "db.h5"), "--out", str(setup / "idx")]) == 0
        assert (setup / "idx").stat().st_mode & 0o777 == 0o755
        os.umask(0o027)
        assert main(["index", "build", str(setup / "db.h5"), "--out", str(setup / "idx")]) == 0
        assert (setup / "idx").stat().st_mode & 0o777 == 0o750
        assert make_temp_dir(setup / "x").stat().st_mode & 0o777 == 0o750
    finally:
        os.umask(old)


def test_evaluate_report_and_plot(setup, capsys):
    base = ["evaluate", "--dataset", str(setup / "ds.csv"), "--db", str(setup / "db.h5"),
            "--queries", str(setup / "q.h5")]
    for flag, victim in (("--report", "db.h5"), ("--plot", "q.h5"), ("--report", "ds.csv")):
        for extra in ([], ["--overwrite"]):
            err = refused(capsys, [*base, flag, str(setup / victim), *extra], setup / victim)
            assert "is also an input" in err
    refused(capsys, [*base, "--report", str(setup / "r"), "--plot", str(setup / "r")])
    rep, png = setup / "r.json", setup / "r.png"
    assert main([*base, "--report", str(rep), "--plot", str(png)]) == 0
    first = json.loads(rep.read_text())
    assert main([*base, "--report", str(rep), "--plot", str(png), "--ns", "1", "2"]) == 0  # ours: replaced
    assert json.loads(rep.read_text())["ns"] == [1, 2] != first["ns"]
    (setup / "notes.json").write_text('{"my": "notes"}')
    Image.new("RGB", (4, 4)).save(setup / "photo.png")
    refused(capsys, [*base, "--report", str(setup / "notes.json")], setup / "notes.json")
    refused(capsys, [*base, "--plot", str(setup / "photo.png")], setup / "photo.png")
    assert main([*base, "--report", str(setup / "notes.json"), "--plot", str(setup / "photo.png"),
                 "--overwrite"]) == 0
    assert "recall" in json.loads((setup / "notes.json").read_text())
    # netvlad plot: its reports are inputs
    err = refused(capsys, ["plot", str(rep), "--out", str(rep)], rep)
    assert "is also an input (REPORT.json" in err
    assert main(["plot", str(rep), "--out", str(png)]) == 0


def test_pairs(setup, capsys):
    db, q, out = setup / "db.h5", setup / "q.h5", setup / "pairs.txt"
    for victim in (db, q):
        refused(capsys, ["pairs", "--db", str(db), "--queries", str(q), "--out", str(victim), "--overwrite"],
                victim)
    assert main(["pairs", "--db", str(db), "--queries", str(q), "--out", str(out), "--k", "2"]) == 0
    assert main(["pairs", "--db", str(db), "--queries", str(q), "--out", str(out), "--k", "3"]) == 0
    assert len(out.read_text().splitlines()) == 18
    (setup / "todo.txt").write_text("buy milk\nand bread today\n")
    refused(capsys, ["pairs", "--db", str(db), "--queries", str(q), "--out", str(setup / "todo.txt")],
            setup / "todo.txt")
    assert main(["pairs", "--db", str(db), "--queries", str(q), "--out", str(setup / "todo.txt"),
                 "--overwrite"]) == 0


def test_extract_output_is_no_input_and_bad_arguments_create_no_file(tmp_path, fake_model, capsys):
    names = make_images(tmp_path / "imgs", 3)
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"a checkpoint")
    common = ["extract", str(ckpt), "--images", str(tmp_path / "imgs"), "--no-progress"]
    err = refused(capsys, [*common, "--out", str(ckpt), "--overwrite"], ckpt)
    assert "is also an input (MODEL" in err
    img = tmp_path / "imgs" / names[1]
    err = refused(capsys, [*common, "--out", str(img), "--overwrite"], img)
    assert "is also an input (image" in err
    refused(capsys, [*common, "--out", str(tmp_path / "imgs")])
    before = sorted(p.name for p in tmp_path.iterdir())
    err = refused(capsys, [*common, "--out", str(tmp_path / "f.h5"), "--batch-size", "0"])
    assert "--batch-size must be >= 1" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no .partial.h5, no lock
    from netvlad.extract import extract_features

    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        extract_features(fake_model, [tmp_path / "imgs" / n for n in names], names, tmp_path / "f.h5",
                         batch_size=0, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # a foreign .h5 is refused, --overwrite replaces it, our own file is up to date
    (tmp_path / "notes.h5").write_text("not hdf5")
    refused(capsys, [*common, "--out", str(tmp_path / "notes.h5")], tmp_path / "notes.h5")
    assert main([*common, "--out", str(tmp_path / "notes.h5"), "--overwrite"]) == 0
    assert main([*common, "--out", str(tmp_path / "notes.h5")]) == 0
    assert "up to date" in capsys.readouterr().out


def test_checkpoint_writers_refuse_their_inputs(setup, capsys):
    model = setup / "m.pt"
    model.write_bytes(b"weights")
    (setup / "imgs").mkdir()
    cases = [
        ["init", str(model), "--images", str(setup / "imgs"), "--out", str(model)],
        ["convert", str(model), "--out", str(model)],
        ["export", str(model), "--onnx", str(model)],
        ["export", str(model), "--torchscript", str(model)],
        ["pca", str(model), "--dataset", str(setup / "ds.csv"), "--out", str(model)],
        ["dataset", "convert", str(setup / "ds.csv"), str(setup / "ds.csv"), "--overwrite"],
    ]
    for argv in cases:
        victim = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
        victim = victim or (model if argv[0] == "export" else setup / "ds.csv")
        err = refused(capsys, [*argv, "--overwrite"] if argv[-1] != "--overwrite" else argv, victim)
        assert "is also an input" in err, argv
    both = ["--onnx", str(setup / "a"), "--torchscript", str(setup / "a")]
    err = refused(capsys, ["export", str(model), *both])
    assert "given as both --onnx and --torchscript" in err
    # a foreign file in the way: refused without --overwrite
    (setup / "notes.txt").write_text("mine")
    err = refused(capsys, ["convert", str(model), "--out", str(setup / "notes.txt")], setup / "notes.txt")
    assert "exists and is not a netvlad checkpoint" in err


def test_dataset_convert_replaces_only_with_overwrite(setup, capsys):
    out = setup / "copy.mat"
    assert main(["dataset", "convert", str(setup / "ds.csv"), str(out)]) == 0
    err = refused(capsys, ["dataset", "convert", str(setup / "ds.csv"), str(out)], out)
    assert "copy.mat: exists; refusing to replace it" in err
    assert main(["dataset", "convert", str(setup / "ds.csv"), str(out), "--overwrite"]) == 0


def test_pick_best_export(tmp_path, capsys):
    from netvlad.models import create_model, save_model

    run = tmp_path / "run"
    run.mkdir()
    recs = [{"type": "epoch", "epoch": e, "val_recall": {"5": r}} for e, r in ((0, 0.1), (1, 0.5), (2, 0.4))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    save_model(create_model("lite0-max"), run / "epoch_001.pt")
    (run / "epoch_002.pt").write_bytes(b"x")
    err = refused(capsys, ["pick-best", str(run), "--export", str(run / "epoch_001.pt"), "--overwrite"],
                  run / "epoch_001.pt")
    assert "is also an input (best checkpoint" in err
    out = tmp_path / "best.pt"
    assert main(["pick-best", str(run), "--export", str(out)]) == 0
    assert main(["pick-best", str(run), "--export", str(out)]) == 0  # ours: replaced
    (tmp_path / "notes.pt").write_text("mine")
    refused(capsys, ["pick-best", str(run), "--export", str(tmp_path / "notes.pt")], tmp_path / "notes.pt")


def test_folder_commands_never_touch_a_users_folder(setup, capsys):
    user = setup / "home"
    user.mkdir()
    (user / "config.json").write_text('{"mine": true}')
    (user / "map.png").write_bytes(b"my map")
    before = snapshot(user)
    spec = str(setup / "ds.csv")
    for argv in (["train", "--train", spec, "--val", spec, "--out", str(user)],
                 ["synth-town", "--out", str(user), "--size", "tiny", "--overwrite"],
                 ["demo", "--out", str(user), "--quick"]):
        err = refused(capsys, argv)
        assert "folder holds files netvlad did not write (config.json, map.png)" in err, argv
    assert snapshot(user) == before
    err = refused(capsys, ["train", "--train", str(setup / "ds.csv"), "--val", str(setup / "ds.csv"),
                           "--out", str(setup / "ds.csv")], setup / "ds.csv")
    assert "is also an input (--train" in err
    from netvlad.cli.train_cmd import is_run_dir
    from netvlad.synth.generate import is_town_dir

    run = setup / "run"
    run.mkdir()
    (run / "config.json").write_text('{"train": {}}')
    (run / "epoch_001.pt").write_bytes(b"")
    assert is_run_dir(run) and not is_run_dir(user)
    town = setup / "town"
    (town / "train" / "images").mkdir(parents=True)  # an interrupted town: rerun resumes it
    assert is_town_dir(town) and not is_town_dir(user)


# ------------------------------------------------------------------------------ locks


def test_second_extract_is_refused_with_the_holders_pid(tmp_path, fake_model, capsys):
    make_images(tmp_path / "imgs", 3)
    out = tmp_path / "f.h5"
    argv = ["extract", "m", "--images", str(tmp_path / "imgs"), "--out", str(out), "--no-progress"]
    with OutputLock(out):
        err = refused(capsys, argv)
    assert f"another netvlad process (PID {os.getpid()}) is extracting into it" in err
    assert not io.partial_path(out).exists()
    assert main(argv) == 0 and not lock_path(out).exists()


def test_lock_of_a_killed_holder_is_free_and_names_the_pid_while_alive(tmp_path):
    out = tmp_path / "f.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from netvlad._outputs import OutputLock
            lock = OutputLock({str(out)!r}).acquire()
            print("locked", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "locked"
        w = io.FeatureWriter(out, ["a", "b"], 4)
        with pytest.raises(OutputBusyError, match=rf"f\.h5: another netvlad process \(PID {holder.pid}\)"):
            w.open()
        assert not io.partial_path(out).exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_path(out).exists()  # left by the killed process, but no longer locked
    w = io.FeatureWriter(out, ["a", "b"], 4)
    w.open()
    w.write([0, 1], np.ones((2, 4), np.float32))
    w.finish()
    assert not lock_path(out).exists()


def test_index_build_and_train_take_the_lock(setup, capsys):
    out = setup / "idx"
    with OutputLock(out):
        err = refused(capsys, ["index", "build", str(setup / "db.h5"), "--out", str(out)])
    assert f"(PID {os.getpid()}) is building it" in err and not out.exists()
    run = setup / "run"
    with OutputLock(run):
        err = refused(capsys, ["train", "--train", "a.csv", "--val", "b.csv", "--out", str(run)])
    assert f"(PID {os.getpid()}) is training into it" in err


# ------------------------------------------------------------------------------ full disk


def _extract_argv(images: Path, out: Path) -> list[str]:
    return ["extract", "fake", "--images", str(images), "--out", str(out), "--batch-size", "4",
            "--no-progress"]


@pytest.mark.parametrize("style", ["oserror", "h5py-runtimeerror"])
def test_full_disk_injected_is_one_line_and_the_rerun_is_identical(tmp_path, fake_model, capsys, monkeypatch,
                                                                  style):
    imgs, out, ref = tmp_path / "imgs", tmp_path / "f.h5", tmp_path / "ref.h5"
    make_images(imgs, 24)
    assert main(_extract_argv(imgs, ref)) == 0
    calls = []
    real = io.FeatureWriter._write_rows

    def full_after_two_batches(self, rows, block):
        calls.append(len(rows))
        if len(calls) > 2:
            if style == "oserror":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise RuntimeError("Can't synchronously write data (file write failed: time = now, "
                               "filename = 'x', file descriptor = 3, errno = 28, "
                               "error message = 'No space left on device')")
        real(self, rows, block)

    monkeypatch.setattr(io.FeatureWriter, "_write_rows", full_after_two_batches)
    err = refused(capsys, _extract_argv(imgs, out))
    part = io.partial_path(out)
    assert f"{part}: disk full (no space left on device); about 2.0 MiB more needed (16 of 24 images " in err
    assert "rerun the same command: it resumes after the 8 images on disk" in err
    with h5py.File(part) as f:  # the recorded progress is exactly what is on disk
        written = f["written"][()].astype(bool)
        assert int(f.attrs["done"]) == written.sum() == 8
        _, d_ref, _ = io.read_features(ref)
        assert np.array_equal(f["descriptors"][()][written], d_ref[written])
    monkeypatch.setattr(io.FeatureWriter, "_write_rows", real)
    assert main(_extract_argv(imgs, out)) == 0
    assert io.read_features(out)[1].tobytes() == d_ref.tobytes()
    assert not part.exists() and not lock_path(out).exists()


def test_partial_file_with_a_wrong_progress_count_resumes_from_its_rows(tmp_path, caplog):
    """The "-4 rows were never written" state of earlier versions: a 'done' count past the rows
    on disk. Progress is now read from the rows on disk, so the rerun finishes."""
    names, desc = [f"{i}.jpg" for i in range(6)], unit(np.random.default_rng(1), 6, 5)
    w = io.FeatureWriter(tmp_path / "f.h5", names, 5)
    w.open()
    w.write([0, 1, 2], desc[:3])
    w.close()
    with h5py.File(io.partial_path(tmp_path / "f.h5"), "r+") as f:
        f.attrs["done"] = 10
    w = io.FeatureWriter(tmp_path / "f.h5", names, 5)
    todo = w.open()
    assert "recorded progress 10 disagrees with the 3 rows on disk" in caplog.text
    assert w.status.done == 3 and todo.tolist() == [False] * 3 + [True] * 3
    w.write([3, 4, 5], desc[3:])
    w.finish()
    assert np.array_equal(io.read_features(tmp_path / "f.h5")[1], desc)


def test_atomic_write_full_disk_keeps_the_old_file_and_names_the_need(tmp_path, monkeypatch):
    out = tmp_path / "report.json"
    out.write_text("old")

    def fails(tmp):
        Path(tmp).write_bytes(b"12345")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=r"report\.json: disk full .*about 2\.0 KiB more needed"):
        atomic_write(out, fails, size_hint=2048)
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]

    # torch.save says only "unexpected pos 576 vs 534": recognised by the space left when it fails
    import netvlad._atomic as atomic

    def torch_like(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(atomic, "free_bytes", lambda p: 0)
    with pytest.raises(DiskFullError, match=r"report\.json: disk full"):
        atomic_write(out, torch_like)
    monkeypatch.setattr(atomic, "free_bytes", lambda p: 10 << 30)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        atomic_write(out, torch_like)
    assert is_disk_full(RuntimeError("write error in i.faiss: 1 != 2 (No space left on device)"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert str(disk_full_error(tmp_path / "x", 3 << 20, how="h")).startswith(
        f"{tmp_path / 'x'}: disk full (no space left on device); about 3.0 MiB more needed (h); ")


def test_index_save_full_disk_keeps_the_old_index(setup, capsys, monkeypatch):
    from netvlad.index.faiss_index import SearchIndex

    out = setup / "idx"
    assert main(["index", "build", str(setup / "db.h5"), "--out", str(out)]) == 0
    before = snapshot(out)

    def full(self, tmp):
        (tmp / "meta.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(SearchIndex, "_write_files", full)
    err = refused(capsys, ["index", "build", str(setup / "db.h5"), "--out", str(out), "--type", "exact"])
    assert f"{out}: disk full (no space left on device); about " in err and "(the index's size)" in err
    assert snapshot(out) == before
    assert [p.name for p in setup.iterdir() if p.name.startswith(".") or p.name.endswith(".lock")] == []


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root: CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a size-limited tmpfs (the injected-ENOSPC tests cover the logic)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


_RUN_FAKE = """
import sys
import netvlad.models
from test_outputs import FakeModel
netvlad.models.load_model = lambda *a, **k: FakeModel()
from netvlad.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_full_disk_extract_on_a_real_small_disk(small_disk, tmp_path, fake_model, capsys):
    """24 images of 128 KiB descriptors = 3 chunks of 1 MiB; 1.5 MiB free: the second chunk fails.
    The failing run is a separate process, so a crash (HDF5 at exit) would show as its status."""
    imgs, out, ref = tmp_path / "imgs", small_disk / "f.h5", tmp_path / "ref.h5"
    make_images(imgs, 24)
    filler = _fill(small_disk, 3 << 19)
    proc = subprocess.run([sys.executable, "-c", _RUN_FAKE, *_extract_argv(imgs, out)], capture_output=True,
                          text=True, env=ENV, timeout=300)
    assert proc.returncode == 2, proc.stderr  # not a segfault
    err = proc.stderr.strip()
    part = io.partial_path(out)
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"netvlad extract: error: {part}: disk full (no space left on device); about ")
    assert "images left × 32768 × 4 bytes)" in err and "rerun the same command: it resumes after the" in err
    with h5py.File(part) as f:
        done = int(f.attrs["done"])
        assert 0 < done < 24 and done == int(f["written"][()].sum())
    filler.unlink()  # free the space, rerun
    assert main(_extract_argv(imgs, out)) == 0
    assert main(_extract_argv(imgs, ref)) == 0
    assert io.read_features(out)[1].tobytes() == io.read_features(ref)[1].tobytes()


def test_full_disk_other_writers_on_a_real_small_disk(small_disk, setup, capsys):
    from netvlad.models import create_model
    from netvlad.train.state import save_checkpoint

    filler = _fill(small_disk, 0)
    base = ["evaluate", "--dataset", str(setup / "ds.csv"), "--db", str(setup / "db.h5"),
            "--queries", str(setup / "q.h5")]
    for argv in (["index", "build", str(setup / "db.h5"), "--out", str(small_disk / "idx")],
                 [*base, "--report", str(small_disk / "r.json")],
                 ["dataset", "convert", str(setup / "ds.csv"), str(small_disk / "d.mat")]):
        err = refused(capsys, argv)
        assert ": disk full (no space left on device); " in err, argv
    with pytest.raises(DiskFullError, match=r"ckpt_latest\.pt: disk full"):
        save_checkpoint(small_disk / "ckpt_latest.pt", create_model("lite0-max"), {"position": {}})
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no partial file anywhere
    filler.unlink()
    assert main(["index", "build", str(setup / "db.h5"), "--out", str(small_disk / "idx")]) == 0


# ------------------------------------------------------------------------------ SIGKILL


def _same_index(a: Path, b: Path) -> None:
    assert json.loads((a / "meta.json").read_text()) == json.loads((b / "meta.json").read_text())
    with np.load(a / "data.npz") as za, np.load(b / "data.npz") as zb:
        assert sorted(za.files) == sorted(zb.files)
        for k in za.files:
            assert np.array_equal(za[k], zb[k]), k
    assert (a / "index.faiss").read_bytes() == (b / "index.faiss").read_bytes()


def test_index_build_killed_at_random_points_then_rerun_equals_an_undisturbed_run(tmp_path):
    rng = np.random.default_rng(5)
    n = 20_000
    io.write_features(tmp_path / "f.h5", [f"db/{i:06d}.jpg" for i in range(n)], unit(rng, n, 64),
                      {"fingerprint": "m"})
    io.write_features(tmp_path / "old.h5", ["x.jpg"], unit(rng, 1, 64), {"fingerprint": "m"})
    out, ref = tmp_path / "idx", tmp_path / "ref"
    assert main(["index", "build", str(tmp_path / "f.h5"), "--out", str(ref)]) == 0
    cli = [sys.executable, "-m", "netvlad", "index", "build", str(tmp_path / "f.h5"), "--out", str(out)]
    until_save = None
    for kill_at in ("mid-save", "random"):
        # An older index is in the way: after the kill it is there complete or replaced complete.
        assert main(["index", "build", str(tmp_path / "old.h5"), "--out", str(out)]) == 0
        t0 = time.perf_counter()
        proc = subprocess.Popen(cli, env=ENV)
        if kill_at == "mid-save":  # the moment the temporary folder exists
            while not any(p.name.startswith(".idx.") for p in tmp_path.iterdir()):
                assert time.perf_counter() - t0 < 120 and proc.poll() is None
                time.sleep(0.0005)
            until_save = time.perf_counter() - t0
        else:  # anywhere from start-up to the end of the save
            time.sleep(rng.uniform(0, 1.2 * until_save))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert is_index_dir(out) and load_index(out).ntotal in (1, n)  # the old or the new, complete
        assert main(["index", "build", str(tmp_path / "f.h5"), "--out", str(out)]) == 0
        _same_index(out, ref)
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_files_named_like_our_temporaries_are_not_ours_to_destroy(tmp_path):
    """A user's own OUT.lock or OUT.partial.h5 is refused, not truncated or deleted."""
    out = tmp_path / "f.h5"
    lock_path(out).write_text("my notes about f.h5\n")
    with pytest.raises(OutputError, match=r"f\.h5\.lock: exists and is not a netvlad lock file"):
        io.FeatureWriter(out, ["a"], 4).open()
    assert lock_path(out).read_text() == "my notes about f.h5\n"
    lock_path(out).unlink()
    io.partial_path(out).write_text("my partial thoughts")
    with pytest.raises(io.FeatureFileError, match=r"f\.partial\.h5: is in the way and is not a netvlad"):
        io.FeatureWriter(out, ["a"], 4).open()
    assert io.partial_path(out).read_text() == "my partial thoughts"
    assert not lock_path(out).exists()
