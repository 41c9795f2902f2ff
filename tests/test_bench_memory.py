"""benchmarks/bench_memory.py --tiny: the memory benchmark runs end to end and its figures are in
range (their size means nothing at this scale; docs/benchmarks.md has the real run)."""
from __future__ import annotations

import importlib.util
import json

from projection_probe.testing.micro import REPO_ROOT


def test_bench_memory_tiny_runs_and_its_figures_are_in_range(tmp_path):
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
    # The cache holds its rows (X_v plus the pooled row, fp16) and a header far smaller than them.
    cache = summary["cache"]
    rows_bytes = cache["images"] * (cache["tokens"] + 1) * cache["width"] * 2
    assert rows_bytes < cache["file_bytes"] < 1.5 * rows_bytes
    assert summary["phases"]["build"]["file_bytes"] == cache["file_bytes"]
    # Peak RSS: at least a Python process with torch loaded, and no phase past the benchmark's limit.
    peaks = {name: phase["peak_rss_bytes"] for name, phase in summary["phases"].items()}
    assert all(50e6 < peak < bench.RSS_LIMIT_GB * 1e9 for peak in peaks.values()), peaks
    assert summary["cache_peak_rss_bytes"] == max(peaks[n] for n in ("build", "classify", "finetune"))
    assert summary["cache_peak_under_limit"]
    for name in ("score_unchunked", "score_chunked"):
        phase = summary["phases"][name]
        assert phase["prompt_tokens"] > 0 and 0 < phase["score_seconds"] <= phase["seconds"]
        assert phase["rss_after_load_bytes"] > 50e6
    # The report's table shows the JSON's figures.
    report = markdown.read_text()
    assert "Memory at scale" in report
    for name in ("build", "classify", "finetune"):
        assert f"| {name} | {peaks[name] / 1e9:.3f} |" in report
