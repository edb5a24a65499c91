"""Reports written to a file: through a temporary file in the same folder, renamed into
place, so a CI step that uploads or posts the report never reads half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, TextIO

from pwlint.errors import PwlintError


def write_report_file(target: str, write: Callable[[TextIO], None]) -> None:
    """Call ``write(stream)`` on a temporary file next to ``target``, then rename it."""
    folder = Path(target).resolve().parent
    temporary = None
    try:
        with tempfile.NamedTemporaryFile("w", dir=folder, prefix=".pwlint-", suffix=".tmp", delete=False, encoding="utf-8") as handle:
            temporary = handle.name
            write(handle)
        os.replace(temporary, target)
    except OSError as exc:
        if temporary and os.path.exists(temporary):
            os.unlink(temporary)
        raise PwlintError(f"cannot write the report to {target}: {exc.strerror or exc}") from None
