"""``pwlint diff OLD NEW`` and ``pwlint diff --git REV``: new and resolved findings, and
parameters, MACs and file size before and after. Parameter counts are summed from the
ONNX initializers, MACs worked out by hand from the layer shapes, sizes from the files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import float_params, init, leftovers, one_line_error, run_inprocess

OPSET = '<ir_version: 8, opset_import: ["" : 17]>'

#: conv1 (3->8) BN ReLU pool, conv2 (8->16) BN ReLU pool, {extra}, then the head;
#: the convs keep their bias, which BatchNorm cancels: two PW004 findings in every version
VGG = """
{opset}
vgg (float[1,3,{side},{side}] x) => (float[1,10] y)
<{inits}>
{{
    [conv1] c1 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
    [bn1] n1 = BatchNormalization (c1, bn1, bn1, bn1, bn1)
    [relu1] r1 = Relu (n1)
    [pool1] p1 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r1)
    [conv2] c2 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (p1, w2, b2)
    [bn2] n2 = BatchNormalization (c2, bn2, bn2, bn2, bn2)
    [relu2] r2 = Relu (n2)
    {extra}
    [pool2] p2 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r3)
    [flatten] f = Flatten (p2)
    [fc1] h = Gemm <transB = 1> (f, fc1_w, fc1_b)
    [relu4] r4 = Relu (h)
    [fc2] y = Gemm <transB = 1> (r4, fc2_w, fc2_b)
}}
"""
PASS_THROUGH = "[same] r3 = Identity (r2)"
#: a third conv, straight into ReLU: no normalisation (PW003)
UNNORMALISED_CONV = """
    [conv3] c3 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r2, w3)
    [relu3] r3 = Relu (c3)
"""


def vgg_text(extra: str = PASS_THROUGH) -> str:
    inits = [init("w1", 8, 3, 3, 3), init("b1", 8), init("bn1", 8, value=1.0), init("w2", 16, 8, 3, 3),
             init("b2", 16), init("bn2", 16, value=1.0), init("fc1_w", 32, 16 * 3 * 3), init("fc1_b", 32),
             init("fc2_w", 10, 32), init("fc2_b", 10)]
    if "conv3" in extra:
        inits.append(init("w3", 16, 16, 3, 3))
    return VGG.format(opset=OPSET, side=12, inits=", ".join(inits), extra=extra)


def conv_macs(c_out: int, side: int, c_in: int, kernel: int) -> int:
    """MACs of a square conv for one sample: per output value, c_in * k * k."""
    return c_out * side * side * c_in * kernel * kernel


#: the two convs on a 12x12 input (conv2 after a 2x2 pool: 6x6), shared by every version
FEATURE_MACS = conv_macs(8, 12, 3, 3) + conv_macs(16, 6, 8, 3)
#: Flatten(16x3x3 = 144) -> 32 -> 10
DENSE_HEAD_MACS = 144 * 32 + 32 * 10
#: after the pointwise fix: global pooling, then 1x1 convs 16 -> 32 and 32 -> 10 on a 1x1 map
POINTWISE_HEAD_MACS = conv_macs(32, 1, 16, 1) + conv_macs(10, 1, 32, 1)


def write_model(text: str, path) -> None:
    import onnx
    import onnx.parser

    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """old: the dense head; pointwise: old's head fixed by `pwlint --fix --unsafe-fixes -o`;
    unnormalised: old plus a conv without norm. Shared by the module's tests: read only."""
    folder = tmp_path_factory.mktemp("models")
    old, pointwise, unnormalised = (folder / name for name in ("old.onnx", "pointwise.onnx", "unnormalised.onnx"))
    write_model(vgg_text(), old)
    # only the head: PW004 stays in both versions, an unchanged finding
    fixed = run_inprocess("check", str(old), "--fix", "--unsafe-fixes", "--select", "PW001", "-o", str(pointwise))
    assert fixed.code == 0 and pointwise.exists(), fixed.err
    write_model(vgg_text(UNNORMALISED_CONV), unnormalised)
    return {"old": old, "pointwise": pointwise, "unnormalised": unnormalised}


def diff_json(*args: str, code: int | None = None) -> dict:
    run = run_inprocess("diff", *map(str, args), "--format", "json")
    assert run.err == "", run.err
    if code is not None:
        assert run.code == code, run.out
    return json.loads(run.out)


