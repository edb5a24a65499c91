"""Running pwlint on hostile files the way CI does: a separate process, with a time
limit, its peak memory measured, and its failure checked to be the user-facing kind."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass
class BoundedRun:
    code: int
    out: str
    err: str
    #: the child's peak resident memory, in MiB (from wait4's rusage, so only this child)
    peak_mib: float


#: runs the CLI, then leaves its own peak RSS (KiB) in the file named by argv[1]. VmHWM,
#: not getrusage: Linux carries ru_maxrss across exec, so a child started by a pytest
#: holding torch would report pytest's memory as its own
_CHILD = (
    "import resource, sys\n"
    "from pwlint.cli import main\n"
    "code = main(sys.argv[2:])\n"
    "sys.stdout.flush(); sys.stderr.flush()\n"
    "try:\n"
    "    peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
    "except (OSError, StopIteration):\n"
    "    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "open(sys.argv[1], 'w').write(str(peak))\n"
    "sys.exit(code)\n"
)


def run_bounded(*args: str | Path, timeout: float = 60, cwd: str | Path | None = None) -> BoundedRun:
    """``pwlint ARGS`` in a child process; a hang past ``timeout`` seconds fails the test."""
    import tempfile

    env = {**os.environ, "PWLINT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.pop("PWLINT_DEBUG", None)
    with tempfile.TemporaryDirectory() as scratch:
        rss_file = Path(scratch) / "rss"
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(rss_file), *map(str, args)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=cwd, env=env,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"pwlint {' '.join(map(str, args))} did not finish within {timeout} s") from None
        peak_kib = int(rss_file.read_text()) if rss_file.exists() else 0
    return BoundedRun(proc.returncode, out, err, peak_kib / 1024)


def assert_handled(run: BoundedRun, max_mib: float = 1500) -> None:
    """What every hostile input must give: a lint (exit 0 or 1) or exit 2 with exactly
    one ``pwlint: error:`` line on stderr; never a traceback, an internal error or a
    memory blow-up. An "internal error" line is how the engine reports an exception no
    loader meant (pwlint.engine.Linter.read): a bug, even though the user sees one line."""
    assert run.code in (0, 1, 2), (run.code, run.err[-2000:])
    assert "Traceback" not in run.err + run.out, run.err[-2000:]
    assert "internal error" not in run.err, run.err
    if run.code == 2:
        lines = run.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("pwlint: error: "), run.err
    assert run.peak_mib < max_mib, f"peak memory {run.peak_mib:.0f} MiB"


#: examples per fuzz test: fixed in CI (derandomised, no database), raised locally
FUZZ_EXAMPLES = int(os.environ.get("PWLINT_FUZZ_EXAMPLES", "300"))


def fuzz_budget():
    """hypothesis settings shared by the fuzz tests: deterministic, no deadline (a lint
    in a busy CI may take a second), health checks that flag slow or large data off."""
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )


def assert_handled_inprocess(path: Path) -> None:
    """:func:`assert_handled` for a lint run in this process (fuzz tests run hundreds):
    exit 0, 1 or 2, and an exit 2 is one ``pwlint: error: PATH: ...`` line."""
    from tests.conftest import run_inprocess

    run = run_inprocess("check", str(path))
    assert run.code in (0, 1, 2), (run.code, run.err)
    assert "Traceback" not in run.err + run.out, run.err
    assert "internal error" not in run.err, run.err
    if run.code == 2:
        lines = run.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"pwlint: error: {path}: "), run.err
