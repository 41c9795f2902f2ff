"""Faults: `kill -9` in the middle of a fine-tune, a classification, a feature extraction, a write,
and a whole Snakemake run. After each kill nothing at a final output path may look complete, and the
same command run again must finish (the fine-tune from its last checkpoint).

The base model, prompts and vision cache of `digits` are copies of the session's shared micro run
(tests/conftest.py). Every CLI is started in its own process group, so that SIGKILL
also reaches any child (DataLoader workers, the shell Snakemake starts) and nothing gets a chance to
clean up: the test sees exactly what a node failure or the OOM killer would leave behind.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from projection_probe.testing.micro import MICRO_CONFIG, MICRO_MODEL, REPO_ROOT, make_micro_workdir, snakemake_command

from conftest import beside_shared_runs, copy_run

# Tests that run CLIs on models or a Snakemake DAG take tens of seconds each: they are marked slow
# and kept out of the quick `-m "not slow"` selection.

CLI = [sys.executable, "-m", "projection_probe.cli"]
BASE = f"results/models/{MICRO_MODEL}/base"
PROMPTS = "results/data/digits/prompts_seed0.jsonl"
CACHE = f"results/features/{MICRO_MODEL}/digits/vision.safetensors"
CLASSES = "results/data/digits/classes.json"
MANIFEST = "results/data/digits/manifest.csv"
# FT-Proj with one example per optimizer step, so that a run has hundreds of steps and checkpoints
# appear long before it ends (the micro config's own 8 steps would finish before a kill lands).
SLOW_FT_PROJ = {"kind": "ft-proj", "lr": 1.0e-3, "effective_batch": 1, "per_device_batch": 1}
SLOW_FINETUNE = dict(MICRO_CONFIG["finetune"], epochs=3, checkpoint_every_steps=20)
POLL_S = 0.02
TIMEOUT_S = 600


@pytest.fixture(scope="module")
def workdir(micro_run, tiny_models, tmp_path_factory):
    """A micro workdir holding the base model, seed-0 prompts and the vision cache of `digits`: copies
    of the shared micro run's (tests/conftest.py), with Snakemake's metadata, so that the kills below
    never touch the shared run and Snakemake sees these inputs as done."""
    wd = make_micro_workdir(
        beside_shared_runs(tmp_path_factory, "reliability"), models_dir=tiny_models,
        datasets={"digits": MICRO_CONFIG["datasets"]["digits"]},
        settings={"original": {"kind": "none"}, "ft-proj": SLOW_FT_PROJ},
        finetune=SLOW_FINETUNE)
    copy_run(micro_run, wd, BASE, "results/data/digits", CACHE)
    # Nothing upstream of the fine-tune is planned again: the copies are complete and current.
    target = f"results/models/{MICRO_MODEL}/digits/ft-proj/seed0/facade.json"
    planned = subprocess.run(snakemake_command(wd, "-n", target),
                             capture_output=True, text=True)
    assert planned.returncode == 0, planned.stdout[-3000:] + planned.stderr[-3000:]
    assert set(re.findall(r"^(?:local)?rule (\w+):", planned.stdout, flags=re.M)) == {"finetune"}, planned.stdout
    return wd


# ---------------------------------------------------------------------------- helpers
def start(cmd: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start `cmd` in a new session (its own process group), stdout and stderr into `log`."""
    handle = open(log, "w")
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    handle.close()  # the child holds its own copy
    return proc


def kill9_when(proc: subprocess.Popen, condition, log: Path, what: str) -> None:
    """SIGKILL the whole process group of `proc` as soon as `condition()` holds. Fails if the process
    ends first: then the test would show nothing about a kill."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before {what}; make the run longer.\n"
                        + log.read_text(errors="replace")[-3000:])
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {what} within {TIMEOUT_S} s\n" + log.read_text(errors="replace")[-3000:])
        time.sleep(POLL_S)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # The process really died of the signal (it did not finish in the meantime).
    assert proc.returncode == -signal.SIGKILL


def tqdm_midway(log: Path, desc: str):
    """A condition: the tqdm bar `desc` in `log` shows n/N with 0 < n < N (the loop is under way)."""
    pattern = re.compile(re.escape(desc) + r":\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")

    def check() -> bool:
        text = log.read_text(errors="replace") if log.exists() else ""
        return any(0 < int(n) < int(total) for n, total in pattern.findall(text))
    return check


def run_to_end(cmd: list[str], cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """trainer_state.json of each checkpoint that has a whole one (it is written last). Parsed, not
    just seen: the file exists from the moment it is opened, and a kill before its bytes land would
    be the race that test_half_written_trainer_state_is_not_resumed_from is about, not this test's."""
    found = []
    for state in sorted(checkpoint_dir.glob("checkpoint-*/trainer_state.json")):
        try:
            json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        found.append(state)
    return found


