"""Live models: Python objects turned into the files pwlint's loaders read, and back.

pwlint has one load path (loader -> :class:`~pwlint.ir.ModelGraph` -> rules), and it
starts from a file. A live object is therefore written to a private temporary folder
in its framework's own format and linted (or fixed) there like any file:

=============================  ==========================================  ============
object                         written with                                file
=============================  ==========================================  ============
``onnx.ModelProto``            ``onnx.save``                               ``.onnx``
``keras.Model``                ``model.save`` (a subclassed model is       ``.keras``
                               first traced into a Functional model of
                               its own layers)
``torch.nn.Module``            ``torch.export.export(strict=False)`` on    ``.pt2``
                               ``example_inputs`` (batch dynamic where
                               the model allows), ``torch.export.save``
``torch.export.ExportedProgram``  ``torch.export.save``                    ``.pt2``
``torch.jit.ScriptModule``     ``torch.jit.save``                          ``.pt``
=============================  ==========================================  ============

Layer names survive the round trip: a torch module path (``classifier.0``) is what
the ``.pt2`` and TorchScript loaders name layers by, and a Keras layer keeps its
name (``block1_conv``).

An object's kind is read from the names of its classes (``type(model).__mro__``) before
any framework is imported, so that passing an ONNX model never imports torch, and
passing a path imports none of them.

:func:`resolve_target` turns ``"pkg.module:factory"`` into a model (for the
``pwlint check pkg.mod:factory`` command line): it imports the user's own code.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pwlint.errors import ExportError, PwlintError, UnsupportedModelError
from pwlint.quiet import quiet

PATH = "path"
ONNX = "onnx"
KERAS = "keras"
TORCH_MODULE = "torch-module"
TORCH_PROGRAM = "torch-program"
TORCHSCRIPT = "torchscript"

#: the file each kind is written to in the private folder (the loaders sniff the content;
#: the suffix only breaks ties)
FILE_NAMES = {
    ONNX: "model.onnx", KERAS: "model.keras", TORCH_MODULE: "model.pt2",
    TORCH_PROGRAM: "model.pt2", TORCHSCRIPT: "model.pt",
}
#: the suffixes a fixed model of each kind may be written to (the fix backends' formats)
OUTPUT_SUFFIXES = {
    ONNX: (".onnx",), KERAS: (".keras", ".h5"), TORCH_MODULE: (".pt2",), TORCH_PROGRAM: (".pt2",),
}

SUPPORTED = (
    "a model file path, an onnx.ModelProto, a keras.Model, a torch.nn.Module (with example_inputs), "
    "a torch.export.ExportedProgram or a torch.jit.ScriptModule"
)


def _classes(model: object) -> list[tuple[str, str]]:
    """``(module, name)`` of each class in the object's MRO, read without importing anything."""
    return [(getattr(cls, "__module__", "") or "", cls.__name__) for cls in type(model).__mro__]


def _from(classes: list[tuple[str, str]], roots: tuple[str, ...], *names: str) -> bool:
    return any(module.partition(".")[0] in roots and name in names for module, name in classes)


def kind_of(model: object) -> str:
    """The kind of ``model`` (:data:`PATH`, :data:`ONNX`, :data:`KERAS`, :data:`TORCH_MODULE`,
    :data:`TORCH_PROGRAM`, :data:`TORCHSCRIPT`); a framework is imported only to confirm
    an object whose classes come from it. Anything else is an :class:`UnsupportedModelError`."""
    if isinstance(model, (str, os.PathLike)):
        return PATH
    classes = _classes(model)
    if _from(classes, ("onnx",), "ModelProto"):
        import onnx

        if isinstance(model, onnx.ModelProto):
            return ONNX
    # before torch: on Keras' torch backend a keras.Model is a torch.nn.Module too
    if _from(classes, ("keras", "tf_keras"), "Model", "Sequential", "Functional"):
        return KERAS
    if _from(classes, ("keras", "tf_keras"), "Layer", "Operation"):
        raise UnsupportedModelError(
            f"{_type_name(model)} is a Keras layer, not a model: wrap it in a keras.Model "
            "(keras.Sequential([keras.Input(shape), layer])) to lint it"
        )
    if _from(classes, ("torch",), "ExportedProgram", "ScriptModule", "Module"):
        import torch

        if isinstance(model, torch.export.ExportedProgram):
            return TORCH_PROGRAM
        if isinstance(model, torch.jit.ScriptModule):
            return TORCHSCRIPT
        if isinstance(model, torch.nn.Module):
            return TORCH_MODULE
    raise UnsupportedModelError(f"cannot lint {_type_name(model)}: pwlint takes {SUPPORTED}")


