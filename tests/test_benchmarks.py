"""benchmarks/run.py keeps working: a smoke run on the quick models prints the whole table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
ROWS = (
    "pwlint MODEL (lint)",
    "onnx.load(MODEL)",
    "pwlint MODEL --fix -o OUT (verified)",
    "pwlint MODEL --fix --no-verify -o OUT",
    "lint / onnx.load",
    "pwlint vgg16.keras (lint)",
    "pwlint vgg16.h5 (lint)",
    "pwlint vgg16.pt2 (lint)",
    "pwlint vgg16.pt (lint)",
)
SCALING_ROWS = (
    'start-up: pwlint lenet.onnx vs python -c "import onnx"',
    "chain of 1,000 Relu nodes vs onnx.load",
    "chain of 10,000 Relu nodes vs onnx.load",
    "transformer bert-quick.onnx (torch.onnx.export) vs onnx.load",
    "folder of 20 small models: --jobs 2 vs --jobs 1",
)
CACHED = ["bert-quick.onnx", "bert-quick.onnx.data", "chain-1000.onnx", "chain-10000.onnx", "pycache",
          "small-models-20", "vgg16-quick.h5", "vgg16-quick.keras", "vgg16-quick.onnx", "vgg16-quick.pt",
          "vgg16-quick.pt2"]
NUMBER = re.compile(r"^\d+(\.\d+)?x?$")


def test_quick_benchmark_prints_the_table(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--repeat", "1", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("Machine: "), out
    assert "os.cpu_count()=" in out and "onnxruntime " in out and " MB" in out.splitlines()[0]
    assert all(f"{name} " in out.splitlines()[1] for name in CACHED if name.startswith("vgg16") and not name.endswith(".onnx")), out
    tables = "\n".join(line if line.startswith("| ") else "" for line in out.splitlines()).split("\n\n")
    lines, scaling = [table.strip().splitlines() for table in tables if table.strip()]
    assert lines[0] == "| task | median time (s) | peak RSS (MB) | RSS / file size | target | met? |"
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert len(rows) == len(ROWS), out
    for row, label in zip(rows, ROWS):
        assert row[0].startswith(label), (row, out)
        assert len(row) == 6, row
        for cell in row[1:4]:
            assert NUMBER.match(cell), (row, out)
    # the other formats' lints have their time target
    assert all(row[4] == "<= 0.3 s" and row[5] in ("yes", "no") for row in rows[-4:]), out
    # start-up, chains, transformer, folder: pwlint and baseline times, their ratio, per-node
    # time for chains, both peak RSS
    assert scaling[0].startswith("| run | pwlint (s) | baseline (s) | pwlint / baseline |"), out
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in scaling[2:]]
    assert len(rows) == len(SCALING_ROWS), out
    for row, label in zip(rows, SCALING_ROWS):
        assert row[0].startswith(label), (row, out)
        assert len(row) == 9, row
        for cell in row[1:4] + row[5:7]:
            assert NUMBER.match(cell), (row, out)
        # beyond start-up, a 1k chain can measure a little faster than lenet.onnx: noise
        assert re.match(r"^-?\d+\.\d$", row[4]) if label.startswith("chain") else row[4] == "-", (row, out)
    assert rows[0][7] == "<= 0.25x" and re.match(r"^(yes|no \(time\))$", rows[0][8]), rows[0]
    assert "Errors:" not in out, out
    # the fix really changed the model; the cached models stay for the next run, the outputs are gone
    assert "nothing was fixed" not in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == CACHED
