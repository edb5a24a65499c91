"""Checks every loader makes: before it opens a model file, and on the sizes it declares."""

from __future__ import annotations

import os

from pwlint.errors import LoadError


def require_model_file(path: str, format_name: str) -> None:
    """A clear one-line error for a path that is missing, a folder, not a regular
    file (a named pipe would block the reader, a device never ends) or empty."""
    if not os.path.exists(path):
        raise LoadError(f"{path}: no such file")
    if os.path.isdir(path):
        raise LoadError(f"{path}: is a directory")
    if not os.path.isfile(path):
        raise LoadError(f"{path}: not a regular file")
    if os.path.getsize(path) == 0:
        raise LoadError(f"{path}: empty file, not {format_name}")


def read_at_most(stream, limit: int, chunk: int = 1 << 20) -> bytes:
    """At most ``limit + 1`` bytes of ``stream`` (one more than allowed says "too large"),
    read a chunk at a time: zipfile inflates a ``read(n)`` request up to ``n`` bytes before
    it cuts the result to the member's declared size, so one large read of a member whose
    header understates its size would inflate up to the whole limit for nothing."""
    parts, total = [], 0
    while total <= limit:
        part = stream.read(min(chunk, limit + 1 - total))
        if not part:
            break
        parts.append(part)
        total += len(part)
    return b"".join(parts)


#: beyond any real model: a file that declares more is broken or hostile, and numbers
#: this large would only make reports absurd (a dimension of 2**62, 10**30 parameters)
MAX_RANK = 64
MAX_DIM = 2**40
MAX_ELEMENTS = 2**50
MAX_PARAMS = 2**44


def require_plausible_sizes(graph, path: str) -> None:
    """A clear one-line error for a loaded graph whose tensors or layers are impossibly large."""
    checked: set = set()  # a large graph repeats a few shapes many times
    for layer in graph.layers():
        for shape in (*layer.input_shapes, *layer.output_shapes):
            if shape is None or shape in checked:
                continue
            checked.add(shape)
            problem = _implausible_shape(shape)
            if problem:
                raise LoadError(f"{path}: layer '{layer.name}' has {problem}: not a real model")
        if not 0 <= layer.params <= MAX_PARAMS:
            raise LoadError(f"{path}: layer '{layer.name}' has a negative number of parameters or over 2**44: not a real model")
    if not 0 <= (graph.total_params or 0) <= MAX_PARAMS:
        raise LoadError(f"{path}: the model has a negative number of parameters or over 2**44: not a real model")


def _implausible_shape(shape) -> str | None:
    if len(shape) > MAX_RANK:
        return f"a tensor of {len(shape)} dimensions (pwlint's limit is {MAX_RANK})"
    known = [d for d in shape if isinstance(d, int)]
    if any(not 0 <= d <= MAX_DIM for d in known):
        return "a tensor dimension that is negative or over 2**40"
    elements = 1
    for d in known:
        elements *= d
    if elements > MAX_ELEMENTS:
        return "a tensor of over 2**50 elements"
    return None
