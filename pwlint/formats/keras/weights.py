"""Stored weight shapes, assigned to the layers of a parsed Keras config.

``.keras`` weights files mirror the Python object tree: ``layers/<object>/vars/<i>``,
where ``<object>`` is the snake-cased class name made unique (``conv2d_1``) and
the ``vars`` group's ``name`` attribute is the layer's name (files from early
Keras 3 releases lack it; the object names are then rebuilt from the config).
Legacy ``.h5`` files keep one group per top-level layer under ``model_weights``,
and a nested model's weights under ``<model>/<inner model>/<layer>/<weight>``;
Keras 2.0-2.1 name them ``<layer>/kernel:0``, Keras 1 ``<layer>_W`` (read as
Keras 2's names, see :func:`keras1_weights`).
Only shapes and dtypes are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pwlint.errors import LoadError
from pwlint.formats.keras.config import ModelSpec
from pwlint.formats.keras.read import KerasFile, as_text, is_group, is_hard_link

Path = tuple  # the names of the nested models and the layer: ("backbone", "conv2d")


@dataclass
class Weight:
    """One stored variable: its path inside the layer's group, shape and dtype kind."""

    name: str
    shape: tuple
    numeric: bool = True

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n


class WeightIndex:
    """Weights per layer path, and the weights that could not be matched to a layer."""

    def __init__(self) -> None:
        self.by_layer: dict[Path, list[Weight]] = {}
        self.unassigned: list[Weight] = []

    def of(self, path: Path) -> list[Weight] | None:
        return self.by_layer.get(tuple(path))


class DamagedWeights(Exception):
    """h5py could not read part of the weights file (its message says what)."""


def index_weights(model: KerasFile, spec: ModelSpec | None) -> WeightIndex:
    index = WeightIndex()
    root = model.weights_root
    if root is None:
        return index
    try:
        if spec is None:  # a model whose architecture is not a layer graph: count everything
            index.unassigned = [w for w in datasets(root) if not w.name.startswith("optimizer/")]
        elif model.container == "keras":
            _walk_keras(root, spec, (), index)
        else:
            _walk_legacy(root, spec, index)
    except DamagedWeights as exc:
        raise LoadError(f"{model.path}: cannot read the stored weights, the HDF5 data is damaged ({exc})") from None
    return index


