"""CLI commands: eval (filled by its issue)."""

from __future__ import annotations


def register(sub) -> None:
    """Add this module's sub-commands to `sub` (an argparse subparsers action)."""
