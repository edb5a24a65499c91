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
)
SCALING_ROWS = (
    'start-up: pwlint lenet.onnx vs python -c "import onnx"',
    "chain of 1,000 Relu nodes vs onnx.load",
    "chain of 10,000 Relu nodes vs onnx.load",
)
CACHED = ["chain-1000.onnx", "chain-10000.onnx", "pycache",
          "vgg16-quick.h5", "vgg16-quick.keras", "vgg16-quick.onnx", "vgg16-quick.pt2"]
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
    # start-up and chains: pwlint and baseline times, their ratio, per-node time for chains
    assert scaling[0].startswith("| run | pwlint (s) | baseline (s) | pwlint / baseline |"), out
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in scaling[2:]]
    assert len(rows) == len(SCALING_ROWS), out
    for row, label in zip(rows, SCALING_ROWS):
        assert row[0].startswith(label), (row, out)
        assert len(row) == 8, row
        for cell in row[1:4] + row[5:6]:
            assert NUMBER.match(cell), (row, out)
        # beyond start-up, a 1k chain can measure a little faster than lenet.onnx: noise
        assert re.match(r"^-?\d+\.\d$", row[4]) if label.startswith("chain") else row[4] == "-", (row, out)
    assert "Errors:" not in out, out
    # the fix really changed the model; the cached models stay for the next run, the outputs are gone
    assert "nothing was fixed" not in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == CACHED
