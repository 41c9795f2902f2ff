"""The suite builds each shared workflow run once per pytest run (tests/conftest.py): `--dist
loadgroup` sends the tests that read a run to one worker, and `built_once` makes the other worker wait
for the first one's build. Some pytest and pytest-xdist pairs break the grouping without an error, and
the suite then quietly doubles its longest runs; these tests catch that, in two-worker pytest runs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED_RUN_GROUPS

pytest.importorskip("xdist")

REPO_CONFTEST = Path(__file__).with_name("conftest.py")
# The first lines of each stand-in conftest: the suite's own conftest, loaded under another name, so
# that these tests check the grouping hook and `built_once` in use.
LOAD_SUITE_CONFTEST = (
    "import importlib.util, os, pytest, time\n"
    f"spec = importlib.util.spec_from_file_location('suite_conftest', {str(REPO_CONFTEST)!r})\n"
    "suite = importlib.util.module_from_spec(spec); spec.loader.exec_module(suite)\n"
)


def test_tests_that_share_a_run_go_to_one_worker(tmp_path):
    """Six tests in two modules read the session fixture `micro_run` of a stand-in conftest that uses
    the suite's own grouping hook; under two workers the fixture must be built once."""
    fixture = next(f for f, g in SHARED_RUN_GROUPS.items() if g == f)
    built = tmp_path / "built"
    (tmp_path / "conftest.py").write_text(
        LOAD_SUITE_CONFTEST
        + "pytest_collection_modifyitems = suite.pytest_collection_modifyitems\n"
        f"@pytest.fixture(scope='session')\ndef {fixture}():\n"
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



@pytest.mark.slow
def test_a_run_shared_by_two_workers_is_built_once_and_its_failure_reaches_both(tmp_path):
    """Two groups, so two workers, ask for one `built_once` folder: one build, both read it; a build
    that fails fails the tests of both workers with its message."""
    (tmp_path / "conftest.py").write_text(
        LOAD_SUITE_CONFTEST
        + "def build(folder):\n"
        "    time.sleep(1)\n"
        "    if os.environ.get('BUILD_FAILS'): pytest.fail('the shared build broke', pytrace=False)\n"
        "    with open(folder.parent.parent / 'builds', 'a') as f: f.write(os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n"
        "    (folder / 'result').write_text('ready')\n"
        "@pytest.fixture(scope='session')\n"
        "def shared(tmp_path_factory):\n"
        "    return suite.built_once(tmp_path_factory, 'shared', build)\n"
    )
    for group in ("a", "b"):
        (tmp_path / f"test_{group}.py").write_text(
            "import os, pytest\n"
            f"@pytest.mark.xdist_group({group!r})\n"
            "def test_reads(shared):\n"
            "    assert (shared / 'result').read_text() == 'ready'\n"
            "    with open(shared.parent.parent / 'readers', 'a') as f:\n"
            "        f.write(os.environ['PYTEST_XDIST_WORKER'] + '\\n')\n"
        )
    base = tmp_path / "base"
    base.mkdir()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup",
           "--basetemp", str(base / "run"), str(tmp_path)]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len((base / "builds").read_text().split()) == 1
    assert sorted((base / "readers").read_text().split()) == ["gw0", "gw1"]

    failing = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "BUILD_FAILS": "1"})
    assert failing.returncode == 1 and failing.stdout.count("the shared build broke") >= 2, failing.stdout
    assert "2 error" in failing.stdout or "2 failed" in failing.stdout, failing.stdout
