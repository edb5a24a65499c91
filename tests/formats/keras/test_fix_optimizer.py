"""A compiled and trained Keras model, fixed: the optimizer's state (whose slot variables
no longer fit the rewritten layers) is not kept, and the fix report says so in text and
JSON; the written file holds no stale optimizer; the compile settings are carried over
as stored (never deserialised by pwlint) when the file keeps its format."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from tests.conftest import fix_json, run_inprocess

keras = pytest.importorskip("keras")
layers = keras.layers
pytestmark = pytest.mark.filterwarnings("ignore")

NOTE = "optimizer state not kept: re-compile before training"


def trained(path):
    """Conv -> Flatten -> Dense, compiled with Adam and trained one step, saved at ``path``."""
    model = keras.Sequential([
        keras.Input((6, 6, 3), name="image"),
        layers.Conv2D(4, 3, activation="relu", name="conv"),
        layers.Flatten(name="flat"),
        layers.Dense(5, name="fc"),
    ], name="trained")
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    rng = np.random.default_rng(0)
    model.fit(rng.standard_normal((4, 6, 6, 3)).astype("float32"), rng.standard_normal((4, 5)).astype("float32"),
              epochs=1, batch_size=4, verbose=0)
    model.save(str(path))
    return path


def has_optimizer_state(path) -> bool:
    import h5py

    if str(path).endswith(".keras"):
        with zipfile.ZipFile(path) as zf, zf.open("model.weights.h5") as member:
            import io

            with h5py.File(io.BytesIO(member.read()), "r") as h5:
                return "optimizer" in h5
    with h5py.File(path, "r") as h5:
        return "optimizer_weights" in h5


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_trained_model_fix_says_the_optimizer_state_is_not_kept(tmp_path, suffix):
    path = trained(tmp_path / f"model{suffix}")
    assert has_optimizer_state(path)  # the control: training left a state to lose
    _, report = fix_json(path, "--fix")
    fix = report["files"][0]["fix"]
    (outcome,) = fix["applied"]
    assert outcome["code"] == "PW001" and outcome["note"].endswith(f"; {NOTE}")
    assert not has_optimizer_state(path)
    # the text report says it too, once
    copy = trained(tmp_path / f"again{suffix}")
    run = run_inprocess("check", str(copy), "--fix")
    assert run.out.count(NOTE) == 1, run.out


def test_keras_file_keeps_its_compile_settings_as_stored(tmp_path):
    path = trained(tmp_path / "model.keras")
    with zipfile.ZipFile(path) as zf:
        stored = json.loads(zf.read("config.json"))["compile_config"]
    fix_json(path, "--fix")
    with zipfile.ZipFile(path) as zf:
        assert json.loads(zf.read("config.json"))["compile_config"] == stored
    from keras.src.saving import saving_lib

    fixed = saving_lib.load_model(str(path), safe_mode=True)  # the file pwlint wrote
    assert fixed.compiled and type(fixed.get_layer("fc_conv")).__name__ == "Conv2D"
    assert int(keras.ops.convert_to_numpy(fixed.optimizer.iterations)) == 0  # a fresh optimizer, as the note says


def test_h5_file_keeps_its_training_config_as_stored(tmp_path):
    import h5py

    path = trained(tmp_path / "model.h5")
    with h5py.File(path, "r") as h5:
        stored = h5.attrs["training_config"]
    fix_json(path, "--fix")
    with h5py.File(path, "r") as h5:
        assert h5.attrs["training_config"] == stored
        assert "optimizer_weights" not in h5


def test_uncompiled_model_gets_no_optimizer_note(tmp_path):
    model = keras.Sequential([keras.Input((6, 6, 3)), layers.Conv2D(4, 3, name="conv"), layers.Flatten(name="flat"),
                              layers.Dense(5, name="fc")])
    path = tmp_path / "plain.keras"
    model.save(str(path))
    _, report = fix_json(path, "--fix")
    (outcome,) = report["files"][0]["fix"]["applied"]
    assert NOTE not in outcome["note"]

