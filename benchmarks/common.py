"""Shared helpers of the CPU benchmarks: machine description, timing, JSON and Markdown output.

The benchmarks are scripts, not part of the package, so they import this module by file location
(`benchmarks/` is `sys.path[0]` when a script in it runs).
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def set_threads(threads: int) -> int:
    """Pin torch's intra-op pool before any model is built, so every timed section runs on the same
    number of cores. Returns the count torch actually uses."""
    import torch

    if threads and threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def cpu_model() -> str:
    # `platform.processor()` is empty on most Linux builds; /proc/cpuinfo names the part.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    """HEAD plus `-dirty` when tracked files differ, so a number can be traced to the code it ran."""
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "diff", "--quiet", "HEAD"]).returncode != 0
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info(threads: int) -> dict:
    import torch
    import transformers

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "cwd": os.getcwd(),
        "git": git_revision(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        # Other processes share the cores on a busy machine; the load average says how much.
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def synchronize(device) -> None:
    """Wait for the GPU's queued work, so that a timer read after it covers that work (CUDA runs
    asynchronously); nothing to do on a CPU."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int = 1):
    """(result of the last call, median seconds over `repeats` calls). The median rather than the
    mean because a shared CPU produces occasional long outliers."""
    times, result = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times), times


def quiet_progress_bars() -> None:
    # tqdm bars from the library would interleave with the benchmark's own lines; tqdm reads this
    # variable when each bar is created.
    os.environ.setdefault("TQDM_DISABLE", "1")


def write_json(path: str | Path, obj) -> None:
    from projection_probe.io import write_json as atomic_write_json

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, obj)


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_line(info: dict) -> str:
    return (f"{info['date']} · {info['cpu_model']} · {info['torch_threads']} torch threads "
            f"({info['cpu_count']} CPUs, load {info['load_average_1m']:.2f}) · torch {info['torch']} · "
            f"git {info['git']}")


def write_markdown(path: str | Path, title: str, info: dict, table: str, notes: list[str] = ()) -> None:
    text = [f"### {title}", "", f"Command: `{info['command']}`", "", f"Machine: {machine_line(info)}", "", table]
    text += [f"- {n}" for n in notes]
    from projection_probe.io import write_text

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "\n".join(text).rstrip() + "\n")
