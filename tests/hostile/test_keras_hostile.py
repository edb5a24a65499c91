"""Hostile Keras files (.keras and legacy .h5) from an untrusted pull request: each gives
a lint or exit 2 with one line on stderr, in seconds, in bounded memory, and nothing in
them is ever run.

The corpus starts from a small model saved by Keras once per module: truncated copies,
random bytes, zip bombs, archives of very many members, configs nested very deep, layer
graphs with cycles and dangling references, absurd sizes, and Lambda layers and custom
objects that would run code if deserialised."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.hostile import zip_corpus as corpus
from tests.hostile.harness import assert_handled, run_bounded

#: a zip bomb inflates to this much: far past every limit, yet ~2 MB on disk
BOMB_MIB = 2048
#: well above what linting this model takes, far below what inflating a bomb would
BOMB_MAX_MIB = 400

#: saves, into the folder named by argv[1], a small model (conv -> flatten -> dense) as
#: .keras and .h5, and the same with a Lambda layer that creates argv[2] when it runs
_SAVE_MODELS = """
import os, sys, warnings
os.environ["KERAS_BACKEND"] = "torch"
import keras
from keras import layers

folder, marker = sys.argv[1], sys.argv[2]

def build(with_lambda, path=marker):
    inputs = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    if with_lambda:  # the path is a closure variable: keras stores it with the code
        x = layers.Lambda(lambda t: (open(path, "w").close(), t)[1], name="payload")(x)
    x = layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, layers.Dense(5, name="fc")(x), name="small")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for suffix in (".keras", ".h5"):
        build(False).save(f"{folder}/small{suffix}")
        build(True).save(f"{folder}/lambda{suffix}")
