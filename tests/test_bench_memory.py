"""benchmarks/bench_memory.py --tiny: the memory benchmark still runs end to end (its numbers mean
nothing at this size; docs/benchmarks.md has the real run)."""
from __future__ import annotations

import importlib.util
import json

from projection_probe.testing.micro import REPO_ROOT


def test_bench_memory_tiny_runs_and_checks_its_reads(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_memory", REPO_ROOT / "benchmarks" / "bench_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "memory.json"
    markdown = tmp_path / "memory.md"
    work = tmp_path / "work"
    assert bench.main(["--tiny", "--work-dir", str(work), "--out-json", str(out), "--markdown", str(markdown)]) == 0
    summary = json.loads(out.read_text())
    assert set(summary["phases"]) == {"build", "classify", "finetune", "score_unchunked", "score_chunked",
                                      "prepare_hf"}
    assert summary["phases"]["prepare_hf"]["manifest_rows"] == 60
    assert summary["scores_identical"] and summary["cache"]["file_bytes"] > 300 * 8 * 16 * 2
    assert summary["phases"]["score_unchunked"]["chunk_size"] is None
    assert summary["phases"]["score_chunked"]["pairs"] == 47
    assert not (work / "vision.safetensors").exists()  # the cache is deleted afterwards
    assert "Memory at scale" in markdown.read_text()
