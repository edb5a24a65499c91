"""The Keras fix backend: rewrites ``.keras`` (and legacy ``.h5``) models with Keras
itself, checks each candidate by building it again, runs models for verification
and writes atomically.

Keras is imported here only, when a model is fixed or run; ``KERAS_BACKEND``
defaults to ``torch`` when it is unset and torch is installed. No file, the user's
or pwlint's own, is opened with ``keras.saving.load_model``: every model is rebuilt
from pwlint's validated reading of its config and weights
(:mod:`pwlint.formats.keras.rebuild`). A Lambda layer, a custom object or a class
pwlint does not know refuses the fix with the reason (reported as not applied;
linting is unaffected), and nothing from the file runs.

Each state of the model is a file: the source, then one file per applied fix in
a private ``.pwlint-*`` folder next to the model, written in the source's format
(``.keras`` stays ``.keras``, ``.h5`` stays ``.h5``). ``graph()`` lints that file
with the static Keras loader, so the rules see exactly what would be written.
The source is never opened for writing; ``commit`` copies the last verified
file into a temporary file in the target's folder and renames it into place.

The optimizer's state is not kept (a rewritten layer no longer fits its slot
variables): the written file holds no optimizer variables, and the first applied
fix of a compiled or trained model says "optimizer state not kept: re-compile
before training". The compile settings (loss, metrics, optimizer config) are
carried over as stored, never deserialised by pwlint, when the file keeps its format.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from pwlint.errors import FixNotApplicable, PwlintError
from pwlint.findings import Fix
from pwlint.fix.actions import accepted, carry_out
from pwlint.fix.backend import FormatBackend, run_on_samples
from pwlint.ir import ModelGraph

#: the file types Keras writes, by suffix
FORMATS = (".keras", ".h5")
#: what checks a candidate: pwlint's rebuild of it (never keras.saving.load_model)
CHECKER = "pwlint's validated rebuild (Keras from_config, safe_mode=True)"
#: how unknown input dimensions (the batch) are bound when running the model
SYMBOLIC_DIM = 2


def import_keras():
    """Keras, on the torch backend unless ``KERAS_BACKEND`` says otherwise; a missing
    Keras is a fix that cannot apply, not a crash."""
    if not os.environ.get("KERAS_BACKEND") and importlib.util.find_spec("torch") is not None:
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        with quiet():
            import keras
    except Exception as exc:  # not installed, or its backend is not
        raise FixNotApplicable(
            f"Keras cannot be imported ({type(exc).__name__}: {_first_line(exc)}); "
            "install pwlint[keras] to fix Keras models"
        ) from exc
    logging.getLogger("absl").setLevel(logging.ERROR)  # "saving as HDF5 is legacy" and the like
    return keras


@contextlib.contextmanager
def quiet():
    """Keras' warnings and prints (h5 is legacy, no training configuration) off the
    user's terminal: the fix report says what matters."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _suffix(path: Path | str) -> str:
    """The file type by suffix; ``.hdf5`` (Keras 2's ModelCheckpoint default) is ``.h5``."""
    suffix = Path(path).suffix.lower()
    return ".h5" if suffix == ".hdf5" else suffix


#: the last model built, keyed by its file's path, size and modification time: the fix
#: loop builds each file twice in a row (checked, then run; run, then fixed), and a
#: VGG16-sized model takes seconds to build. Models are only read, never changed.
_last_loaded: tuple | None = None


def _key(model_file: Path | str) -> tuple:
    stat = os.stat(model_file)
    return (str(Path(model_file).resolve()), stat.st_size, stat.st_mtime_ns)


def load_model(keras, model_file: Path | str, fresh: bool = False):
    """The model a file holds, rebuilt by pwlint (:func:`pwlint.formats.keras.rebuild.rebuild`):
    from its validated config and its weights, never with ``keras.saving.load_model``;
    FixNotApplicable saying why a model is refused. Not compiled: the optimizer's
    state does not fit rewritten layers, and a compile config is never deserialised.
    ``fresh`` reads the file even when the model is in memory."""
    from pwlint.formats.keras.rebuild import rebuild

    global _last_loaded
    key = _key(model_file)
    if not fresh and _last_loaded is not None and _last_loaded[0] == key:
        return _last_loaded[1]
    _last_loaded = None  # the old model is not kept alive while the next one is built
    with quiet():
        model = rebuild(keras, model_file)
    _last_loaded = (key, model)
    return model


def forget_loaded() -> None:
    global _last_loaded
    _last_loaded = None


