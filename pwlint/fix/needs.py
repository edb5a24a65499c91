"""What ``--fix`` and ``--diff`` need installed, checked before any model is read.

Linting needs only pwlint's core dependencies; fixing imports the format's framework
(onnxruntime to verify ONNX fixes, Keras on torch, torch for ``.pt2``), which live in
extras (``pwlint[onnx]``, ``pwlint[keras]``, ``pwlint[torch]``). A missing one is one
line naming the file, the module and the command that installs it, with exit 2, before
any model is read: not a fix reported as "not applied" after minutes of linting, nor an
``ImportError`` from deep inside a backend.

Modules are looked up with :func:`importlib.util.find_spec`, never imported: the check
runs on every ``--fix`` and must not pay torch's start-up.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from typing import Iterable

from pwlint.errors import PwlintError


@dataclass(frozen=True)
class Need:
    """A module a fix backend imports."""

    module: str
    #: the pwlint extra that installs it, or None for a core dependency or a framework
    #: pwlint has no extra for (Keras on jax or TensorFlow)
    extra: str | None
    #: what it is needed for, as the message says it
    purpose: str


ONNX_WRITER = Need("onnx", None, "to write the fixed model")
ONNX_RUNTIME = Need("onnxruntime", "onnx", "to verify the fixed model")
KERAS = Need("keras", "keras", "to fix Keras models")
TORCH = Need("torch", "torch", "to fix .pt2 programs")
#: the framework Keras runs on, by ``KERAS_BACKEND``; pwlint's Keras backend picks torch
#: when the variable is unset, which the ``keras`` extra installs with Keras
KERAS_FRAMEWORKS = {
    "torch": Need("torch", "keras", "as Keras' backend"),
    "jax": Need("jax", None, "as Keras' backend (KERAS_BACKEND=jax)"),
    "tensorflow": Need("tensorflow", None, "as Keras' backend (KERAS_BACKEND=tensorflow)"),
}

#: why a TorchScript file is not fixed (the .pt2 backend rewrites torch.export programs)
TORCHSCRIPT_NOT_FIXED = (
    "TorchScript files are linted, not fixed: save the model with torch.export.save() (.pt2) to fix it"
)


def needs_for(fmt: str | None, path: str, verify: bool, backend: object = None) -> list[Need]:
    """What fixing the ``fmt`` file at ``path`` imports. A plugin's backend may declare
    its own as ``requires`` (a list of :class:`Need` or of module names); it is read
    without importing a lazily registered backend."""
    declared = _declared(backend)
    if declared is not None:
        return declared
    if fmt == "onnx":
        return [ONNX_WRITER, ONNX_RUNTIME] if verify else [ONNX_WRITER]
    if fmt == "keras":
        framework = KERAS_FRAMEWORKS.get((os.environ.get("KERAS_BACKEND") or "torch").lower())
        return [KERAS] + ([framework] if framework else [])
    if fmt == "torch" and not is_torchscript(path):
        return [TORCH]
    return []


def _declared(backend: object) -> list[Need] | None:
    import inspect

    if backend is None:
        return None
    # getattr_static: a LazyBackend's __getattr__ would import the backend (and torch)
    declared = inspect.getattr_static(backend, "requires", None)
    if declared is None:
        return None
    return [need if isinstance(need, Need) else Need(str(need), None, "to fix this format") for need in declared]


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported, asked without importing it (nor, for a
    top-level name, anything else)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it; a parent that fails
        return False


def is_torchscript(path: str) -> bool:
    """A ``torch.jit.save`` archive, from the zip's member names alone."""
    from pwlint.formats import sniff

    head = sniff.read_head(path)
    return bool(head) and head.startswith(b"PK") and sniff.torch_zip_kind(sniff.zip_member_names(path, head)) == "torchscript"


def missing_for(files: Iterable[tuple[str, str | None, object]], verify: bool) -> dict[Need, list[str]]:
    """The needs not installed, each with the files (``(path, format, backend)``) that need it."""
    missing: dict[Need, list[str]] = {}
    installed: dict[str, bool] = {}
    for path, fmt, backend in files:
        for need in needs_for(fmt, path, verify, backend):
            if need.module not in installed:
                installed[need.module] = is_installed(need.module)
            if not installed[need.module]:
                missing.setdefault(need, []).append(path)
    return missing


