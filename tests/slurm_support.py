"""Helpers for the Slurm integration tests (tests/test_slurm_integration.py).

They start a real single-node Slurm cluster (.ci/slurm/start.sh: munge, MariaDB, slurmdbd,
slurmctld, slurmd with two fake "a100" GPUs), run Snakemake through a copy of
profiles/slurm/config.yaml adapted to that cluster, and read back from Slurm's accounting
database (sacct) which rules went through sbatch and what they requested.

Why sacct is the evidence: the plugin submits every job with `--comment rule_<rule>[_wildcards_...]`
and `-D <workdir>`; slurmdbd stores the comment (AccountingStoreFlags=job_comment), the working
dir and the requested/allocated TRES (`gres/gpu=1`, `gres/gpu:a100=1`) for every job, after the
job has ended and for as long as the database lives. Nothing has to be caught while the job runs
(unlike `scontrol show job`, which forgets a job MinJobAge seconds after it ends), and nothing
depends on the plugin keeping its log files. The plugin's per-job logs under
.snakemake/slurm_logs/rule_<rule>/ are used as a second, independent witness.

Environment variables:
  PP_INSTALL_SLURM=1   install missing Slurm packages with .ci/install_slurm.sh (apt-get)
  PP_REQUIRE_SLURM=1   fail instead of skipping when the cluster cannot be started (for CI)
  SLURM_STATE_DIR      use (and, if it is already running, reuse without stopping) this state dir
  PP_KEEP_SLURM_STATE=1 keep the state dir (configs, daemon logs, DB) after the tests
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CI_SLURM = REPO / ".ci" / "slurm"
INSTALL_SCRIPT = REPO / ".ci" / "install_slurm.sh"
SLURM_PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
LOCAL_PROFILE = REPO / "profiles" / "local" / "config.yaml"

# What the CI cluster offers (see .ci/slurm/start.sh and slurm.conf.template).
PARTITION = "debug"
ACCOUNT = "ml"
GPU_TYPE = "a100"

REQUIRED_BINARIES = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct", "sacctmgr")

# Job-level states that mean "ran to the end without error".
OK_STATES = {"COMPLETED"}


def _missing_binaries() -> list[str]:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return [b for b in REQUIRED_BINARIES if shutil.which(b, path=path) is None]


def cluster_available() -> tuple[bool, str]:
    """Can a local Slurm cluster be started here? Returns (ok, reason-if-not).

    Needs root (daemons, mknod) and the Slurm/munge/MariaDB packages. Missing packages are
    installed with .ci/install_slurm.sh only if PP_INSTALL_SLURM=1; a failing install then raises
    (it was asked for explicitly) instead of returning False.
    """
    if os.geteuid() != 0:
        return False, f"needs root to start slurmctld/slurmd/munged (running as uid {os.geteuid()})"
    missing = _missing_binaries()
    if missing and os.environ.get("PP_INSTALL_SLURM") == "1":
        proc = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"PP_INSTALL_SLURM=1 but {INSTALL_SCRIPT} failed (exit {proc.returncode}):\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        missing = _missing_binaries()
        if missing:
            raise RuntimeError(f"{INSTALL_SCRIPT} succeeded but {missing} are still not on PATH")
    if missing:
        return False, (
            f"Slurm packages absent (no {', '.join(missing)}); install them with "
            f"`sudo {INSTALL_SCRIPT.relative_to(REPO)}` or set PP_INSTALL_SLURM=1"
        )
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError as err:  # a project install problem, not a machine limitation: fail
        raise RuntimeError(
            "snakemake-executor-plugin-slurm is not installed: pip install -e '.[slurm]'"
        ) from err
    return True, ""


@dataclasses.dataclass
class SlurmCluster:
    state_dir: Path
    env: dict  # os.environ plus SLURM_CONF: pass it to every subprocess that talks to Slurm
    started_here: bool

    @property
    def slurm_conf(self) -> Path:
        return self.state_dir / "etc" / "slurm.conf"

    def daemon_logs(self) -> str:
        """Tails of the daemon logs, for failure messages."""
        out = []
        for log in sorted((self.state_dir / "log").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            out.append(f"---- {log} ----\n" + "\n".join(lines))
        return "\n".join(out)


def _cluster_running(state_dir: Path) -> bool:
    run = state_dir / "run"
    for daemon in ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"):
        try:
            pid = int((run / f"{daemon}.pid").read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return False
    return True


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node Slurm cluster for the whole test session (stopped at the end).

    Skips (or fails, with PP_REQUIRE_SLURM=1) if the machine cannot run one: not root, or the
    packages are absent. A cluster that fails to start is always an error.
    """
    ok, reason = cluster_available()
    if not ok:
        if os.environ.get("PP_REQUIRE_SLURM") == "1":
            pytest.fail(f"PP_REQUIRE_SLURM=1 but no local Slurm cluster is possible: {reason}")
        pytest.skip(reason)

    if os.environ.get("SLURM_STATE_DIR"):
        state_dir = Path(os.environ["SLURM_STATE_DIR"]).resolve()
        keep = True
    else:
        # Below /tmp, not pytest's tmp dir: munged runs as user munge and must traverse the path
        # (pytest's /tmp/pytest-of-root is mode 0700).
        state_dir = Path(tempfile.mkdtemp(prefix="pp-slurm-", dir="/tmp"))
        state_dir.chmod(0o755)
        keep = os.environ.get("PP_KEEP_SLURM_STATE") == "1"
    already_running = _cluster_running(state_dir)
    env = dict(os.environ, SLURM_CONF=str(state_dir / "etc" / "slurm.conf"))
    proc = subprocess.run(
        ["bash", str(CI_SLURM / "start.sh"), str(state_dir)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(
            f".ci/slurm/start.sh {state_dir} failed (exit {proc.returncode}):\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
    print(proc.stdout, flush=True)
    cluster = SlurmCluster(state_dir=state_dir, env=env, started_here=not already_running)
    try:
        yield cluster
    finally:
        if cluster.started_here:
            stop = subprocess.run(
                ["bash", str(CI_SLURM / "stop.sh"), str(state_dir)],
                env=env, capture_output=True, text=True, timeout=300,
            )
            print(stop.stdout, stop.stderr, flush=True)
            if stop.returncode != 0:
                raise RuntimeError(f".ci/slurm/stop.sh {state_dir} failed:\n{stop.stdout}\n{stop.stderr}")
            if not keep:
                shutil.rmtree(state_dir, ignore_errors=True)


def make_test_profile(tmp_dir: Path, *, gpu_model: str | None = GPU_TYPE) -> Path:
    """Write a copy of profiles/slurm/config.yaml adapted to the CI cluster; returns its folder.

    Kept from the real profile: the executor, the status command, every rule's GPU count and
    every rule name under set-resources/set-threads (so the test exercises the real profile).
    Changed: partition `debug`, account `ml`, small memory/run time, one thread per job (the CI
    node has few CPUs), typed GPU requests (`gpu_model`, to check typed GRES), fast status polls,
    no retries (a failure must show, not be retried away), keeping all plugin logs.
    """
    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    if not isinstance(profile, dict) or profile.get("executor") != "slurm":
        raise ValueError(f"{SLURM_PROFILE}: expected a mapping with `executor: slurm`")
    test = copy.deepcopy(profile)
    test["default-resources"] = dict(
        profile.get("default-resources") or {},
        slurm_partition=PARTITION,
        slurm_account=ACCOUNT,
        mem_mb="1500 * attempt",
        runtime="30 * attempt",
    )
    set_resources = {}
    for rule, res in (profile.get("set-resources") or {}).items():
        res = dict(res)
        res["mem_mb"] = "2000 * attempt"
        res["runtime"] = "30 * attempt"
        res.pop("cpus_per_gpu", None)
        res.pop("slurm_partition", None)
        # finetune takes its GPU count from the rule (finetune.num_gpus), the others from the profile.
        if (res.get("gpu") or rule == "finetune") and gpu_model:
            res["gpu_model"] = gpu_model
        set_resources[rule] = res
    test["set-resources"] = set_resources
    test["set-threads"] = {rule: 1 for rule in (profile.get("set-threads") or {})}
    test.update({
        "jobs": 4,
        "local-cores": 1,
        "retries": 0,
        "keep-going": False,
        "latency-wait": 5,
        "slurm-init-seconds-before-status-checks": 2,
        "slurm-keep-successful-logs": True,
    })
    out = Path(tmp_dir) / "slurm-test-profile"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(
        "# Generated by tests/slurm_support.make_test_profile from profiles/slurm/config.yaml\n"
        + yaml.safe_dump(test, sort_keys=False)
    )
    return out


def run_snakemake(args: list[str], *, env: dict, log_path: Path, timeout: int) -> str:
    """Run `python -m snakemake ARGS`, tee its output to log_path, return the output.

    Raises AssertionError with the output's tail on a non-zero exit or a timeout. On a timeout
    Snakemake gets SIGINT first (a Snakemake waiting on Slurm ignores SIGTERM), then SIGKILL.
    """
    cmd = [sys.executable, "-m", "snakemake", *args]
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
    output = Path(log_path).read_text(errors="replace")
    if rc != 0:
        why = f"timed out after {timeout}s" if rc is None else f"exit {rc}"
        tail = "\n".join(output.splitlines()[-60:])
        raise AssertionError(f"snakemake {why} (full log: {log_path}):\n{tail}")
    return output


@dataclasses.dataclass(frozen=True)
class SlurmJob:
    jobid: str
    rule: str
    wildcards: str
    state: str
    workdir: str
    req_tres: dict
    alloc_tres: dict
    elapsed_s: int = 0  # sacct ElapsedRaw: seconds the job held its allocation

    def member_rules(self, rules: set[str]) -> set[str]:
        """The workflow rules this job ran: its rule, or for a group job (named by the plugin
        `<group id>_<rule>_<rule>...`) the rules its name ends with."""
        if self.rule in rules:
            return {self.rule}
        found, rest = set(), self.rule
        while True:
            tail = next((r for r in sorted(rules, key=len, reverse=True) if rest.endswith("_" + r)), None)
            if tail is None:
                return found
            found.add(tail)
            rest = rest[: -len(tail) - 1]

    @property
    def gpus(self) -> int:
        """GPUs requested (the untyped gres/gpu count, which Slurm always records)."""
        return int(self.req_tres.get("gres/gpu", 0))

    @property
    def gpu_types(self) -> dict:
        """Typed GPU requests, e.g. {"a100": 1} (needs AccountingStorageTRES=gres/gpu:<type>)."""
        return {k.split(":", 1)[1]: int(v) for k, v in self.req_tres.items() if k.startswith("gres/gpu:")}

    @property
    def allocated_gpus(self) -> int:
        return int(self.alloc_tres.get("gres/gpu", 0))


_SEP = "\x1f"
_FIELDS = ("JobIDRaw", "State", "WorkDir", "ReqTRES", "AllocTRES", "Comment", "ElapsedRaw")
_COMMENT_RE = re.compile(r"^rule_(?P<rule>.+?)(?:_wildcards_(?P<wildcards>.*))?$")


def _parse_tres(text: str) -> dict:
    tres = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        tres[key] = value
    return tres


def jobs_submitted(workdir: Path, env: dict, *, since: str = "now-1days") -> dict[str, list[SlurmJob]]:
    """Jobs that went through sbatch from Snakemake runs in `workdir`, by rule name (from sacct).

    A job belongs to `workdir` if Slurm recorded it as its working dir (the plugin passes
    `-D <workdir>`); its rule comes from the plugin's `--comment rule_<rule>[_wildcards_<...>]`.
    Jobs without such a comment (not submitted by the plugin) are ignored.
    """
    workdir = str(Path(workdir).resolve())
    cmd = [
        "sacct", "-X", "-a", "--noheader", "--parsable2", f"--delimiter={_SEP}",
        f"--starttime={since}", "--endtime=now", "--format=" + ",".join(_FIELDS),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr}")
    by_rule: dict[str, list[SlurmJob]] = {}
    for line in proc.stdout.splitlines():
        parts = line.split(_SEP)
        if len(parts) != len(_FIELDS):
            raise RuntimeError(f"unexpected sacct line (want {len(_FIELDS)} fields): {line!r}")
        jobid, state, wd, req, alloc, comment, elapsed = parts
        if wd.rstrip("/") != workdir:
            continue
        m = _COMMENT_RE.match(comment)
        if not m:
            continue
        job = SlurmJob(
            jobid=jobid, rule=m["rule"], wildcards=m["wildcards"] or "", state=state.split()[0],
            workdir=wd, req_tres=_parse_tres(req), alloc_tres=_parse_tres(alloc), elapsed_s=int(elapsed or 0),
        )
        by_rule.setdefault(job.rule, []).append(job)
    return by_rule


def jobs_submitted_with_gpu(workdir: Path, env: dict, *, since: str = "now-1days") -> dict[str, list[SlurmJob]]:
    """Like jobs_submitted, keeping only jobs that requested at least one GPU."""
    with_gpu = {
        rule: [j for j in jobs if j.gpus > 0]
        for rule, jobs in jobs_submitted(workdir, env, since=since).items()
    }
    return {rule: jobs for rule, jobs in with_gpu.items() if jobs}


def plugin_log_rules(workdir: Path) -> set[str]:
    """Rules and group jobs with a per-job log of the Slurm plugin (.snakemake/slurm_logs/rule_<rule>/,
    group_<group job name>/), by the name sacct shows."""
    logdir = Path(workdir) / ".snakemake" / "slurm_logs"
    return {
        p.name.split("_", 1)[1]
        for p in [*logdir.glob("rule_*"), *logdir.glob("group_*")]
        if p.is_dir() and any(p.rglob("*.log"))
    }


def local_rules_in_log(snakemake_output: str) -> set[str]:
    """Rules Snakemake ran on the submitting node ("localrule <name>:" lines of its output)."""
    return set(re.findall(r"^localrule (\w+):", snakemake_output, flags=re.MULTILINE))


def write_summary(lines: list[str]) -> None:
    """Print a summary and append it to $PP_SLURM_SUMMARY (if set) for CI to show."""
    text = "\n".join(lines)
    print(text, flush=True)
    target = os.environ.get("PP_SLURM_SUMMARY")
    if target:
        with open(target, "a") as fh:
            fh.write(text + "\n")


def wait_for_accounting(workdir: Path, env: dict, rules: set[str], timeout: float = 30) -> dict[str, list[SlurmJob]]:
    """sacct view of `workdir` once every rule in `rules` has a finished record (slurmdbd may lag)."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = jobs_submitted(workdir, env)
        done = {r for r, js in jobs.items() if all(j.state not in {"PENDING", "RUNNING"} for j in js)}
        if rules <= done or time.monotonic() > deadline:
            return jobs
        time.sleep(1)