def is_model(obj: object) -> bool:
    """Whether ``obj`` is a model object pwlint reads (a path is not one)."""
    try:
        return kind_of(obj) != PATH
    except UnsupportedModelError:
        return False


def _type_name(model: object) -> str:
    cls = type(model)
    module = cls.__module__
    return f"{cls.__name__} object" if module in ("builtins", None) else f"{module}.{cls.__qualname__} object"


def display_name(model: object, kind: str | None = None) -> str:
    """How reports name the model: the path as given, or ``<torch.nn.Module Net>``,
    ``<keras.Model vgg>``, ``<onnx.ModelProto main_graph>``."""
    kind = kind or kind_of(model)
    if kind == PATH:
        return os.fspath(model)
    if kind == ONNX:
        name = model.graph.name
        return f"<onnx.ModelProto {name}>" if name else "<onnx.ModelProto>"
    if kind == KERAS:
        return f"<keras.Model {model.name}>"
    if kind == TORCHSCRIPT:
        return f"<torch.jit.ScriptModule {getattr(model, 'original_name', type(model).__name__)}>"
    if kind == TORCH_PROGRAM:
        return "<torch.export.ExportedProgram>"
    return f"<torch.nn.Module {type(model).__name__}>"


def _first_line(exc: BaseException) -> str:
    for line in str(exc).strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def _reason(exc: BaseException) -> str:
    line = _first_line(exc)
    if len(line) > 200:
        line = line[:197] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


# --- writing live models ---------------------------------------------------------------


def write(model: object, kind: str, example_inputs: Any, folder: Path, name: str) -> Path:
    """Write ``model`` to ``folder`` in its native format; the file, ready for the loaders.
    Failures are one-line :class:`PwlintError` s naming the model as ``name``."""
    target = folder / FILE_NAMES[kind]
    if kind == ONNX:
        _write_onnx(model, target)
    elif kind == KERAS:
        _write_keras(model, example_inputs, target, name)
    elif kind == TORCH_MODULE:
        _write_torch_module(model, example_inputs, target, name)
    elif kind == TORCH_PROGRAM:
        import torch

        with quiet():
            torch.export.save(model, str(target))
    elif kind == TORCHSCRIPT:
        import torch

        with quiet():
            torch.jit.save(model, str(target))
    else:  # pragma: no cover - kind_of gives no other
        raise UnsupportedModelError(f"{name}: cannot write a model of kind {kind}")
    return target


def _write_onnx(model, target: Path) -> None:
    import onnx

    # a protobuf cannot serialise past 2 GB: the weights then go to a data file beside it
    external = model.ByteSize() > 2**31 - 2**20
    onnx.save_model(model, str(target), save_as_external_data=external, location=f"{target.name}.data")


