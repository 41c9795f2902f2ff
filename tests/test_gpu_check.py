"""benchmarks/gpu_check.py in its --tiny --device cpu mode: the GPU check's code path on the tiny LLaVA,
so that the script cannot rot while no GPU runs it."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from projection_probe.io import read_json

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    assert load_script("gpu_check").main(["--tiny", "--device", "cpu", "--steps", "1", "--threads", "1",
                                          "--out-json", str(out)]) == 0
    result = read_json(out)
    assert result["device"] == "cpu" and result["dtype"] == "bfloat16"
    assert result["sizes"]["seq_tokens"] >= 96 and result["phases"]["classify"]["classes"] >= 5
    extract = result["phases"]["extract"]
    assert extract["images"] == 8 and extract["vision_cache_images_per_s"] > 0 and extract["post_dim"] == 64
    for mode in ("generate", "constrained", "likelihood"):
        assert result["phases"]["classify"][mode]["samples_per_s"] > 0
    assert result["phases"]["classify"]["constrained"]["valid_rate"] == 1.0
    for setting, batch in (("ft-proj", 4), ("ft-e2e", 2)):
        phase = result["phases"][setting]
        assert phase["per_device_batch"] == batch and phase["steps"] == 2
        assert phase["bf16_autocast"] and phase["gradient_checkpointing"] and phase["model_dtype"] == "float32"
        assert all(math.isfinite(x) for x in phase["losses"]) and 0 < phase["mfu"] < 1
    assert result["phases"]["ft-e2e"]["status"] == "ran"
    assert result["phases"]["ft-proj"]["trainable_parameters"] < result["phases"]["ft-e2e"]["trainable_parameters"]
    assert result["flops"]["e2e_per_sample"] == 8 * result["flops"]["llm_matmul_parameters"] * result["sizes"]["seq_tokens"]
    assert result["demo"]["status"] == "skipped (--tiny)"
