"""Style checks as part of the suite: ruff over the Python sources, snakefmt over the workflow. Both
tools come with the `test` extra (pyproject.toml pins them and holds their settings)."""
from __future__ import annotations

import re
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


# The one kind of `snakemake --lint` finding the workflow keeps on purpose: operational values (speed and
# memory) reach shell lines from OPERATIONAL, not params, so that changing one reruns nothing
# (docs/architecture.md, "What `snakemake --lint` reports").
ALLOWED_LINT = "Shell command directly uses variable OPERATIONAL from outside of the rule:"


def test_snakemake_lint_reports_only_operational_values_in_shell_lines(tmp_path):
    cmd = [sys.executable, "-m", "snakemake", "--lint", "--cores", "1", "-s", str(REPO / "Snakefile"),
           "--configfile", str(REPO / "config" / "config.yaml"), "--directory", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    output = done.stdout + done.stderr
    findings = re.findall(r"^\s+\* (.+)$", output, flags=re.MULTILINE)
    # Lint ran to the end: it found the deliberate kind (a crash would report nothing).
    assert ALLOWED_LINT in findings and "Traceback" not in output, output[-3000:]
    others = sorted({f for f in findings if f != ALLOWED_LINT})
    assert not others, f"snakemake --lint findings beyond {ALLOWED_LINT!r}: {others}\n{output[-5000:]}"
