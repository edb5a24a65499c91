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

from pwlint.errors import FixNotApplicable, LoadError
from pwlint.findings import Fix
from pwlint.fix.actions import accepted, carry_out
from pwlint.fix.backend import FormatBackend, run_on_samples
from pwlint.formats.onnx.edit import Editor
from pwlint.formats.onnx.fixes import OnnxRewriter
from pwlint.ir import ModelGraph
from pwlint.formats.onnx.loader import load_proto
from pwlint.formats.onnx.read import parse_file
from pwlint.formats.onnx.wire import payload_slice, write_model

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
    """One model being fixed.

    The in-memory model holds structure only: weights stay in the file they were
    read from (see :mod:`pwlint.formats.onnx.wire`) or, when a fix makes new ones,
    in ``pending`` until the next candidate file is written. After each checkpoint
    the model is read back from the candidate, so memory holds at most the new
    weights of one round, while the checker and onnxruntime get the memory.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        model = parse_file(path)
        genuine = _external_locations(model) - {self.path.name}
        if genuine:
            _check_locations(self.path, genuine)
        #: write weights to a separate data file, as the source did (or must, past 2 GB)
        self.external_output = bool(genuine) or self.path.stat().st_size > PROTO_LIMIT
        self.model = model
        self.folder = self.path.resolve().parent  # where the model's weight references point
        self.pending: dict[str, np.ndarray] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix=".pwlint-", dir=self.folder))
        self.rounds = 0
        self.last_good = self.path  # the file holding the last verified state

    # reading -------------------------------------------------------------
    def graph(self) -> ModelGraph:
        return load_proto(self.model, str(self.path))

    def file_size(self, model_file: Path) -> int:
        size = model_file.stat().st_size
        data = model_file.parent / self._data_name()
        if data.exists():
            size += data.stat().st_size
        elif model_file == self.path:
            genuine = _external_locations(parse_file(str(model_file))) - {self.path.name}
            size += sum((self.path.parent / loc).stat().st_size for loc in genuine)
        return size

    # changing ------------------------------------------------------------
    def apply(self, fix: Fix) -> str:
        graph = self.graph()
        plan = accepted(fix, graph, OnnxBackend)
        return carry_out(OnnxRewriter(Editor(self.model, self.folder, self.pending), graph), plan)

    def checkpoint(self) -> Path:
        """Write the current model to a new candidate file and run the ONNX checker on it."""
        self.rounds += 1
        folder = self.workdir / f"round-{self.rounds}"
        folder.mkdir()
        candidate = folder / self.path.name
        write_model(
            self.model, candidate, self._payload_of,
            data_file=self._data_name() if self.external_output else None,
        )
        self._read(candidate)
        onnx.checker.check_model(str(candidate), full_check=True)
        return candidate

    def _payload_of(self, tensor: onnx.TensorProto):
        if tensor.name in self.pending:
            return self.pending[tensor.name]
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            return payload_slice(tensor, self.folder)
        return None

    def _read(self, model_file: Path) -> None:
        self.model = parse_file(str(model_file))
        self.folder = model_file.resolve().parent
        self.pending = {}

    def accept(self, candidate: Path) -> None:
        self.last_good = candidate

    def revert(self) -> None:
        """Back to the last verified state."""
        self._read(self.last_good)

    def _data_name(self) -> str:
        return f"{self.path.name}.data"

    # writing -------------------------------------------------------------
    def commit(self, target: str) -> None:
        """Move the last verified candidate into place by atomic renames within the
        target's folder, in an order where a kill at any moment leaves a model whose
        external data is complete and its own (at worst under an interim name)."""
        destination = Path(target)
        source = self.last_good
        if source == self.path:
            source = self.checkpoint()
        folder = destination.resolve().parent
        staging = Path(tempfile.mkdtemp(prefix=".pwlint-", dir=folder))
        same_device = os.stat(staging).st_dev == os.stat(source).st_dev
        move = os.replace if same_device else shutil.copyfile  # a rename moves no bytes
        try:
            staged_model = staging / destination.name
            move(source, staged_model)
            data = source.parent / self._data_name()
            if not data.exists():
                os.replace(staged_model, destination)
                return
            final_data = folder / f"{destination.name}.data"
            if final_data.exists():
                # the model in place may read this file: it must not change while any
                # committed model reads it, so the new data goes in under an interim name
                placed = folder / f".{destination.name}.{staging.name.removeprefix('.pwlint-')}.data"
            else:
                placed = final_data
            move(data, staging / placed.name)
            os.replace(staging / placed.name, placed)
            model = onnx.load_model(str(staged_model), load_external_data=False)
            try:
                _point_at(model, placed.name, staged_model)
                os.replace(staged_model, destination)
            except BaseException:
                if staged_model.exists():  # not renamed: no model reads the placed data
                    placed.unlink(missing_ok=True)
                raise
            if placed == final_data:
                return
            # the new model is in place with its data; now give the data its usual name. A
            # copy, not a hard link: onnx refuses data files with several links
            shutil.copyfile(placed, staging / final_data.name)
            os.replace(staging / final_data.name, final_data)
            _point_at(model, final_data.name, staged_model)
            os.replace(staged_model, destination)
            placed.unlink()
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


def _point_at(model: onnx.ModelProto, location: str, model_file: Path) -> None:
    """Write ``model`` to ``model_file`` with all its external data read from ``location``."""
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(model_file))


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


def run_model(model_file: Path, feeds: dict | None = None, seed: int = 0) -> tuple[dict, dict[str, np.ndarray]]:
    """Run a model file with onnxruntime on seeded inputs (or the given ones). The
    outputs come back by name, in the graph's order, so that verification notices a
    fix that renames or reorders them."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise FixNotApplicable(
            "onnxruntime is not installed (pip install 'pwlint[onnx]')"
        ) from None

    ort.set_default_logger_severity(4)  # errors come back as exceptions, not log lines on stderr
    options = ort.SessionOptions()
    options.log_severity_level = 4
    # run the graph as written: no fusions that could mask a difference, and the
    # optimisers' copies of large weights (2x memory on a VGG16 head) are avoided
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # an operator onnxruntime does not have, an invalid graph
        raise FixNotApplicable(f"onnxruntime cannot load the model: {str(exc).strip().splitlines()[0]}") from exc
    run_options = ort.RunOptions()
    run_options.log_severity_level = 4
    names = [output.name for output in session.get_outputs()]

    def run(feeds: dict) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, feeds, run_options)))

    return run_on_samples(run, lambda size: _feeds(session, seed, size), (SYMBOLIC_DIM, 1), feeds,
                          "onnxruntime cannot run the model")


class OnnxBackend(FormatBackend):
    name, label, checker, runtime = "onnx", "ONNX", "the ONNX checker", "onnxruntime"
    session, run_model = OnnxFixSession, staticmethod(run_model)
    rewrites_quantized = False  # any head rank: ONNX convs have any number of spatial axes