def no_final_output(path: Path, allowed: tuple[str, ...] = ()) -> None:
    """The final path is absent, and so is any look-alike beside it (`seed0.csv.part`); leftovers may
    only be dot-prefixed temp siblings, which no rule names as an output, or the `allowed` names."""
    assert not path.exists(), f"{path} exists after a kill: a partial output could be taken as complete"
    strays = [p.name for p in path.parent.glob(path.name + "*") if p.name not in allowed]
    assert strays == [], strays


# ---------------------------------------------------------------------------- the CLIs
@pytest.mark.slow
def test_kill9_during_finetune_then_rerun_resumes_from_the_checkpoint(workdir, tmp_path):
    out = tmp_path / "ft-proj"
    checkpoints = Path(str(out) + ".work") / "checkpoints"
    cmd = CLI + ["finetune", "--base-model", BASE, "--prompts", PROMPTS, "--vision-cache", CACHE,
                 "--setting", "ft-proj", "--lr", "1e-3", "--effective-batch", "1", "--per-device-batch", "1",
                 "--epochs", "3", "--checkpoint-every-steps", "20", "--seed", "0", "--threads", "1",
                 "--out-dir", str(out)]
    log = tmp_path / "finetune.log"
    proc = start(cmd, workdir, log)
    kill9_when(proc, lambda: bool(complete_checkpoints(checkpoints)), log, "a complete checkpoint")

    no_final_output(out, allowed=(out.name + ".work",))  # the checkpoints, resumed below
    survivors = complete_checkpoints(checkpoints)
    assert survivors, "the complete checkpoint seen before the kill is gone"
    last = survivors[-1].parent.name

    output = run_to_end(cmd, workdir)
    assert f"resuming from {survivors[-1].parent}" in output
    train_log = json.loads((out / "train_log.json").read_text())
    assert train_log["resumed_from"] == last
    # 60 train images × 3 epochs at one image per step: the resumed run ends where a fresh one would.
    assert train_log["optimizer_steps"] == 180
    # The log history comes back from the checkpoint: every step is logged exactly once, so the steps
    # run after the checkpoint but lost with the kill were redone, not counted twice.
    assert [s["step"] for s in train_log["steps"]] == list(range(1, 181))
    assert json.loads((out / "facade.json").read_text())["setting"] == "ft-proj"
    assert not checkpoints.parent.exists(), "the checkpoints outlived the published model"


@pytest.mark.slow
def test_kill9_during_classify_leaves_no_csv_and_rerun_completes(workdir, tmp_path):
    # Every record relabelled as test: 90 images at batch size 1 keep the loop busy for seconds.
    records = [json.loads(line) for line in (workdir / PROMPTS).read_text().splitlines()]
    prompts = tmp_path / "prompts_all_test.jsonl"
    prompts.write_text("".join(json.dumps(dict(r, split="test")) + "\n" for r in records))
    out = tmp_path / "predictions" / "seed0.csv"
    cmd = CLI + ["classify", "--model", BASE, "--prompts", str(prompts), "--vision-cache", CACHE,
                 "--classes", CLASSES, "--mode", "generate", "--batch-size", "1", "--max-new-tokens", "24",
                 "--threads", "1", "--out", str(out)]
    log = tmp_path / "classify.log"
    proc = start(cmd, workdir, log)
    kill9_when(proc, tqdm_midway(log, "classify (generate)"), log, "classification progress")

    no_final_output(out)

    run_to_end(cmd, workdir)
    # pandas, not splitlines: a random model's raw output may hold line-separator characters (quoted).
    frame = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["image_path", "label", "raw", "parsed", "valid", "mode"]
    assert frame["image_path"].tolist() == [r["image"] for r in records]


