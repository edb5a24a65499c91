"""Time and peak memory of pwlint on a VGG16-sized ONNX model (and Keras and PyTorch files).

    python benchmarks/run.py [--quick] [--repeat N] [--workdir DIR]

Generates (once, cached in the workdir) a VGG16-shaped float32 ONNX model with
random weights, about 530 MB, using onnx.helper and numpy only, then measures,
each run in a fresh Python process:

- ``pwlint MODEL`` (lint),
- ``onnx.load(MODEL)``, the baseline lint is compared against,
- ``pwlint MODEL --fix -o OUT`` (fix, verified with onnxruntime: the default),
- ``pwlint MODEL --fix --no-verify -o OUT``,
- ``pwlint vgg16.keras``, ``.h5``, ``.pt2`` and ``.pt`` (TorchScript) (lint), the same
  architecture saved by Keras (``model.save``, KERAS_BACKEND=torch) and by
  ``torch.export.save``; these are generated (once, cached) in another child process,
  which imports keras and torch, with random weights,

and prints a Markdown table of the median time and the peak RSS of each. A second
table measures start-up and scaling:

- start-up: ``pwlint examples/lenet.onnx`` against ``python -c "import onnx"`` (a
  pre-commit hook pays this on every commit),
- a generated chain of 1k, 10k, 100k and 200k Relu nodes (opset 17), ``pwlint`` against
  ``onnx.load``, with the time per node beyond start-up, which stays flat when linting
  is linear in the size of the graph,
- a BERT-base-shaped encoder (12 layers, width 768, random weights) written by
  ``torch.onnx.export``'s default exporter (weights in ``NAME.onnx.data`` beside it),
  against ``onnx.load``,
- a folder of 200 small models (copies of ``examples/*.onnx``) with ``--jobs 2`` against
  ``--jobs 1``.

The VGG16-sized model is also saved as TorchScript (``vgg16.pt``, ``torch.jit.trace``).
``--quick`` uses a model with 1/8 of the channels and dense units, chains of 1k and 10k
nodes, a 2-layer width-64 transformer and 20 small models, for a smoke run.
It measures and never gates: the exit code is 0 unless the script itself breaks.

Children run with their bytecode cached in the workdir (``PYTHONPYCACHEPREFIX``), as
pwlint's is after ``pip install``; one unmeasured run fills that cache first. Without
it a checkout run with ``PYTHONDONTWRITEBYTECODE`` recompiles pwlint every time while
onnx, installed, never does.

How it measures: every run is ``python -c WRAPPER ...``; the wrapper imports what
the run needs, runs it, and prints its own time (from before the imports to the
end, so ``pwlint`` and ``onnx.load`` both pay for importing onnx) and
``getrusage(RUSAGE_SELF).ru_maxrss``. On Linux the child's ``ru_maxrss`` starts at
the RSS of the process that spawned it, so this script never imports onnx or
numpy itself (nor keras or torch): the models are generated in child processes too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

#: VGG16's feature extractor ("M" is a 2x2 max pool), classifier widths and classes
VGG16_FEATURES = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
VGG16_HIDDEN, VGG16_CLASSES = 4096, 1000
INPUT_SIZE = 224
QUICK_DIVISOR = 8

#: the targets of the fix with verification
FIX_TIME_TARGET_S = 30.0
FIX_RSS_TARGET_RATIO = 3.0
#: a fix row stops repeating once one run takes longer than this
SLOW_RUN_S = 90.0
#: per-run timeout
RUN_TIMEOUT_S = 1800

#: the other formats linted, each written by the framework itself (.pt: TorchScript)
FRAMEWORK_FORMATS = ("keras", "h5", "pt2", "pt")
#: target of each of their lints
FRAMEWORK_TARGET_S = 0.3

#: start-up: linting a tiny model against importing onnx, at most this ratio
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
STARTUP_MODEL = EXAMPLES / "lenet.onnx"
STARTUP_TARGET = 0.25
#: lint of the VGG16-sized ONNX model: time against onnx.load, peak RSS against the file
LINT_TIME_TARGET, LINT_RSS_TARGET = 0.15, 0.10
#: the folder of small models linted with --jobs 1 and --jobs 2 (copies of examples/*.onnx)
FOLDER_MODELS = 200
QUICK_FOLDER_MODELS = 20
#: runs of the start-up rows (cheap and noisy: more of them than --repeat asks for)
STARTUP_MIN_RUNS = 7
#: Relu chains linted against onnx.load; the largest must stay within CHAIN_TARGET
CHAIN_SIZES = (1_000, 10_000, 100_000, 200_000)
QUICK_CHAIN_SIZES = (1_000, 10_000)
CHAIN_TARGET = 2.0
CHAIN_RSS_TARGET_MB = 300

MB = 1 << 20
MARKER = "@@PWBENCH "

WRAPPER = r"""
import json, resource, sys, time
t0 = time.perf_counter()
kind, args = sys.argv[1], sys.argv[2:]
if kind == "pwlint":
    from pwlint.cli import main
    try:
        rc = main(args)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 2
