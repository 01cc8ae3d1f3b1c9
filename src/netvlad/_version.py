"""The package version: the one place it is written (pyproject.toml, ``netvlad --version`` and the
checkpoints' metadata read it from here)."""

__version__ = "0.1.0"
