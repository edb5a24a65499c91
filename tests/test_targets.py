"""``pwlint check pkg.module:name``: models defined by code, linted like files.

Each test writes a throwaway package into a temporary folder and runs pwlint there as a
separate process, the way a user runs it from the root of their repository.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.conftest import one_line_error, run_command

TORCH_MODELS = '''
import torch.nn as nn


class Net(nn.Module):
    """Conv -> ReLU -> Flatten -> Linear: a flatten-dense head on an 8x8x8 map."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def build_model():
    return Net()


def broken():
    raise RuntimeError("checkpoint not found")


NOT_A_MODEL = 42
'''


@pytest.fixture
def repo(tmp_path):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(TORCH_MODELS)
    return tmp_path


def pwlint_in(repo, *args):
    return run_command(*args, cwd=repo, timeout=300)


def test_a_factory_is_linted_with_the_layer_names_of_the_code(repo):
    run = pwlint_in(repo, "check", "mypkg.models:build_model", "--input-shape", "2,3,8,8", "--format", "json")
    assert run.code == 1, run.err
    report = json.loads(run.out)
    (head,) = [f for f in report["findings"] if f["code"] == "PW001"]
    assert head["path"] == "mypkg.models:build_model"
    assert head["nodes"][-1] == "classifier.1"
    assert "8x8x8" in head["message"] and "512 -> 10" in head["message"]
    # a class is a factory too (called without arguments)
    by_class = pwlint_in(repo, "check", "mypkg.models:Net", "--input-shape", "2,3,8,8", "--format", "json")
    assert [f["nodes"] for f in json.loads(by_class.out)["findings"]] == [f["nodes"] for f in report["findings"]]


def test_sarif_names_the_target(repo):
    run = pwlint_in(repo, "check", "mypkg.models:build_model", "--input-shape", "2,3,8,8", "--format", "sarif")
    assert run.code == 1, run.err
    results = json.loads(run.out)["runs"][0]["results"]
    # the head, and the conv bias the BatchNorm cancels
    assert sorted(r["ruleId"] for r in results) == ["PW001", "PW004"]
    assert "classifier.1" in json.dumps(results[0]["locations"])


def test_fix_writes_a_verified_pt2_that_torch_loads(repo):
    import torch

    out = repo / "fixed.pt2"
    run = pwlint_in(repo, "check", "mypkg.models:build_model", "--input-shape", "2,3,8,8", "--fix", "-o", str(out))
    assert run.code in (0, 1), run.err
    assert "applied: PW001" in run.out and out.is_file()
    fixed = torch.export.load(str(out)).module()
    # the dense layer's 10 x 512 weight is now a 10 x 8 x 8 x 8 conv kernel over the map
    assert (10, 8, 8, 8) in [tuple(p.shape) for p in fixed.parameters()]
    assert fixed(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    # the fixed file is clean of PW001 when linted as a file
    relint = pwlint_in(repo, "check", str(out), "--select", "PW001")
    assert relint.code == 0, relint.out


@pytest.mark.parametrize("target, words", [
    ("mypkg.models:nothing", "has no attribute 'nothing'"),
    ("mypkg.missing:build", "no module named 'mypkg.missing'"),
    ("mypkg.models:broken", "checkpoint not found"),
    ("mypkg.models:NOT_A_MODEL", "gave"),
])
def test_a_bad_target_is_one_line(repo, target, words):
    run = pwlint_in(repo, "check", target, "--input-shape", "1,3,8,8")
    assert run.code == 2
    line = one_line_error(run)
    assert line.startswith(f"pwlint: error: {target}: ") and words in line, line


def test_a_torch_target_without_input_shape_says_which_flag(repo):
    line = one_line_error(pwlint_in(repo, "check", "mypkg.models:build_model"))
    assert "--input-shape" in line


@pytest.mark.parametrize("args, words", [
    (["--input-shape", "1,three"], "positive sizes"),
    (["--input-shape", "1,3,8,8", "--input-dtype", "complex"], "one of"),
])
def test_bad_input_flags_are_one_line(repo, args, words):
    assert words in one_line_error(pwlint_in(repo, "check", "mypkg.models:build_model", *args))


def test_input_shape_without_a_target_is_a_usage_error(repo, cnn_file):
    line = one_line_error(pwlint_in(repo, "check", str(cnn_file()), "--input-shape", "1,3,8,8"))
    assert "code target" in line


def test_files_and_targets_together_keep_their_order(repo, cnn_file):
    model = cnn_file()
    run = pwlint_in(repo, "check", str(model), "mypkg.models:build_model", "--input-shape", "2,3,8,8",
                    "--format", "json")
    assert [f["path"] for f in json.loads(run.out)["files"]] == [str(model), "mypkg.models:build_model"]


def test_a_keras_factory_needs_no_input_shape(repo):
    (repo / "mypkg" / "kmodels.py").write_text(textwrap.dedent('''
        import keras
        from keras import layers

        def build():
            return keras.Sequential([
                keras.Input((8, 8, 3)), layers.Conv2D(4, 3, name="conv"), layers.Flatten(name="flat"),
                layers.Dense(10, name="fc"),
            ])
    '''))
    run = pwlint_in(repo, "check", "mypkg.kmodels:build", "--format", "json")
    assert run.code == 1, run.err
    heads = [f for f in json.loads(run.out)["findings"] if f["code"] == "PW001"]
    assert [h["nodes"] for h in heads] == [["flat", "fc"]]
