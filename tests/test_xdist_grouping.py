"""The suite builds each shared workflow run once only because `--dist loadgroup` sends every test
that reads it to one worker (tests/conftest.py). Some pytest and pytest-xdist pairs break that grouping
without an error, and the suite then quietly doubles its longest runs; this test catches it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_RUN_GROUPS

pytest.importorskip("xdist")

REPO_CONFTEST = Path(__file__).with_name("conftest.py")


def test_tests_that_share_a_run_go_to_one_worker(tmp_path):
    """Six tests in two modules read the session fixture `micro_run` of a stand-in conftest that uses
    the suite's own grouping hook; under two workers the fixture must be built once."""
    fixture = next(f for f, g in SHARED_RUN_GROUPS.items() if g == f)
    built = tmp_path / "built"
    (tmp_path / "conftest.py").write_text(
        "import os, pytest\n"
        f"SHARED_RUN_GROUPS = {SHARED_RUN_GROUPS!r}\n"
        + _grouping_hook_source()
        + f"\n@pytest.fixture(scope='session')\ndef {fixture}():\n"
        f"    with open({str(built)!r}, 'a') as f:\n"
        "        f.write(os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n"
    )
    for module in ("a", "b"):
        tests = "".join(f"def test_reads_{i}({fixture}): pass\ndef test_alone_{i}(): pass\n" for i in range(3))
        (tmp_path / f"test_{module}.py").write_text(tests)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2",
                             "--dist", "loadgroup", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    workers = built.read_text().split()
    assert len(workers) == 1, (
        f"the shared fixture was built on {workers}: --dist loadgroup does not group with pytest "
        f"{pytest.__version__} (see the pytest pin in pyproject.toml)")


def _grouping_hook_source() -> str:
    """The suite's own hook, cut from tests/conftest.py, so that this test checks the code in use."""
    source = REPO_CONFTEST.read_text()
    start = source.index("@pytest.hookimpl(tryfirst=True)\ndef pytest_collection_modifyitems")
    end = source.index("\n\n\n", start)
    return source[start:end] + "\n"
