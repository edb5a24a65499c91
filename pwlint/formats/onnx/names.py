"""The source-code module a node came from, where the file records it.

The dynamo ``torch.onnx.export`` names nodes after the traced operation
(``node_linear``, ``node_conv2d_1``, ``node_view``), which a user cannot find in
their code; but it records the module path in each node's ``metadata_props``:

- ``pkg.torch.onnx.name_scopes``: ``"['', 'classifier', 'classifier.1', 'linear']"``,
  the module scopes from the root down, then the operation's own name;
- ``pkg.torch.onnx.class_hierarchy``: the class of each scope, the operation
  last (``'aten.linear.default'``);
- ``namespace``: the same as one string,
  ``": Net/classifier: Sequential/classifier.1: Linear/linear: aten.linear.default"``.

The values are Python list reprs written by the exporter; they are read as text
(quoted strings), never evaluated.
"""

from __future__ import annotations

import re

SCOPES = "pkg.torch.onnx.name_scopes"
CLASSES = "pkg.torch.onnx.class_hierarchy"
NAMESPACE = "namespace"
#: metadata longer than this is not an exporter's scope list
MAX_TEXT = 4096
#: what a module path looks like: no spaces, quotes, escapes or control characters
_PLAIN = re.compile(r"[^\s'\"\\\x00-\x1f\x7f]+")
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


def module_path(proto, name: str) -> str | None:
    """The module path recorded for a node (``classifier.1``), or None when the file
    records none, the node sits in the root module, or its name already is that path."""
    props = getattr(proto, "metadata_props", None)
    if not props:
        return None
    meta = {entry.key: entry.value for entry in props if entry.key in (SCOPES, CLASSES, NAMESPACE)}
    path = _from_scopes(meta) if SCOPES in meta else _from_namespace(meta.get(NAMESPACE, ""))
    if not path or path == name or not _PLAIN.fullmatch(path):
        return None
    return path


def _strings(text: str) -> list[str]:
    """The strings of a Python list repr of strings; empty for anything else."""
    text = text.strip()
    if len(text) > MAX_TEXT or not (text.startswith("[") and text.endswith("]")):
        return []
    if _QUOTED.sub("", text[1:-1]).replace(",", "").strip():
        return []  # something other than quoted strings between the brackets
    return [single if single or not double else double for single, double in _QUOTED.findall(text)]


def _is_operation(qualified: str) -> bool:
    """``aten.linear.default`` names an operation; ``torch.nn.modules.linear.Linear`` a class."""
    last = qualified.rsplit(".", 1)[-1]
    return not last[:1].isupper()


def _from_scopes(meta: dict) -> str | None:
    scopes = _strings(meta[SCOPES])
    if not scopes:
        return None
    classes = _strings(meta.get(CLASSES, ""))
    # the exporter ends the list with the operation's own name (its class: 'aten.relu.default')
    if not (len(classes) == len(scopes) and not _is_operation(classes[-1])):
        scopes = scopes[:-1]
    return next((scope for scope in reversed(scopes) if scope), None)


def _from_namespace(namespace: str) -> str | None:
    if not namespace or len(namespace) > MAX_TEXT:
        return None
    parts = [part.rsplit(": ", 1) for part in namespace.split("/")]
    scopes = [(part[0].strip(), part[-1].strip()) for part in parts]
    if scopes and _is_operation(scopes[-1][1]):
        scopes = scopes[:-1]
    return next((scope for scope, _ in reversed(scopes) if scope), None)
