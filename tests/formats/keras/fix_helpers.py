"""Helpers for the Keras fix tests (the head and bias fixes, pointwise factorisation, Tucker-2 and
separable convs, merged linear chains, VGG16): save a model built in the test, carry one
plan out on the file with the Keras backend's session (as the fix loop does, without
the rules), and read the written file back with Keras. Numbers are computed here from
the files, never taken from pwlint's report."""

from __future__ import annotations

import re
from math import prod
from pathlib import Path

import numpy as np

from tests.conftest import fix_json

ERROR = re.compile(r"relative (?:weight|kernel) error ([0-9.e+-]+)")


def keras():
    import keras

    return keras


def randomise(model, seed: int = 0, scale: float = 0.3):
    """Every weight random (BatchNorm variances positive), so a wrong weight, bias or order shows."""
    rng = np.random.default_rng(seed)
    for layer in leaves(model):
        values = []
        for variable, value in zip(layer.weights, layer.get_weights()):
            fresh = rng.standard_normal(value.shape) * scale
            if variable.path.endswith("moving_variance"):
                fresh = np.abs(fresh) + 0.5
            values.append(fresh.astype(value.dtype))
        layer.set_weights(values)
    return model


def leaves(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from leaves(layer)
        else:
            yield layer


def save(model, path: Path) -> Path:
    model.save(str(path))
    return Path(path)


def load(path: Path):
    return keras().saving.load_model(str(path), compile=False, safe_mode=True)


def sample(model, seed: int = 0, batch: int = 2) -> np.ndarray:
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype("float32")


def run(model, x) -> list[np.ndarray]:
    k = keras()
    return [np.asarray(k.ops.convert_to_numpy(out)) for out in k.tree.flatten(model(x, training=False))]


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def kernel(model, name: str) -> np.ndarray:
    """A layer's kernel as float64 numpy."""
    return np.asarray(keras().ops.convert_to_numpy(model.get_layer(name).kernel), np.float64)


def oihw(keras_kernel: np.ndarray) -> np.ndarray:
    """A Keras ``(*K, in, out)`` kernel as ``(out, in, *K)``."""
    spatial = keras_kernel.ndim - 2
    return np.transpose(keras_kernel, (spatial + 1, spatial, *range(spatial)))


def apply_plan(path: Path, action: str, plan, applicability: str = "unsafe") -> str:
    """Carry ``plan`` out on the file with the Keras backend's session and write the
    result in place (checked by loading it back, not verified by running); the note.
    FixNotApplicable propagates, and then the file is untouched."""
    from pwlint.findings import Fix
    from pwlint.formats.keras.backend import KerasFixSession

    session = KerasFixSession(str(path))
    try:
        note = session.apply(Fix(applicability, "test", action, plan))
        session.accept(session.checkpoint())
        session.commit(str(path))
    finally:
        session.close()
    return note


def reported_error(note: str) -> float:
    return float(ERROR.search(note).group(1))


def fix_report(path: Path, *args: str) -> dict:
    """``pwlint PATH --fix ARGS --format json``: the file's fix report."""
    _, report = fix_json(path, "--fix", *args)
    return report


def params(layer) -> int:
    return sum(prod(w.shape) for w in layer.trainable_weights)


def reports(note: str, measured: float) -> bool:
    """Whether the note's error is ``measured`` as it prints it (three significant digits)."""
    return reported_error(note) == float(f"{measured:.3g}")


def configure(folder: Path, code: str, **options) -> None:
    """A ``pyproject.toml`` in ``folder`` setting options of rule ``code`` (values as TOML)."""
    lines = [f"[tool.pwlint.rules.{code}]"] + [f"{key} = {value}" for key, value in options.items()]
    (Path(folder) / "pyproject.toml").write_text("\n".join(lines) + "\n")


def outcomes(report: dict, code: str, key: str = "applied") -> list[dict]:
    """The fix report's applied (or ``not_applied``) outcomes of rule ``code``."""
    return [o for o in report["files"][0]["fix"][key] if o["code"] == code]
