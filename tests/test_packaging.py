"""Packaging: one version everywhere, the license, and a wheel that installs into a clean venv and runs."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
import torch

import netvlad
from netvlad.cli import main
from netvlad.models import save_model
from netvlad.train.state import model_payload

ROOT = Path(__file__).resolve().parents[1]


def test_one_version_for_the_package_the_cli_and_checkpoints(tmp_path, capsys):
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "netvlad._version.__version__"}
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"netvlad {netvlad.__version__}"
    from train_helpers import tiny_model

    ck = torch.load(save_model(tiny_model(), tmp_path / "m.pt"), weights_only=True)
    assert ck["netvlad_version"] == netvlad.__version__
    assert model_payload(tiny_model())["netvlad_version"] == netvlad.__version__


def test_license_file_matches_pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.mark.slow
def test_wheel_installs_into_a_clean_venv_and_runs_netvlad_models(tmp_path):
    tree = tmp_path / "tree"  # a copy, so that the build writes nothing into the checkout
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    # --no-isolation: the build uses this environment's setuptools instead of downloading one
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(tree)]
    subprocess.run(build, check=True, capture_output=True, env=_env())
    (wheel,) = dist.glob("netvlad-*.whl")
    assert wheel.name.startswith(f"netvlad-{netvlad.__version__}-")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "netvlad/weights/catalogue.json" in names and any(n.endswith("licenses/LICENSE") for n in names)
    assert f"Version: {netvlad.__version__}\n" in metadata and "License-Expression: MIT\n" in metadata

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, env=_env())
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, env=_env())
    # The dependencies (torch, ...) come from this environment's site-packages, appended after the
    # venv's own: a plain path in a .pth file, so this environment's editable netvlad is not seen.
    (venv_site,) = venv.glob("lib/python*/site-packages")
    (venv_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    where = subprocess.run([str(py), "-c", "import netvlad; print(netvlad.__file__)"], check=True,
                           capture_output=True, text=True, env=_env(), cwd=tmp_path).stdout
    assert Path(where.strip()).is_relative_to(venv_site)
    out = subprocess.run([str(venv / "bin" / "netvlad"), "models"], check=True, capture_output=True,
                         text=True, env=_env(), cwd=tmp_path).stdout
    assert "vgg16-netvlad" in out
