"""benchmarks/bench_classify.py --family: the per-family speed comparison runs end to end on tiny
models (its timings mean nothing at this size; docs/benchmarks.md has the real run), and the equal-size
tiny models it compares have one LM shape and one image-token count."""
from __future__ import annotations

import importlib.util
import json

import pytest

from projection_probe.models.registry import load_family
from projection_probe.testing.micro import REPO_ROOT
from projection_probe.testing.tiny_families import FAMILIES, TinySize, make_tiny_family

ANYRES = ("llava_next", "llava_onevision")  # tiles and newline tokens: more image tokens than asked


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_classify", REPO_ROOT / "benchmarks" / "bench_classify.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_family_mode_times_each_family_against_llava(tmp_path):
    out, markdown = tmp_path / "families.json", tmp_path / "families.md"
    assert load_bench().main(["--family", "qwen2_vl", "gemma3", "--n-images", "2", "--batch-size", "2",
                              "--n-classes", "3", "--lm-width", "64", "--lm-layers", "2", "--repeats", "1",
                              "--threads", "1", "--out-json", str(out), "--markdown", str(markdown)]) == 0
    summary = json.loads(out.read_text())
    results = summary["results"]
    assert list(results) == ["llava", "qwen2_vl", "gemma3"]  # llava first: the reference
    for family, row in results.items():
        assert row["image_tokens"] == 16 and (row["lm_width"], row["lm_layers"]) == (64, 2)
        # One timed run per repeat; llava runs once more before each family's run (the paired reference).
        runs = 1 + (len(results) if family == "llava" else 0)
        assert all(len(times) == runs and min(times) > 0 for times in row["seconds_all"].values())
        assert set(row["ratio_to_llava"]) == {"likelihood", "constrained"} and min(row["ratio_to_llava"].values()) > 0
        assert row["likelihood_within_target"] in ("PASS", "FAIL")
    table = markdown.read_text()
    assert "| family | image tokens |" in table and "| gemma3 | 16 |" in table


def test_family_mode_refuses_an_unknown_family_naming_the_known_ones(tmp_path):
    with pytest.raises(SystemExit, match="--family nope: no tiny model; families: llava, paligemma"):
        load_bench().main(["--family", "nope", "--out-json", str(tmp_path / "x.json")])


def test_equal_size_tiny_families_share_the_lm_shape_and_the_image_token_count(tmp_path):
    size = TinySize(lm_width=96, lm_layers=2, image_tokens=16)
    for family in FAMILIES:
        make_tiny_family(family, tmp_path / family, size=size)
        facade = load_family(tmp_path / family)
        lm = facade.language_model.config
        assert (lm.hidden_size, lm.num_hidden_layers) == (96, 2), family
        if family not in ANYRES:
            assert facade.num_image_tokens == 16, family
