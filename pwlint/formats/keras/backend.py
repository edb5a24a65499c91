"""The Keras fix backend: rewrites ``.keras`` (and legacy ``.h5``) models with Keras
itself, checks each candidate by loading it back, runs models for verification
and writes atomically.

Keras is imported here only, when a model is fixed or run; ``KERAS_BACKEND``
defaults to ``torch`` when it is unset and torch is installed. Every model is
loaded with ``safe_mode=True`` and no custom objects: a Lambda layer's code or a
custom class is refused, never run (the fix is then reported as not applied).

Each state of the model is a file: the source, then one file per applied fix in
a private ``.pwlint-*`` folder next to the model, written in the source's format
(``.keras`` stays ``.keras``, ``.h5`` stays ``.h5``). ``graph()`` lints that file
with the static Keras loader, so the rules see exactly what would be written.
The source is never opened for writing; ``commit`` copies the last verified
file into a temporary file in the target's folder and renames it into place.
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


def _old_keras_version(model_file: Path | str) -> str | None:
    """The ``keras_version`` an HDF5 file records, when it is older than Keras 2.2 (whose
    configs Keras 3 can no longer load: bare-list Sequential, Keras 1 classes)."""
    try:
        import h5py

        with h5py.File(model_file, "r") as f:
            version = f.attrs.get("keras_version")
    except Exception:  # not HDF5 (a .keras zip), or unreadable: no version to tell
        return None
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    if not isinstance(version, str):
        return None
    parts = version.split(".")
    try:
        major, minor = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None
    return version if (major, minor) < (2, 2) else None


def _keras_reason(exc: BaseException) -> str:
    """The innermost cause of a Keras deserialisation error, which nests the message of
    every enclosing model and layer ("... Exception encountered: ...")."""
    text = str(exc).rpartition("Exception encountered: ")[2].strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    line = line.partition(" Full object config")[0]
    return line if len(line) <= 240 else line[:237] + "..."


#: the last model loaded, keyed by its file's path, size and modification time: the fix
#: loop loads each file twice in a row (checked, then run; run, then fixed), and a
#: VGG16-sized model takes seconds to load. Models are only read, never changed.
_last_loaded: tuple | None = None


def _key(model_file: Path | str) -> tuple:
    stat = os.stat(model_file)
    return (str(Path(model_file).resolve()), stat.st_size, stat.st_mtime_ns)


def load_model(keras, model_file: Path | str, fresh: bool = False):
    """A model file loaded the safe way: no Lambda code, no custom objects, no compile
    (the optimizer's state is not needed, and a custom loss must not stop a fix).
    ``fresh`` reads the file even when the model is in memory."""
    global _last_loaded
    key = _key(model_file)
    if not fresh and _last_loaded is not None and _last_loaded[0] == key:
        return _last_loaded[1]
    _last_loaded = None  # the old model is not kept alive while the next one loads
    try:
        with quiet():
            model = keras.saving.load_model(str(model_file), compile=False, safe_mode=True)
    except Exception as exc:
        old = _old_keras_version(model_file)
        if old:
            raise FixNotApplicable(
                f"Keras 3 cannot load a file written by Keras {old}: open it with that Keras, save it "
                "again (or export it), and fix the result"
            ) from exc
        raise FixNotApplicable(f"Keras cannot load the model safely: {_keras_reason(exc)}") from exc
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


def compile_config(model_file: Path) -> tuple[str, object] | None:
    """How the source model was compiled, read from the file without Keras, so that
    the fixed model keeps its loss and metrics (not the optimizer's state, which
    does not fit the new layers): a ``.keras`` file's ``compile_config`` (a dict), or
    a legacy ``.h5`` file's ``training_config`` attribute (kept as stored)."""
    try:
        if _suffix(model_file) == ".keras":
            with zipfile.ZipFile(model_file) as archive:
                config = json.loads(archive.read("config.json"))
            found = config.get("compile_config")
            return ("keras", found) if found else None
        import h5py

        with h5py.File(model_file, "r") as h5:
            found = h5.attrs.get("training_config")
        return None if found is None else ("h5", found)
    except Exception:  # a config that cannot be read is not kept; the load will tell what is wrong
        return None


def restore_compile(keras, model, compiled: tuple[str, object] | None) -> bool:
    """Compile ``model`` as the source was; False when Keras cannot (a custom loss, or
    a legacy training config Keras 3 no longer reads)."""
    if compiled is None:
        return True
    kind, config = compiled
    try:
        with quiet():
            if kind == "keras":
                model.compile_from_config(config)
            else:
                from keras.src.legacy.saving import json_utils, saving_utils

                text = config.decode() if isinstance(config, bytes) else str(config)
                model.compile(**saving_utils.compile_args_from_training_config(json_utils.decode(text)))
    except Exception:
        return False
    return True


def copy_training_config(model_file: Path, compiled: tuple[str, object]) -> None:
    """Put an ``.h5`` source's training config, as stored, into an ``.h5`` written from it."""
    import h5py

    with h5py.File(model_file, "r+") as h5:
        h5.attrs["training_config"] = compiled[1]


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
        self.compile_lost = False
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
        if self.compiled is not None and self.compiled[0] == "h5":
            save_model(keras, model, state)
            copy_training_config(state, self.compiled)
        else:
            if not restore_compile(keras, model, self.compiled) and not self.compile_lost:
                self.compile_lost = True
                note += "; the model's compile settings could not be kept: compile it again before training"
            save_model(keras, model, state)
        self.current = state
        remember_loaded(state, model)  # the next fix of the round starts from it
        self._prune()
        return note

    def checkpoint(self) -> Path:
        """The current state's file, once Keras loads it back (safely)."""
        keras = import_keras()
        if self.current == self.path:
            return self.path
        forget_loaded()  # read from the file, not the model in memory; one model at a time
        load_model(keras, self.current, fresh=True)  # kept in memory for the run that follows
        return self.current

    def accept(self, candidate: Path) -> None:
        self.last_good = Path(candidate)
        self.current = self.last_good
        self._prune()

    def revert(self) -> None:
        """Back to the last verified state."""
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
            if wanted == _suffix(source):
                shutil.copyfile(source, staged)
            else:
                keras = import_keras()
                try:
                    model = load_model(keras, source)
                except FixNotApplicable as exc:
                    raise PwlintError(f"{target}: {exc}") from exc
                restore_compile(keras, model, self.compiled)
                save_model(keras, model, staged)
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
    name, label, checker, runtime = "keras", "Keras", "keras.saving.load_model(safe_mode=True)", "Keras"
    session, run_model = KerasFixSession, staticmethod(run_model)
    head_ranks = (1, 2, 3)  # Keras has Conv1D to Conv3D