def require(files: Iterable[tuple[str, str | None, object]], verify: bool, flag: str = "--fix") -> None:
    """Raise a one-line :class:`PwlintError` naming what ``flag`` needs and is missing,
    and how to install it."""
    missing = missing_for(files, verify)
    if missing:
        raise PwlintError(missing_message(missing, flag))


def missing_message(missing: dict[Need, list[str]], flag: str) -> str:
    """``--fix on lenet.onnx needs onnxruntime (to verify the fixed model): pip install 'pwlint[onnx]'``;
    several files and modules in the same one line."""
    by_files: dict[tuple[str, ...], list[Need]] = {}
    for need, paths in missing.items():
        by_files.setdefault(tuple(dict.fromkeys(paths)), []).append(need)
    parts = []
    for paths, needs in by_files.items():
        where = paths[0] if len(paths) == 1 else f"{paths[0]} and {len(paths) - 1} more file{'s' * (len(paths) > 2)}"
        what = " and ".join(need.module for need in needs)
        purpose = needs[0].purpose if len(needs) == 1 else ""
        parts.append(f"on {where} needs {what}" + (f" ({purpose})" if purpose else ""))
    return f"{flag} {', '.join(parts)}: {install_hint(list(missing))}"


def install_hint(needs: list[Need]) -> str:
    """How to install ``needs``: pwlint's extras the way pwlint itself was installed (from
    an index, a checkout, a git URL), or, inside a pre-commit hook, the hook's
    ``additional_dependencies``."""
    extras = list(dict.fromkeys(need.extra for need in needs if need.extra))
    plain = list(dict.fromkeys(need.module for need in needs if not need.extra))
    if os.environ.get("PRE_COMMIT"):  # pre-commit sets it while hooks run
        packages = [requirement for extra in extras for requirement in extra_requirements(extra)] + plain
        listed = ", ".join(f"'{p}'" for p in dict.fromkeys(packages))
        return f"add additional_dependencies: [{listed}] to the hook in .pre-commit-config.yaml"
    command = ["pip install"]
    if extras:
        command.append(pwlint_requirement(extras))
    command += plain
    return " ".join(command)


def extra_requirements(extra: str) -> list[str]:
    """The requirements pwlint's ``extra`` adds, from the installed metadata
    (``onnxruntime>=1.17``); the extra's name alone when the metadata cannot say."""
    from importlib import metadata

    try:
        requires = metadata.requires("pwlint") or []
    except metadata.PackageNotFoundError:
        return [f"pwlint[{extra}]"]
    marker = f'extra == "{extra}"'
    found = [req.split(";")[0].strip() for req in requires if marker in req.replace("'", '"')]
    return found or [f"pwlint[{extra}]"]


def pwlint_requirement(extras: list[str]) -> str:
    """``'pwlint[onnx]'``, or for a pwlint installed from a checkout or a git URL (PEP 610's
    ``direct_url.json``) the same source with the extras: ``'.[onnx]'``,
    ``-e '/src/pwlint[onnx]'``, ``'pwlint[onnx] @ git+https://...'``."""
    names = ",".join(extras)
    origin = _direct_url()
    url = origin.get("url", "")
    if "vcs_info" in origin:
        vcs = origin["vcs_info"]
        revision = vcs.get("requested_revision")
        return f"'pwlint[{names}] @ {vcs.get('vcs', 'git')}+{url}{'@' + revision if revision else ''}'"
    if url.startswith("file://") and "dir_info" in origin:
        from urllib.parse import unquote, urlparse

        folder = unquote(urlparse(url).path)
        if os.path.abspath(folder) == os.getcwd():
            folder = "."
        editable = "-e " if origin["dir_info"].get("editable") else ""
        return f"{editable}'{folder}[{names}]'"
    return f"'pwlint[{names}]'"


def _direct_url() -> dict:
    from importlib import metadata

    try:
        text = metadata.distribution("pwlint").read_text("direct_url.json")
        return json.loads(text) if text else {}
    except (metadata.PackageNotFoundError, ValueError, OSError):
        return {}