os.remove(marker)  # building the model ran the lambda once
"""


def save_models(tmp_path_factory) -> dict[str, Path]:
    """``{"keras"|"h5"|"lambda.keras"|"lambda.h5": path}`` and ``"marker"``: the file the
    lambda creates. Saved once per session, by a child process, so that this one never
    holds keras and torch: the bounded runs' peak memory is read in the child with
    getrusage, which counts the memory of the process that started it too."""
    folder = tmp_path_factory.getbasetemp() / "keras-models"
    marker = folder / "lambda-ran"
    paths = {"keras": folder / "small.keras", "h5": folder / "small.h5", "lambda.keras": folder / "lambda.keras",
             "lambda.h5": folder / "lambda.h5"}
    if not all(path.exists() for path in paths.values()):
        folder.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-c", _SAVE_MODELS, str(folder), str(marker)], check=True, timeout=300)
    return {**paths, "marker": marker}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    return save_models(tmp_path_factory)


def config_of(saved) -> dict:
    with zipfile.ZipFile(saved["keras"]) as zf:
        return json.loads(zf.read("config.json"))


def keras_zip(path: Path, config, weights_from: Path | None = None) -> Path:
    """A .keras archive of ``config`` (a dict, or JSON text as is), with the weights of another."""
    members = [corpus.Member("config.json", (config if isinstance(config, str) else json.dumps(config)).encode())]
    if weights_from is not None:
        members += [m for m in corpus.members_of(weights_from) if m.name == "model.weights.h5"]
    return corpus.write_zip(path, members)


def error_of(path: Path, max_mib: float = 1500) -> str:
    """The one error line for a file that must be refused."""
    run = run_bounded("check", path, timeout=60)
    assert_handled(run, max_mib)
    assert run.code == 2, run.out
    assert run.err.startswith(f"pwlint: error: {path}: "), run.err
    return run.err


def lints(path: Path, max_mib: float = 1500) -> str:
    """The report of a file that must be linted."""
    run = run_bounded("check", path, timeout=60)
    assert_handled(run, max_mib)
    assert run.code in (0, 1), run.err
    return run.out


# the controls: the corpus starts from files that lint ------------------------------------

@pytest.mark.parametrize("kind", ["keras", "h5"])
def test_the_saved_models_lint(saved, kind):
    assert "PW001" in lints(saved[kind])


# damaged files ---------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_empty_file(tmp_path, suffix):
    path = tmp_path / f"empty{suffix}"
    path.write_bytes(b"")
    assert "empty" in error_of(path)


@pytest.mark.parametrize("kind", ["keras", "h5"])
def test_truncated_copies(saved, tmp_path, kind):
    paths = corpus.truncations(saved[kind], tmp_path / "cut")
    assert len(paths) == 30
    corpus.lint_each(paths, timeout=120)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_random_bytes(tmp_path, suffix):
    paths = corpus.random_bytes(tmp_path / "noise", suffix)
    errors = corpus.lint_each(paths, timeout=120)
    assert all(errors.values()), errors


# zip bombs and huge archives -------------------------------------------------------------

def test_zip_bomb_config_is_refused_by_its_declared_size(saved, tmp_path):
    path = corpus.with_bomb(saved["keras"], tmp_path / "bomb.keras", "config.json", BOMB_MIB)
    assert path.stat().st_size < 4 * corpus.MIB
    assert "larger than" in error_of(path, BOMB_MAX_MIB)


def test_zip_bomb_config_whose_headers_understate_its_size_is_not_inflated(saved, tmp_path):
    path = corpus.with_bomb(saved["keras"], tmp_path / "liar.keras", "config.json", BOMB_MIB, declared=3000)
    error_of(path, BOMB_MAX_MIB)


def test_zip_bomb_metadata_is_ignored_not_inflated(saved, tmp_path):
    path = corpus.with_bomb(saved["keras"], tmp_path / "meta.keras", "metadata.json", BOMB_MIB)
    assert "PW001" in lints(path, BOMB_MAX_MIB)


def test_zip_bomb_metadata_whose_headers_understate_its_size_is_not_inflated(saved, tmp_path):
    path = corpus.with_bomb(saved["keras"], tmp_path / "meta.keras", "metadata.json", BOMB_MIB, declared=3000)
    assert "CRC" in error_of(path, BOMB_MAX_MIB)  # read up to its declared size only, which fails its check


@pytest.mark.parametrize("declared", [None, 3000], ids=["honest", "lying"])
def test_zip_bomb_weights_member(saved, tmp_path, declared):
    path = corpus.with_bomb(saved["keras"], tmp_path / "weights.keras", "model.weights.h5", BOMB_MIB, declared)
    error_of(path, BOMB_MAX_MIB)


def test_zip_bomb_behind_a_valid_weights_file(saved, tmp_path):
    """A real weights file, then 2 GiB of zeros: HDF5 seeks to the end (6 s of inflating)."""
    path = corpus.with_bomb(saved["keras"], tmp_path / "weights.keras", "model.weights.h5", BOMB_MIB, keep_content=True)
    assert "compressed" in error_of(path, BOMB_MAX_MIB)


def test_zip_bomb_behind_a_valid_weights_file_lying_about_its_size(saved, tmp_path):
    """Read only up to the size its headers declare (the real weights), where the member's
    checksum, taken over all it holds, does not match: refused, never inflated."""
    with zipfile.ZipFile(saved["keras"]) as zf:
        size = zf.getinfo("model.weights.h5").file_size
    path = corpus.with_bomb(saved["keras"], tmp_path / "weights.keras", "model.weights.h5", BOMB_MIB,
                            declared=size, keep_content=True)
    assert error_of(path, BOMB_MAX_MIB) == (
        f"pwlint: error: {path}: model.weights.h5 is not a readable HDF5 file "
        "(Bad CRC-32 for file 'model.weights.h5')\n"
    )


def test_archive_of_100k_members_still_lints(saved, tmp_path):
    path = corpus.many_members(tmp_path / "many.keras", 100_000, head=corpus.members_of(saved["keras"]))
    assert "PW001" in lints(path, 1000)


# configs that are deep, cyclic, dangling or absurd ----------------------------------------

def test_config_nested_10k_deep(tmp_path):
    deep = "[" * 10_000 + "]" * 10_000
    path = keras_zip(tmp_path / "deep.keras", '{"class_name": "Sequential", "config": {"layers": ' + deep + "}}")
    assert "nested too deeply" in error_of(path)


def test_layer_value_nested_just_under_the_json_limit(tmp_path):
    """Parsed by json, then walked by the loader and the reporters: nothing may recurse on it."""
    deep = "[" * 900 + "]" * 900
    layers = ('[{"class_name": "InputLayer", "config": {"name": "x", "batch_shape": [null, 4]}},'
              '{"class_name": "Dense", "config": {"name": "d", "units": 3, "activation": ' + deep
              + ', "kernel_initializer": ' + deep + "}}]")
    lints(keras_zip(tmp_path / "deep.keras", '{"class_name": "Sequential", "config": {"layers": ' + layers + "}}"))


def test_models_nested_300_deep(tmp_path):
    model = {"class_name": "Sequential", "config": {"name": "m", "layers": [{"class_name": "Dense", "config": {"name": "d", "units": 3}}]}}
    for depth in range(300):
        model = {"class_name": "Sequential", "config": {"name": f"m{depth}", "layers": [model]}}
    assert "nested" in error_of(keras_zip(tmp_path / "nested.keras", model))


def _dense(name: str, source: str, output: int = 0) -> dict:
    return {"class_name": "Dense", "name": name, "config": {"name": name, "units": 4},
            "inbound_nodes": [[[source, 0, output, {}]]]}


def _functional(layers: list, output: str) -> dict:
    source = {"class_name": "InputLayer", "name": "x", "config": {"name": "x", "batch_input_shape": [None, 4]},
              "inbound_nodes": []}
    return {"class_name": "Functional", "config": {
        "name": "m", "layers": [source, *layers], "input_layers": [["x", 0, 0]], "output_layers": [[output, 0, 0]]}}


def test_layers_in_a_cycle(tmp_path):
    config = _functional([_dense("a", "b"), _dense("b", "a"), _dense("c", "x")], "c")
    assert "cycle" in error_of(keras_zip(tmp_path / "cycle.keras", config))


def test_layer_reading_itself(tmp_path):
    config = _functional([_dense("a", "a")], "a")
    line = error_of(keras_zip(tmp_path / "self.keras", config))
    assert "'a'" in line and "cycle" in line


def test_layer_reading_a_missing_layer(tmp_path):
    config = _functional([_dense("a", "ghost")], "a")
    assert "ghost" in error_of(keras_zip(tmp_path / "dangling.keras", config))


def test_real_config_with_its_first_layer_reading_the_last(saved, tmp_path):
    """Keras 3 references (``__keras_tensor__``) made circular in a real config."""
    config = config_of(saved)
    layers = config["config"]["layers"]
    history = layers[1]["inbound_nodes"][0]["args"][0]["config"]["keras_history"]
    history[0] = layers[-1]["name"]
    assert "cycle" in error_of(keras_zip(tmp_path / "cycle.keras", config, weights_from=saved["keras"]))


def test_long_chain_listed_backwards_lints_in_linear_time(tmp_path):
    """20k layers listed last-first: resolving one per pass over the list took minutes."""
    count = 20_000
    chain = [_dense(f"d{i}", f"d{i - 1}" if i else "x") for i in range(count)]
    lints(keras_zip(tmp_path / "backwards.keras", _functional(chain[::-1], f"d{count - 1}")))


def test_references_to_output_9999_of_every_layer(tmp_path):
    """Each call reads output 9999 of the last: making every output up to the highest
    index named took 98 s and 5.9 GB for 2000 layers."""
    chain = [_dense(f"d{i}", f"d{i - 1}" if i else "x", 9999 if i else 0) for i in range(2000)]
    lints(keras_zip(tmp_path / "outputs.keras", _functional(chain, "d1999")), max_mib=600)


def test_50k_model_outputs_of_one_layer(tmp_path):
    config = _functional([_dense("a", "x")], "a")
    config["config"]["output_layers"] = [["a", 0, 0]] * 50_000
    lints(keras_zip(tmp_path / "outputs.keras", config))


def _sequential(*layers: dict) -> dict:
    return {"class_name": "Sequential", "config": {"name": "s", "layers": list(layers)}}


def _layer(class_name: str, **config) -> dict:
    return {"class_name": class_name, "config": {"name": config.pop("name", class_name.lower()), **config}}


@pytest.mark.parametrize("config", [
    _sequential(_layer("InputLayer", batch_shape=[None, 8]), _layer("Dense", units=2**62)),
    _sequential(_layer("InputLayer", batch_shape=[None, 8, 8, 3]), _layer("Conv2D", filters=4, kernel_size=2**40),
                _layer("Flatten"), _layer("Dense", units=2**62)),
    _sequential(_layer("InputLayer", batch_shape=[None, 10**12, 10**12, 3]), _layer("Conv2D", filters=4, kernel_size=3)),
    _sequential(_layer("InputLayer", batch_shape=[10**12, 10**30, 3]), _layer("Flatten"), _layer("Dense", units=10)),
    _sequential(_layer("InputLayer", batch_shape=[None, 8]), _layer("Dense", units=-5)),
    _sequential(_layer("InputLayer", batch_shape=[None, 8]), _layer("Embedding", input_dim=2**62, output_dim=2**62)),
], ids=["units", "kernel", "input", "flatten", "negative", "embedding"])
def test_absurd_sizes(tmp_path, config):
    assert "not a real model" in error_of(keras_zip(tmp_path / "absurd.keras", config))


def test_size_written_as_a_float_is_an_unknown_size(tmp_path):
    config = _sequential(_layer("InputLayer", batch_input_shape=[1e12, 1e12, 3]), _layer("Flatten"), _layer("Dense", units=10))
    lints(keras_zip(tmp_path / "float.keras", config))


# nothing in the file is run ----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["lambda.keras", "lambda.h5"])
def test_lambda_layer_is_never_run(saved, kind):
    assert not saved["marker"].exists()
    lints(saved[kind])
    assert not saved["marker"].exists()


def test_control_keras_runs_the_lambda_when_trusted(saved):
    """The lambda files really carry code that runs: Keras runs it when told to trust them."""
    script = ("import os, sys; os.environ['KERAS_BACKEND'] = 'torch'; import keras; "
              "keras.saving.load_model(sys.argv[1], safe_mode=False)")
    run = subprocess.run([sys.executable, "-c", script, str(saved["lambda.keras"])], timeout=300,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert saved["marker"].exists()
    saved["marker"].unlink()


def test_custom_objects_naming_os_system_are_never_called(tmp_path):
    marker = tmp_path / "ran"
    command = f"touch {marker}"
    call = {"module": "os", "class_name": "system", "config": command, "registered_name": "os>system"}
    config = _sequential(
        _layer("InputLayer", batch_shape=[None, 8]),
        {"module": "os", "class_name": "system", "registered_name": "os>system", "config": {"name": "evil", "command": command}},
        _layer("Dense", units=3, activation=call, kernel_initializer=call, kernel_regularizer=call),
        {"module": "builtins", "class_name": "eval", "config": {"name": "e", "source": f"__import__('os').system('{command}')"}},
    )
    config["module"], config["registered_name"] = "os", "os>system"
    lints(keras_zip(tmp_path / "custom.keras", config))
    assert not marker.exists()