def _keras_inputs(model, example_inputs, name: str):
    """Symbolic inputs for tracing a subclassed model: from ``example_inputs`` when given,
    else from the shape the model was built with."""
    import keras

    def shape_of(value):
        shape = getattr(value, "shape", None)
        if shape is None:
            raise ExportError(f"{name}: example_inputs must be arrays or tensors (got {type(value).__name__})")
        return tuple(shape)

    if example_inputs is not None:
        values = example_inputs if isinstance(example_inputs, (list, tuple)) else [example_inputs]
        shapes = [shape_of(value) for value in values]
        single = not isinstance(example_inputs, (list, tuple))
    else:
        config = model.get_build_config() if getattr(model, "built", False) else None
        shape = (config or {}).get("input_shape")
        if shape is None:
            raise ExportError(
                f"{name}: a subclassed keras.Model must be built before pwlint can read it: "
                "call it once on a batch (model(x)) or pass example_inputs"
            )
        single = not (isinstance(shape, (list, tuple)) and shape and isinstance(shape[0], (list, tuple)))
        shapes = [tuple(shape)] if single else [tuple(s) for s in shape]
        if isinstance(shape, dict):
            raise ExportError(f"{name}: a subclassed keras.Model taking a dict of inputs cannot be traced; pass a Functional model")
    inputs = [keras.Input(shape=tuple(s[1:])) for s in shapes]
    return inputs[0] if single else inputs


def _write_keras(model, example_inputs, target: Path, name: str) -> None:
    import keras

    if not getattr(model, "built", False) and not getattr(model, "_is_graph_network", False):
        raise ExportError(
            f"{name}: the model is not built yet, so it has no weights to check: call it once on a "
            "batch (model(x)) or give it a keras.Input"
        )
    graph_model = model
    if not (isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False)
            or type(model).__name__ == "Functional"):
        # subclassed: its call() run on symbolic inputs records the layers it calls, in a
        # Functional model that shares them (and their weights); the loader reads that graph
        inputs = _keras_inputs(model, example_inputs, name)
        try:
            with quiet():
                outputs = model.call(inputs)
                graph_model = keras.Model(inputs, outputs, name=model.name)
        except PwlintError:
            raise
        except Exception as exc:
            raise ExportError(
                f"{name}: cannot trace the subclassed model's call() into a graph of its layers "
                f"({_reason(exc)}); make call() work on symbolic keras.Input tensors, or build the "
                "model with the Functional API"
            ) from exc
    try:
        with quiet():
            graph_model.save(str(target))
    except Exception as exc:
        raise ExportError(f"{name}: Keras cannot save the model ({_reason(exc)})") from exc


def torch_arguments(example_inputs: Any, name: str) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for ``torch.export`` from what the user passed: a tensor, a
    tuple or list of positional inputs, or a dict of keyword inputs."""
    import torch

    if example_inputs is None:
        raise ExportError(
            f"{name}: a torch.nn.Module is exported with torch.export, which needs example inputs: "
            "pass example_inputs (a tensor, or a tuple of the tensors forward() takes), "
            "e.g. pwlint.check(model, torch.randn(1, 3, 224, 224))"
        )
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (list, tuple)):
        return tuple(example_inputs), {}
    raise ExportError(
        f"{name}: example_inputs must be a tensor, a tuple of tensors or a dict of keyword inputs, "
        f"not {type(example_inputs).__name__}"
    )


def _dynamic_batch(args: tuple, kwargs: dict):
    """A shared ``Dim`` for dim 0 of every tensor input (the batch), in the inputs' structure."""
    import torch

    batch = torch.export.Dim("batch")

    def spec(value):
        return {0: batch} if isinstance(value, torch.Tensor) and value.dim() >= 1 else None

    # positional inputs, then keyword inputs in the order given (torch.export's tuple form)
    return tuple(spec(value) for value in (*args, *kwargs.values()))


#: where torch.export's message shows the user's line that could not be traced
_USER_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)\n\s*(.+)')