elif kind == "onnx.load":
    import onnx
    onnx.load(args[0])
    rc = 0
elif kind == "import onnx":
    import onnx
    rc = 0
else:
    raise SystemExit(f"unknown run kind {kind!r}")
seconds = time.perf_counter() - t0
sys.stdout.flush()
maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.platform == "darwin":  # bytes there, KiB on Linux
    maxrss_kib //= 1024
print("@@PWBENCH " + json.dumps({"rc": rc, "seconds": seconds, "maxrss_kib": maxrss_kib}), flush=True)
"""


# --- the model ------------------------------------------------------------------


def model_spec(quick: bool) -> tuple[list, int, int]:
    """Features config, hidden width and classes of the full or the quick model."""
    if not quick:
        return VGG16_FEATURES, VGG16_HIDDEN, VGG16_CLASSES
    features = [c if c == "M" else c // QUICK_DIVISOR for c in VGG16_FEATURES]
    return features, VGG16_HIDDEN // QUICK_DIVISOR, VGG16_CLASSES // QUICK_DIVISOR


def parameter_count(quick: bool) -> int:
    features, hidden, classes = model_spec(quick)
    count, channels, size = 0, 3, INPUT_SIZE
    for item in features:
        if item == "M":
            size //= 2
            continue
        count += item * channels * 9 + item
        channels = item
    flat = channels * size * size
    for fan_in, fan_out in ((flat, hidden), (hidden, hidden), (hidden, classes)):
        count += fan_in * fan_out + fan_out
    return count


def expected_size_range(quick: bool) -> tuple[int, int]:
    """Bounds of a correctly written model file: the raw float32 payload plus a
    little protobuf framing and graph structure."""
    payload = 4 * parameter_count(quick)
    return payload, payload + 256 * 1024


def generate_model(path: Path, quick: bool) -> None:
    """Write the model (run in a child process: it imports numpy and onnx)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    features, hidden, classes = model_spec(quick)
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def param(name: str, shape: tuple[int, ...], std: float) -> str:
        array = rng.standard_normal(shape, dtype=np.float32)
        array *= np.float32(std)
        inits.append(numpy_helper.from_array(array, name))
        return name

    current, channels, size, index = "input", 3, INPUT_SIZE, 0
    for item in features:
        prefix = f"features.{index}"
        if item == "M":
            out = f"/{prefix}/MaxPool_output_0"
            nodes.append(helper.make_node(
                "MaxPool", [current], [out], name=f"/{prefix}/MaxPool", kernel_shape=[2, 2], strides=[2, 2]))
            current, size, index = out, size // 2, index + 1
            continue
        weight = param(f"{prefix}.weight", (item, channels, 3, 3), (2.0 / (channels * 9)) ** 0.5)
        bias = param(f"{prefix}.bias", (item,), 0.01)
        conv_out = f"/{prefix}/Conv_output_0"
        nodes.append(helper.make_node(
            "Conv", [current, weight, bias], [conv_out], name=f"/{prefix}/Conv",
            kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1))
        relu_out = f"/features.{index + 1}/Relu_output_0"
        nodes.append(helper.make_node("Relu", [conv_out], [relu_out], name=f"/features.{index + 1}/Relu"))
        current, channels, index = relu_out, item, index + 2

    nodes.append(helper.make_node("Flatten", [current], ["/Flatten_output_0"], name="/Flatten", axis=1))
    current, fan_in = "/Flatten_output_0", channels * size * size
    layers = [(0, hidden, True), (3, hidden, True), (6, classes, False)]
    for number, (index, fan_out, relu) in enumerate(layers):
        prefix = f"classifier.{index}"
        weight = param(f"{prefix}.weight", (fan_out, fan_in), (2.0 / fan_in) ** 0.5)
        bias = param(f"{prefix}.bias", (fan_out,), 0.01)
        out = "output" if number == len(layers) - 1 else f"/{prefix}/Gemm_output_0"
        nodes.append(helper.make_node(
            "Gemm", [current, weight, bias], [out], name=f"/{prefix}/Gemm", alpha=1.0, beta=1.0, transB=1))
        current, fan_in = out, fan_out
        if relu:
            relu_out = f"/classifier.{index + 1}/Relu_output_0"
            nodes.append(helper.make_node("Relu", [current], [relu_out], name=f"/classifier.{index + 1}/Relu"))
            current = relu_out

    graph = helper.make_graph(
        nodes, "vgg16" + ("_quick" if quick else ""),
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, classes])],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8, producer_name="pwlint-benchmarks")
    del inits, graph
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def generate_chains(paths: list[Path]) -> None:
    """Write Relu chains, ``chain-N.onnx`` holding N nodes (run in a child process: it imports onnx)."""
    import onnx
    from onnx import TensorProto, helper

    for path in paths:
        count = chain_length(path)
        names = ["input", *(f"t{i}" for i in range(1, count)), "output"]
        nodes = [helper.make_node("Relu", [names[i]], [names[i + 1]], name=f"relu_{i}") for i in range(count)]
        graph = helper.make_graph(
            nodes, f"chain{count}",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pwlint-benchmarks")
        tmp = path.with_name(path.name + ".tmp")
        onnx.save(model, str(tmp))
        os.replace(tmp, path)


def chain_length(path: Path) -> int:
    return int(path.stem.rpartition("-")[2])


def ensure_chains(workdir: Path, sizes: tuple[int, ...]) -> tuple[list[Path], bool]:
    """The cached chain models, the missing ones generated in one child process."""
    paths = [workdir / f"chain-{size}.onnx" for size in sizes]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        workdir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, str(Path(__file__).resolve()), "--_generate-chains", *map(str, missing)]
        subprocess.run(command, check=True, timeout=RUN_TIMEOUT_S)
    return paths, bool(missing)