def codes(findings: list[dict]) -> list[str]:
    return sorted(f["code"] for f in findings)


# --- two files ------------------------------------------------------------------------------


def test_pointwise_fix_resolves_the_dense_head(models):
    old, new = models["old"], models["pointwise"]
    report = diff_json(old, new, code=0)
    (model,) = report["models"]
    assert codes(model["resolved_findings"]) == ["PW001"]
    assert model["new_findings"] == []
    assert model["unchanged_findings"] == 2  # the two PW004 biases, matched despite the rewrite
    assert model["before"]["params"] == float_params(old)
    assert model["after"]["params"] == float_params(new)
    assert float_params(new) < float_params(old)
    assert model["before"]["macs"] == FEATURE_MACS + DENSE_HEAD_MACS
    assert model["after"]["macs"] == FEATURE_MACS + POINTWISE_HEAD_MACS
    assert model["before"]["file_size"] == os.path.getsize(old)
    assert model["after"]["file_size"] == os.path.getsize(new)


def test_text_report_shows_figures_with_signed_changes(models):
    old, new = models["old"], models["pointwise"]
    run = run_inprocess("diff", str(old), str(new))
    assert run.code == 0, run.err
    before, after = float_params(old), float_params(new)
    params_line = next(line for line in run.out.splitlines() if line.strip().startswith("parameters"))
    assert f"{before:,}" in params_line and f"{after:,}" in params_line
    assert f"{after - before:+,}" in params_line and f"{(after - before) / before * 100:+.1f}%" in params_line
    size_line = next(line for line in run.out.splitlines() if line.strip().startswith("file size"))
    assert f"{os.path.getsize(old):,}" in size_line and f"{os.path.getsize(new):,}" in size_line
    assert any(line.startswith("  - PW001") for line in run.out.splitlines())


def test_an_unnormalised_conv_is_a_new_failing_finding(models):
    old, new = models["old"], models["unnormalised"]
    report = diff_json(old, new, code=1)
    (model,) = report["models"]
    assert codes(model["new_findings"]) == ["PW003"]
    assert model["new_findings"][0]["nodes"][0] == "conv3"
    assert model["resolved_findings"] == []
    assert model["after"]["params"] - model["before"]["params"] == 16 * 16 * 3 * 3 == float_params(new) - float_params(old)
    assert model["after"]["macs"] - model["before"]["macs"] == conv_macs(16, 6, 16, 3)
    assert report["summary"]["failing"] == 1


def test_only_new_findings_at_or_above_fail_on_fail(models):
    old, new = models["old"], models["unnormalised"]
    assert run_inprocess("diff", str(old), str(new), "--fail-on", "error").code == 0
    assert run_inprocess("diff", str(old), str(new), "--ignore", "PW003").code == 0
    assert run_inprocess("diff", str(old), str(new), "--exit-zero").code == 0
    # going back resolves the finding; the unchanged PW004 warnings do not fail the diff
    assert run_inprocess("diff", str(new), str(old)).code == 0


def test_configuration_of_new_applies_to_both_versions(models, tmp_path):
    """A per-file ignore naming NEW applies to OLD too: ignoring a rule for a file is a
    configuration change, not findings resolved in the model."""
    old, new = (shutil.copy(models[name], tmp_path) for name in ("old", "unnormalised"))
    (tmp_path / "pwlint.toml").write_text('[per-file-ignores]\n"unnormalised.onnx" = ["PW004"]\n')
    (model,) = diff_json(old, new, code=1)["models"]
    assert model["resolved_findings"] == []
    assert model["unchanged_findings"] == 1  # PW001, in both
    assert codes(model["new_findings"]) == ["PW003"]


def test_macs_are_marked_approximate_when_shapes_are_unknown(models, tmp_path):
    symbolic = tmp_path / "symbolic.onnx"
    write_model(vgg_text().replace("float[1,3,12,12] x", "float[1,3,H,W] x"), symbolic)
    (model,) = diff_json(models["old"], symbolic)["models"]
    assert model["before"]["macs_complete"] is True and model["after"]["macs_complete"] is False
    run = run_inprocess("diff", str(models["old"]), str(symbolic))
    macs_line = next(line for line in run.out.splitlines() if line.strip().startswith("MACs"))
    assert "-> ~" in macs_line


# --- Markdown ---------------------------------------------------------------------------------


