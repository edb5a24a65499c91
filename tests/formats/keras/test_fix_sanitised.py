"""``--fix`` on Keras files builds the model from pwlint's validated reading of the file,
never with ``keras.saving.load_model`` (whose safe mode has been bypassed: CVE-2025-1550,
-8747, -9906): a clean model is fixed with ``load_model`` made to raise in this process;
a Lambda layer, a custom object or an unknown class refuses the fix in one line while
linting still reports, and nothing from the file runs."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from tests.conftest import codes, fix_json, leftovers, lint
from tests.hostile import zip_corpus as corpus
from tests.formats.keras.fix_helpers import leaves as _leaves

keras = pytest.importorskip("keras")
layers = keras.layers
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ONLY_OWN = "pwlint fixes only models built from Keras's own layers"


def randomise(model, seed: int = 0):
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        value = rng.standard_normal(tuple(variable.shape)) * 0.3
        if variable.path.endswith("moving_variance"):
            value = np.abs(value) + 0.5
        variable.assign(value.astype("float32"))
    return model


def sequential():
    return keras.Sequential([
        keras.Input((6, 6, 3), name="image"),
        layers.Conv2D(4, 3, activation="relu", kernel_regularizer="l2", name="conv"),
        layers.BatchNormalization(name="bn"),
        layers.Flatten(name="flat"),
        layers.Dense(8, activation="relu", name="fc1"),
        layers.Dense(5, name="fc2"),
    ], name="seq")


def functional():
    inputs = keras.Input((6, 6, 3), name="image")
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dropout(0.2, name="drop")(x)
    x = layers.Dense(7, name="logits")(x)
    return keras.Model(inputs, x, name="func")


def nested():
    """The head inside a Sequential used as a layer of a Functional model."""
    head = keras.Sequential([layers.Flatten(name="flat"), layers.Dense(5, name="fc")], name="head")
    inputs = keras.Input((6, 6, 3), name="image")
    x = layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    return keras.Model(inputs, head(x), name="nested")


BUILDERS = {"sequential": sequential, "functional": functional, "nested": nested}


@pytest.fixture
def no_load_model(monkeypatch):
    """keras.saving.load_model and keras.models.load_model raise in this process (and
    count their calls): the fix must not need them."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("load_model was called")

    monkeypatch.setattr(keras.saving, "load_model", refuse)
    monkeypatch.setattr(keras.models, "load_model", refuse)
    monkeypatch.setattr("keras.src.saving.saving_api.load_model", refuse)
    return calls