def _h5_detail(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


def snake_case(name: str) -> str:
    """Keras' naming.to_snake_case, which names the groups of a .keras weights file."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _object_names(spec: ModelSpec) -> dict[str, str]:
    """Weights-file group name -> layer name, as Keras numbers them (conv2d, conv2d_1, ...)."""
    used: dict[str, int] = {}
    names = {}
    for layer in spec.layers:
        if spec.kind == "sequential" and layer.class_name == "InputLayer":
            continue
        cls = "functional" if layer.class_name == "Model" else layer.class_name.rpartition(">")[2]
        base = snake_case(cls)
        if base in used:
            used[base] += 1
            key = f"{base}_{used[base]}"
        else:
            used[base] = 0
            key = base
        names[key] = layer.name
    return names


def _walk_keras(group, spec: ModelSpec, prefix: Path, index: WeightIndex) -> None:
    layers_group = dict(children(group)).get("layers")
    fallback = _object_names(spec)
    for key, child in children(layers_group):
        vars_group = dict(children(child)).get("vars")
        name = attr_text(vars_group, "name") if vars_group is not None else None
        if name not in spec.by_name:
            name = fallback.get(key)
        layer = spec.by_name.get(name)
        if layer is None:
            index.unassigned += datasets(child)
        elif layer.model is not None:
            _walk_keras(child, layer.model, prefix + (layer.name,), index)
        else:
            index.by_layer.setdefault(prefix + (layer.name,), []).extend(datasets(child))


def _leaves(spec: ModelSpec, prefix: Path = ()) -> list[Path]:
    found = []
    for layer in spec.layers:
        if layer.model is not None:
            found += _leaves(layer.model, prefix + (layer.name,))
        else:
            found.append(prefix + (layer.name,))
    return found


def _match(parents: Path, leaves: list[Path]) -> Path | None:
    """The layer inside a nested model that a legacy weight path names: the longest tail
    of its group path that is a layer path, else a unique layer of that name."""
    leafset = set(leaves)
    for start in range(len(parents)):
        if parents[start:] in leafset:
            return parents[start:]
    for name in reversed(parents):
        found = [leaf for leaf in leaves if leaf[-1] == name]
        if len(found) == 1:
            return found[0]
    return None


def _walk_legacy(root, spec: ModelSpec, index: WeightIndex) -> None:
    for key, child in children(root):
        layer = spec.by_name.get(key)
        weights = datasets(child) if not hasattr(child, "shape") else [Weight(key, _shape_of(child))]
        if layer is None:
            index.unassigned += weights
        elif layer.model is None:
            index.by_layer.setdefault((key,), []).extend(keras1_weights(weights, layer))
        else:
            leaves = _leaves(layer.model)
            specs = _leaf_specs(layer.model)
            for weight in weights:
                target = _match(tuple(weight.name.split("/")[:-1]), leaves) or _keras1_owner(weight.name, leaves)
                if target is None:
                    index.unassigned.append(weight)
                else:
                    index.by_layer.setdefault((key, *target), []).extend(keras1_weights([weight], specs[target]))


#: Keras 1 weight names, ``<layer>_<suffix>``, and the Keras 2 name of each (the others,
#: such as an LSTM's ``W_i`` or a PReLU's ``alphas``, keep theirs)
KERAS1_SUFFIXES = {
    "W": "kernel", "b": "bias", "gamma": "gamma", "beta": "beta", "running_mean": "moving_mean",
    "running_std": "moving_variance", "depthwise_kernel": "depthwise_kernel",
    "pointwise_kernel": "pointwise_kernel", "U": "recurrent_kernel", "alphas": "alpha",
}
KERAS1_WEIGHT = re.compile(r"^(?P<layer>.+)_(?P<suffix>W|b|gamma|beta|running_mean|running_std|"
                           r"depthwise_kernel|pointwise_kernel|U|alphas)(:\d+)?$")
#: Keras 1 convolutions whose ``"th"`` kernels are stored (filters, channels, *kernel)
KERAS1_TH_CONVS = frozenset({"Convolution2D", "Convolution3D", "AtrousConvolution2D"})


def _keras1_owner(name: str, leaves: list[Path]) -> Path | None:
    """The layer of a nested model that a Keras 1 weight name (``convolution2d_1_W``) names."""
    match = KERAS1_WEIGHT.match(name.rpartition("/")[2])
    if match is None:
        return None
    found = [leaf for leaf in leaves if leaf[-1] == match.group("layer")]
    return found[0] if len(found) == 1 else None


def keras1_weights(weights: list[Weight], layer) -> list[Weight]:
    """Keras 1 weights (``convolution2d_1_W``, ``batchnormalization_1_running_std``) under
    their Keras 2 names (``kernel``, ``moving_variance``), so that BatchNorm's statistics
    are told from its trainable values, and a kernel's shape in Keras 2's order: a
    ``"th"`` Convolution2D stored (filters, channels, rows, cols), a Convolution1D
    (length, 1, channels, filters). Only the recorded shape is reordered; nothing is read."""
    renamed = []
    for weight in weights:
        head, _, tail = weight.name.rpartition("/")
        match = KERAS1_WEIGHT.match(tail)
        if match is None or match.group("layer") != layer.name:
            renamed.append(weight)
            continue
        new_tail = KERAS1_SUFFIXES[match.group("suffix")]
        shape = weight.shape
        if new_tail == "kernel":
            shape = _keras2_kernel_shape(layer, shape)
        renamed.append(Weight(f"{head}/{new_tail}" if head else new_tail, shape, weight.numeric))
    return renamed


def _keras2_kernel_shape(layer, shape: tuple) -> tuple:
    stored = layer.stored_class or layer.class_name
    if stored in KERAS1_TH_CONVS and layer.config.get("data_format") == "channels_first" and len(shape) >= 4:
        return (*shape[2:], shape[1], shape[0])
    if stored in ("Convolution1D", "AtrousConvolution1D") and len(shape) == 4 and shape[1] == 1:
        return (shape[0], shape[2], shape[3])
    return shape


def _leaf_specs(spec: ModelSpec, prefix: Path = ()) -> dict:
    found = {}
    for layer in spec.layers:
        if layer.model is not None:
            found.update(_leaf_specs(layer.model, prefix + (layer.name,)))
        else:
            found[prefix + (layer.name,)] = layer
    return found


# h5py helpers: shapes and dtypes only, never values ---------------------------------

def attr_text(obj, key: str) -> str | None:
    """A string attribute of an h5py object, or None."""
    try:
        value = obj.attrs.get(key)
    except Exception:
        return None
    if value is None:
        return None
    return as_text(value)


def children(group) -> list[tuple[str, Any]]:
    """The (name, object) pairs of an h5py group, following hard links only: an external
    link would open another file named by the model, a soft link could loop."""
    if not is_group(group):
        return []
    found = []
    try:
        keys = list(group.keys())
    except Exception as exc:  # h5py raises RuntimeError, OSError, KeyError... for damaged files
        raise DamagedWeights(_h5_detail(exc)) from exc
    for key in keys:
        try:
            if not is_hard_link(group, key):
                continue
            found.append((key, group[key]))
        except Exception:  # an unreadable entry
            continue
    return found


def datasets(group, prefix: str = "") -> list[Weight]:
    """Every dataset under ``group``, with its path below ``group``: shape and dtype only."""
    found: list[Weight] = []
    stack = [(prefix, group)]
    seen = {_identity(group)}  # hard links can make a group its own descendant
    while stack:
        where, current = stack.pop()
        for key, obj in children(current):
            name = f"{where}/{key}" if where else key
            if is_group(obj):
                if _identity(obj) not in seen:
                    seen.add(_identity(obj))
                    stack.append((name, obj))
            else:
                try:  # a dataset's header is read here, and may be damaged; a named datatype has no shape
                    shape = getattr(obj, "shape", None)
                    kind = getattr(getattr(obj, "dtype", None), "kind", "") if shape is not None else ""
                except Exception as exc:
                    raise DamagedWeights(_h5_detail(exc)) from exc
                if shape is not None:
                    found.append(Weight(name, tuple(int(d) for d in shape), kind in "fiuc" and kind != ""))
    return sorted(found, key=lambda w: _natural(w.name))


def _shape_of(dataset) -> tuple:
    try:
        return tuple(dataset.shape or ())
    except Exception as exc:  # a damaged dataset header
        raise DamagedWeights(_h5_detail(exc)) from exc


def _identity(obj):
    try:
        return hash(obj.id)  # h5py hashes an object by its file and address
    except Exception:
        return id(obj)


def _natural(name: str) -> list:
    """Sort ``vars/10`` after ``vars/9``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split("/")]
