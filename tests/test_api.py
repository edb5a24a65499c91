"""The Python API: ``pwlint.check`` and ``pwlint.fix`` on live models of every kind.

Each model is built as it is in the wild (an ``nn.Module`` class, a Keras Sequential,
Functional and subclassed model, an ONNX model written in text syntax, a ScriptModule,
an ExportedProgram), checked, fixed, and the fixed object run against the original on
random inputs. Live models and the files exported from them must give the same findings:
one load path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

import pwlint
from pwlint.fix.rounds import ATOL, RTOL

torch = pytest.importorskip("torch")
nn = torch.nn


# --- models ----------------------------------------------------------------------------


class HeadNet(nn.Module):
    """A small CNN with the classic heavy head: Flatten + Linear on a 8x8 map."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


class BiasNet(nn.Module):
    """Conv with a bias straight into BatchNorm, then a pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class Branchy(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -x


def _trained_like(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, as a trained model has."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _close(actual, expected) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL)


def _torch_out(model, x) -> np.ndarray:
    with torch.no_grad():
        return model(x).detach().numpy()


@pytest.fixture
def cli(pwlint):
    """``pwlint ARGS`` in this process (conftest's ``pwlint`` fixture, renamed: here
    ``pwlint`` is the package under test)."""
    return pwlint


def _keys(report) -> list[tuple]:
    return sorted((f.code, tuple(f.nodes), f.message, f.severity.value) for f in report.findings)


@pytest.fixture(scope="module")
def head_net():
    torch.manual_seed(0)
    return _trained_like(HeadNet()), torch.randn(2, 3, 16, 16)


@pytest.fixture(scope="module")
def bias_net():
    torch.manual_seed(1)
    return _trained_like(BiasNet()), torch.randn(2, 3, 8, 8)


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip("keras")


@pytest.fixture(scope="module")
def keras_sequential(keras):
    layers = keras.layers
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((12, 12, 3)), layers.Conv2D(4, 3, name="conv"), layers.Flatten(name="flatten"),
         layers.Dense(8, activation="relu", name="fc1"), layers.Dense(5, name="logits")],
        name="seq",
    )


@pytest.fixture(scope="module")
def keras_vgg(keras):
    layers = keras.layers
    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="block1_conv")(inputs)
    x = layers.MaxPooling2D(name="block1_pool")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="block2_conv")(x)
    x = layers.MaxPooling2D(name="block2_pool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(16, activation="relu", name="fc1")(x)
    outputs = layers.Dense(10, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="vgg_like")


@pytest.fixture(scope="module")
def keras_subclassed(keras):
    layers = keras.layers

    class Classifier(keras.Model):
        def __init__(self):
            super().__init__(name="classifier")
            self.conv = layers.Conv2D(8, 3, name="conv")
            self.bn = layers.BatchNormalization(name="bn")
            self.act = layers.ReLU(name="relu")
            self.flat = layers.Flatten(name="flatten")
            self.fc1 = layers.Dense(8, activation="relu", name="fc1")
            self.fc2 = layers.Dense(3, name="fc2")

        def call(self, x):
            return self.fc2(self.fc1(self.flat(self.act(self.bn(self.conv(x))))))

    keras.utils.set_random_seed(2)
    model = Classifier()
    model(np.zeros((2, 10, 10, 3), "float32"))  # built by calling it, as training does
    model.bn.moving_variance.assign(np.linspace(0.5, 2.0, 8).astype("float32"))
    return Classifier, model


ONNX_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[N, 3, 8, 8] x) => (float[N, 10] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, W, B)
    r = Relu (c)
    f = Flatten (r)
    y = Gemm (f, F, FB)
}
"""


@pytest.fixture(scope="module")
def onnx_model():
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper, parser

    model = parser.parse_model(ONNX_TEXT)
    rng = np.random.default_rng(0)
    weights = {
        "W": rng.standard_normal((4, 3, 3, 3)), "B": rng.standard_normal(4),
        "F": rng.standard_normal((4 * 8 * 8, 10)) * 0.1, "FB": rng.standard_normal(10),
    }
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items())
    for node, name in zip(model.graph.node, ("conv1", "relu1", "flatten", "fc")):
        node.name = name
    onnx.checker.check_model(model, full_check=True)
    return model