def outputs(model, x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_clean_model_is_fixed_without_load_model(name, suffix, tmp_path, no_load_model):
    model = randomise(BUILDERS[name]())
    path = tmp_path / f"model{suffix}"
    model.save(str(path))
    x = np.random.default_rng(1).standard_normal((3, 6, 6, 3)).astype("float32")
    expected = outputs(model, x)  # computed here, from the model that was saved
    _, report = fix_json(path, "--fix")
    fix = report["files"][0]["fix"]
    applied = [(o["code"], o["applicability"]) for o in fix["applied"]]
    assert ("PW001", "safe") in applied and {a for _, a in applied} == {"safe"}, fix
    assert fix["written"] == str(path) and fix["verified"]
    assert no_load_model == []
    assert "PW001" not in codes(lint(path))
    assert leftovers(tmp_path) == []
    written = _real_load(path)
    assert any(type(layer).__name__ == "Conv2D" and tuple(layer.kernel_size) == (4, 4) for layer in _leaves(written))
    np.testing.assert_allclose(outputs(written, x), expected, rtol=1e-4, atol=1e-5)


def _real_load(path):
    """Keras's own loader (the test trusts the file pwlint wrote, not the one it read)."""
    from keras.src.legacy.saving import legacy_h5_format
    from keras.src.saving import saving_lib

    if str(path).endswith(".keras"):
        return saving_lib.load_model(str(path), compile=False, safe_mode=True)
    return legacy_h5_format.load_model_from_hdf5(str(path), compile=False)


def fix_refused(path) -> str:
    """Lint and --fix ``path`` (with and without verification): exit 0/1, PW001 still
    reported, no fix applied, the file untouched; the one note of the refused fix."""
    before = path.read_bytes()
    notes = []
    for args in (("--fix",), ("--fix", "--no-verify")):
        run, report = fix_json(path, *args)
        assert run.code == 1 and "PW001" in codes(report)
        fix = report["files"][0]["fix"]
        assert fix["applied"] == [] and fix["written"] is None
        (outcome,) = [o for o in fix["not_applied"] if o["code"] == "PW001"]
        notes.append(outcome["note"])
        assert path.read_bytes() == before
    assert leftovers(path.parent) == []
    assert notes[1] in notes[0]  # with verification, the baseline run is refused alike
    assert "\n" not in notes[1]
    return notes[1]


def test_hostile_lambda_files_never_run(tmp_path, tmp_path_factory, no_load_model):
    """The hostile corpus's Lambda files (their serialised function creates a marker file):
    --fix lints them and runs nothing, load_model included."""
    from tests.hostile.test_keras_hostile import save_models

    saved = save_models(tmp_path_factory)
    for suffix in (".keras", ".h5"):
        path = tmp_path / f"lambda{suffix}"
        path.write_bytes(saved[f"lambda{suffix}"].read_bytes())
        before = path.read_bytes()
        run, _ = fix_json(path, "--fix")
        assert run.code in (0, 1) and path.read_bytes() == before
    assert not saved["marker"].exists()
    assert no_load_model == []


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_before_the_head_refuses_the_fix_and_never_runs(tmp_path, no_load_model, suffix):
    """A Lambda whose code (a closure, stored as bytecode) creates a marker file, in a
    model whose Flatten + Dense head lints as PW001: the fix is refused by name."""
    marker = tmp_path / "ran"
    inputs = keras.Input((6, 6, 3), name="image")
    x = layers.Lambda(lambda t, path=str(marker): (open(path, "w").close(), t)[1], name="payload")(inputs)
    x = layers.Conv2D(4, 3, name="conv")(x)
    x = layers.Flatten(name="flat")(x)
    path = tmp_path / f"lambda{suffix}"
    keras.Model(inputs, layers.Dense(5, name="fc")(x)).save(str(path))
    marker.unlink()  # building the model ran the lambda once
    note = fix_refused(path)
    assert note == f"cannot fix: layer 'payload' is a Lambda layer; {ONLY_OWN}"
    assert not marker.exists()
    assert no_load_model == []


def keras_file_with(tmp_path, mutate, name="custom.keras"):
    """A real small .keras file (conv -> flatten -> dense) with its config changed by ``mutate``."""
    inputs = keras.Input((6, 6, 3), name="image")
    x = layers.Identity(name="pre")(inputs)
    x = layers.Conv2D(4, 3, name="conv")(x)
    x = layers.Flatten(name="flat")(x)
    model = keras.Model(inputs, layers.Dense(5, name="fc")(x), name="small")
    source = tmp_path / "source.keras"
    model.save(str(source))
    with zipfile.ZipFile(source) as zf:
        config = json.loads(zf.read("config.json"))
    mutate(config)
    members = [corpus.Member("config.json", json.dumps(config).encode())]
    members += [m for m in corpus.members_of(source) if m.name == "model.weights.h5"]
    source.unlink()
    return corpus.write_zip(tmp_path / name, members)


def _layer(config, name):
    return next(entry for entry in config["config"]["layers"] if entry["name"] == name)


def _os_system(marker):
    return {"module": "os", "class_name": "system", "config": f"touch {marker}", "registered_name": "os>system"}


@pytest.mark.parametrize("where, expected", [
    ("activation", "layer 'conv' has an activation that is not one of Keras's own (system from module 'os')"),
    ("kernel_initializer", "layer 'conv' has a kernel_initializer that is not one of Keras's own (system from module 'os')"),
    ("layer", "layer 'pre' is a system from module 'os' (a custom object)"),
    ("registered", "layer 'conv' is a custom class registered as evil>Conv2D"),
    ("call-kwarg", "a call argument of layer 'fc' is an object (system from module 'os')"),
    ("unknown-key", "layer 'conv' (Conv2D) has a config key 'function' pwlint does not know"),
    ("passive", "layer 'conv' (Conv2D) has a config key '__passive_serialization__' pwlint does not know"),
    ("unknown-class", "layer 'pre' is a MyLayer layer, which pwlint does not rebuild"),
])
def test_custom_objects_refuse_the_fix_and_never_run(tmp_path, no_load_model, where, expected):
    marker = tmp_path / "ran"

    def mutate(config):
        conv = _layer(config, "conv")
        if where == "activation":
            conv["config"]["activation"] = _os_system(marker)
        elif where == "kernel_initializer":
            conv["config"]["kernel_initializer"] = _os_system(marker)
        elif where == "layer":
            _layer(config, "pre").update(module="os", class_name="system", registered_name="os>system")
        elif where == "registered":
            conv["registered_name"] = "evil>Conv2D"
        elif where == "call-kwarg":
            _layer(config, "fc")["inbound_nodes"][0]["kwargs"]["hook"] = _os_system(marker)
        elif where == "unknown-key":
            conv["config"]["function"] = {"class_name": "__lambda__", "config": {"code": "x"}}
        elif where == "passive":
            conv["config"]["__passive_serialization__"] = True
        elif where == "unknown-class":
            _layer(config, "pre").update(module=None, class_name="MyLayer", registered_name="MyLayer")

    path = keras_file_with(tmp_path, mutate)
    assert fix_refused(path) == f"cannot fix: {expected}; {ONLY_OWN}"
    assert not marker.exists()
    assert no_load_model == []


def test_weights_stored_outside_the_file_are_refused(tmp_path, no_load_model):
    """An HDF5 dataset may keep its bytes in another file (external storage): read as a
    weight, a secret would be written into the fixed model. Refused, never read."""
    import h5py

    model = randomise(functional())
    path = tmp_path / "model.h5"
    model.save(str(path))
    secret = tmp_path / "secret.bin"
    with h5py.File(path, "r+") as h5:
        group = h5["model_weights/logits/logits"]
        shape = group["kernel"].shape
        secret.write_bytes(np.arange(np.prod(shape), dtype="float32").tobytes())
        del group["kernel"]
        group.create_dataset("kernel", shape=shape, dtype="float32", external=[(str(secret), 0, secret.stat().st_size)])
    note = fix_refused(path)
    assert note == "cannot fix: the weights of layer 'logits' are stored outside the file"


def test_the_allowlist_matches_what_keras_accepts():
    """Each class pwlint rebuilds exists in keras.layers, and each key it allows is an
    argument the class (or keras.layers.Layer) takes: no key passes to Keras unchecked."""
    import inspect

    from pwlint.formats.keras.rebuild import BASE_KEYS, LAYER_KEYS

    legacy_keys = {"batch_input_shape", "alpha", "input_length", "rms_scaling"}  # Keras 2 and older 3.x keys, translated or taken
    for cls_name, keys in LAYER_KEYS.items():
        cls = getattr(keras.layers, cls_name)
        params = set(inspect.signature(cls.__init__).parameters) | set(inspect.signature(keras.layers.Layer.__init__).parameters)
        unknown = set(keys) - params - {"input_shape", "input_dim"} - legacy_keys
        assert not unknown, (cls_name, unknown)
    assert "weights" not in BASE_KEYS and all("weights" not in keys for keys in LAYER_KEYS.values())


@pytest.mark.parametrize("name", ["Dense", "Conv2D", "BatchNormalization", "Flatten", "Dropout", "PReLU"])
def test_keras_own_configs_pass_the_validation(name):
    """What Keras writes for its own layers is taken as it is (so clean models are fixed)."""
    from pwlint.formats.keras.rebuild import sanitised

    args = {"Dense": (3,), "Conv2D": (2, 3), "Dropout": (0.1,)}.get(name, ())
    layer = getattr(keras.layers, name)(*args, name="x")
    model = keras.Sequential([keras.Input((6, 6, 3)), layer])
    entry = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
    rebuilt = keras.saving.deserialize_keras_object(sanitised(entry), safe_mode=True)
    assert type(rebuilt.layers[-1]).__name__ == name