def framework_size_range(quick: bool) -> tuple[int, int]:
    """Bounds of a correctly written .keras, .h5 or .pt2 file: the float32 payload,
    stored uncompressed, plus the config, the container's framing and alignment."""
    payload = 4 * parameter_count(quick)
    return payload, payload + payload // 100 + 4 * MB


def generate_framework_models(paths: list[Path], quick: bool) -> None:
    """Write the model as .keras / .h5 (Keras, torch backend) and .pt2 (torch.export),
    whichever ``paths`` name (run in a child process: it imports keras and torch)."""
    os.environ["KERAS_BACKEND"] = "torch"
    import logging
    import warnings

    import torch

    features, hidden, classes = model_spec(quick)
    keras_paths = [p for p in paths if p.suffix in (".keras", ".h5")]
    if keras_paths:
        import keras
        from keras import layers

        keras.utils.set_random_seed(0)
        x = inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="input")
        block, conv = 1, 1
        for item in features:
            if item == "M":
                x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
                block, conv = block + 1, 1
                continue
            x = layers.Conv2D(item, 3, padding="same", activation="relu", name=f"block{block}_conv{conv}")(x)
            conv += 1
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(hidden, activation="relu", name="fc1")(x)
        x = layers.Dense(hidden, activation="relu", name="fc2")(x)
        outputs = layers.Dense(classes, name="predictions")(x)
        model = keras.Model(inputs, outputs, name="vgg16" + ("_quick" if quick else ""))
        for path in keras_paths:
            tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")  # model.save goes by the suffix
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                logging.getLogger("absl").setLevel(logging.ERROR)  # the legacy-.h5 warning
                model.save(str(tmp))
            os.replace(tmp, path)
        del model, inputs, outputs, x

    pt2_paths = [p for p in paths if p.suffix == ".pt2"]
    script_paths = [p for p in paths if p.suffix == ".pt"]
    if pt2_paths or script_paths:
        from torch import nn

        class VGG16(nn.Module):
            """torchvision's VGG16 layout (module paths features.N, classifier.N),
            without the adaptive average pool, an identity at 224x224."""

            def __init__(self) -> None:
                super().__init__()
                modules: list[nn.Module] = []
                channels = 3
                for item in features:
                    if item == "M":
                        modules.append(nn.MaxPool2d(2, 2))
                    else:
                        modules += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
                        channels = item
                self.features = nn.Sequential(*modules)
                flat = channels * (INPUT_SIZE // 32) ** 2
                self.classifier = nn.Sequential(
                    nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(),
                    nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(),
                    nn.Linear(hidden, classes),
                )

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.classifier(torch.flatten(self.features(x), 1))

        torch.manual_seed(0)
        module = VGG16().eval()
        example = torch.randn(1, 3, INPUT_SIZE, INPUT_SIZE)
        for path in pt2_paths:
            program = torch.export.export(module, (example,))
            tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")  # torch.export.save warns unless .pt2
            torch.export.save(program, str(tmp))
            os.replace(tmp, path)
        for path in script_paths:
            tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
            torch.jit.save(torch.jit.trace(module, example), str(tmp))
            os.replace(tmp, path)


#: the transformer: BERT-base's shape (vocabulary, width, layers, heads, feed-forward, tokens)
BERT_BASE = dict(vocab=30522, width=768, layers=12, heads=12, ff=3072, tokens=128)
BERT_QUICK = dict(vocab=1000, width=64, layers=2, heads=4, ff=256, tokens=16)


def generate_transformer(path: Path, quick: bool) -> None:
    """Write a BERT-base-shaped encoder (random weights) with ``torch.onnx.export``'s
    default exporter (run in a child process: it imports torch)."""
    import logging
    import warnings

    import torch
    from torch import nn

    spec = BERT_QUICK if quick else BERT_BASE

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            width, self.heads = spec["width"], spec["heads"]
            self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
            self.output, self.norm1 = nn.Linear(width, width), nn.LayerNorm(width)
            self.intermediate, self.out = nn.Linear(width, spec["ff"]), nn.Linear(spec["ff"], width)
            self.norm2 = nn.LayerNorm(width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batch, tokens, width = x.shape
            split = lambda t: t.view(batch, tokens, self.heads, width // self.heads).transpose(1, 2)
            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            scores = torch.softmax(q @ k.transpose(-1, -2) / (width // self.heads) ** 0.5, dim=-1)
            context = (scores @ v).transpose(1, 2).reshape(batch, tokens, width)
            x = self.norm1(x + self.output(context))
            return self.norm2(x + self.out(torch.nn.functional.gelu(self.intermediate(x))))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = nn.Embedding(spec["vocab"], spec["width"])
            self.positions = nn.Embedding(512, spec["width"])
            self.norm = nn.LayerNorm(spec["width"])
            self.layers = nn.ModuleList(Layer() for _ in range(spec["layers"]))
            self.pooler = nn.Linear(spec["width"], spec["width"])

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            x = self.norm(self.embeddings(ids) + self.positions.weight[: ids.shape[1]])
            for layer in self.layers:
                x = layer(x)
            return torch.tanh(self.pooler(x[:, 0]))

    torch.manual_seed(0)
    model = Encoder().eval()
    ids = torch.randint(0, spec["vocab"], (1, spec["tokens"]))
    # the exporter writes the weights beside the model (NAME.onnx.data) and records that
    # name in it: export under the final name in a scratch folder, then move both
    scratch = path.parent / f".tmp-{path.stem}"
    scratch.mkdir(exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)  # the exporter's progress lines
        torch.onnx.export(model, (ids,), str(scratch / path.name))
    for written in sorted(scratch.iterdir(), key=lambda p: p.name == path.name):  # the model last
        os.replace(written, path.parent / written.name)
    scratch.rmdir()


def ensure_transformer(workdir: Path, quick: bool) -> tuple[Path, bool]:
    """The cached transformer model, generated in a child process when missing."""
    path = workdir / ("bert-quick.onnx" if quick else "bert-base.onnx")
    if path.is_file():
        return path, False
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--_generate-transformer", str(path)]
    if quick:
        command.append("--quick")
    subprocess.run(command, check=True, timeout=RUN_TIMEOUT_S, stdout=subprocess.DEVNULL)
    return path, True


def ensure_framework_models(workdir: Path, quick: bool) -> tuple[dict[str, Path], bool]:
    """The cached .keras, .h5 and .pt2 models, generated together in one child process
    when any is missing or wrong-sized."""
    stem = "vgg16-quick" if quick else "vgg16"
    paths = {fmt: workdir / f"{stem}.{fmt}" for fmt in FRAMEWORK_FORMATS}
    low, high = framework_size_range(quick)
    missing = [p for p in paths.values() if not (p.is_file() and low <= p.stat().st_size <= high)]
    if not missing:
        return paths, False
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--_generate-frameworks", *map(str, missing)]
    if quick:
        command.append("--quick")
    subprocess.run(command, check=True, timeout=RUN_TIMEOUT_S, env={**os.environ, "KERAS_BACKEND": "torch"})
    for path in missing:
        size = path.stat().st_size
        if not low <= size <= high:
            raise RuntimeError(f"generated {path} is {size} bytes, expected {low}..{high}")
    return paths, True


def ensure_model(workdir: Path, quick: bool) -> tuple[Path, bool]:
    """The cached model, generated in a child process when missing or wrong-sized."""
    path = workdir / ("vgg16-quick.onnx" if quick else "vgg16.onnx")
    low, high = expected_size_range(quick)
    if path.is_file() and low <= path.stat().st_size <= high:
        return path, False
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--_generate", str(path)]
    if quick:
        command.append("--quick")
    subprocess.run(command, check=True, timeout=RUN_TIMEOUT_S)
    size = path.stat().st_size
    if not low <= size <= high:
        raise RuntimeError(f"generated {path} is {size} bytes, expected {low}..{high}")
    return path, True


# --- the runs -------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float
    maxrss_mb: float
    rc: int
    stdout: str

    @property
    def fixed(self) -> int | None:
        """How many findings --fix reports fixing (None: not a fix run, or no summary)."""
        match = re.search(r": (?:fixed|would fix) (\d+) finding", self.stdout)
        return int(match.group(1)) if match else None


@dataclass
class Task:
    label: str
    kind: str  # "pwlint" or "onnx.load"
    args: list[str]
    output: Path | None = None  # --fix -o target, deleted after every run
    may_shorten: bool = False  # repeat less when a run is slow
    file_mb: float | None = None  # size of the file the RSS is compared with (None: the ONNX model)
    ok_codes: tuple[int, ...] = (0,)
    time_target: float | None = None  # at most this many seconds
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def maxrss_mb(self) -> float:
        return statistics.median(s.maxrss_mb for s in self.samples)


def child_environment(workdir: Path) -> dict[str, str]:
    """The environment of every measured run: bytecode cached in the workdir."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    return env


def run_once(task: Task, env: dict[str, str] | None = None) -> Sample:
    if task.output is not None:
        task.output.unlink(missing_ok=True)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", WRAPPER, task.kind, *task.args],
            capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env,
        )
    finally:
        written = task.output is not None and task.output.exists()
        if task.output is not None:
            task.output.unlink(missing_ok=True)
    lines = proc.stdout.splitlines()
    reports = [line for line in lines if line.startswith(MARKER)]
    if proc.returncode != 0 or not reports:
        tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        raise RuntimeError(f"exit code {proc.returncode}: {tail}")
    report = json.loads(reports[-1][len(MARKER):])
    stdout = "\n".join(line for line in lines if not line.startswith(MARKER))
    if report["rc"] not in task.ok_codes:
        tail = (proc.stderr.strip().splitlines() or stdout.splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"pwlint exit code {report['rc']}: {tail}")
    if task.output is not None and not written:
        raise RuntimeError(f"no fixed model was written to {task.output}")
    return Sample(report["seconds"], report["maxrss_kib"] / 1024, report["rc"], stdout)


def measure(task: Task, repeat: int, env: dict[str, str] | None = None) -> None:
    for _ in range(repeat):
        try:
            sample = run_once(task, env)
        except Exception as exc:  # report it in the table, keep measuring the rest
            task.errors.append(f"{type(exc).__name__}: {exc}")
            break
        task.samples.append(sample)
        if task.may_shorten and sample.seconds > SLOW_RUN_S:
            break


# --- the report -----------------------------------------------------------------


def versions() -> dict[str, str]:
    found = {}
    for name in ("onnx", "onnxruntime", "numpy", "pwlint", "keras", "torch"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def table(tasks: list[Task], lint: Task, load: Task, fix: Task, file_mb: float, repeat: int,
          then: list[Task] | None = None) -> list[str]:
    """The table: ``tasks``, the lint / onnx.load ratios, then the ``then`` tasks."""
    rows = ["| task | median time (s) | peak RSS (MB) | RSS / file size | target | met? |",
            "| --- | ---: | ---: | ---: | --- | --- |"]
    rows += [_row(task, fix, file_mb, repeat) for task in tasks]
    target = f"time <= {LINT_TIME_TARGET:g}x onnx.load, RSS <= {LINT_RSS_TARGET:g}x file size"
    if lint.samples and load.samples:
        time_ratio, rss_share = lint.seconds / load.seconds, lint.maxrss_mb / file_mb
        misses = [what for what, ok in (("time", time_ratio <= LINT_TIME_TARGET),
                                        ("RSS", rss_share <= LINT_RSS_TARGET)) if not ok]
        met = "yes" if not misses else f"no ({', '.join(misses)})"
        rows.append(f"| lint / onnx.load | {time_ratio:.2f}x | "
                    f"{lint.maxrss_mb / load.maxrss_mb:.2f}x | {rss_share:.2f}x | {target} | {met} |")
    else:
        rows.append(f"| lint / onnx.load | error | error | - | {target} | error |")
    rows += [_row(task, fix, file_mb, repeat) for task in then or []]
    return rows


def _row(task: Task, fix: Task, file_mb: float, repeat: int) -> str:
    count = len(task.samples)
    runs = f"{count} run{'s' if count != 1 else ''}"
    if task.may_shorten and 0 < count < repeat and not task.errors:
        runs += f" of {repeat}: a run took over {SLOW_RUN_S:g} s"
    if not task.samples:
        return f"| {task.label} | error | error | error | {_target(task, fix)} | error |"
    rss_ratio = task.maxrss_mb / (task.file_mb or file_mb)
    if task is fix:
        misses = [what for what, ok in (("time", task.seconds < FIX_TIME_TARGET_S),
                                        ("RSS", rss_ratio < FIX_RSS_TARGET_RATIO)) if not ok]
        if _nothing_fixed(task):
            misses.append("nothing was fixed, see below")
        met = "yes" if not misses else f"no ({', '.join(misses)})"
    elif task.time_target is not None:
        met = "yes" if task.seconds <= task.time_target else "no"
    else:
        met = "- (nothing was fixed, see below)" if _nothing_fixed(task) else "-"
    return (f"| {task.label} ({runs}) | {task.seconds:.2f} | {task.maxrss_mb:.1f} | "
            f"{rss_ratio:.2f}x | {_target(task, fix)} | {met} |")


def _nothing_fixed(task: Task) -> bool:
    return task.output is not None and any(s.fixed in (0, None) for s in task.samples)


def _target(task: Task, fix: Task) -> str:
    if task is fix:
        return f"< {FIX_TIME_TARGET_S:g} s and < {FIX_RSS_TARGET_RATIO:g}x file size"
    if task.time_target is not None:
        return f"<= {task.time_target:g} s"
    return "-"


@dataclass
class Pair:
    """A pwlint run and the run it is measured against, alternated so that both see the
    same machine load."""

    label: str
    pwlint: Task
    baseline: Task
    nodes: int | None = None  # chain length: the time per node is shown
    target: float | None = None  # at most this ratio
    rss_target_mb: float | None = None  # pwlint's peak RSS at most this

    def measure(self, runs: int, env: dict[str, str]) -> None:
        for _ in range(runs):
            for task in (self.pwlint, self.baseline):
                if not task.errors:
                    measure(task, 1, env)

    @property
    def ratio(self) -> float:
        return self.pwlint.seconds / self.baseline.seconds

    def verdict(self) -> tuple[str, str]:
        """The target and whether it is met, as table cells."""
        parts = ([f"<= {self.target:g}x"] if self.target else []) + (
            [f"RSS <= {self.rss_target_mb:g} MB"] if self.rss_target_mb else [])
        if not parts:
            return "-", "-"
        misses = [what for what, ok in (
            ("time", not self.target or self.ratio <= self.target),
            ("RSS", not self.rss_target_mb or self.pwlint.maxrss_mb <= self.rss_target_mb)) if not ok]
        return ", ".join(parts), "yes" if not misses else f"no ({', '.join(misses)})"


def scaling_table(pairs: list[Pair], startup: Pair) -> list[str]:
    """Start-up, chain, transformer and folder rows: pwlint against its baseline, and for
    chains the time per node beyond start-up (flat when linting is linear in the nodes)."""
    rows = ["| run | pwlint (s) | baseline (s) | pwlint / baseline | µs per node beyond start-up "
            "| pwlint peak RSS (MB) | baseline peak RSS (MB) | target | met? |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for pair in pairs:
        target, met = pair.verdict()
        if not pair.pwlint.samples or not pair.baseline.samples:
            rows.append(f"| {pair.label} | error | error | error | error | error | error | {target} | error |")
            continue
        per_node = "-"
        if pair.nodes and startup.pwlint.samples:
            per_node = f"{(pair.pwlint.seconds - startup.pwlint.seconds) / pair.nodes * 1e6:.1f}"
        count = len(pair.pwlint.samples)
        rows.append(f"| {pair.label} ({count} run{'s' if count != 1 else ''}) | {pair.pwlint.seconds:.2f} | "
                    f"{pair.baseline.seconds:.2f} | {pair.ratio:.2f}x | {per_node} | "
                    f"{pair.pwlint.maxrss_mb:.1f} | {pair.baseline.maxrss_mb:.1f} | {target} | {met} |")
    return rows


def ensure_folder(workdir: Path, count: int) -> Path:
    """A folder of ``count`` small models: copies of examples/*.onnx (no onnx import here)."""
    import shutil

    folder = workdir / f"small-models-{count}"
    sources = sorted(EXAMPLES.glob("*.onnx"))
    if folder.is_dir() and len(list(folder.iterdir())) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        source = sources[index % len(sources)]
        shutil.copyfile(source, folder / f"{index:03d}-{source.name}")
    return folder


SCALING_NOTES = """\
Where a chain's time and memory go (cProfile and tracemalloc, 200k nodes): nearly all
of it is the ONNX reader and loader (parsing every node, completing shapes, building a
Layer per node); the IR's share is about 4 µs and 1.2 KB per node (a slotted Layer and
its lists, networkx's node, adjacency and edge dicts), coverage and the rules about 1 µs
per node each, one pass apiece. What the graph retains beyond that is each layer's
source handle for the fix backend (the reader's node and its NodeProto).
--jobs: the report and exit code are the serial run's; a pool pays for starting its
workers, so it gains only when files take longer than that, on otherwise idle cores."""


def fix_notes(task: Task) -> list[str]:
    """What the first fix run reported doing, so a rolled-back fix is not mistaken for a fast one."""
    if not task.samples:
        return []
    keep = [line.strip() for line in task.samples[0].stdout.splitlines()
            if line.lstrip().startswith(("applied:", "not applied:", "outputs vs.", "parameters "))
            or ": fixed " in line]
    return [f"- {task.label}: {line}" for line in keep]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"a model with 1/{QUICK_DIVISOR} of the channels, for a smoke run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per task; the median is shown (default 3)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "pwlint-bench",
                        help="where the generated model is cached (default: %(default)s)")
    parser.add_argument("--_generate", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--_generate-frameworks", metavar="PATH", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--_generate-chains", metavar="PATH", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--_generate-transformer", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._generate:
        generate_model(Path(args._generate), args.quick)
        return 0
    if args._generate_frameworks:
        generate_framework_models([Path(p) for p in args._generate_frameworks], args.quick)
        return 0
    if args._generate_chains:
        generate_chains([Path(p) for p in args._generate_chains])
        return 0
    if args._generate_transformer:
        generate_transformer(Path(args._generate_transformer), args.quick)
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    started = time.perf_counter()
    workdir = args.workdir.resolve()
    model, generated = ensure_model(workdir, args.quick)
    out = workdir / f"{model.stem}-fixed.onnx"
    file_mb = model.stat().st_size / MB
    source_stat = model.stat()
    others, others_generated = ensure_framework_models(workdir, args.quick)
    others_stat = {fmt: path.stat() for fmt, path in others.items()}
    chains, chains_generated = ensure_chains(workdir, QUICK_CHAIN_SIZES if args.quick else CHAIN_SIZES)
    transformer, transformer_generated = ensure_transformer(workdir, args.quick)
    folder = ensure_folder(workdir, QUICK_FOLDER_MODELS if args.quick else FOLDER_MODELS)
    env = child_environment(workdir)
    try:  # unmeasured: compiles pwlint's bytecode into the cache
        run_once(Task("warm-up", "pwlint", [str(STARTUP_MODEL)], ok_codes=(0, 1)), env)
    except RuntimeError:
        pass  # the measured runs report it

    lint = Task("pwlint MODEL (lint)", "pwlint", [str(model)], ok_codes=(0, 1))
    load = Task("onnx.load(MODEL)", "onnx.load", [str(model)])
    fix = Task("pwlint MODEL --fix -o OUT (verified)", "pwlint", [str(model), "--fix", "-o", str(out)],
               output=out, may_shorten=True, ok_codes=(0, 1))
    fix_nv = Task("pwlint MODEL --fix --no-verify -o OUT", "pwlint",
                  [str(model), "--fix", "--no-verify", "-o", str(out)], output=out, may_shorten=True, ok_codes=(0, 1))
    other_lints = [Task(f"pwlint vgg16.{fmt} (lint)", "pwlint", [str(path)], ok_codes=(0, 1),
                        file_mb=others_stat[fmt].st_size / MB, time_target=FRAMEWORK_TARGET_S)
                   for fmt, path in others.items()]
    tasks = [lint, load, fix, fix_nv]
    for task in tasks + other_lints:
        measure(task, args.repeat, env)
    startup = Pair('start-up: pwlint lenet.onnx vs python -c "import onnx"',
                   Task("pwlint lenet.onnx", "pwlint", [str(STARTUP_MODEL)], ok_codes=(0, 1)),
                   Task("import onnx", "import onnx", []), target=STARTUP_TARGET)
    pairs = [startup] + [
        Pair(f"chain of {chain_length(path):,} Relu nodes vs onnx.load",
             Task(f"pwlint {path.name}", "pwlint", [str(path)], ok_codes=(0, 1)),
             Task(f"onnx.load({path.name})", "onnx.load", [str(path)]),
             nodes=chain_length(path), **(dict(target=CHAIN_TARGET, rss_target_mb=CHAIN_RSS_TARGET_MB)
                                          if chain_length(path) == CHAIN_SIZES[-1] else {}))
        for path in chains
    ] + [
        Pair(f"transformer {transformer.name} (torch.onnx.export) vs onnx.load",
             Task(f"pwlint {transformer.name}", "pwlint", [str(transformer)], ok_codes=(0, 1)),
             Task(f"onnx.load({transformer.name})", "onnx.load", [str(transformer)])),
        Pair(f"folder of {len(list(folder.iterdir()))} small models: --jobs 2 vs --jobs 1",
             Task("pwlint --jobs 2 FOLDER", "pwlint", [str(folder), "-q", "--jobs", "2"], ok_codes=(0, 1)),
             Task("pwlint --jobs 1 FOLDER", "pwlint", [str(folder), "-q", "--jobs", "1"], ok_codes=(0, 1))),
    ]
    startup.measure(args.repeat if args.quick else max(args.repeat, STARTUP_MIN_RUNS), env)
    for pair in pairs[1:]:
        pair.measure(args.repeat, env)
    paired = [task for pair in pairs for task in (pair.pwlint, pair.baseline)]
    if model.stat().st_mtime_ns != source_stat.st_mtime_ns or model.stat().st_size != source_stat.st_size:
        sys.stderr.write(f"warning: {model} changed during the benchmark; it will be regenerated next time\n")
        model.unlink(missing_ok=True)
    for fmt, path in others.items():
        if path.stat().st_mtime_ns != others_stat[fmt].st_mtime_ns or path.stat().st_size != others_stat[fmt].st_size:
            sys.stderr.write(f"warning: {path} changed during the benchmark; it will be regenerated next time\n")
            path.unlink(missing_ok=True)

    found = versions()
    print(f"Machine: {platform.system()} {platform.machine()}, os.cpu_count()={os.cpu_count()}, "
          f"Python {platform.python_version()}, onnx {found['onnx']}, onnxruntime {found['onnxruntime']}, "
          f"numpy {found['numpy']}, pwlint {found['pwlint']}; "
          f"model {model.name} ({'quick, 1/%d channels' % QUICK_DIVISOR if args.quick else 'VGG16-sized'}) "
          f"{file_mb:.1f} MB{' (generated now)' if generated else ' (cached)'}; MB = 2^20 bytes")
    print(f"Same architecture, random weights, written by keras {found['keras']} (KERAS_BACKEND=torch) and torch "
          f"{found['torch']}: " + ", ".join(f"{path.name} {others_stat[fmt].st_size / MB:.1f} MB"
                                             for fmt, path in others.items())
          + (" (generated now)" if others_generated else " (cached)"))
    print()
    print("\n".join(table(tasks, lint, load, fix, file_mb, args.repeat, then=other_lints)))
    print()
    print(f"Time: median wall time in a fresh Python process, imports included, bytecode cached. "
          f"Peak RSS: ru_maxrss of that "
          f"process. Fix target: verified fix under {FIX_TIME_TARGET_S:g} s and under "
          f"{FIX_RSS_TARGET_RATIO:g}x the file size.")
    print()
    print("\n".join(scaling_table(pairs, startup)))
    print()
    print(f"Each pair alternates its runs. Chains: {', '.join(p.name for p in chains)}"
          f"{' (generated now)' if chains_generated else ' (cached)'}; µs per node beyond start-up: "
          f"(pwlint on the chain - pwlint on lenet.onnx) / nodes. Targets: start-up at most "
          f"{STARTUP_TARGET:g}x, the largest chain at most {CHAIN_TARGET:g}x onnx.load and "
          f"{CHAIN_RSS_TARGET_MB:g} MB. Transformer: {transformer.name} and its weights file "
          f"({sum(p.stat().st_size for p in workdir.glob(transformer.name + '*')) / MB:.1f} MB in all"
          f"{', generated now' if transformer_generated else ', cached'}); onnx.load reads the weights too. "
          f"Folder: copies of examples/*.onnx; the peak RSS of a --jobs run is the main process's "
          f"(its workers are not counted).")
    print(SCALING_NOTES)
    notes = fix_notes(fix) + fix_notes(fix_nv)
    errors = [f"- {task.label}: {error}" for task in tasks + other_lints + paired for error in task.errors]
    if notes:
        print("\nWhat --fix reported (first run):")
        print("\n".join(notes))
    if errors:
        print("\nErrors:")
        print("\n".join(errors))
    print(f"\nWhole benchmark: {time.perf_counter() - started:.0f} s"
          f"{' (including model generation)' if generated or others_generated or chains_generated or transformer_generated else ''}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