def remember_loaded(model_file: Path, model) -> None:
    global _last_loaded
    _last_loaded = (_key(model_file), model)


def save_model(keras, model, model_file: Path) -> None:
    with quiet():
        model.save(str(model_file))


#: what a fix of a compiled or trained model says once, in the fix report and JSON
OPTIMIZER_NOTE = "optimizer state not kept: re-compile before training"


def compile_config(model_file: Path) -> tuple[str, object] | None:
    """How the source model was compiled, read from the file without Keras and kept as
    stored (never deserialised here): a ``.keras`` file's ``compile_config`` (a dict),
    or a legacy ``.h5`` file's ``training_config`` attribute."""
    try:
        if _suffix(model_file) == ".keras":
            with zipfile.ZipFile(model_file) as archive:
                config = json.loads(archive.read("config.json"))
            found = config.get("compile_config") if isinstance(config, dict) else None
            return ("keras", found) if found else None
        import h5py

        with h5py.File(model_file, "r") as h5:
            found = h5.attrs.get("training_config")
        return None if found is None else ("h5", found)
    except Exception:  # a config that cannot be read is not kept
        return None


def carry_compile(model_file: Path, compiled: tuple[str, object] | None) -> None:
    """Put the source's compile settings, as stored, into a file pwlint wrote from an
    uncompiled model of the same format: Keras compiles the fixed model with them when
    it loads it (a fresh optimizer: its old state is gone). Between formats (``.h5`` to
    ``.keras`` or back) they are not carried: that would need deserialising them."""
    if compiled is None or compiled[0] != ("keras" if _suffix(model_file) == ".keras" else "h5"):
        return
    if compiled[0] == "h5":
        import h5py

        with h5py.File(model_file, "r+") as h5:
            h5.attrs["training_config"] = compiled[1]
        return
    rewritten = model_file.with_name(model_file.name + ".compile")
    with zipfile.ZipFile(model_file) as source, zipfile.ZipFile(rewritten, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                config["compile_config"] = compiled[1]
                data = json.dumps(config).encode()
            target.writestr(info, data, compress_type=info.compress_type)
    os.replace(rewritten, model_file)


class KerasFixSession:
    """One Keras model being fixed; see the module docstring."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.suffix = _suffix(self.path)
        if self.suffix not in FORMATS:
            raise PwlintError(f"{path}: the Keras backend fixes .keras and .h5 (.hdf5) files")
        self.workdir = Path(tempfile.mkdtemp(prefix=".pwlint-", dir=self.path.resolve().parent))
        self.last_good = self.path  # the file holding the last verified state
        self.current = self.path  # the file holding the state the fixes so far made
        self.compiled = compile_config(self.path)
        from pwlint.formats.keras.rebuild import stored_optimizer

        #: whether the fixes must say the optimizer's state is not kept (a compiled or
        #: trained source), and whether a round that said so was accepted
        self.optimizer_dropped = self.compiled is not None or stored_optimizer(self.path)
        self._optimizer_said = self._optimizer_said_pending = False
        self._count = 0
        self._graphs: dict[Path, ModelGraph] = {}

    # reading -------------------------------------------------------------------------
    def graph(self) -> ModelGraph:
        if self.current not in self._graphs:
            from pwlint.formats.keras.loader import load

            graph = load(str(self.current))
            graph.path = str(self.path)
            self._graphs = {self.current: graph}
        return self._graphs[self.current]

    def file_size(self, model_file: Path) -> int:
        return Path(model_file).stat().st_size

    # changing ------------------------------------------------------------------------
    def apply(self, fix: Fix) -> str:
        from pwlint.formats.keras.fixes import KerasRewriter, ModelEdit

        graph = self.graph()
        plan = accepted(fix, graph, KerasBackend)
        keras = import_keras()
        # at most the model before and the one after are in memory (a VGG16 head is 0.5 GB)
        edit = ModelEdit(keras, load_model(keras, self.current), graph)
        with quiet():
            note = carry_out(KerasRewriter(edit), plan)
            model = edit.build()
        del edit
        forget_loaded()
        self._count += 1
        state = self.workdir / f"state-{self._count}{self.suffix}"
        save_model(keras, model, state)  # uncompiled: no optimizer state is written
        if self.optimizer_dropped and not (self._optimizer_said or self._optimizer_said_pending):
            note = f"{note}; {OPTIMIZER_NOTE}" if note else OPTIMIZER_NOTE
            self._optimizer_said_pending = True  # said by this round; again if it is rolled back
        self.current = state
        remember_loaded(state, model)  # the next fix of the round starts from it
        self._prune()
        return note

    def checkpoint(self) -> Path:
        """The current state's file, once pwlint rebuilds it (validated config, weights set)."""
        keras = import_keras()
        if self.current == self.path:
            return self.path
        forget_loaded()  # read from the file, not the model in memory; one model at a time
        load_model(keras, self.current, fresh=True)  # kept in memory for the run that follows
        return self.current

    def accept(self, candidate: Path) -> None:
        self._optimizer_said = self._optimizer_said or self._optimizer_said_pending
        self._optimizer_said_pending = False
        self.last_good = Path(candidate)
        self.current = self.last_good
        self._prune()

    def revert(self) -> None:
        """Back to the last verified state."""
        self._optimizer_said_pending = False
        self.current = self.last_good
        self._prune()

    def _prune(self) -> None:
        """Only the last verified state and the current one are kept on disk."""
        keep = {self.last_good, self.current}
        for state in self.workdir.glob("state-*"):
            if state not in keep:
                state.unlink(missing_ok=True)

    # writing -------------------------------------------------------------------------
    def commit(self, target: str) -> None:
        """Put the last verified state at ``target``: written to a temporary file in the
        target's folder, then renamed over it. A ``.keras`` target from an ``.h5`` state
        (or the reverse) is converted by Keras."""
        destination = Path(target)
        wanted = _suffix(destination)
        if wanted not in FORMATS:
            raise PwlintError(f"{target}: a Keras model is written as .keras or .h5, not '{destination.suffix}'")
        source = self.last_good
        staging = Path(tempfile.mkdtemp(prefix=".pwlint-", dir=destination.resolve().parent))
        try:
            staged = staging / destination.name
            if source == self.path and wanted == _suffix(source):
                shutil.copyfile(source, staged)  # nothing applied: the source as it is
            elif wanted == _suffix(source):
                shutil.copyfile(source, staged)
                carry_compile(staged, self.compiled)
            else:
                keras = import_keras()
                try:
                    model = load_model(keras, source)
                except FixNotApplicable as exc:
                    raise PwlintError(f"{target}: {exc}") from exc
                save_model(keras, model, staged)
                carry_compile(staged, self.compiled)  # only within a format: see carry_compile
            os.replace(staged, destination)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def close(self) -> None:
        forget_loaded()
        self._graphs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _sample(rng: np.random.Generator, shape: list[int], dtype: str) -> np.ndarray:
    kind = np.dtype(dtype) if dtype not in ("bfloat16",) else np.dtype("float32")
    if kind.kind == "f":
        return rng.standard_normal(shape).astype(kind)
    if kind.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if kind.kind in "iu":
        return rng.integers(0, 4, shape).astype(kind)
    raise FixNotApplicable(f"cannot make sample inputs of type {dtype}")


def _feeds(model, seed: int, symbolic: int) -> dict:
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise FixNotApplicable("the model's input shapes are unknown (a model never built or called)")
    rng = np.random.default_rng(seed)
    feeds = {}
    for position, tensor in enumerate(inputs):
        shape = [d if isinstance(d, int) and d > 0 else symbolic for d in tensor.shape]
        name = getattr(tensor, "name", None) or f"input_{position}"
        feeds[name] = _sample(rng, shape, str(getattr(tensor, "dtype", "float32")))
    return feeds


def _call(keras, model, feeds: dict) -> list[np.ndarray]:
    arrays = list(feeds.values())
    args = arrays[0] if len(arrays) == 1 else arrays
    grad = contextlib.nullcontext()
    if keras.backend.backend() == "torch":
        import torch

        grad = torch.no_grad()
    with grad, quiet():
        outputs = model(args, training=False)
    return [np.asarray(keras.ops.convert_to_numpy(out)) for out in keras.tree.flatten(outputs)]


def run_model(model_file: Path, feeds: dict | None = None, seed: int = 0) -> tuple[dict, list[np.ndarray]]:
    """Run a model file with Keras on seeded inputs (or the given ones)."""
    keras = import_keras()
    model = load_model(keras, model_file)
    return run_on_samples(lambda given: _call(keras, model, given), lambda size: _feeds(model, seed, size),
                          (SYMBOLIC_DIM, 1), feeds, "Keras cannot run the model")


class KerasBackend(FormatBackend):
    name, label, checker, runtime = "keras", "Keras", CHECKER, "Keras"
    session, run_model = KerasFixSession, staticmethod(run_model)
    head_ranks = (1, 2, 3)  # Keras has Conv1D to Conv3D
