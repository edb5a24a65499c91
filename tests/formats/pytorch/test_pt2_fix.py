"""``--fix`` on ``.pt2`` programs (``torch.export.save``): the same four fixes as on ONNX,
written as ``.pt2`` files that load and, for safe fixes, give the same outputs.

Outputs are compared here by loading both files with ``torch.export.load`` (files this
test wrote), not taken from pwlint's report. The security tests build archives whose
loading with ``torch.export.load`` would run code (an embedded pickle, guards code, a
symbolic size), show that it really would, and that pwlint fixes or refuses them
without it running.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pwlint.formats.pytorch.pt2 import fixes as pt2_fixes  # noqa: E402
from pwlint.formats.pytorch.pt2.sanitize import check_expression, check_program  # noqa: E402
from pwlint.errors import FixNotApplicable  # noqa: E402
from pwlint.formats.pytorch.loader import load as torch_load  # noqa: E402
from tests import zoo  # noqa: E402
from tests.conftest import codes, fix_json, leftovers, lint, run_inprocess  # noqa: E402

#: the map each zoo model flattens into its first dense layer: (C, H, W)
FLATTENED = {"vgg": (32, 4, 4), "vgg_bias": (32, 4, 4), "lenet": (16, 5, 5)}


def build(name: str) -> torch.nn.Module:
    """A zoo model with random BatchNorm statistics and affine parameters, so that a
    fold that gets the running mean wrong shows in the outputs."""
    model = zoo.build(name)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(size, generator=generator))
                module.bias.copy_(torch.randn(size, generator=generator) * 0.1)
            if isinstance(module, torch.nn.Conv2d) and module.bias is not None:
                module.bias.copy_(torch.randn(module.out_channels, generator=generator))
    return model.eval()


def constant_map(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with the kernel of its last conv zeroed: that conv then writes its bias
    (zero, for a conv without one) at every position, and what follows it (BatchNorm,
    ReLU, max pooling) keeps the map spatially constant, whatever the input."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.zero_()
    return model


def export(name: str, path: Path, *, dynamic_batch: bool = False, decompose: bool = False,
           constant: bool = False) -> Path:
    model = build(name)
    if constant:
        model = constant_map(model)
    shape = zoo.input_shape(model)
    if dynamic_batch:
        example = torch.randn(2, *shape[1:])
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        program = torch.export.export(model, (torch.randn(*shape),))
    if decompose:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecation, inside run_decompositions
            program = program.run_decompositions()
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="session")
def pt2_source(tmp_path_factory):
    """``pt2_source(name, **export_kwargs)``: a zoo model saved with torch.export.save, cached."""
    folder = tmp_path_factory.mktemp("pt2-sources")
    cache: dict = {}

    def get(name: str, **kwargs) -> Path:
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            suffix = "".join(f"-{k}" for k, v in sorted(kwargs.items()) if v)
            cache[key] = export(name, folder / f"{name}{suffix}.pt2", **kwargs)
        return cache[key]

    return get


def copy(source: Path, folder: Path, name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or source.name)
    shutil.copyfile(source, target)
    return target


def load(path: Path):
    """A program this test wrote, or pwlint wrote from one: ``torch.export.load`` is fine here."""
    return torch.export.load(str(path)).module()


def input_shape(path: Path, batch: int = 1) -> list[int]:
    """The shape of the program's input, a symbolic batch set to ``batch``."""
    program = torch.export.load(str(path))
    name = next(s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT")
    value = next(n for n in program.graph.nodes if n.name == name).meta["val"]
    shape = [d if isinstance(d, int) else batch for d in value.shape]
    shape[0] = batch
    return shape


def outputs(path: Path, shape: list[int], seeds=(0, 1, 2)) -> list[torch.Tensor]:
    module = load(path)
    results = []
    for seed in seeds:
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            results.append(module(x))
    return results


def assert_same_outputs(original: Path, fixed: Path, batch: int = 1) -> None:
    shape = input_shape(original, batch)
    for before, after in zip(outputs(original, shape), outputs(fixed, shape)):
        assert after.shape == before.shape
        np.testing.assert_allclose(after.numpy(), before.numpy(), rtol=1e-4, atol=1e-5)


def state(path: Path) -> dict[str, torch.Tensor]:
    return dict(torch.export.load(str(path)).state_dict)


def params(path: Path) -> int:
    return sum(v.numel() for k, v in state(path).items() if "running" not in k and "num_batches" not in k)


def ops(path: Path) -> list[str]:
    return [str(n.target) for n in torch.export.load(str(path)).graph.nodes if n.op == "call_function"]


def conv_weights(path: Path) -> list[torch.Tensor]:
    """The weights of the conv operators, in graph order."""
    program = torch.export.load(str(path))
    placeholders = {s.arg.name: s.target for s in program.graph_signature.input_specs if s.target}
    weights = []
    for node in program.graph.nodes:
        if node.op == "call_function" and "conv" in str(node.target):
            weights.append(program.state_dict[placeholders[node.args[1].name]])
    return weights


# the safe fixes: convolutionalise the head, fold conv biases -----------------------------

@pytest.fixture(scope="module", params=sorted(FLATTENED))
def safely_fixed(request, pt2_source, tmp_path_factory):
    name = request.param
    original = pt2_source(name)
    model = copy(original, tmp_path_factory.mktemp("safe"))
    _, report = fix_json(model, "--fix")
    return name, original, model, report


def test_safe_fix_gives_the_same_outputs(safely_fixed):
    _, original, model, _ = safely_fixed
    assert model.read_bytes() != original.read_bytes()
    assert_same_outputs(original, model)


def test_relinting_after_safe_fixes_reports_no_pw001_or_pw004(safely_fixed):
    name, original, model, report = safely_fixed
    before = codes(lint(original))
    assert "PW001" in before and ("PW004" in before) == (name == "vgg_bias")
    after = codes(lint(model))
    assert "PW001" not in after and "PW004" not in after
    assert "PW001" not in codes(report) and "PW004" not in codes(report)
    fix = report["files"][0]["fix"]
    assert all(o["applicability"] == "safe" for o in fix["applied"])
    assert fix["verified"] and fix["written"] == str(model)
    assert fix["max_abs_diff"] < 1e-4


def test_dense_layers_became_an_hxw_conv_and_pointwise_convs(safely_fixed):
    name, original, model, report = safely_fixed
    channels, height, width = FLATTENED[name]
    assert "aten.linear.default" in ops(original)
    assert "aten.linear.default" not in ops(model)
    kernels = [tuple(w.shape[2:]) for w in conv_weights(model)]
    assert kernels[-3:] == [(height, width), (1, 1), (1, 1)]
    first = conv_weights(model)[-3]
    assert first.shape[1] == channels
    # parameters are unchanged, apart from the conv biases PW004 drops (8 + 16 + 32)
    dropped = 8 + 16 + 32 if name == "vgg_bias" else 0
    assert params(original) - params(model) == dropped
    # the layers keep their module names: the conv that replaced classifier.N is classifier.N
    before = {layer.name: layer.kind for layer in torch_load(str(original)).layers()}
    after = {layer.name: layer.kind for layer in torch_load(str(model)).layers()}
    denses = [n for n, kind in before.items() if kind == "dense"]
    assert len(denses) == 3 and all(after[n] == "conv" for n in denses)


def test_the_conv_kernel_is_the_dense_weight_in_nchw_order(safely_fixed):
    name, original, model, _ = safely_fixed
    channels, height, width = FLATTENED[name]
    before, after = state(original), state(model)
    dense = next(k for k in before if k.startswith("classifier.") and k.endswith("weight") and before[k].dim() == 2)
    assert after[dense].shape == (before[dense].shape[0], channels, height, width)
    assert torch.equal(after[dense], before[dense].reshape(-1, channels, height, width))


def test_fold_moves_the_bias_into_the_running_mean_exactly(pt2_source, tmp_path):
    original = pt2_source("vgg_bias")
    model = copy(original, tmp_path)
    _, report = fix_json(model, "--fix", "--select", "PW004")
    applied = report["files"][0]["fix"]["applied"]
    assert [o["code"] for o in applied] == ["PW004"] * 3
    before, after = state(original), state(model)
    for conv, norm in (("features.0", "features.1"), ("features.4", "features.5"), ("features.8", "features.9")):
        assert f"{conv}.bias" in before and f"{conv}.bias" not in after
        expected = (before[f"{norm}.running_mean"].double() - before[f"{conv}.bias"].double()).float()
        assert torch.equal(after[f"{norm}.running_mean"], expected)
    assert_same_outputs(original, model)
    assert codes(lint(model)).count("PW004") == 0


def test_decomposed_programs_are_fixed_too(pt2_source, tmp_path):
    """After ``run_decompositions()``: addmm with a transposed weight, aten.convolution,
    _native_batch_norm_legit_no_training."""
    original = pt2_source("vgg_bias", decompose=True)
    assert "aten.addmm.default" in ops(original)
    model = copy(original, tmp_path)
    _, report = fix_json(model, "--fix")
    assert sorted(o["code"] for o in report["files"][0]["fix"]["applied"]) == ["PW001"] + ["PW004"] * 3
    assert_same_outputs(original, model)
    assert not {"PW001", "PW004"} & set(codes(lint(model)))


def test_a_dynamic_batch_stays_dynamic(pt2_source, tmp_path):
    original = pt2_source("vgg", dynamic_batch=True)
    model = copy(original, tmp_path)
    _, report = fix_json(model, "--fix")
    assert [o["code"] for o in report["files"][0]["fix"]["applied"]] == ["PW001"]
    for batch in (1, 3):
        assert_same_outputs(original, model, batch=batch)


# the unsafe fixes ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["lenet", "vgg"])
def test_pool_pointwise_cuts_the_first_layer_by_h_times_w(pt2_source, tmp_path, name):
    original = pt2_source(name)
    model = copy(original, tmp_path)
    _, report = fix_json(model, "--fix", "--unsafe-fixes", "--select", "PW001")
    (outcome,) = report["files"][0]["fix"]["applied"]
    assert outcome["applicability"] == "unsafe"
    channels, height, width = FLATTENED[name]
    before, after = state(original), state(model)
    dense = next(k for k in before if k.startswith("classifier.") and k.endswith("weight") and before[k].dim() == 2)
    bias = dense.removesuffix("weight") + "bias"
    units = before[dense].shape[0]
    # the layer with its bias: C*H*W*units + units parameters before, C*units + units after
    assert before[dense].numel() + before[bias].numel() == channels * height * width * units + units
    assert after[dense].shape == (units, channels, 1, 1)
    assert after[dense].numel() + after[bias].numel() == channels * units + units
    assert torch.equal(after[bias], before[bias])  # the bias is kept as it was
    saved = channels * height * width * units - channels * units
    assert params(original) - params(model) == saved
    fix = report["files"][0]["fix"]
    assert fix["before"]["params"] - fix["after"]["params"] == saved
    # weights summed over positions
    summed = before[dense].reshape(units, channels, height * width).double().sum(-1)
    torch.testing.assert_close(after[dense].reshape(units, channels).double(), summed, rtol=1e-5, atol=1e-5)
    assert "aten.adaptive_avg_pool2d.default" in ops(model)
    for b, a in zip(outputs(original, input_shape(original)), outputs(model, input_shape(original))):
        assert a.shape == b.shape
    assert fix["max_abs_diff"] > 0


@pytest.mark.parametrize("name", ["lenet", "vgg"])
def test_pool_pointwise_is_exact_on_a_spatially_constant_map(pt2_source, tmp_path, name):
    """Where the map the head flattens is the same at every position, global average
    pooling + the dense weights summed over positions computes what the dense layer did:
    the unsafe fix is exact there, so a wrong sum, scale or bias shows."""
    original = pt2_source(name, constant=True)
    channels, height, width = FLATTENED[name]
    # the map really is spatially constant, checked on the source module
    module = constant_map(build(name))
    x = torch.randn(*input_shape(original), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        features = module.features(x)
    assert features.shape[1:] == (channels, height, width)
    assert features.abs().max() > 0.1  # and not all zero: the bias of the dense layer is not all that is left
    torch.testing.assert_close(features, features[:, :, :1, :1].expand_as(features), rtol=0, atol=0)

    model = copy(original, tmp_path)
    _, report = fix_json(model, "--fix", "--unsafe-fixes", "--select", "PW001")
    (outcome,) = report["files"][0]["fix"]["applied"]
    assert outcome["applicability"] == "unsafe"
    assert "aten.adaptive_avg_pool2d.default" in ops(model)
    assert_same_outputs(original, model)
    assert report["files"][0]["fix"]["max_abs_diff"] < 1e-4


def test_svd_reaches_its_target_parameter_count(pt2_source, tmp_path):
    original = pt2_source("lenet")
    model = copy(original, tmp_path)
    (tmp_path / "pwlint.toml").write_text("[rules.PW002]\nmax-params = 40000\nsvd-target-params = 20000\n")
    _, report = fix_json(model, "--fix", "--unsafe-fixes", "--select", "PW002")
    (outcome,) = report["files"][0]["fix"]["applied"]
    assert outcome["code"] == "PW002" and "relative weight error" in outcome["note"]
    after = state(model)
    first, second, bias = after["classifier.0.u.weight"], after["classifier.0.v.weight"], after["classifier.0.v.bias"]
    assert first.shape == (38, 400) and second.shape == (120, 38) and bias.shape == (120,)
    assert first.numel() + second.numel() + bias.numel() <= 20_000
    assert "classifier.0.weight" not in after
    for b, a in zip(outputs(original, input_shape(original)), outputs(model, input_shape(original))):
        assert a.shape == b.shape
    assert codes(report) == []


def test_svd_writes_the_truncated_svd_and_reports_the_error_of_what_it_wrote(pt2_source, tmp_path):
    """The factors in the written ``.pt2`` compose (``v.weight @ u.weight``) to the rank-38
    truncated SVD of the original weight, computed here; the reported relative weight
    error is that product's error; and the fixed program computes exactly what the
    original does with its weight replaced by that product."""
    original = pt2_source("lenet")
    model = copy(original, tmp_path)
    (tmp_path / "pwlint.toml").write_text("[rules.PW002]\nmax-params = 40000\nsvd-target-params = 20000\n")
    _, report = fix_json(model, "--fix", "--unsafe-fixes", "--select", "PW002")
    (outcome,) = report["files"][0]["fix"]["applied"]
    reported = float(re.search(r"relative weight error ([0-9.e+-]+)", outcome["note"]).group(1))

    weight = state(original)["classifier.0.weight"].detach().double()  # [120, 400]
    rank = (20_000 - 120) // (400 + 120)  # 38: the largest whose factors and bias fit
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    truncated = (u[:, :rank] * s[:rank]) @ vh[:rank]
    expected = float(torch.linalg.norm(weight - truncated) / torch.linalg.norm(weight))
    assert 0.05 < expected < 0.95  # a real approximation: a zeroed or halved factor would show

    after = state(model)
    product = after["classifier.0.v.weight"].detach().double() @ after["classifier.0.u.weight"].detach().double()
    written_error = float(torch.linalg.norm(weight - product) / torch.linalg.norm(weight))
    assert written_error == pytest.approx(expected, rel=1e-4)
    torch.testing.assert_close(product, truncated, rtol=0, atol=1e-5 * float(truncated.abs().max()))
    assert reported == pytest.approx(expected, rel=6e-3)  # the note prints 3 significant digits
    torch.testing.assert_close(after["classifier.0.v.bias"], state(original)["classifier.0.bias"], rtol=0, atol=0)

    # the outputs moved by what that weight error implies, no more and no less
    reference = load(original)
    with torch.no_grad():
        reference.get_parameter("classifier.0.weight").copy_(truncated.float())
    fixed, untouched = load(model), load(original)
    moved = []
    for seed in range(4):
        x = torch.randn(*input_shape(original), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            got, want, before = fixed(x), reference(x), untouched(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        moved.append(float((got - before).abs().max() / before.abs().max()))
    assert min(moved) > 1e-3  # an unsafe fix: the outputs did change
    assert outcome["max_abs_diff"] > 0


def test_svd_reports_the_error_of_the_factors_in_the_file_not_of_the_svd(pt2_source, tmp_path, monkeypatch):
    """A slip between the SVD and the written module (here: the second factor halved on
    its way) must show in the reported error, which is measured from what was written."""
    import dataclasses

    from pwlint.fix.plans import FactorisePlan

    real = pt2_fixes.factorise
    monkeypatch.setattr(pt2_fixes, "factorise", lambda w, plan: dataclasses.replace(
        real(w, plan), second=real(w, plan).second * 0.5))
    original = pt2_source("lenet")
    model = copy(original, tmp_path)
    (tmp_path / "pwlint.toml").write_text("[rules.PW002]\nmax-params = 40000\nsvd-target-params = 20000\n")
    _, report = fix_json(model, "--fix", "--unsafe-fixes", "--select", "PW002")
    (outcome,) = report["files"][0]["fix"]["applied"]
    reported = float(re.search(r"relative weight error ([0-9.e+-]+)", outcome["note"]).group(1))
    weight = state(original)["classifier.0.weight"].detach().double()
    after = state(model)
    product = after["classifier.0.v.weight"].detach().double() @ after["classifier.0.u.weight"].detach().double()
    in_file = float(torch.linalg.norm(weight - product) / torch.linalg.norm(weight))
    assert reported == pytest.approx(in_file, rel=6e-3)
    assert in_file > 1.05 * real(weight.numpy().T, FactorisePlan("classifier.0", target_params=20_000)).error  # the slip is visible


# writing ---------------------------------------------------------------------------------

def test_output_option_leaves_the_source_untouched(pt2_source, tmp_path):
    original = pt2_source("lenet")
    model = copy(original, tmp_path / "src")
    target = tmp_path / "out" / "fixed.pt2"
    target.parent.mkdir()
    _, report = fix_json(model, "--fix", "-o", str(target))
    assert model.read_bytes() == original.read_bytes()
    assert report["files"][0]["fix"]["written"] == str(target)
    assert_same_outputs(original, target)
    assert leftovers(model.parent) == [] and leftovers(target.parent) == []


def test_output_in_another_format_is_refused_and_nothing_written(pt2_source, tmp_path):
    original = pt2_source("lenet")
    model = copy(original, tmp_path)
    run = run_inprocess("check", str(model), "--fix", "-o", str(tmp_path / "fixed.onnx"))
    assert run.code == 2 and ".pt2 file" in run.err, run.err
    assert model.read_bytes() == original.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [model.name]


def test_in_place_fix_leaves_no_temporary_files(pt2_source, tmp_path):
    model = copy(pt2_source("lenet"), tmp_path)
    fix_json(model, "--fix")
    assert sorted(p.name for p in tmp_path.iterdir()) == [model.name]


@pytest.fixture
def wrong_kernel(monkeypatch):
    """Make the safe PW001 fix build a wrong conv kernel, as a bug would."""
    real = pt2_fixes.head_kernels

    def perturbed(*args):
        kernel, *rest = real(*args)
        noise = np.random.default_rng(0).standard_normal(kernel.shape).astype(kernel.dtype) * 0.05
        return [kernel + noise, *rest]

    monkeypatch.setattr(pt2_fixes, "head_kernels", perturbed)


def test_failed_verification_leaves_the_file_byte_identical(pt2_source, tmp_path, wrong_kernel):
    original = pt2_source("lenet")
    model = copy(original, tmp_path)
    _, report = fix_json(model, "--fix")
    assert model.read_bytes() == original.read_bytes()
    fix = report["files"][0]["fix"]
    assert fix["applied"] == [] and fix["written"] is None
    (outcome,) = fix["not_applied"]
    assert outcome["code"] == "PW001" and "outputs differ" in outcome["note"]
    assert outcome["max_abs_diff"] > 1e-3
    assert "PW001" in codes(report)
    assert sorted(p.name for p in tmp_path.iterdir()) == [model.name]


def test_write_failing_at_the_rename_leaves_the_original(pt2_source, tmp_path, monkeypatch):
    import os

    import pwlint.formats.pytorch.pt2.backend as backend

    original = pt2_source("lenet")
    model = copy(original, tmp_path)
    real = os.replace

    def failing(src, dst, *args, **kwargs):
        if Path(dst) == model:
            raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(backend.os, "replace", failing)
    run = run_inprocess("check", str(model), "--fix")
    assert run.code == 2 and "No space left" in run.err
    assert model.read_bytes() == original.read_bytes()
    assert leftovers(tmp_path) == []


def test_the_backend_is_registered_without_importing_torch():
    code = (
        "import sys; from pwlint.plugins import get_registry; r = get_registry(False); "
        "assert r.backends['torch'].name == 'torch'; assert 'torch' in r.loaders; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# security: nothing that came with the file runs ------------------------------------------

class _Payload:
    """Unpickling this creates ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def rewrite(source: Path, target: Path, *, members: dict | None = None, program=None) -> Path:
    """Copy a .pt2 archive, replacing members (by suffix) and editing the program JSON."""
    members = members or {}
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = old.read(info.filename)
            for suffix, replacement in members.items():
                if info.filename.endswith(suffix):
                    data = replacement
            if program is not None and info.filename.endswith("models/model.json"):
                document = json.loads(data)
                program(document)
                data = json.dumps(document).encode()
            new.writestr(info, data)
    return target


def runs_with_torch(path: Path, marker: Path, call: bool = False) -> bool:
    """Whether loading ``path`` with torch.export.load (and running its module) creates
    ``marker``: proof that the payload is live. The payload only creates that file."""
    import contextlib
    import io
    import logging

    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            module = torch.export.load(str(path)).module()
            if call:
                module(torch.randn(1, 1, 32, 32))
    except Exception:
        pass
    finally:
        logger.setLevel(level)
    created = marker.exists()
    marker.unlink(missing_ok=True)
    return created


def test_a_malicious_sample_input_pickle_is_never_unpickled(pt2_source, tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "work").mkdir()
    evil = rewrite(pt2_source("lenet"), tmp_path / "work" / "evil.pt2",
                   members={"data/sample_inputs/model.pt": pickle.dumps(_Payload(marker))})
    _, report = fix_json(evil, "--fix")
    assert not marker.exists()
    assert [o["code"] for o in report["files"][0]["fix"]["applied"]] == ["PW001"]
    assert report["files"][0]["fix"]["verified"]
    assert "PW001" not in codes(lint(evil))
    assert not marker.exists()
    # the payload is live: torch.export.load runs it
    source = rewrite(pt2_source("lenet"), tmp_path / "evil-again.pt2",
                     members={"data/sample_inputs/model.pt": pickle.dumps(_Payload(marker))})
    assert runs_with_torch(source, marker)


def test_guards_code_in_the_program_is_never_executed(pt2_source, tmp_path):
    marker = tmp_path / "ran"
    guard = [f"open({str(marker)!r}, 'w') is not None"]
    (tmp_path / "work").mkdir()
    evil = rewrite(pt2_source("lenet"), tmp_path / "work" / "evil.pt2",
                   program=lambda d: d.__setitem__("guards_code", guard))
    proof = rewrite(pt2_source("lenet"), tmp_path / "proof.pt2", program=lambda d: d.__setitem__("guards_code", guard))
    _, report = fix_json(evil, "--fix")
    assert not marker.exists()
    assert [o["code"] for o in report["files"][0]["fix"]["applied"]] == ["PW001"]
    assert runs_with_torch(proof, marker, call=True)


def _poison_a_size(marker: Path):
    def edit(document):
        values = document["graph_module"]["graph"]["tensor_values"]
        name = next(iter(values))
        values[name]["sizes"][0] = {"as_expr": {"expr_str": f"open({str(marker)!r}, 'w') and 1", "hint": {"as_int": 1}}}
    return edit


def test_a_symbolic_size_that_would_run_code_is_refused(pt2_source, tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "work").mkdir()
    evil = rewrite(pt2_source("lenet"), tmp_path / "work" / "evil.pt2", program=_poison_a_size(marker))
    before = evil.read_bytes()
    _, report = fix_json(evil, "--fix")
    assert not marker.exists()
    fix = report["files"][0]["fix"]
    assert fix["applied"] == [] and evil.read_bytes() == before
    assert all("symbolic size expression" in o["note"] for o in fix["not_applied"])
    assert leftovers(evil.parent) == []
    assert runs_with_torch(rewrite(pt2_source("lenet"), tmp_path / "proof.pt2", program=_poison_a_size(marker)), marker)


def test_a_weight_stored_as_a_pickle_is_refused(pt2_source, tmp_path):
    marker = tmp_path / "ran"
    source = pt2_source("lenet")
    with zipfile.ZipFile(source) as archive:
        member = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(archive.read(member))
    entry = config["config"]["classifier.4.bias"]
    entry["use_pickle"] = True
    replaced = {"model_weights_config.json": json.dumps(config).encode(),
                f"data/weights/{entry['path_name']}": pickle.dumps(_Payload(marker))}
    (tmp_path / "work").mkdir()
    evil = rewrite(source, tmp_path / "work" / "evil.pt2", members=replaced)
    _, report = fix_json(evil, "--fix", "--no-verify")
    assert not marker.exists()
    (outcome,) = report["files"][0]["fix"]["not_applied"]
    assert "classifier.4.bias" in outcome["note"] and "pickle" in outcome["note"]
    assert runs_with_torch(rewrite(source, tmp_path / "proof.pt2", members=replaced), marker)


@pytest.mark.parametrize("text", [
    "Symbol('s0', positive=True, integer=True)",
    "Add(FloorDiv(Symbol('s53', positive=True, integer=True), Integer(2)), Integer(-2))",
    "s0 + 2*s1 >= 4",
])
def test_size_expressions_torch_writes_are_accepted(text):
    check_expression(text)


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "Integer(1).__class__", "Symbol(\"s0\")", "lambda: 1", "s0[0]",
    "open('x', 'w')", "Function('f')(s0)",
])
def test_size_expressions_that_are_not_arithmetic_are_refused(text):
    with pytest.raises(FixNotApplicable):
        check_expression(text)


@pytest.mark.parametrize("target", ["torch.save", "torch.ops.load_library", "torch.ops.aten.from_file.default",
                                    "torch.ops.aten.__class__.__init__", "builtins.eval", "#custom_op"])
def test_operators_other_than_aten_are_refused(pt2_source, target):
    with zipfile.ZipFile(pt2_source("lenet")) as archive:
        document = json.loads(next(archive.read(n) for n in archive.namelist() if n.endswith("models/model.json")))
    check_program(json.loads(json.dumps(document)))  # as exported: accepted
    document["graph_module"]["graph"]["nodes"][0]["target"] = target
    with pytest.raises(FixNotApplicable):
        check_program(document)


def test_a_head_the_backend_does_not_rewrite_says_why(tmp_path):
    """The .pt2 backend writes 2-D convs only (Backend.can_apply): a Conv1d head is
    reported as not applied with that reason, and the file is left as it was."""
    model = torch.nn.Sequential(
        torch.nn.Conv1d(2, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 6, 3),
    ).eval()
    path = tmp_path / "conv1d.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(1, 2, 8),)), str(path))
    before = path.read_bytes()
    _, report = fix_json(path, "--fix", "--select", "PW001")
    fix = report["files"][0]["fix"]
    assert fix["applied"] == [] and fix["written"] is None
    (outcome,) = fix["not_applied"]
    assert outcome["note"] == "the flattened map has 1 spatial dimensions; the .pt2 backend rewrites 2-D heads only"
    assert path.read_bytes() == before
