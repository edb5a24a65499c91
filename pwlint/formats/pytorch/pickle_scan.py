"""The structure of a pickle, without unpickling it.

``pickletools.genops`` disassembles the opcodes; a small stack machine rebuilds plain
values (numbers, strings, tuples, lists, dicts). Nothing is imported and nothing is
called: ``GLOBAL`` becomes a :class:`Global` naming what would have been imported,
``REDUCE`` a :class:`Call` recording what would have been called, ``NEWOBJ``/``BUILD``
an :class:`Obj` with its state, a persistent id a :class:`Persistent`. A malicious
``__reduce__`` is therefore just data here.

Used for TorchScript's ``data.pkl`` and ``constants.pkl`` (module attributes and the
sizes of parameters); tensor payloads are never read.
"""

from __future__ import annotations

import pickletools
import warnings
from dataclasses import dataclass
from typing import Any


class PickleScanError(Exception):
    """The pickle is malformed, too large, or uses opcodes this reader does not handle."""


@dataclass(frozen=True)
class Global:
    module: str
    name: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class Call:
    func: Any
    args: Any


@dataclass(eq=False)
class Obj:
    cls: Any
    args: Any = ()
    state: Any = None


@dataclass(frozen=True)
class Persistent:
    pid: Any


class _Unhashable:
    """A dict key that cannot be hashed (a Call, an Obj) is kept by identity."""

    def __init__(self, value) -> None:
        self.value = value


MAX_OPS = 20_000_000


def _key(value):
    try:
        hash(value)
        return value
    except TypeError:
        return _Unhashable(value)


def scan(data: bytes, max_ops: int = MAX_OPS) -> Any:
    """The value a pickle describes, with :class:`Global`, :class:`Call` and :class:`Obj`
    records in place of anything that unpickling would import, call or construct."""
    with warnings.catch_warnings():  # odd string escapes in a damaged pickle must not print
        warnings.simplefilter("ignore")
        return _scan(data, max_ops)


def _scan(data: bytes, max_ops: int) -> Any:
    stack: list = []
    marks: list[int] = []
    memo: dict = {}

    def pop_mark() -> list:
        if not marks:
            raise PickleScanError("MARK missing")
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    try:
        for count, (opcode, arg, _pos) in enumerate(pickletools.genops(data)):
            if count > max_ops:
                raise PickleScanError("too many opcodes")
            name = opcode.name
            if name in ("PROTO", "FRAME"):
                continue
            if name == "STOP":
                return stack.pop()
            if name == "MARK":
                marks.append(len(stack))
            elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
                stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
            elif name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
                          "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                          "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"):
                stack.append(arg)
            elif name == "EMPTY_TUPLE":
                stack.append(())
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                size = int(name[-1])
                items = tuple(stack[-size:])
                del stack[-size:]
                stack.append(items)
            elif name == "TUPLE":
                stack.append(tuple(pop_mark()))
            elif name == "EMPTY_LIST":
                stack.append([])
            elif name == "LIST":
                stack.append(pop_mark())
            elif name == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif name == "APPENDS":
                items = pop_mark()
                stack[-1].extend(items)
            elif name == "EMPTY_DICT":
                stack.append({})
            elif name == "DICT":
                items = pop_mark()
                stack.append({_key(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)})
            elif name == "SETITEM":
                value = stack.pop()
                key = stack.pop()
                stack[-1][_key(key)] = value
            elif name == "SETITEMS":
                items = pop_mark()
                target = stack[-1]
                for i in range(0, len(items) - 1, 2):
                    target[_key(items[i])] = items[i + 1]
            elif name in ("EMPTY_SET",):
                stack.append([])
            elif name == "ADDITEMS":
                items = pop_mark()
                stack[-1].extend(items)
            elif name == "FROZENSET":
                stack.append(tuple(pop_mark()))
            elif name == "POP":
                stack.pop()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                stack.append(stack[-1])
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name in ("GLOBAL", "INST"):
                module, _, attr = arg.partition(" ")
                if name == "GLOBAL":
                    stack.append(Global(module, attr))
                else:
                    stack.append(Obj(Global(module, attr), tuple(pop_mark())))
            elif name == "STACK_GLOBAL":
                attr = stack.pop()
                module = stack.pop()
                stack.append(Global(str(module), str(attr)))
            elif name in ("EXT1", "EXT2", "EXT4"):
                stack.append(Global("copyreg.extension", str(arg)))
            elif name == "REDUCE":
                args = stack.pop()
                func = stack.pop()
                stack.append(Call(func, args))
            elif name == "NEWOBJ":
                args = stack.pop()
                cls = stack.pop()
                stack.append(Obj(cls, args))
            elif name == "NEWOBJ_EX":
                kwargs = stack.pop()
                args = stack.pop()
                cls = stack.pop()
                stack.append(Obj(cls, args, {"__kwargs__": kwargs}))
            elif name == "OBJ":
                items = pop_mark()
                stack.append(Obj(items[0], tuple(items[1:])))
            elif name == "BUILD":
                state = stack.pop()
                target = stack[-1]
                if isinstance(target, Obj):
                    target.state = state
                else:
                    stack[-1] = Obj(target, (), state)
            elif name == "PERSID":
                stack.append(Persistent(arg))
            elif name == "BINPERSID":
                stack.append(Persistent(stack.pop()))
            else:
                raise PickleScanError(f"unsupported pickle opcode {name}")
    except PickleScanError:
        raise
    except (ValueError, IndexError, KeyError, TypeError, AttributeError, EOFError) as exc:
        raise PickleScanError(f"malformed pickle ({type(exc).__name__}: {exc})") from exc
    raise PickleScanError("pickle ends without STOP")
