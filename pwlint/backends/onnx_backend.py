"""The ONNX fix backend: loads a model with its weights, applies fix plans, checks
each candidate with the ONNX checker and onnxruntime, and writes atomically.

Candidates are written to a private temporary folder next to the target, so the
final step is a rename on the same file system; the source model is never
opened for writing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx

from pwlint.backends.onnx_edit import Editor
from pwlint.backends.onnx_fixes import ACTIONS
from pwlint.errors import FixNotApplicable, LoadError
from pwlint.findings import Fix
from pwlint.ir import ModelGraph
from pwlint.loaders.onnx_loader import load_proto
from pwlint.loaders.onnx_read import parse_file

#: ONNX's protobuf limit: larger models must keep their weights in external data
PROTO_LIMIT = 2_000_000_000
#: how symbolic input dimensions (batch, sequence) are bound when running the model
SYMBOLIC_DIM = 2


def _external_locations(model: onnx.ModelProto) -> set[str]:
    locations = set()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in tensor.external_data}
            locations.add(info.get("location", ""))
    return locations


def _read_with_data(path: Path) -> onnx.ModelProto:
    model = parse_file(str(path))
    if _external_locations(model):
        onnx.load_external_data_for_model(model, str(path.resolve().parent))
    return model


def _check_locations(path: Path, locations: set[str]) -> None:
    """External data may only come from files inside the model's own folder."""
    folder = path.resolve().parent
    for location in locations:
        target = (folder / location).resolve()
        if not location or os.path.isabs(location) or folder not in target.parents:
            raise LoadError(f"{path}: external data '{location}' is outside the model's folder")
        if not target.is_file():
            raise LoadError(f"{path}: external data file '{location}' is missing")


class OnnxFixSession:
    """One model being fixed: the in-memory model, its last verified file, temp files."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        model = parse_file(path)
        self.locations = _external_locations(model)
        if self.locations:
            _check_locations(self.path, self.locations)
            onnx.load_external_data_for_model(model, str(self.path.resolve().parent))
        self._model = model
        self.workdir = Path(tempfile.mkdtemp(prefix=".pwlint-", dir=self.path.resolve().parent))
        self.rounds = 0
        self.last_good = self.path  # the file holding the last verified state
        self._pending = self.path  # the file to read the model back from when it was dropped

    @property
    def model(self) -> onnx.ModelProto:
        """The model being fixed. It is dropped from memory while the checker and
        onnxruntime run on a written candidate, and read back on demand: a model
        in memory three times over would not fit a large model in its budget."""
        if self._model is None:
            self._model = _read_with_data(self._pending)
        return self._model

    # reading -------------------------------------------------------------
    def graph(self) -> ModelGraph:
        return load_proto(self.model, str(self.path))

    def file_size(self, model_file: Path) -> int:
        size = model_file.stat().st_size
        data = model_file.parent / self._data_name()
        if self.locations and data.exists():
            size += data.stat().st_size
        elif model_file == self.path:
            size += sum((self.path.parent / loc).stat().st_size for loc in self.locations)
        return size

    # changing ------------------------------------------------------------
    def apply(self, fix: Fix) -> str:
        action = ACTIONS.get(fix.action)
        if action is None:
            raise FixNotApplicable(f"the ONNX backend has no '{fix.action}' action")
        return action(Editor(self.model), self.graph(), fix.plan)

    def checkpoint(self) -> Path:
        """Write the current model to a new candidate file and run the ONNX checker on it."""
        self.rounds += 1
        folder = self.workdir / f"round-{self.rounds}"
        folder.mkdir()
        candidate = folder / self.path.name
        external = bool(self.locations) or self.model.ByteSize() > PROTO_LIMIT
        if external:
            onnx.save_model(
                self.model, str(candidate), save_as_external_data=True, all_tensors_to_one_file=True,
                location=self._data_name(), size_threshold=1024,
            )
            self.locations = {self._data_name()}
        else:
            onnx.save_model(self.model, str(candidate))
        self._model, self._pending = None, candidate
        onnx.checker.check_model(str(candidate), full_check=True)
        return candidate

    def accept(self, candidate: Path) -> None:
        self.last_good = candidate

    def revert(self) -> None:
        """Back to the last verified state (read back when next needed)."""
        self._model, self._pending = None, self.last_good

    def _data_name(self) -> str:
        return f"{self.path.name}.data"

    # writing -------------------------------------------------------------
    def commit(self, target: str) -> None:
        """Move the last verified candidate into place: data first, then the model, each
        by an atomic rename within the target's folder."""
        destination = Path(target)
        source = self.last_good
        if source == self.path:
            source = self.checkpoint()
        staging = Path(tempfile.mkdtemp(prefix=".pwlint-", dir=destination.resolve().parent))
        same_folder = staging.parent == source.parent.parent
        move = os.replace if same_folder else shutil.copyfile  # candidates live next to the source
        try:
            staged_model = staging / destination.name
            move(source, staged_model)
            data = source.parent / self._data_name()
            if data.exists():
                staged_data = staging / f"{destination.name}.data"
                move(data, staged_data)
                if destination.name != self.path.name:
                    # the model names its data file: point it at the renamed one
                    model = onnx.load_model(str(staged_model), load_external_data=False)
                    for tensor in onnx.external_data_helper._get_all_tensors(model):
                        for entry in tensor.external_data:
                            if entry.key == "location":
                                entry.value = staged_data.name
                    onnx.save_model(model, str(staged_model))
                os.replace(staged_data, destination.parent / staged_data.name)
            os.replace(staged_model, destination)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _feeds(session, seed: int, symbolic: int) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else symbolic for d in arg.shape]
        kind = arg.type[len("tensor("):-1]
        if kind in ("float", "double", "float16"):
            dtype = {"float": np.float32, "double": np.float64, "float16": np.float16}[kind]
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        elif kind == "bool":
            feeds[arg.name] = rng.integers(0, 2, shape).astype(bool)
        elif kind.startswith(("int", "uint")):
            feeds[arg.name] = rng.integers(0, 4, shape).astype(np.dtype(kind.replace("uint", "uint")))
        else:
            raise FixNotApplicable(f"cannot make sample inputs of type {arg.type} for '{arg.name}'")
    return feeds


def run_model(model_file: Path, feeds: dict | None = None, seed: int = 0) -> tuple[dict, list[np.ndarray]]:
    """Run a model file with onnxruntime on seeded inputs (or the given ones)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    if feeds is not None:
        return feeds, session.run(None, feeds)
    last_error = None
    for symbolic in (SYMBOLIC_DIM, 1):
        feeds = _feeds(session, seed, symbolic)
        try:
            return feeds, session.run(None, feeds)
        except Exception as exc:  # a model may only run with batch 1: try that next
            last_error = exc
    raise FixNotApplicable(f"onnxruntime cannot run the model: {str(last_error).splitlines()[0]}")


class OnnxBackend:
    name = "onnx"

    @staticmethod
    def open(path: str) -> OnnxFixSession:
        return OnnxFixSession(path)

    @staticmethod
    def run(model_file: Path, feeds: dict | None = None):
        return run_model(model_file, feeds)
