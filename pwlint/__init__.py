"""pwlint: a linter for neural-network models.

The public Python API is what ``__all__`` lists; everything else lives in private
modules behind it and may change::

    import pwlint

    report = pwlint.check(model, example_inputs)   # a path, ONNX, Keras or torch model
    print(report)                                   # the text `pwlint check` prints
    if not report.ok:
        result = pwlint.fix(model, example_inputs)  # verified, of the same kind
        fixed = result.model

Kept import-light on purpose: ``import pwlint`` imports neither torch, Keras, ONNX,
numpy nor networkx (``pwlint --version`` and a pre-commit hook pay for every module
imported here). The engine is imported by the first ``check`` or ``fix``; a framework
only when one of its objects is passed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Union

# The fix loop's package is imported before the function ``fix`` below is defined, so that
# ``pwlint.fix`` stays the function: importing a submodule (pwlint.fix.rounds) later sets
# no attribute on this package, since its parent ``pwlint.fix`` is loaded already.
# (``from pwlint.fix import rounds`` and ``from pwlint.fix.rounds import ...`` still work.)
from pwlint import fix as _fix_loop  # noqa: E402  (see above)
from pwlint.errors import ConfigError, ExportError, LoadError, PwlintError, UnsupportedModelError
from pwlint.findings import Finding, Fix, Severity

if TYPE_CHECKING:
    from pwlint.api import FixResult, Report

del _fix_loop

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ExportError",
    "Finding",
    "Fix",
    "FixResult",
    "LoadError",
    "PwlintError",
    "Report",
    "Severity",
    "UnsupportedModelError",
    "__version__",
    "check",
    "fix",
]

#: ``select``/``ignore``: ``"PW001"``, ``"PW001,PW004"`` or a list of codes, prefixes or names
Selectors = Union[str, Iterable[str], None]
#: ``config``: a pyproject.toml or pwlint.toml path, or the ``[tool.pwlint]`` table as a dict
Config = Union[str, "os.PathLike[str]", Mapping[str, Any], None]


def check(
    model: Any,
    example_inputs: Any = None,
    *,
    select: Selectors = None,
    ignore: Selectors = None,
    config: Config = None,
) -> Report:
    """Lint one model and return its :class:`Report`.

    ``model`` is any of:

    - a path (``str`` or ``os.PathLike``) to a model file pwlint reads (``.onnx``,
      ``.keras``, ``.h5``, ``.pt2``, TorchScript);
    - an ``onnx.ModelProto``;
    - a ``keras.Model``: Sequential, Functional, or subclassed once built (called on a
      batch); a subclassed model is traced into a graph of the layers its ``call`` uses;
    - a ``torch.nn.Module`` with ``example_inputs`` (a tensor, a tuple of tensors or a
      dict of keyword tensors): exported in eval mode with
      ``torch.export.export(..., strict=False)``, the batch dimension dynamic where the
      model allows it;
    - a ``torch.export.ExportedProgram`` or a ``torch.jit.ScriptModule``.

    Live models go through the same loaders and rules as files: findings name layers as
    your code does (``features.0``, ``block1_conv``) and reports name the model
    ``<torch.nn.Module Net>``. ``select``/``ignore`` work as the command-line flags;
    ``config`` is a configuration file or the ``[tool.pwlint]`` keys as a dict
    (``{"fail-on": "error", "rules": {"PW002": {"max-params": 10_000_000}}}``); without it
    the nearest ``pyproject.toml``/``pwlint.toml`` applies (searched from the model file,
    or for a live model from the current folder).

    Raises :class:`PwlintError` (one line, as the command line prints it) when the model
    cannot be read: :class:`UnsupportedModelError` for an object of no supported kind,
    :class:`ExportError` when torch.export cannot trace a module, :class:`LoadError` for an
    unreadable file, :class:`ConfigError` for a bad selector or configuration.
    """
    from pwlint.api import check_model

    return check_model(model, example_inputs, select=select, ignore=ignore, config=config)


def fix(
    model: Any,
    example_inputs: Any = None,
    *,
    unsafe: bool = False,
    output: str | os.PathLike[str] | None = None,
    select: Selectors = None,
    ignore: Selectors = None,
    config: Config = None,
) -> FixResult:
    """Fix what pwlint can in one model, verified as ``pwlint check --fix`` verifies it,
    and return a :class:`FixResult` whose ``model`` is the fixed model of the same kind:
    an ``onnx.ModelProto``, a ``keras.Model`` (loaded back with ``safe_mode=True``), a
    ``torch.nn.Module`` (the fixed program's ``torch.export.load(...).module()``) or an
    ``ExportedProgram``. The object passed in is never changed; when nothing was fixed,
    ``result.model`` is that object.

    Safe fixes only, unless ``unsafe=True`` (unsafe fixes change what the model computes:
    fine-tune it afterwards). Each applied fix has passed the format's checker and a run
    on seeded inputs against the original (safe fixes within rtol 1e-4 / atol 1e-5);
    ``result.not_applied`` says why any other was not applied.

    A path is fixed in place, as ``pwlint check --fix`` does, unless ``output`` names the
    file to write; a live model is fixed in a private temporary folder, and also written
    to ``output`` when given (``.pt2`` for torch, ``.keras``/``.h5`` for Keras, ``.onnx``).
    A ``torch.jit.ScriptModule`` cannot be fixed (:class:`UnsupportedModelError`): pass
    the ``nn.Module`` with ``example_inputs``. Other arguments and errors as :func:`check`.
    """
    from pwlint.api import fix_model

    return fix_model(
        model, example_inputs, unsafe=unsafe, output=output, select=select, ignore=ignore, config=config,
    )


def __getattr__(name: str):
    # the result classes live with the engine, imported by the first check or fix
    if name in ("Report", "FixResult"):
        from pwlint import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"Report", "FixResult"})