def _ort(model, x) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _keras_out(keras, model, x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


# --- import cost and the public surface ---------------------------------------------------


LIGHT_CHILD = textwrap.dedent(
    """
    import json, sys
    import pwlint
    names = {name: getattr(pwlint, name) for name in pwlint.__all__ if name not in ("Report", "FixResult")}
    after_import = sorted({m.partition(".")[0] for m in sys.modules})
    import pwlint.fix.rounds  # the fix loop's package must not take the name pwlint.fix
    from pwlint.fix import rounds
    fix_is_function = callable(pwlint.fix) and pwlint.fix.__module__ == "pwlint"
    print(json.dumps({"modules": after_import, "fix_is_function": fix_is_function}))
    """
)


def test_import_pwlint_imports_no_framework_numpy_or_networkx():
    proc = subprocess.run([sys.executable, "-c", LIGHT_CHILD], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    heavy = {"torch", "keras", "onnx", "numpy", "networkx", "onnxruntime", "tensorflow", "pydantic"}
    assert not heavy & set(report["modules"]), sorted(heavy & set(report["modules"]))
    assert report["fix_is_function"]


ONNX_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np, onnx.parser, onnx.numpy_helper, pwlint
    model = onnx.parser.parse_model(sys.argv[1])
    shapes = {"W": (4, 3, 3, 3), "B": (4,), "F": (256, 10), "FB": (10,)}
    model.graph.initializer.extend(onnx.numpy_helper.from_array(np.ones(s, np.float32), n) for n, s in shapes.items())
    codes = pwlint.check(model).codes
    print(json.dumps({"codes": codes, "modules": sorted({m.partition(".")[0] for m in sys.modules})}))
    """
)


def test_checking_an_onnx_model_imports_neither_torch_nor_keras(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", ONNX_CHILD, ONNX_TEXT], capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert "PW001" in report["codes"]
    assert not {"torch", "keras", "tensorflow"} & set(report["modules"])


def test_all_names_the_public_api():
    for name in pwlint.__all__:
        assert getattr(pwlint, name) is not None
    assert pwlint.Report.__module__ == "pwlint.api"
    assert issubclass(pwlint.ExportError, pwlint.LoadError)
    assert issubclass(pwlint.UnsupportedModelError, pwlint.PwlintError)
    assert set(pwlint.__all__) >= {"check", "fix", "Report", "FixResult", "Finding", "PwlintError", "__version__"}


# --- torch.nn.Module ----------------------------------------------------------------------


def test_torch_flatten_linear_head_is_reported_by_module_path(head_net):
    model, x = head_net
    report = pwlint.check(model, x)
    pw001 = [f for f in report.findings if f.code == "PW001"]
    assert len(pw001) == 1
    assert pw001[0].nodes == ["classifier.0", "classifier.1"]
    assert pw001[0].rule == "flatten-dense-head" and pw001[0].severity.value == "warning"
    assert pw001[0].fix is not None and pw001[0].fix.applicability == "safe"
    assert "'classifier.0'" in pw001[0].message and "'classifier.1'" in pw001[0].message
    assert report.path == "<torch.nn.Module HeadNet>" and report.format == "torch"
    assert not report.ok and report.coverage.complete
    text, data = str(report), report.to_json()
    assert text.startswith("<torch.nn.Module HeadNet>: PW001 (warning)")
    assert data["files"][0]["path"] == "<torch.nn.Module HeadNet>"
    assert [f["path"] for f in data["findings"]] == ["<torch.nn.Module HeadNet>"] * len(report.findings)
    # the private temporary file is never shown
    assert tempfile.gettempdir() not in text + json.dumps(data)


def test_torch_module_is_exported_in_eval_mode_and_left_as_it_was(bias_net):
    """A module still in training mode (the default) is linted and fixed as it ships: in
    eval mode, BatchNorm with its running statistics; its own mode is given back."""
    model, x = bias_net
    model.train()
    try:
        result = pwlint.fix(model, x)
        assert model.training  # restored
    finally:
        model.eval()
    probe = torch.randn(3, 3, 8, 8)
    _close(_torch_out(result.model, probe), _torch_out(model, probe))


def test_torch_module_in_training_mode_is_exported_as_it_ships():
    from pwlint.live import export_torch_module

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    model[1].running_mean.uniform_(-1, 1)
    model.train()
    x = torch.randn(2, 3, 8, 8)
    program = export_torch_module(model, x, "<net>")
    assert model.training
    model.eval()
    _close(_torch_out(program.module(), x), _torch_out(model, x))


def test_torch_fix_returns_a_module_matching_the_original(head_net):
    model, x = head_net
    weight_before = model.classifier[1].weight.clone()
    result = pwlint.fix(model, x)
    assert isinstance(result.model, nn.Module) and result.model is not model
    assert [o.code for o in result.applied] == ["PW001"]
    assert result.verified and result.max_abs_diff <= ATOL + RTOL
    assert result.params_before == result.params_after  # convolutionalising keeps the parameters
    assert "PW001" not in [f.code for f in result.remaining]
    assert result.report.ok
    # the user's model is untouched
    assert isinstance(model.classifier[1], nn.Linear) and torch.equal(model.classifier[1].weight, weight_before)
    torch.manual_seed(5)
    for batch in (2, 3):  # the batch was exported dynamic
        probe = torch.randn(batch, 3, 16, 16)
        _close(_torch_out(result.model, probe), _torch_out(model, probe))
    text = str(result)
    assert "applied: PW001 (safe) classifier.0, classifier.1" in text
    assert result.to_json()["files"][0]["fix"]["applied"][0]["nodes"] == ["classifier.0", "classifier.1"]


def test_torch_batchnorm_conv_bias_is_found_and_folded(bias_net):
    model, x = bias_net
    report = pwlint.check(model, x)
    assert [(f.code, f.nodes) for f in report.findings] == [("PW004", ["features.0", "features.1"])]
    result = pwlint.fix(model, x)
    assert [o.code for o in result.applied] == ["PW004"]
    assert result.params_after == result.params_before - 8  # the conv's 8 bias values
    assert result.report.findings == []
    probe = torch.randn(4, 3, 8, 8)
    _close(_torch_out(result.model, probe), _torch_out(model, probe))
    assert model.features[0].bias is not None  # the original keeps its bias


def test_exported_program_is_checked_and_fixed_as_a_program(bias_net):
    model, x = bias_net
    program = torch.export.export(model, (x,))
    report = pwlint.check(program)
    assert report.path == "<torch.export.ExportedProgram>"
    assert [f.code for f in report.findings] == ["PW004"]
    result = pwlint.fix(program)
    assert isinstance(result.model, torch.export.ExportedProgram)
    _close(_torch_out(result.model.module(), x), _torch_out(model, x))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_script_module_is_checked_but_not_fixed(head_net):
    model, x = head_net
    scripted = torch.jit.script(model)
    report = pwlint.check(scripted)
    assert report.path == "<torch.jit.ScriptModule HeadNet>"
    assert [(f.code, f.nodes) for f in report.findings] == [("PW001", ["classifier.0", "classifier.1"])]
    with pytest.raises(pwlint.UnsupportedModelError) as caught:
        pwlint.fix(scripted)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("<torch.jit.ScriptModule HeadNet>: ") and "torch.nn.Module with example_inputs" in message


def test_fixed_torch_module_written_to_an_output_file(head_net, tmp_path, cli):
    model, x = head_net
    target = tmp_path / "fixed.pt2"
    result = pwlint.fix(model, x, output=target)
    assert target.is_file() and result.changes.written == str(target)
    run = cli(str(target), "--select", "PW001")
    assert run.code == 0, run.out  # the written file has no Flatten+Linear head left
    with pytest.raises(pwlint.PwlintError, match=r"fixed.onnx: a fixed <torch.nn.Module HeadNet> is written as \.pt2"):
        pwlint.fix(model, x, output=tmp_path / "fixed.onnx")


# --- Keras --------------------------------------------------------------------------------


def test_keras_sequential(keras, keras_sequential):
    report = pwlint.check(keras_sequential)
    assert report.path == "<keras.Model seq>" and report.format == "keras"
    pw001 = [f for f in report.findings if f.code == "PW001"]
    assert [f.nodes for f in pw001] == [["flatten", "fc1"]]
    result = pwlint.fix(keras_sequential)
    assert isinstance(result.model, keras.Model)
    assert "PW001" in [o.code for o in result.applied]
    x = np.random.default_rng(0).standard_normal((3, 12, 12, 3)).astype("float32")
    _close(_keras_out(keras, result.model, x), _keras_out(keras, keras_sequential, x))


def test_keras_functional_vgg(keras, keras_vgg):
    report = pwlint.check(keras_vgg)
    codes = {f.code: f.nodes for f in report.findings}
    assert codes["PW001"] == ["flatten", "fc1"]
    assert "block1_conv" in " ".join(n for f in report.findings for n in f.nodes)  # PW003 names the user's layers
    result = pwlint.fix(keras_vgg)
    assert [o.code for o in result.applied] == ["PW001"]
    assert [layer.name for layer in result.model.layers][:5] == [
        "image", "block1_conv", "block1_pool", "block2_conv", "block2_pool",
    ]
    x = np.random.default_rng(1).standard_normal((2, 16, 16, 3)).astype("float32")
    _close(_keras_out(keras, result.model, x), _keras_out(keras, keras_vgg, x))


def test_keras_subclassed_model_is_read_through_its_layers(keras, keras_subclassed):
    _, model = keras_subclassed
    report = pwlint.check(model)
    assert report.path == "<keras.Model classifier>"
    found = {f.code: f.nodes for f in report.findings}
    assert found["PW001"] == ["flatten", "fc1"]
    assert found["PW004"] == ["conv", "bn"]
    assert report.coverage.complete
    result = pwlint.fix(model)
    assert isinstance(result.model, keras.Model)
    assert sorted(o.code for o in result.applied) == ["PW001", "PW004"]
    x = np.random.default_rng(2).standard_normal((3, 10, 10, 3)).astype("float32")
    _close(_keras_out(keras, result.model, x), _keras_out(keras, model, x))


def test_unbuilt_subclassed_keras_model_says_to_build_it(keras_subclassed):
    cls, _ = keras_subclassed
    with pytest.raises(pwlint.ExportError) as caught:
        pwlint.check(cls())
    assert "\n" not in str(caught.value)
    assert "not built yet" in str(caught.value) and "model(x)" in str(caught.value)


def test_keras_layer_is_not_a_model(keras):
    with pytest.raises(pwlint.UnsupportedModelError, match="Keras layer, not a model: wrap it in a keras.Model"):
        pwlint.check(keras.layers.Dense(3))


# --- ONNX ---------------------------------------------------------------------------------


def test_onnx_model_proto(onnx_model):
    serialized = onnx_model.SerializeToString()
    report = pwlint.check(onnx_model)
    assert report.path == "<onnx.ModelProto tiny>" and report.format == "onnx"
    assert [f.nodes for f in report.findings if f.code == "PW001"] == [["flatten", "fc"]]
    result = pwlint.fix(onnx_model)
    assert type(result.model).__name__ == "ModelProto"
    assert [o.code for o in result.applied] == ["PW001"]
    assert onnx_model.SerializeToString() == serialized  # the object passed in is not changed
    x = np.random.default_rng(3).standard_normal((3, 3, 8, 8)).astype("float32")
    _close(_ort(result.model, x), _ort(onnx_model, x))


def test_unsafe_fix_changes_the_head_and_says_so(onnx_model):
    safe = pwlint.fix(onnx_model)
    unsafe = pwlint.fix(onnx_model, unsafe=True)
    assert safe.params_after == safe.params_before
    # pool + pointwise: the dense layer's 256x10 weights become 4x10 (the bias stays)
    assert unsafe.params_before - unsafe.params_after == 4 * 8 * 8 * 10 - 4 * 10
    assert [o.applicability for o in unsafe.applied] == ["unsafe"]
    assert "fine-tune it before use" in str(unsafe)


# --- one load path: live models and their files agree -------------------------------------


def test_live_torch_module_and_its_pt2_file_agree(head_net, tmp_path):
    model, x = head_net
    path = tmp_path / "head.pt2"
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)), path)
    assert _keys(pwlint.check(model, x)) == _keys(pwlint.check(path))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_live_script_module_and_its_file_agree(head_net, tmp_path):
    model, _ = head_net
    scripted = torch.jit.script(model)
    path = tmp_path / "head.jit"
    scripted.save(str(path))
    assert _keys(pwlint.check(scripted)) == _keys(pwlint.check(str(path)))


def test_live_keras_model_and_its_file_agree(keras_vgg, tmp_path):
    path = tmp_path / "vgg.keras"
    keras_vgg.save(path)
    assert _keys(pwlint.check(keras_vgg)) == _keys(pwlint.check(path))


def test_live_onnx_model_and_its_file_agree(onnx_model, tmp_path):
    import onnx

    path = tmp_path / "tiny.onnx"
    onnx.save(onnx_model, path)
    assert _keys(pwlint.check(onnx_model)) == _keys(pwlint.check(path))


def test_report_of_a_file_is_what_the_command_line_prints(onnx_model, tmp_path, cli):
    import onnx

    path = tmp_path / "tiny.onnx"
    onnx.save(onnx_model, path)
    report = pwlint.check(path)
    as_json = cli(str(path), "--format", "json")
    as_text = cli(str(path))
    assert report.to_json() == json.loads(as_json.out)
    assert str(report) + "\n" == as_text.out
    assert report.render("sarif") == cli(str(path), "--format", "sarif").out


def test_fixing_a_path_writes_the_output_and_leaves_the_source(onnx_model, tmp_path):
    import onnx

    path, target = tmp_path / "tiny.onnx", tmp_path / "tiny.fixed.onnx"
    onnx.save(onnx_model, path)
    before = path.read_bytes()
    result = pwlint.fix(path, output=target)
    assert result.model == str(target) and path.read_bytes() == before
    assert "PW001" not in pwlint.check(target).codes


# --- selection and configuration ----------------------------------------------------------


def test_select_and_ignore(bias_net, onnx_model):
    model, x = bias_net
    assert pwlint.check(model, x, ignore="PW004").findings == []
    assert pwlint.check(onnx_model, select=["PW001"]).codes == ["PW001"]
    assert pwlint.check(onnx_model, select="PW001,PW003").codes == ["PW001", "PW003"]
    with pytest.raises(pwlint.ConfigError, match=r"^pwlint.check: select: unknown rule selector 'PW999'$"):
        pwlint.check(onnx_model, select="PW999")


def test_config_as_a_dict(onnx_model):
    relaxed = pwlint.check(onnx_model, config={"fail-on": "error"})
    assert relaxed.ok and relaxed.codes  # findings, none at or above error
    assert "PW001" not in pwlint.check(onnx_model, config={"ignore": ["PW001"]}).codes
    with pytest.raises(pwlint.ConfigError, match="unknown key 'fail_onn'"):
        pwlint.check(onnx_model, config={"fail_onn": "error"})


def test_live_models_use_the_configuration_of_the_current_folder(onnx_model, tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pwlint]\nignore = ["PW003"]\n[tool.pwlint.per-file-ignores]\n"*" = ["PW001"]\n'
    )
    monkeypatch.chdir(tmp_path)
    codes = pwlint.check(onnx_model).codes
    assert "PW003" not in codes  # the project's ignore applies
    assert "PW001" in codes  # per-file-ignores match files, and a live model has none


def test_config_file_argument(onnx_model, tmp_path):
    config = tmp_path / "pwlint.toml"
    config.write_text('ignore = ["PW001"]\n')
    assert "PW001" not in pwlint.check(onnx_model, config=config).codes
    with pytest.raises(pwlint.ConfigError, match="configuration file not found"):
        pwlint.check(onnx_model, config=tmp_path / "missing.toml")


# --- errors -------------------------------------------------------------------------------


def test_untraceable_torch_model_is_one_line_saying_why_and_what_to_do(capfd):
    with pytest.raises(pwlint.ExportError) as caught:
        pwlint.check(Branchy(), torch.randn(2, 4))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("<torch.nn.Module Branchy>: torch.export cannot trace the model: ")
    assert "branches on a tensor's values at test_api.py:" in message and "`if x.sum() > 0:`" in message
    assert "torch.cond" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no framework traceback chained
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # torch's warnings and log lines are not shown


def test_torch_module_without_example_inputs():
    with pytest.raises(pwlint.ExportError, match=r"^<torch.nn.Module BiasNet>: .*pass example_inputs"):
        pwlint.check(BiasNet())


def test_wrong_example_inputs_say_what_torch_said(bias_net):
    model, _ = bias_net
    with pytest.raises(pwlint.ExportError) as caught:
        pwlint.check(model, torch.randn(2, 4))
    message = str(caught.value)
    assert "\n" not in message and "torch.export cannot export the model" in message
    assert "example_inputs are what forward() takes" in message


@pytest.mark.parametrize("thing, shown", [(123, "int object"), ([1, 2], "list object"), (object(), "object object")])
def test_not_a_model(thing, shown):
    with pytest.raises(pwlint.UnsupportedModelError) as caught:
        pwlint.check(thing)
    assert str(caught.value).startswith(f"cannot lint {shown}: pwlint takes a model file path, an onnx.ModelProto")


def test_missing_file_is_a_load_error(tmp_path):
    with pytest.raises(pwlint.LoadError, match=r"missing.onnx: no such file or directory$"):
        pwlint.check(tmp_path / "missing.onnx")


def test_a_folder_is_not_one_model(tmp_path):
    with pytest.raises(pwlint.PwlintError, match="is a folder"):
        pwlint.check(tmp_path)


# --- what the command line builds on (pwlint check pkg.mod:factory) --------------------------


def test_lint_model_with_a_front_end_linter_feeds_its_reporters(head_net):
    """The CLI's path for code targets: its own Linter and resolver, the engine's FileResult."""
    from pwlint.api import lint_model
    from pwlint.config import ConfigResolver, Overrides
    from pwlint.engine import LintResult, Linter
    from pwlint.plugins import get_registry

    model, x = head_net
    registry = get_registry()
    linter = Linter(registry, ConfigResolver(Overrides(select=["PW001"])))
    linted = lint_model(linter, model, x, name="pkg.models:build")
    assert linted.file.path == "pkg.models:build" and not linted.file.error
    assert [f.path for f in linted.file.findings] == ["pkg.models:build"]
    import io

    stream = io.StringIO()
    registry.reporters["sarif"].report(LintResult(files=[linted.file]), stream)
    sarif = json.loads(stream.getvalue())
    locations = sarif["runs"][0]["results"][0]["locations"]
    assert locations[0]["physicalLocation"]["artifactLocation"]["uri"] == "pkg.models%3Abuild"
    assert linter.resolver.__class__ is ConfigResolver  # the front end's resolver is given back


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(textwrap.dedent(
        """
        import torch.nn as nn

        def build_model():
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))

        net = build_model()
        NOT_A_MODEL = 3

        def broken():
            raise ValueError("no weights here")
        """
    ))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield package
    for name in [m for m in sys.modules if m.split(".")[0] == "userpkg"]:
        del sys.modules[name]


def test_resolve_target_calls_a_factory_or_takes_a_model(user_package):
    from pwlint.live import resolve_target

    target = resolve_target("userpkg.models:build_model")
    assert isinstance(target.model, nn.Sequential) and target.name == "userpkg.models:build_model"
    assert isinstance(resolve_target("userpkg.models:net").model, nn.Sequential)
    report = pwlint.check(target.model, torch.randn(1, 3, 8, 8))
    assert [f.nodes for f in report.findings if f.code == "PW001"] == [["1", "2"]]


@pytest.mark.parametrize("spec, message", [
    ("userpkg.models", "a code target is 'package.module:name'"),
    ("userpkg.nothere:x", "no module named 'userpkg.nothere'"),
    ("userpkg.models:missing", "userpkg.models has no attribute 'missing'"),
    ("userpkg.models:NOT_A_MODEL", "NOT_A_MODEL gave int object; pwlint takes"),
    ("userpkg.models:broken", "calling broken() failed: ValueError: no weights here"),
])
def test_resolve_target_errors_are_one_line(user_package, spec, message):
    from pwlint.live import resolve_target

    with pytest.raises(pwlint.PwlintError) as caught:
        resolve_target(spec)
    assert str(caught.value).startswith(f"{spec}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)
