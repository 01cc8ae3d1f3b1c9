"""Architecture rules (README, "How the code is organised"): who may import whom; imports have no
side effects."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "netvlad"

# Top-level part -> netvlad parts it may import (the README's module table, lower rows on upper ones).
# ``_atomic`` (atomic file writes, stdlib only) is a leaf utility every part may import.
LEAF_UTILS = {"_atomic", "_sniff", "_outputs", "_version", "_matlab"}
ALLOWED = {
    "_atomic": set(),
    "_sniff": set(),
    "_outputs": set(),
    "_version": set(),
    "_matlab": set(),
    "layers": set(),
    "backbones": set(),
    "geo": set(),
    "io": set(),
    "index": {"io"},
    "metrics": {"index", "protocol"},
    "protocol": set(),
    "whitening": set(),
    "losses": set(),
    "models": {"layers", "backbones", "whitening"},
    "convert": {"models", "layers", "backbones", "whitening"},
    "weights": {"convert", "models", "layers", "backbones", "whitening"},
    "export": {"models", "layers", "backbones"},
    "data": {"geo", "protocol"},
    "synth": {"data", "geo"},
    "mining": {"geo", "index", "data"},
    "extract": {"models", "data", "io", "layers"},
    "retrieval": {"metrics", "index", "extract", "models", "data", "io"},
    "rerank": {"layers", "index", "geo", "io", "extract"},
    "serve": {"extract", "index", "rerank", "metrics", "data"},
    "train": {
        "models", "layers", "backbones", "data", "geo", "extract", "io", "mining", "losses",
        "index", "metrics", "whitening", "weights", "convert",
    },
    "demo": {
        "models", "layers", "backbones", "data", "geo", "extract", "io", "mining", "losses",
        "index", "metrics", "whitening", "train", "synth",
    },
}


def _part(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py")


def _netvlad_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "netvlad":
                names = [f"netvlad.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("netvlad."):
                found.add(name.split(".")[1])
    return found


def _modules():
    return sorted(p for p in SRC.rglob("*.py") if _part(p) not in ("__init__", "__main__"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_layering(path):
    part = _part(path)
    imported = _netvlad_imports(path) - {part} - LEAF_UTILS
    assert "cli" not in imported or part == "cli", f"{path}: library code must not import netvlad.cli"
    if part == "cli":
        return
    assert part in ALLOWED, f"{path}: part {part!r} is not in the README's module table; add it and ALLOWED"
    bad = imported - ALLOWED[part]
    assert not bad, f"{path}: {part} may not import {sorted(bad)}"


def test_models_and_data_never_import_each_other():
    for path in _modules():
        part = _part(path)
        if part in ("models", "data"):
            other = {"models": "data", "data": "models"}[part]
            assert other not in _netvlad_imports(path), path


def test_import_touches_no_file_and_no_network(tmp_path):
    # Importing every module from an empty working directory must not create files or need the net.
    names = sorted({"netvlad." + ".".join(p.relative_to(SRC).with_suffix("").parts) for p in _modules()})
    names = [n.removesuffix(".__init__") for n in names]
    code = "import importlib, socket\n"
    code += "def _no_net(*a, **k):\n    raise AssertionError('network used at import')\n"
    code += "socket.socket.connect = _no_net\nsocket.create_connection = _no_net\n"
    code += "".join(f"importlib.import_module({n!r})\n" for n in names if not n.endswith("__main__"))
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)
    assert list(tmp_path.iterdir()) == []


def test_every_part_has_a_row_in_the_readme_module_table():
    readme = (SRC.parents[1] / "README.md").read_text()
    rows = set(re.findall(r"^\| `netvlad\.([a-z_]+)` \|", readme, flags=re.MULTILINE))
    parts = {p.name.removesuffix(".py") for p in SRC.iterdir() if not p.name.startswith(("_", "."))}
    assert parts - {"__pycache__"} <= rows, sorted(parts - rows)
