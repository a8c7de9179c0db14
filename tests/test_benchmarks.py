"""The benchmarks keep running: each one imports and parses its arguments.

The benchmarks are not run by the suite (they take minutes and boot a VM), so nothing else
notices when one of them imports a name that has moved. Starting each with ``--help``
imports everything it imports and runs its argument parser, in a second or two.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("bench_*.py"))


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_imports_and_parses_its_arguments(name):
    result = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {name}.py"), result.stdout


def test_the_runner_runs_every_benchmark():
    runner = (BENCHMARKS / "run").read_text()
    listed = set(re.search(r"^benches=\(([^)]*)\)", runner, re.M).group(1).split())
    assert listed == set(SCRIPTS)