@pytest.mark.slow
def test_kill9_during_vision_feature_extraction_leaves_no_cache_and_rerun_completes(workdir, tiny_models, tmp_path):
    # 600 distinct small images: enough for the batch-size-1 loop to run for seconds.
    rng = np.random.default_rng(0)
    rows = ["image_path,label,split"]
    for i in range(600):
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)
        rows.append(f"{path},zero,{'train' if i % 2 else 'test'}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out = tmp_path / "features" / "vision.safetensors"
    vision = json.dumps({"kind": "clip", "path": str(tiny_models / "vision")})
    cmd = CLI + ["extract-vision-features", "--vision-json", vision, "--manifest", str(manifest),
                 "--batch-size", "1", "--threads", "1", "--out", str(out)]
    log = tmp_path / "extract.log"
    proc = start(cmd, workdir, log)
    kill9_when(proc, tqdm_midway(log, "vision features"), log, "feature-extraction progress")

    no_final_output(out)

    run_to_end(cmd, workdir)
    from projection_probe.features.cache import load_vision_cache

    cache = load_vision_cache(out)
    assert cache.x_v.shape[0] == 600 and cache.image_paths == [r.split(",")[0] for r in rows[1:]]


# ---------------------------------------------------------------------------- a kill inside a write
KILL_INSIDE_WRITE = """
import os, signal, sys
from projection_probe.io import atomic_dir, atomic_path
final = sys.argv[2]
if sys.argv[1] == "file":
    with atomic_path(final) as tmp:
        tmp.write_text("half of the rows")
        os.kill(os.getpid(), signal.SIGKILL)
else:
    with atomic_dir(final) as tmp:
        (tmp / "facade.json").write_text("{}")
        os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_kill9_inside_an_atomic_write_never_reaches_the_final_path(tmp_path, kind):
    """The CLIs above are killed while computing; this kills one in the middle of writing, the only
    moment a non-atomic writer would leave a truncated file at the final path."""
    final = tmp_path / "out" / ("all_runs.csv" if kind == "file" else "seed0")
    done = subprocess.run([sys.executable, "-c", KILL_INSIDE_WRITE, kind, str(final)], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not final.exists()
    # The partial data did get written, to a hidden temp sibling that no rule names as an output.
    leftovers = list(final.parent.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(f".{final.name}.")
    assert leftovers[0].name.endswith(".tmp")


# ---------------------------------------------------------------------------- Snakemake
def dry_run_jobs(workdir: Path, target: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(snakemake_command(workdir, "-n", *extra, target), capture_output=True, text=True)


@pytest.mark.slow
def test_kill9_of_snakemake_marks_the_job_incomplete_and_the_local_profile_reruns_it(workdir):
    target = f"results/models/{MICRO_MODEL}/digits/ft-proj/seed0/facade.json"
    checkpoints = workdir / f"results/models/{MICRO_MODEL}/digits/ft-proj/seed0.work/checkpoints"
    log = workdir / "snakemake_killed.log"
    proc = start(snakemake_command(workdir, target), workdir, log)
    kill9_when(proc, lambda: bool(complete_checkpoints(checkpoints)), log, "the finetune job's first checkpoint")
    assert not (workdir / target).exists()

    # An output written in place by a killed job (what a non-atomic tool would leave) stands in for
    # the worst case: the file exists, so only Snakemake's incomplete marker can tell it is not done.
    (workdir / target).write_text('{"format_version": 1, "proj')
    refused = dry_run_jobs(workdir, target)
    assert refused.returncode != 0
    assert "IncompleteFilesException" in refused.stdout + refused.stderr
    assert target in refused.stdout + refused.stderr

    profile = ["--profile", str(REPO_ROOT / "profiles" / "local")]
    shown = dry_run_jobs(workdir, target, *profile)
    assert shown.returncode == 0, shown.stderr[-2000:]
    wildcards = f"model={MICRO_MODEL}, dataset=digits, setting=ft-proj, seed=0"
    assert re.search(r"rule finetune:\n(?:\s+.*\n)*?\s+wildcards: " + wildcards, shown.stdout), shown.stdout[-2000:]

    # SIGKILL also left Snakemake's lock behind: a real run is refused until `--unlock`, which is
    # the documented recovery step (docs/reliability.md).
    locked = subprocess.run(snakemake_command(workdir, *profile, target), capture_output=True, text=True)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    run_to_end(snakemake_command(workdir, "--unlock"), workdir)
    # Running it for real replaces the fake output and the fine-tune resumes from its checkpoint.
    run_to_end(snakemake_command(workdir, *profile, target), workdir)
    facade = json.loads((workdir / target).read_text())
    assert facade["setting"] == "ft-proj"
    train_log = json.loads((workdir / target).with_name("train_log.json").read_text())
    assert train_log["resumed_from"] is not None and train_log["optimizer_steps"] == 180


# ---------------------------------------------------------------------------- checkpoint scan
def test_half_written_trainer_state_is_not_resumed_from(tmp_path):
    """A kill while transformers writes trainer_state.json (the completeness marker) leaves it empty;
    resuming from that checkpoint would crash on every rerun, so the scan must fall back to the
    previous one."""
    from projection_probe.train.finetune import last_complete_checkpoint

    for step, state in ((20, json.dumps({"global_step": 20})), (40, "")):
        folder = tmp_path / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"weights")
        (folder / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path / "checkpoints") == str(tmp_path / "checkpoints" / "checkpoint-20")