def _export_failure(exc: BaseException, name: str) -> ExportError:
    """One line: why torch.export failed, where in the user's code, and what to do."""
    text = str(exc)
    where = ""
    frames = _USER_FRAME.findall(text.partition("The following call raised this error:")[2] or text)
    if frames:
        file, line, _function, code = frames[-1]
        where = f" at {Path(file).name}:{line} `{code.strip()}`"
    or_file = "or lint a file exported from it (torch.export.save, torch.onnx.export)"
    if "data-dependent" in text or type(exc).__name__.startswith("GuardOnDataDependent"):
        return ExportError(
            f"{name}: torch.export cannot trace the model: forward() branches on a tensor's values{where} "
            f"({type(exc).__name__}); write the branch with torch.cond or torch.where, {or_file}"
        )
    return ExportError(
        f"{name}: torch.export cannot export the model{where} ({_reason(exc)}); check that "
        f"example_inputs are what forward() takes and that the model runs on them, {or_file}"
    )


def export_torch_module(model, example_inputs: Any, name: str):
    """The module as an ``ExportedProgram``: exported in eval mode (dropout off, normalisation
    with its running statistics: the model as it is shipped), the batch dimension dynamic
    where the model allows it, else static."""
    import torch

    args, kwargs = torch_arguments(example_inputs, name)
    training = model.training
    model.eval()
    try:
        with quiet():
            try:
                return torch.export.export(
                    model, args, kwargs or None, dynamic_shapes=_dynamic_batch(args, kwargs), strict=False,
                )
            except Exception:  # a batch of 1, or a model that fixes its batch: export it as it is
                pass
            try:
                return torch.export.export(model, args, kwargs or None, strict=False)
            except Exception as exc:
                raise _export_failure(exc, name) from None
    finally:
        model.train(training)


def _write_torch_module(model, example_inputs, target: Path, name: str) -> None:
    import torch

    program = export_torch_module(model, example_inputs, name)
    with quiet():
        torch.export.save(program, str(target))


# --- reading fixed models back ---------------------------------------------------------


def read_back(kind: str, path: Path):
    """The model at ``path`` (a file pwlint wrote from the user's own model) as an object
    of ``kind``: an ``onnx.ModelProto``, a ``keras.Model`` (loaded with ``safe_mode=True``),
    a ``torch.nn.Module`` (the fixed program's ``.module()``) or an ``ExportedProgram``."""
    if kind == ONNX:
        import onnx

        return onnx.load(str(path))
    if kind == KERAS:
        import keras

        with quiet():
            try:
                return keras.saving.load_model(str(path), safe_mode=True)
            except Exception:  # a compile configuration Keras cannot rebuild: the model without it
                return keras.saving.load_model(str(path), safe_mode=True, compile=False)
    if kind in (TORCH_MODULE, TORCH_PROGRAM):
        import torch

        with quiet():
            program = torch.export.load(str(path))
            return program.module() if kind == TORCH_MODULE else program
    raise UnsupportedModelError(f"cannot read back a fixed model of kind {kind}")


# --- targets on the command line -------------------------------------------------------


@dataclass
class Target:
    """What ``pkg.module:attribute`` named: the model, and how reports name it."""

    model: object
    name: str


def resolve_target(spec: str) -> Target:
    """The model that ``"pkg.module:attribute"`` names: a model object, or a callable
    (a factory function, a model class) called without arguments to make one.

    This imports and runs the user's code, from the current folder first (as
    ``python -m`` does); every failure is one :class:`PwlintError` line.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise PwlintError(f"{spec}: a code target is 'package.module:name' (a model or a function returning one)")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise PwlintError(f"{spec}: no module named '{exc.name}' (run pwlint from the folder that holds it, or install it)") from None
        raise PwlintError(f"{spec}: importing {module_name} failed: {_reason(exc)}") from None
    except Exception as exc:
        raise PwlintError(f"{spec}: importing {module_name} failed: {_reason(exc)}") from None
    obj: object = module
    for part in attribute.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PwlintError(f"{spec}: {module_name} has no attribute '{attribute}'") from None
    if not is_model(obj) and callable(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise PwlintError(f"{spec}: calling {attribute}() failed: {_reason(exc)}") from None
    if not is_model(obj):
        raise UnsupportedModelError(f"{spec}: {attribute} gave {_type_name(obj)}; pwlint takes {SUPPORTED}")
    return Target(model=obj, name=spec)
