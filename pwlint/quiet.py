"""Frameworks' warnings, log lines and prints are not pwlint's output: what matters
reaches the user in pwlint's own one-line errors and reports."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings


@contextlib.contextmanager
def quiet():
    """Silence warnings, logging (torch's handlers hold their own stream: levels, not
    redirects) and stdout/stderr prints for the duration of the block."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        logging.disable(previous)
