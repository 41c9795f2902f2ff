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


def assert_mfu(phase: dict, key: str, peaks: dict) -> None:
    """What holds on every CPU: the work's dtype is recorded, its peak was measured, the MFU is positive,
    and it stays below 1 where the denominator is the peak of the dtype the work ran in. (An AVX2-only
    CPU runs bf16 at about 1% of fp32: against a bf16 peak, float32 work would give an MFU far above 1.)"""
    assert phase["work_dtype"] in ("float32", "bfloat16") and phase["mfu_denominator_dtype"] in peaks
    assert peaks[phase["mfu_denominator_dtype"]] > 0 and phase[key] > 0
    if phase["work_dtype"] == phase["mfu_denominator_dtype"]:
        assert phase[key] < 1


def test_gpu_check_tiny_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    assert load_script("gpu_check").main(["--tiny", "--device", "cpu", "--steps", "1", "--threads", "1",
                                          "--out-json", str(out)]) == 0
    result = read_json(out)
    peaks = result["measured_matmul_tflops"]
    assert result["device"] == "cpu" and result["dtype"] == "bfloat16"
    assert result["sizes"]["seq_tokens"] >= 96 and result["phases"]["classify"]["classes"] >= 5
    extract = result["phases"]["extract"]
    assert extract["images"] == 8 and extract["vision_cache_images_per_s"] > 0 and extract["post_dim"] == 64
    # bf16 weights: inference computes in bf16 on every CPU.
    assert extract["work_dtype"] == "bfloat16"
    assert_mfu(extract, "vision_mfu", peaks)
    for mode in ("generate", "constrained", "likelihood"):
        assert result["phases"]["classify"][mode]["samples_per_s"] > 0
        assert_mfu(result["phases"]["classify"][mode], "prefill_mfu", peaks)
    assert result["phases"]["classify"]["constrained"]["valid_rate"] == 1.0
    for setting, batch in (("ft-proj", 4), ("ft-e2e", 2)):
        phase = result["phases"][setting]
        assert phase["per_device_batch"] == batch and phase["steps"] == 2
        assert phase["bf16_autocast"] and phase["gradient_checkpointing"] and phase["model_dtype"] == "float32"
        assert all(math.isfinite(x) for x in phase["losses"])
        assert_mfu(phase, "mfu", peaks)
    assert result["phases"]["ft-e2e"]["status"] == "ran"
    assert result["phases"]["ft-proj"]["trainable_parameters"] < result["phases"]["ft-e2e"]["trainable_parameters"]
    flops = result["flops"]
    assert flops["e2e_per_sample"] == 8 * flops["llm_matmul_parameters"] * result["sizes"]["seq_tokens"]
    assert result["demo"]["status"] == "skipped (--tiny)"


def test_mfu_is_null_where_the_measured_peak_is_zero_or_not_finite(capsys):
    peaks = load_script("gpu_check").MatmulPeaks("cpu")
    peaks.tflops.update(bfloat16=0.0, float32=float("nan"), float16=2.0)
    assert peaks.mfu(1e12, 1.0, "bfloat16", "ft-proj") is None
    assert peaks.mfu(1e12, 1.0, "float32", "extract") is None
    assert peaks.mfu(1e12, 1.0, "float16", "classify") == 0.5
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and "ft-proj: measured bfloat16 matmul peak is 0.0" in lines[0] and "null" in lines[0]
    assert "extract: measured float32 matmul peak is nan" in lines[1]


def test_the_work_dtype_is_what_the_linear_layers_computed_in():
    import torch

    gpu_check = load_script("gpu_check")
    layer = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with gpu_check.matmul_dtypes(layer) as seen:
        layer(torch.randn(3, 4))
    assert gpu_check.work_dtype(seen) == "float32"
    with gpu_check.matmul_dtypes(layer) as seen, torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.randn(3, 4))
    assert gpu_check.work_dtype(seen) == "bfloat16"
    layer(torch.randn(3, 4))  # the hooks are gone: nothing more is recorded
    assert seen == {"bfloat16"}


def test_benchmarks_take_device_and_dtype(tmp_path, monkeypatch):
    """bench_classify.py and bench_extract.py run on the device and in the dtype they are given, and
    record both (the GPU command of docs/benchmarks.md passes `--device cuda --dtype bfloat16`)."""
    import numpy as np
    from PIL import Image
    from test_train import LABELS, make_llava_base, write_training_inputs

    from projection_probe.io import write_json
    from projection_probe.models.loaders import load_facade

    base = make_llava_base(tmp_path)
    facade = load_facade(base)
    prompts, cache = write_training_inputs(tmp_path / "data", facade.num_image_tokens, facade.vision.hidden_size,
                                           n_train=2, n_test=2)
    monkeypatch.chdir(tmp_path / "data")  # image paths in the manifest are relative, as in the workflow
    rng = np.random.default_rng(0)
    Path("images").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (40, 32, 3), dtype=np.uint8)).save(f"images/img{i:03d}.png")
    write_json("classes.json", {"task": "textures", "classes": LABELS})
    device_args = ["--device", "cpu", "--dtype", "float32", "--threads", "1"]

    assert load_script("bench_classify").main(
        ["--model", str(base), "--prompts", str(prompts), "--vision-cache", str(cache), "--classes", "classes.json",
         "--n-images", "2", "--batch-size", "2", "--free-max-new-tokens", "2", "--generate-max-new-tokens", "2",
         "--out-json", "classify.json", *device_args]) == 0
    inputs = read_json("classify.json")["inputs"]
    assert (inputs["device"], inputs["dtype"], inputs["n_images"]) == ("cpu", "float32", 2)

    assert load_script("bench_extract").main(
        ["--model", str(base), "--manifest", "manifest.csv", "--n-images", "4", "--batch-size", "2", "--repeats", "1",
         "--out-json", "extract.json", *device_args]) == 0
    summary = read_json("extract.json")
    assert (summary["inputs"]["device"], summary["inputs"]["dtype"]) == ("cpu", "float32")
    assert summary["results"]["cached"]["images_per_s"] > 0


def test_auto_device_is_the_gpu_when_present(monkeypatch):
    """`models.<name>.device: auto` reaches every rule that takes the key; each resolves it the same way,
    probe training included (it used to pass "auto" to torch.device)."""
    import torch

    from projection_probe.models.loaders import resolve_device
    from projection_probe.probes.mlp import train_probe

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (resolve_device("auto"), resolve_device("cpu"), resolve_device("cuda:1")) == ("cuda", "cpu", "cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    x = torch.randn(40, 8)
    y = (x[:, 0] > 0).long()
    result = train_probe(x[:30], y[:30], x[30:], y[30:], hidden=[8], max_epochs=2, batch_size=8, device="auto")
    assert len(result.predictions) == 10


def test_gpu_check_sh_passes_its_arguments_on():
    import subprocess

    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "--tiny" in done.stdout and "LLaVA-1.5-7B" in done.stdout
