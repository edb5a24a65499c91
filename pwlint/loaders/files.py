"""Checks every loader makes before it opens a model file."""

from __future__ import annotations

import os

from pwlint.errors import LoadError


def require_model_file(path: str, format_name: str) -> None:
    """A clear one-line error for a path that is missing, a folder or empty."""
    if not os.path.exists(path):
        raise LoadError(f"{path}: no such file")
    if os.path.isdir(path):
        raise LoadError(f"{path}: is a directory")
    if os.path.getsize(path) == 0:
        raise LoadError(f"{path}: empty file, not {format_name}")