def table(markdown: str) -> dict[str, list[str]]:
    """The figures table of a one-model report, checked to be well formed: a header row, a
    separator, then rows with as many cells; returned as {row name: [before, after, change]}."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert cells[0] == ["", "Before", "After", "Change"]
    assert all(set(cell) <= set("-: ") for cell in cells[1])
    assert {len(row) for row in cells} == {4}
    return {row[0]: row[1:] for row in cells[2:]}


def test_markdown_is_a_pull_request_comment_with_the_figures(models):
    old, new = models["old"], models["unnormalised"]
    run = run_inprocess("diff", str(old), str(new), "--format", "markdown")
    assert run.code == 1, run.err
    assert run.out.splitlines()[1].startswith("## ")
    rows = table(run.out)
    before, after = float_params(old), float_params(new)
    assert rows["Parameters"] == [f"{before:,}", f"{after:,}", f"{after - before:+,} ({(after - before) / before:+.1%})"]
    old_macs = FEATURE_MACS + DENSE_HEAD_MACS
    assert rows["MACs"][:2] == [f"{old_macs:,}", f"{old_macs + conv_macs(16, 6, 16, 3):,}"]
    assert rows["File size (bytes)"][:2] == [f"{os.path.getsize(old):,}", f"{os.path.getsize(new):,}"]
    new_items = [line for line in run.out.splitlines() if line.startswith("- **")]
    assert len(new_items) == 1 and new_items[0].startswith("- **PW003** (warning)")
    assert "<details>" not in run.out  # nothing resolved


def test_markdown_collapses_resolved_findings(models):
    run = run_inprocess("diff", str(models["old"]), str(models["pointwise"]), "--format", "markdown")
    details = run.out[run.out.index("<details>"):run.out.index("</details>")]
    assert "**PW001**" in details
    assert "\\<" not in details and "'flatten'" in details


def test_report_file_is_written_instead_of_stdout(models, tmp_path):
    target = tmp_path / "out" / "comment.md"
    target.parent.mkdir()
    args = ("diff", str(models["old"]), str(models["unnormalised"]), "--format", "markdown")
    written = run_inprocess(*args, "-o", str(target))
    assert written.code == 1 and written.out == ""
    assert target.read_text() == run_inprocess(*args).out
    assert leftovers(target.parent) == []


# --- errors -------------------------------------------------------------------------------------


def test_missing_file_is_one_line(models, tmp_path):
    line = one_line_error(run_inprocess("diff", str(tmp_path / "gone.onnx"), str(models["old"])))
    assert "gone.onnx" in line and "no such file" in line


def test_not_a_model_is_one_line(models, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert "unsupported file type" in one_line_error(run_inprocess("diff", str(models["old"]), str(notes)))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\xff\xff not protobuf")
    assert "broken.onnx" in one_line_error(run_inprocess("diff", str(models["old"]), str(broken)))


def test_wrong_number_of_files_is_one_line(models):
    assert "OLD NEW" in one_line_error(run_inprocess("diff", str(models["old"])))


# --- git ------------------------------------------------------------------------------------------


def git(repo, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=repo, env=env, check=True, capture_output=True)


@pytest.fixture
def repo(models, tmp_path, monkeypatch):
    """A repository whose HEAD holds net.onnx (the dense head) and old.onnx; in the working
    tree net.onnx has gained an unnormalised conv, gone.onnx is deleted and extra.onnx is new
    (untracked)."""
    root = tmp_path / "repo"
    (root / "models").mkdir(parents=True)
    shutil.copyfile(models["old"], root / "models" / "net.onnx")
    shutil.copyfile(models["pointwise"], root / "gone.onnx")
    (root / "README.md").write_text("not a model\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "models")
    shutil.copyfile(models["unnormalised"], root / "models" / "net.onnx")
    shutil.copyfile(models["pointwise"], root / "models" / "extra.onnx")
    (root / "gone.onnx").unlink()
    (root / "README.md").write_text("changed, still not a model\n")
    monkeypatch.chdir(root)
    return root


def test_git_lists_changed_added_and_removed_models(repo, models):
    report = diff_json("--git", "HEAD", code=1)
    by_path = {m["path"]: m for m in report["models"]}
    assert sorted(by_path) == ["gone.onnx", "models/extra.onnx", "models/net.onnx"]
    changed, added, removed = by_path["models/net.onnx"], by_path["models/extra.onnx"], by_path["gone.onnx"]
    assert changed["status"] == "modified"
    assert changed["before"]["params"] == float_params(models["old"])
    assert changed["after"]["params"] == float_params(repo / "models" / "net.onnx")
    assert changed["before"]["file_size"] == os.path.getsize(models["old"])
    assert codes(changed["new_findings"]) == ["PW003"]
    assert added["status"] == "added" and added["before"] is None
    assert added["after"]["params"] == float_params(models["pointwise"])
    assert codes(added["new_findings"]) == ["PW004", "PW004"]  # everything in a new model is new
    assert removed["status"] == "removed" and removed["after"] is None
    assert removed["before"]["params"] == float_params(models["pointwise"])


def test_git_markdown_shows_dashes_for_the_missing_side(repo):
    run = run_inprocess("diff", "--git", "HEAD", "models/extra.onnx", "--format", "markdown")
    rows = table(run.out)
    assert rows["Parameters"][0] == "\u2014" and rows["Parameters"][2] == "\u2014"


def test_git_paths_limit_the_search(repo):
    report = diff_json("--git", "HEAD", "models/net.onnx")
    assert [m["path"] for m in report["models"]] == ["models/net.onnx"]


def test_git_from_a_subfolder_as_a_command(repo):
    from tests.conftest import run_command

    run = run_command("diff", "--git", "HEAD", cwd=repo / "models")
    assert run.code == 1, run.err
    assert "models/net.onnx (modified)" in run.out and "gone.onnx (removed)" in run.out


def test_git_with_nothing_changed_exits_zero(repo):
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "update")
    run = run_inprocess("diff", "--git", "HEAD")
    assert run.code == 0 and "No model files changed since HEAD" in run.out


def test_git_bad_revision_is_one_line(repo):
    assert "unknown revision 'no-such-branch'" in one_line_error(run_inprocess("diff", "--git", "no-such-branch"))


def test_git_outside_a_repository_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert "not inside a git repository" in one_line_error(run_inprocess("diff", "--git", "HEAD"))


def test_diff_imports_no_framework(models):
    from tests.test_lazy_imports import HEAVY, run_child

    code, modules = run_child("diff", str(models["old"]), str(models["unnormalised"]))
    assert code == 1
    assert not modules & set(HEAVY), sorted(modules & set(HEAVY))


def test_git_follows_a_renamed_model(repo, models):
    (repo / "models" / "extra.onnx").unlink()  # the same bytes as gone.onnx: git could pair either
    shutil.copyfile(models["pointwise"], repo / "models" / "moved.onnx")
    git(repo, "add", "-A")
    (model,) = [m for m in diff_json("--git", "HEAD")["models"] if m["path"] == "models/moved.onnx"]
    assert model["status"] == "renamed" and model["old_path"] == "gone.onnx"
    assert model["new_findings"] == [] and model["resolved_findings"] == []
    assert model["before"]["params"] == model["after"]["params"] == float_params(models["pointwise"])


def test_git_lfs_pointer_is_one_line(repo):
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 123\n"
    (repo / "lfs.onnx").write_text(pointer)
    git(repo, "add", "lfs.onnx")
    git(repo, "commit", "-q", "-m", "lfs")
    (repo / "lfs.onnx").write_text(pointer.replace("123", "124"))
    assert "Git LFS pointer" in one_line_error(run_inprocess("diff", "--git", "HEAD", "lfs.onnx"))


def test_diff_refuses_what_check_refuses(models, onnx_text, tmp_path):
    """diff reads models through the same checks as check: a Keras config declaring
    units=2**62 (caught only on the loaded graph) and a model of operators pwlint does not
    know are errors, not a comparison with 4.15e22 parameters or of nothing."""
    import zipfile

    huge = tmp_path / "huge.keras"
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"name": "x", "batch_shape": [None, 8]}},
        {"class_name": "Dense", "config": {"name": "d", "units": 2**62}}]}}
    with zipfile.ZipFile(huge, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
    assert run_inprocess("check", str(huge)).code == 2
    assert "not a real model" in one_line_error(run_inprocess("diff", str(huge), str(huge)))
    custom = onnx_text("""<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
    g (float[1,4] x) => (float[1,4] y) { y = com.example.Secret(x) }""", check=False)
    assert "cannot check" in one_line_error(run_inprocess("diff", str(models["old"]), str(custom)))


def test_diff_of_a_model_without_its_external_data(models, tmp_path):
    """Missing weights are refused as by check, and compared from shapes when allowed."""
    import onnx

    from onnx import numpy_helper

    model = onnx.load(str(models["unnormalised"]))
    for tensor in model.graph.initializer:  # written from text: only raw bytes go external
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save(model, folder / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    (folder / "m.onnx.data").unlink()
    line = one_line_error(run_inprocess("diff", str(models["old"]), str(folder / "m.onnx")))
    assert "m.onnx.data" in line and "--allow-missing-weights" in line
    allowed = run_inprocess("diff", str(models["old"]), str(folder / "m.onnx"), "--allow-missing-weights")
    assert allowed.code in (0, 1) and allowed.err == ""
    # the same new finding and parameter count as with the weights (file sizes differ:
    # the external data is not part of the model file)
    complete = diff_json(models["old"], models["unnormalised"])["models"][0]
    shapes_only = diff_json(models["old"], folder / "m.onnx", "--allow-missing-weights")["models"][0]
    assert codes(shapes_only["new_findings"]) == codes(complete["new_findings"]) == ["PW003"]
    assert shapes_only["after"]["params"] == complete["after"]["params"]


# small changes: never a signed zero ------------------------------------------------------

@pytest.fixture(scope="module")
def bias_folded(tmp_path_factory):
    """A CNN with a large dense head (1152 -> 64) whose conv keeps a bias BatchNorm cancels,
    and the same model after `pwlint --fix --select PW004 -o`: 8 parameters fewer out of
    about 74k, a change that shows as 0.0% at one decimal."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w": rng.normal(size=(8, 3, 3, 3)), "b": rng.normal(size=8),
        "scale": np.ones(8), "shift": np.zeros(8), "mean": rng.normal(size=8), "var": np.ones(8),
        "fc_w": rng.normal(size=(64, 8 * 12 * 12)) * 0.01, "fc_b": np.zeros(64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["n"], name="bn"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    folder = tmp_path_factory.mktemp("small")
    old, new = folder / "old.onnx", folder / "new.onnx"
    onnx.save(model, old)
    fixed = run_inprocess("check", str(old), "--fix", "--select", "PW004", "-o", str(new))
    assert fixed.code == 0 and new.exists(), fixed.err
    return old, new


def test_a_tiny_change_is_not_shown_as_zero(bias_folded):
    old, new = bias_folded
    delta = float_params(new) - float_params(old)
    assert delta == -8 and abs(delta / float_params(old)) < 0.0005  # rounds to 0.0% at one decimal
    run = run_inprocess("diff", str(old), str(new))
    assert run.code == 0, run.err
    params_line = next(line for line in run.out.splitlines() if line.strip().startswith("parameters"))
    assert params_line.endswith(f"{delta:+,} (-<0.1%)")
    assert "0.0%)" not in params_line
    size_line = next(line for line in run.out.splitlines() if line.strip().startswith("file size"))
    size_delta = os.path.getsize(new) - os.path.getsize(old)
    assert size_delta < 0 and size_line.endswith(f"{size_delta:+,} (-<0.1%)")
    # an unchanged figure is an unsigned zero
    macs_line = next(line for line in run.out.splitlines() if line.strip().startswith("MACs"))
    assert macs_line.endswith("  0 (0.0%)")
    assert "-0.0%" not in run.out and "+0.0%" not in run.out and "+0 " not in run.out


def test_markdown_shows_a_tiny_change_the_same_way(bias_folded):
    old, new = bias_folded
    run = run_inprocess("diff", str(old), str(new), "--format", "markdown")
    rows = table(run.out)
    assert rows["Parameters"][2] == "-8 (-<0.1%)"
    assert rows["MACs"][2] == "0 (0.0%)"


@pytest.mark.parametrize("delta, base, shown", [
    (-8, 74_000, "-<0.1%"), (8, 74_000, "+<0.1%"), (0, 74_000, "0.0%"),
    (-36, 74_000, "-<0.1%"),   # -0.0486%: rounds to 0.0 at one decimal
    (-38, 74_000, "-0.1%"),    # -0.0514%
    (1, 2000, "+0.1%"), (-1, 3, "-33.3%"), (250, 100, "+250.0%"),
])
def test_percent_change_at_the_rounding_boundary(delta, base, shown):
    from pwlint.units import percent_change

    assert percent_change(delta, base) == shown
