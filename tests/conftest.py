"""Shared, session-scoped workflow runs: each distinct configuration runs once per pytest run.

- `tiny_models`: the micro config's random tiny CLIP / LLM / vision models and tiny Idefics3 checkpoint,
  built once.
- `micro_run`: the full micro config (2 models of two families × 2 datasets × 2 seeds × 4 settings ×
  3 modes) with its report.
- `analysis_run`: a reduced micro config with the analyses beyond the paper switched on.

Every test that only reads a finished run reads these; a test that changes files works on a copy
(`copy_run`, into `beside_shared_runs`). Under pytest-xdist the tests of each run go to one worker
(SHARED_RUN_GROUPS), and `tiny_models` and `micro_run` are built once for all workers
(`built_once`), so that the Slurm tests can run on the other worker at the same time. Each pytest
run starts its runs in its own fresh temporary folder, so a run left half-done by an interrupted
session is never reused. A run that fails makes every test that needs it fail with the run's own log
tail (pytest caches a session fixture's failure, and `built_once` passes it to the other worker),
not with a cascade of unrelated errors.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from projection_probe.testing.micro import (
    ANALYSIS_OVERRIDES,
    REPO_ROOT,
    make_micro_models,
    make_micro_workdir,
    snakemake_command,
)

# The interpreter's own bin/ first on PATH, for every subprocess the tests start: rules call
# `projection-probe` and `snakemake` by name, which would not resolve outside an activated venv.
_BIN = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[:1] != [_BIN]:
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")


# With pytest-xdist (`-n 2 --dist loadgroup`, as scripts/test.sh runs the suite), every test that reads
# a shared run goes to the same worker. The Slurm tests form their own group, so that one worker
# starts the cluster and the Slurm micro run goes on beside the local one (first match wins).
SHARED_RUN_GROUPS = {"slurm_cluster": "slurm_cluster", "micro_run": "micro_run", "analysis_run": "analysis_run"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = next((g for fixture, g in SHARED_RUN_GROUPS.items() if fixture in item.fixturenames), None)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True)
def environment_restored():
    """Undo what a test left in os.environ (a benchmark's main() run in-process sets TQDM_DISABLE),
    so that it never reaches the CLIs that later tests start: the kill tests wait for progress bars."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)


def workflow_failure(workdir: Path, what: str, done: subprocess.CompletedProcess) -> str:
    """Snakemake's own output tail plus the tail of every job log that reports an error."""
    parts = [f"shared workflow run '{what}' failed (exit {done.returncode}) in {workdir}",
             "--- snakemake stdout (tail)", done.stdout[-2500:], "--- snakemake stderr (tail)", done.stderr[-4000:]]
    logs = workdir / "results" / "logs"
    for log in sorted(logs.rglob("*.log")) if logs.exists() else []:
        text = log.read_text(errors="replace")
        if "Error" in text or "Traceback" in text:
            parts += [f"--- {log.relative_to(workdir)} (tail)", text[-1500:]]
    return "\n".join(parts)


def run_workflow(workdir: Path, what: str, *extra: str, configfile: Path | None = None) -> float:
    """Run the repository's Snakefile in `workdir`; fail (for every dependent test) with the log tail.
    Returns the wall time in seconds."""
    cmd = snakemake_command(workdir, *extra)
    if configfile is not None:
        cmd[cmd.index("--configfile") + 1] = str(configfile)
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(workflow_failure(workdir, what, done), pytrace=False)
    return time.perf_counter() - started


def copy_run(run: Path, dest: Path, *relative: str) -> Path:
    """Copy the named results of a finished run (all of it if none are named), with Snakemake's
    metadata, so that a test may change files without touching the shared run. Times are kept, so
    Snakemake sees the copies as up to date."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in relative or ("results",):
        src = run / rel
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, symlinks=True)
        else:
            shutil.copy2(src, target)
    if (run / ".snakemake" / "metadata").exists():
        shutil.copytree(run / ".snakemake" / "metadata", dest / ".snakemake" / "metadata", dirs_exist_ok=True)
    return dest


def shared_root(tmp_path_factory) -> Path:
    """This pytest run's temporary root, shared by its xdist workers (pytest-N/; each worker has its
    own pytest-N/popen-gwK/ below it)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


def beside_shared_runs(tmp_path_factory, name: str) -> Path:
    """A fresh folder next to the shared runs, for a copy of their results: a model folder names its
    parts by relative path (train/align.py), so a copied base model finds the tiny models only from
    the same depth."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=shared_root(tmp_path_factory)))


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(folder)` once per pytest run, however many xdist workers ask: each worker is a process
    with its own session fixtures, so the first one builds under a file lock in the run's shared
    temporary root and the others wait for it. A failed build fails every later asker with its
    message; a folder without its `.done` mark is never read."""
    root = shared_root(tmp_path_factory)
    folder, done, failed = root / name, root / f"{name}.done", root / f"{name}.failed"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if failed.exists():
            pytest.fail(failed.read_text(), pytrace=False)
        if not done.exists():
            folder.mkdir()
            try:
                build(folder)
            except BaseException as error:  # pytest.fail's exception is a BaseException
                failed.write_text(f"shared '{name}' failed in another worker or an earlier test:\n{error}")
                raise
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    return built_once(tmp_path_factory, "tiny_models", make_micro_models)


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory, tiny_models) -> Path:
    """The full micro config run to the end through the local profile (as a user runs it; the Slurm
    test compares its tables with these), with `results/report.html`. Read only."""

    def build(folder: Path) -> None:
        make_micro_workdir(folder, models_dir=tiny_models)
        run_workflow(folder, "micro", "--profile", str(REPO_ROOT / "profiles" / "local"))
        run_workflow(folder, "micro report", "--report", str(folder / "results" / "report.html"))

    return built_once(tmp_path_factory, "micro_run", build)


@pytest.fixture(scope="session")
def analysis_run(tmp_path_factory, tiny_models) -> Path:
    """The reduced config: `study` first, then `analysis_all` on top (so that the analyses' extra
    cost is measured, for docs/analysis.md), then the report. Read only."""
    workdir = make_micro_workdir(tmp_path_factory.mktemp("analysis_run"), models_dir=tiny_models,
                                 **ANALYSIS_OVERRIDES)
    study_seconds = run_workflow(workdir, "analysis: study", "study")
    extra_seconds = run_workflow(workdir, "analysis: analysis_all", "analysis_all")
    (workdir / "analysis_seconds.txt").write_text(f"study {study_seconds:.1f}\nanalyses {extra_seconds:.1f}\n")
    print(f"micro study {study_seconds:.1f} s, analyses on top {extra_seconds:.1f} s ({workdir})")
    run_workflow(workdir, "analysis: report", "analysis_all", "--report", str(workdir / "results" / "report.html"))
    return workdir
