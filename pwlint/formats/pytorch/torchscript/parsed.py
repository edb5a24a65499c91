"""What a TorchScript archive holds, as the reader's modules share it: the classes and
functions parsed from ``code/`` (:class:`Code`, :class:`ClassInfo`) and the helpers that
read pickled values (tensor sizes, int lists, a module object's class).

A leaf of :mod:`pwlint.formats.pytorch.torchscript`: the reader (:mod:`.read`), the
interpreter (:mod:`.interp`, :mod:`.evaluate`, :mod:`.builtin_ops`) and its values
(:mod:`.values`) all import it, and it imports none of them.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any

from pwlint.formats.pytorch.pickle_scan import Call, Global, Obj

TENSOR_BUILDERS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_qtensor"}
LIST_BUILDERS = {"build_intlist", "build_tensorlist", "build_doublelist", "build_boollist", "restore_type_tag"}


@dataclass
class ClassInfo:
    qualname: str
    parameters: list[str] = field(default_factory=list)
    buffers: list[str] = field(default_factory=list)
    constants: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, ast.FunctionDef] = field(default_factory=dict)

    @property
    def display(self) -> str:
        """``__torch__.torch.nn.modules.conv.___torch_mangle_3.Conv2d`` -> ``torch.nn.modules.conv.Conv2d``."""
        return re.sub(r"___torch_mangle_\d+\.", "", self.qualname.removeprefix("__torch__."))


@dataclass
class Code:
    classes: dict[str, ClassInfo] = field(default_factory=dict)
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)


def tensor_shape(value) -> tuple | None:
    """The size recorded in a pickled tensor (``_rebuild_tensor_v2(storage, offset, size, ...)``)."""
    for _ in range(4):
        if not isinstance(value, Call) or not isinstance(value.func, Global):
            return None
        if value.func.name in TENSOR_BUILDERS and isinstance(value.args, tuple) and len(value.args) > 2:
            size = value.args[2]
            return tuple(size) if isinstance(size, (tuple, list)) and all(isinstance(s, int) for s in size) else None
        if value.func.name.startswith("_rebuild_parameter") and value.args:
            value = value.args[0]
        else:
            return None
    return None


def plain(value):
    """A pickled attribute value as a Python value (``build_intlist([0, 0])`` -> ``[0, 0]``)."""
    if isinstance(value, Call) and isinstance(value.func, Global) and value.func.name in LIST_BUILDERS and value.args:
        return value.args[0]
    return value


def module_class(code: Code, value) -> ClassInfo | None:
    if isinstance(value, Obj) and isinstance(value.cls, Global):
        return code.classes.get(value.cls.qualname)
    return None
