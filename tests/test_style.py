"""Style checks as part of the suite: ruff over the Python sources, snakefmt over the workflow. Both
tools come with the `test` extra (pyproject.toml pins them and holds their settings)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tool(name: str) -> str:
    """The tool installed beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is not installed: it comes with the test extra (pip install -e '.[test]')"
    return found


def test_ruff_and_snakefmt_pass():
    checks = {
        "ruff check": [tool("ruff"), "check", "--no-cache", "src", "tests", "benchmarks"],
        "snakefmt --check": [tool("snakefmt"), "--check", "Snakefile", "workflow"],
    }
    failures = []
    for cmd in checks.values():
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            failures.append(f"$ {' '.join(cmd[1:])}  (exit {done.returncode})\n"
                            f"{done.stdout[-3000:]}{done.stderr[-3000:]}")
    assert not failures, "\n\n".join(failures)
