"""Start-up cost: a pre-commit hook runs pwlint on every commit, so linting an ONNX
file must not import the heavy frameworks, nor onnx itself (a second, most of it
ml_dtypes) when the file's shapes and pwlint's own propagation suffice; ``--version``
and the rule documentation import none of them either.

Each check runs in a fresh interpreter: this test process has long since imported torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, sys
    from pwlint import cli

    try:
        code = cli.main(sys.argv[1:])
    except SystemExit as exc:
        code = exc.code
    roots = sorted({name.partition(".")[0] for name in sys.modules})
    sys.stderr.write("\\n" + json.dumps({"code": code, "modules": roots}) + "\\n")
    """
)


def run_child(*args: str, cwd=None) -> tuple[int, set[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=120, cwd=cwd,
    )
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    return report["code"], set(report["modules"])


HEAVY = ["torch", "onnxruntime", "keras", "tensorflow", "jax", "onnxscript"]
#: what reading an ONNX file with onnx costs: linting one whose shapes suffice needs none of it
ONNX_STACK = ["onnx", "ml_dtypes", "numpy", "google"]


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("head", ["flatten", "gap"])
def test_linting_onnx_imports_no_framework_nor_onnx(cnn_file, fmt, head):
    # the file states no intermediate shape: the flatten's input shape is propagated
    path = cnn_file(head=head)
    code, modules = run_child(str(path), "--format", fmt)
    assert code == 1  # the model was really linted: a flatten-dense head, or a conv bias before BN
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
    assert not modules & set(ONNX_STACK), sorted(modules & set(ONNX_STACK))


def test_a_dynamo_export_is_linted_without_onnx(exported):
    """torch's default exporter computes a flatten's target from the input's shape
    (Shape -> Gather -> Unsqueeze -> Concat -> Reshape): followed without onnx."""
    code, modules = run_child(str(exported("lenet", "dynamo")), "--format", "json")
    assert code == 1
    assert not modules & set(ONNX_STACK), sorted(modules & set(ONNX_STACK))


def test_onnx_shape_inference_is_the_fallback_for_an_operator_pwlint_does_not_follow(tmp_path):
    """A SpaceToDepth before the conv: pwlint does not propagate through it, so the
    conv's input shape is unknown although the model is static; onnx's inference
    runs, and the flatten-dense head is still found."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("SpaceToDepth", ["x"], ["s"], blocksize=2),
        helper.make_node("Conv", ["s", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    weights = [numpy_helper.from_array(np.zeros(shape, np.float32), name) for name, shape in
               (("w", (8, 4, 3, 3)), ("fc", (10, 8 * 8 * 8)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, tmp_path / "m.onnx")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=120)
    modules = set(json.loads(proc.stderr.strip().splitlines()[-1])["modules"])
    assert "PW001" in proc.stdout and "8x8x8 feature map" in proc.stdout, proc.stdout
    assert "onnx" in modules


def test_linting_a_folder_with_config_imports_no_framework(cnn_file, tmp_path):
    cnn_file("models/a.onnx")
    cnn_file("models/sub/b.onnx", head="gap")
    (tmp_path / "pyproject.toml").write_text('[tool.pwlint]\nignore = ["PW004"]\n')
    code, modules = run_child(str(tmp_path / "models"))
    assert code == 1
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_linting_without_configuration_does_not_import_pydantic(cnn_file):
    # pydantic validates configured values only; importing it costs a small lint a fifth of its time
    code, modules = run_child(str(cnn_file()))
    assert code == 1
    assert "pydantic" not in modules


def test_configured_options_are_validated(cnn_file, tmp_path):
    path = cnn_file()
    (tmp_path / "pwlint.toml").write_text("[rules.PW002]\nmax-params = -1\n")
    code, modules = run_child(str(path))
    assert code == 2 and "pydantic" in modules


def test_version_does_not_import_onnx():
    code, modules = run_child("--version")
    assert code == 0
    assert not modules & set(ONNX_STACK), sorted(modules & set(ONNX_STACK))
    assert not modules & set(HEAVY)


@pytest.mark.parametrize("args", [["rules"], ["rule", "PW001"]])
def test_rule_documentation_does_not_import_frameworks(args):
    code, modules = run_child(*args)
    assert code == 0
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))
    assert not modules & set(ONNX_STACK), sorted(modules & set(ONNX_STACK))
    assert "networkx" not in modules  # no graph is built
