"""``pwlint check pkg.models:build_model``: lint the model your code defines.

A command-line PATH that looks like ``package.module:name`` and is not a file is a code
target: pwlint imports the module (from the current folder first) and takes ``name``, a
model object or a callable that returns one (a factory, a model class). Unlike linting
files, **this runs your code**: it is for your own repository, never for files from an
untrusted pull request. Torch models need example inputs: ``--input-shape 1,3,224,224``
(repeat it for each input) and ``--input-dtype`` (default ``float32``).

The model then goes through :func:`pwlint.api.lint_model`, the Python API's path: it is
written in its own format to a private folder and linted (and fixed) by the same engine
as a file, so every output format, baselines and ``--fix -o out.pt2`` work unchanged.
"""

from __future__ import annotations

import os
import re

from pwlint.errors import PwlintError

#: ``a.b.c:name`` or ``a:obj.attr``: Python identifiers only, so no real path is taken
TARGET = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool")


def is_code_target(path: str) -> bool:
    return bool(TARGET.match(path)) and not os.path.exists(path)


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` (or ``1x3x224x224``) as a shape; a usage error otherwise."""
    parts = [p for p in re.split(r"[,x ]+", text.strip()) if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        raise PwlintError(f"--input-shape {text!r}: give positive sizes separated by commas, e.g. 1,3,224,224")
    return shape


def example_inputs(shapes: list[str] | None, dtypes: list[str] | None):
    """Seeded torch tensors for ``--input-shape``/``--input-dtype`` (None when no shape
    is given: Keras and ONNX models need none). torch is imported only here."""
    if not shapes:
        if dtypes:
            raise PwlintError("--input-dtype goes with --input-shape")
        return None
    dtypes = list(dtypes or [])
    if len(dtypes) > len(shapes):
        raise PwlintError("more --input-dtype than --input-shape flags")
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise PwlintError(f"--input-dtype {dtype!r}: one of {', '.join(DTYPES)}")
    dtypes += ["float32"] * (len(shapes) - len(dtypes))
    parsed = [parse_shape(shape) for shape in shapes]
    import torch

    generator = torch.Generator().manual_seed(0)
    tensors = []
    for shape, dtype in zip(parsed, dtypes):
        kind = getattr(torch, dtype)
        if kind.is_floating_point:
            tensors.append(torch.randn(shape, generator=generator).to(kind))
        elif kind == torch.bool:
            tensors.append(torch.zeros(shape, dtype=kind))
        else:
            tensors.append(torch.randint(0, 2, shape, generator=generator).to(kind))
    return tuple(tensors)


def lint_target(linter, spec: str, shapes: list[str] | None, dtypes: list[str] | None):
    """The :class:`~pwlint.engine.FileResult` of the model ``spec`` names; every failure
    (import, factory, export) is the file's one-line error, as for an unreadable file."""
    from pwlint.api import lint_model
    from pwlint.engine import FileResult
    from pwlint.live import resolve_target

    try:
        target = resolve_target(spec)
        inputs = None
        if _needs_inputs(target.model):
            if not shapes:
                raise PwlintError(
                    f"{spec}: a torch model is exported with example inputs: give their shapes, "
                    "e.g. --input-shape 1,3,224,224 (once per input)"
                )
            inputs = example_inputs(shapes, dtypes)
        return lint_model(linter, target.model, inputs, name=spec).file
    except PwlintError as exc:
        return FileResult(path=spec, error=str(exc))


def _needs_inputs(model) -> bool:
    """A torch module is exported with example inputs; other kinds carry their shapes."""
    from pwlint.live import TORCH_MODULE, kind_of

    return kind_of(model) == TORCH_MODULE
