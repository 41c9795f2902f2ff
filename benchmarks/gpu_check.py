#!/usr/bin/env python
"""GPU check: LLaVA-1.5-7B's exact shapes with random weights, through the project's own code.

Built offline from configs (CLIP ViT-L/14-336 + a Llama-7B config, `testing.tiny.llava_1_5_7b_configs`),
saved as a llava-hf folder and loaded with `load_facade`, in bf16. Then, with the batch sizes and
precision flags of config/paper.yaml:

  extract     random 336-px PNGs → `build_vision_cache` (decode, pad, vision tower) and
              `extract_pooled_features` (H_v pooled) at features.batch_size
  classify    one batch of classify.batch_size in each mode (`classify_records`: generate,
              constrained, likelihood), about --seq-tokens tokens per prompt
  ft-proj     a few optimizer steps of `train_facade` at the FT-Proj per-device batch, bf16 autocast,
              gradient checkpointing, model_dtype as in the paper config
  ft-e2e      the same for FT-E2E, only where it fits: float32 master weights (the paper's
              setting, about 16 bytes per parameter) if the free memory allows, else bf16 weights
              (`model_dtype: bfloat16`, 8 bytes), else skipped; the JSON says which
  demo        with a CUDA GPU and not --tiny: the CPU demo's workflow with config/longer_finetunes.yaml
              and config/gpu_demo.yaml (3 seeds, `models.<name>.device: auto`), its wall time

Reported per phase: seconds per step (median after one warm-up step), samples/s, peak GPU memory and
MFU: model FLOPs (docs/benchmarks.md, "FLOPs per sample") per second over the matmul peak measured in
the same process in the dtype the phase's matmuls ran in (recorded as `work_dtype`: on CPU, autocast may
leave them in float32, and an AVX2-only CPU runs bf16 at about 1% of fp32). `--tiny --device cpu` runs the
same code on the tiny LLaVA (the test suite does).

    python benchmarks/gpu_check.py --out-json gpu_check.json          # one GPU, under 8 minutes
    python benchmarks/gpu_check.py --tiny --device cpu --out-json /tmp/gpu_check_tiny.json
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, machine_info, quiet_progress_bars, set_threads, synchronize, write_json  # noqa: E402

PAPER_CONFIG = REPO_ROOT / "config" / "paper.yaml"
GIB = 2 ** 30
# The GPU demo: the CPU demo's config, the fine-tunes that learn, then 3 seeds and `models.<name>.device: auto`.
DEMO_CONFIGS = ("config.yaml", "longer_finetunes.yaml", "gpu_demo.yaml")
# --tiny: the same phases at sizes a CPU runs in seconds.
TINY_SIZES = dict(ft_proj_batch=4, ft_e2e_batch=2, classify_batch=4, feature_batch=4, seq_tokens=96)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the tiny random LLaVA instead of the 7B shapes")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="inference weights (the paper config's models.<name>.dtype: bfloat16)")
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per fine-tune, after one warm-up step")
    p.add_argument("--seq-tokens", type=int, help="tokens per training example and prompt (default 650; tiny 96)")
    p.add_argument("--ft-e2e", default="auto", choices=["auto", "float32", "bfloat16", "skip"],
                   help="FT-E2E weight dtype: auto = float32 master weights where they fit, else bfloat16, else skip")
    p.add_argument("--demo", default="auto", choices=["auto", "skip"],
                   help="auto: run the demo with config/gpu_demo.yaml when a CUDA GPU is used and not --tiny")
    p.add_argument("--demo-timeout", type=int, default=900, help="seconds before the demo run is stopped")
    p.add_argument("--demo-dir", help="the demo's working directory (default: a new temporary folder)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--work-dir", help="where the random model and images go (default: a temporary folder, deleted)")
    p.add_argument("--out-json", required=True)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- measurement
def reset_peak(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float | None:
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return None


def free_gib(device) -> float | None:
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.mem_get_info(torch.device(device))[0] / GIB
    return None


def timed(fn, device):
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def measured_matmul_tflops(device, dtype) -> float:
    """The dense matmul rate of this device in `dtype`: the MFU denominator (the measured peak, not the
    datasheet, as performance-anchors asks). It is the best rate over square sizes and over both
    layouts, `a @ b` and a Linear layer's `x @ w.T`: AVX2-only CPUs have no bf16 hardware, run bf16 at
    about 1% of fp32, and there the Linear layout is about 5-10x faster than `a @ b` (measured), so a
    peak from `a @ b` alone sat below the rate the model's layers reached."""
    import torch
    import torch.nn.functional as F

    def seconds_per_product(product) -> float:
        _, first = timed(product, device)  # warm-up: kernel choice, allocator
        repeats = max(3, min(200, int(0.2 / max(first, 1e-6))))  # about 0.2 s of work
        _, seconds = timed(lambda: [product() for _ in range(repeats)], device)
        return seconds / repeats

    on_cuda = torch.device(device).type == "cuda"
    sizes = (2048, 4096, 8192) if on_cuda else (64, 128, 256, 512, 1024, 2048)
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        seconds = [seconds_per_product(lambda a=a, b=b: a @ b), seconds_per_product(lambda a=a, b=b: F.linear(a, b))]
        best = max(best, 2 * size ** 3 / min(seconds) / 1e12)
        if max(seconds) > 1.0:  # larger sizes would take minutes (bf16 without hardware support)
            break
    return best


class MatmulPeaks:
    """The measured peak per dtype, each measured once, on first use: the denominator of every MFU is
    the peak of the dtype its phase computed in."""

    def __init__(self, device):
        self.device = device
        self.tflops: dict[str, float] = {}

    def __call__(self, dtype_name: str) -> float:
        import torch

        if dtype_name not in self.tflops:
            self.tflops[dtype_name] = measured_matmul_tflops(self.device, getattr(torch, dtype_name))
        return self.tflops[dtype_name]

    def mfu(self, flop: float, seconds: float, dtype_name: str, phase: str) -> float | None:
        """Model FLOPs per second over the peak in `dtype_name`; None, said in one line, where that peak
        is zero or not finite (a broken measurement must not become a huge or infinite MFU)."""
        peak = self(dtype_name)
        if not math.isfinite(peak) or peak <= 0:
            print(f"{phase}: measured {dtype_name} matmul peak is {peak!r} TFLOP/s; MFU not computed (null)",
                  flush=True)
            return None
        return flop / seconds / 1e12 / peak


@contextlib.contextmanager
def matmul_dtypes(module):
    """Records the output dtypes of `module`'s Linear layers while the block runs: the dtype the work
    actually ran in (on CPU, autocast may leave ops in float32), whatever the weights or flags say."""
    import torch

    seen: set[str] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(str(out.dtype).removeprefix("torch.")))
             for m in module.modules() if isinstance(m, torch.nn.Linear)]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def work_dtype(seen: set[str]) -> str:
    """The one dtype a phase's matmuls ran in; the widest where they were mixed (the slower bound)."""
    if not seen:
        raise RuntimeError("no Linear layer ran: cannot tell the dtype of the work")
    for name in ("float32", "float16", "bfloat16"):
        if name in seen:
            return name
    return sorted(seen)[0]


def llm_matmul_parameters(facade) -> int:
    """Parameters of the LLM's decoder layers: the weights every token multiplies (the input embedding
    is a lookup and the output head runs only at a few positions)."""
    lm = facade.language_model
    embed, head = lm.get_input_embeddings(), lm.get_output_embeddings()
    skip = {id(p) for m in (embed, head) if m is not None for p in m.parameters()}
    return sum(p.numel() for p in lm.parameters() if id(p) not in skip)


# ---------------------------------------------------------------------------- inputs
def paper_config() -> dict:
    import yaml

    return yaml.safe_load(PAPER_CONFIG.read_text())


def write_random_images(folder: Path, n: int, size: int, seed: int = 0) -> list[str]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:04d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def classes_for_length(facade, config: dict, target_tokens: int, min_classes: int = 5) -> tuple[str, list[str]]:
    """(task, classes): the paper's class names, added until prompt + answer reach `target_tokens`
    tokens with this tokenizer (about 650 for LLaVA-1.5's prompts), and at least `min_classes` of them
    so that constrained decoding and likelihood ranking have a choice to make."""
    from projection_probe.data.prompts import format_human_turn

    datasets = config["datasets"]
    task = next(iter(datasets.values()))["task"]
    pool = [c for d in datasets.values() for c in d["classes"]]
    classes = []
    for name in pool:
        if name in classes:
            continue
        classes.append(name)
        prompt_ids, _ = facade.prompt_token_ids(format_human_turn(task, classes))
        if len(classes) >= min_classes and len(prompt_ids) + len(facade.answer_token_ids(classes[0])) >= target_tokens:
            break
    return task, classes


def write_prompts_file(path: Path, image_paths: list[str], classes: list[str], task: str, n: int, split: str,
                       seed: int = 0) -> None:
    from projection_probe.data.manifest import ManifestRow
    from projection_probe.data.prompts import write_prompts

    rows = [ManifestRow(image_paths[i % len(image_paths)], classes[i % len(classes)], split) for i in range(n)]
    write_prompts(rows, classes, task, seed, output_cue=False, path=path)


# ---------------------------------------------------------------------------- phases
def phase_extract(facade, image_paths, feature_batch, num_workers, device, work, flops, peaks):
    from projection_probe.features.cache import build_vision_cache, load_vision_cache
    from projection_probe.features.extract import extract_pooled_features

    cache_file = work / "vision.safetensors"
    mode = facade.image_preprocessing
    # Warm-up: one batch, untimed (kernels, allocator).
    build_vision_cache(facade.vision, image_paths[:feature_batch], work / "warmup.safetensors", mode,
                       batch_size=feature_batch, device=device)
    reset_peak(device)
    with matmul_dtypes(facade.vision) as seen:
        _, vision_s = timed(lambda: build_vision_cache(facade.vision, image_paths, cache_file, mode,
                                                       batch_size=feature_batch, num_workers=num_workers,
                                                       device=device), device)
    dtype = work_dtype(seen)
    cache = load_vision_cache(cache_file)
    labels = [0] * len(image_paths)
    extract_pooled_features(facade, cache, image_paths[:feature_batch], labels[:feature_batch], feature_batch)
    out, project_s = timed(lambda: extract_pooled_features(facade, cache, image_paths, labels, feature_batch), device)
    n = len(image_paths)
    return cache, {
        "batch_size": feature_batch, "images": n, "num_workers": num_workers,
        "vision_cache_seconds": vision_s, "vision_cache_images_per_s": n / vision_s,
        "work_dtype": dtype, "mfu_denominator_dtype": dtype,
        "vision_mfu": peaks.mfu(flops["vision_per_image"] * n, vision_s, dtype, "extract"),
        "pooled_features_seconds": project_s, "pooled_features_images_per_s": n / project_s,
        "post_dim": int(out["post"].shape[1]), "peak_gpu_gib": peak_gib(device),
        "notes": "vision cache = PNG decode, pad, CLIP processor, vision tower, fp16 to host; pooled features = "
                 "projector on the cached X_v and mean over patches (the extract_features rule)"}


def phase_classify(facade, records, cache, classes, batch, configured_max_new_tokens, device, flops, peaks,
                   seq_tokens):
    from projection_probe.evaluate.classify import MODES, classify_records, resolve_max_new_tokens

    # `auto` (the paper config): the longest class plus a margin, as the classify command derives it.
    configured = None if configured_max_new_tokens in (None, "auto") else int(configured_max_new_tokens)
    max_new_tokens = resolve_max_new_tokens(facade, classes, configured)
    results = {}
    for mode in MODES:
        classify_records(facade, records[:2], cache, classes, mode=mode, batch_size=2, max_new_tokens=max_new_tokens)
        reset_peak(device)
        with matmul_dtypes(facade.language_model) as seen:
            frame, seconds = timed(lambda mode=mode: classify_records(
                facade, records[:batch], cache, classes, mode=mode, batch_size=batch, max_new_tokens=max_new_tokens),
                device)
        dtype = work_dtype(seen)
        results[mode] = {"batch_size": batch, "seconds": seconds, "samples_per_s": batch / seconds,
                         "work_dtype": dtype, "mfu_denominator_dtype": dtype,
                         "prefill_mfu": peaks.mfu(flops["prefill_per_sample"] * batch, seconds, dtype,
                                                  f"classify {mode}"),
                         "valid_rate": float(frame["valid"].mean()), "peak_gpu_gib": peak_gib(device)}
    return {"classes": len(classes), "prompt_tokens": seq_tokens, "max_new_tokens": max_new_tokens,
            "notes": "MFU counts the prompt prefill only (2·N·T per sample), a lower bound: decoding and the "
                     "label continuations are left out", **results}


def phase_train(facade, setting, model_dtype, hp, prompts_file, cache, steps, device, work, flops, peaks,
                finetune_cfg):
    import torch
    from transformers import TrainerCallback

    from projection_probe.hyperparams import FinetuneHyperparams
    from projection_probe.train.data import CachedFeatureDataset, read_train_examples
    from projection_probe.train.finetune import count_parameters, prepare_for_training, train_facade

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            synchronize(device)
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            self.seconds.append(time.perf_counter() - self.start)

    batch = hp["per_device_batch"]
    # One GPU, no accumulation: each optimizer step is one per-device batch, the unit of the paper's runs.
    training = FinetuneHyperparams(lr=hp["lr"], effective_batch=batch, per_device_batch=batch, epochs=1,
                                   warmup_ratio=0.0, seed=0, bf16=finetune_cfg["bf16"],
                                   gradient_checkpointing=finetune_cfg["gradient_checkpointing"],
                                   checkpoint_every_steps=None, model_dtype=model_dtype,
                                   **({"optim": finetune_cfg["optim"]} if "optim" in finetune_cfg else {}))
    prepare_for_training(facade, setting, training)
    examples = read_train_examples(prompts_file)[:(steps + 1) * batch]
    dataset = CachedFeatureDataset(examples, cache)
    timer = StepTimer()
    reset_peak(device)
    with matmul_dtypes(facade.language_model) as seen:
        trainer, log = train_facade(facade, dataset, work / f"{setting}.work", training, callbacks=[timer])
    dtype = work_dtype(seen)
    peak = peak_gib(device)
    trainable = count_parameters(facade)
    del trainer
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    timed_steps = timer.seconds[1:] or timer.seconds
    per_step = statistics.median(timed_steps)
    per_sample = flops["e2e_per_sample" if setting == "ft-e2e" else "proj_per_sample"]
    losses = [s["loss"] for s in log["steps"]]
    return {"per_device_batch": batch, "seq_tokens": flops["seq_tokens"], "model_dtype": model_dtype,
            "bf16_autocast": finetune_cfg["bf16"], "gradient_checkpointing": finetune_cfg["gradient_checkpointing"],
            "trainable_parameters": trainable, "steps": len(timer.seconds), "step_seconds": timer.seconds,
            "seconds_per_step": per_step, "samples_per_s": batch / per_step,
            "work_dtype": dtype, "mfu_denominator_dtype": dtype,
            "mfu": peaks.mfu(per_sample * batch, per_step, dtype, setting), "peak_gpu_gib": peak,
            "losses": losses}


def e2e_dtype(choice: str, facade, device, batch: int, seq_tokens: int) -> tuple[str | None, str]:
    """FT-E2E's weight dtype where it fits in the device memory, and why."""
    import torch

    if choice == "skip":
        return None, "skipped (--ft-e2e skip)"
    if choice != "auto":
        return choice, f"--ft-e2e {choice}"
    if torch.device(device).type != "cuda":
        return "float32", "CPU: float32 master weights, as the paper config"
    lm = facade.language_model
    params = sum(p.numel() for p in lm.parameters())
    held = sum(p.numel() * p.element_size() for p in facade.parameters())
    available = free_gib(device) + held / GIB
    config = lm.config
    # Checkpointed layer inputs (fp32 under autocast) plus one layer's recomputed working set in bf16.
    activations = batch * seq_tokens * config.hidden_size * (4 * config.num_hidden_layers + 2 * 34) / GIB
    for dtype, bytes_per_param in (("float32", 16), ("bfloat16", 8)):  # weights + grads + AdamW's two moments
        need = params * bytes_per_param / GIB + activations + 4  # + 4 GiB for the allocator and workspace
        if need <= available * 0.95:
            return dtype, f"{dtype} weights: about {need:.0f} GiB needed, {available:.0f} GiB available"
    return None, f"skipped: even bf16 weights need about {params * 8 / GIB + activations + 4:.0f} GiB, " \
                 f"{available:.0f} GiB available"


def run_demo(timeout: int, demo_dir: str | None) -> dict:
    """The demo's workflow with the DEMO_CONFIGS in a fresh working directory; its wall time."""
    workdir = Path(demo_dir or tempfile.mkdtemp(prefix="gpu_demo_"))
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "resources").exists():
        (workdir / "resources").symlink_to(REPO_ROOT / "resources")
    snakemake = shutil.which("snakemake", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if snakemake is None:
        return {"status": "not run: snakemake not found"}
    command = [snakemake, "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir), "--profile",
               str(REPO_ROOT / "profiles" / "local"), "--configfile",
               *(str(REPO_ROOT / "config" / name) for name in DEMO_CONFIGS)]
    log_file = workdir / "gpu_demo.log"
    start = time.perf_counter()
    with open(log_file, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            rc = None
    wall = time.perf_counter() - start
    status = "finished" if rc == 0 else f"failed (rc {rc})" if rc is not None else f"stopped after {timeout} s"
    return {"status": status, "wall_seconds": wall, "command": " ".join(command), "workdir": str(workdir),
            "log": str(log_file)}


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_progress_bars()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    threads = set_threads(args.threads)

    import torch

    from projection_probe.data.prompts import format_human_turn
    from projection_probe.evaluate.classify import test_records
    from projection_probe.io import InputError
    from projection_probe.models.loaders import load_facade, resolve_device
    from projection_probe.models.spec import FacadeSpec
    from projection_probe.names import MODES
    from projection_probe.testing.tiny import (
        llava_1_5_7b_configs,
        make_random_llava,
        make_tiny_tokenizer,
        tiny_clip_vision_config,
        tiny_llama_config,
    )

    device = resolve_device(args.device)
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {args.device}: no CUDA GPU is visible to torch; use --tiny --device cpu")
    config = paper_config()
    settings, finetune_cfg = config["settings"], config["finetune"]
    sizes = dict(TINY_SIZES) if args.tiny else dict(
        ft_proj_batch=settings["ft-proj"]["per_device_batch"], ft_e2e_batch=settings["ft-e2e"]["per_device_batch"],
        classify_batch=config["classify"]["batch_size"], feature_batch=config["features"]["batch_size"],
        seq_tokens=650)
    seq_tokens = args.seq_tokens or sizes["seq_tokens"]
    dtype = getattr(torch, args.dtype)
    info = machine_info(threads)
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / GIB
    summary = {"benchmark": "gpu_check", "machine": info, "tiny": args.tiny, "device": device, "dtype": args.dtype,
               "sizes": {**sizes, "seq_tokens": seq_tokens}, "phases": {}}
    started = time.perf_counter()

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu_check_"))
    try:
        # Words of the prompts and class names become single tokens, about Llama's rate (no download).
        class_names = [c for d in config["datasets"].values() for c in d["classes"]]
        tokenizer = make_tiny_tokenizer(vocab_size=4000, extra_corpus=class_names)
        if args.tiny:
            vision_config = tiny_clip_vision_config()
            text_config = tiny_llama_config(len(tokenizer), tokenizer=tokenizer)
        else:
            vision_config, text_config = llava_1_5_7b_configs(tokenizer)
        built, build_s = timed(lambda: make_random_llava(work / "llava", vision_config, text_config, tokenizer,
                                                         dtype=dtype, device=device), device)
        del built  # 14 GB on the GPU for 7B; the check loads the saved folder, as the workflow does
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
        FacadeSpec(llava_hf=str(work / "llava"), template="v1").to_json(work / "base")
        facade, load_s = timed(lambda: load_facade(work / "base", device=device, dtype=dtype).eval(), device)
        n_lm = llm_matmul_parameters(facade)
        n_vision = sum(p.numel() for p in facade.vision.parameters())
        n_projector = sum(p.numel() for p in facade.projector.parameters())
        peaks = MatmulPeaks(device)
        num_patches = facade.num_image_tokens
        flops = {"seq_tokens": seq_tokens, "llm_matmul_parameters": n_lm,
                 "vision_parameters": n_vision, "projector_parameters": n_projector,
                 "prefill_per_sample": 2 * n_lm * seq_tokens,
                 "proj_per_sample": 6 * n_lm * seq_tokens, "e2e_per_sample": 8 * n_lm * seq_tokens,
                 "vision_per_image": 2 * n_vision * (num_patches + 1) + 2 * n_projector * num_patches}
        # Filled as the phases measure the peak of each dtype they compute in.
        summary.update(build_seconds=build_s, load_seconds=load_s, flops=flops, measured_matmul_tflops=peaks.tflops)
        print(f"model built in {build_s:.0f} s, loaded in {load_s:.0f} s; {n_lm / 1e9:.2f} B LLM matmul parameters",
              flush=True)

        # Extraction at the paper's feature batch size; its cache feeds classification and training.
        image_paths = write_random_images(work / "images", 2 * sizes["feature_batch"], vision_config.image_size)
        num_workers = config["features"]["num_workers"] if torch.device(device).type == "cuda" else 0
        cache, summary["phases"]["extract"] = phase_extract(facade, image_paths, sizes["feature_batch"], num_workers,
                                                            device, work, flops, peaks)
        print(f"extract: {summary['phases']['extract']['vision_cache_images_per_s']:.1f} images/s from pixels",
              flush=True)

        task, classes = classes_for_length(facade, config, seq_tokens)
        # The length reached, answer included: what the FLOP counts use.
        seq_tokens = len(facade.prompt_token_ids(format_human_turn(task, classes))[0]) + len(
            facade.answer_token_ids(classes[0]))
        flops["seq_tokens"] = summary["sizes"]["seq_tokens"] = seq_tokens
        flops.update(prefill_per_sample=2 * n_lm * seq_tokens, proj_per_sample=6 * n_lm * seq_tokens,
                     e2e_per_sample=8 * n_lm * seq_tokens)
        n_train = (args.steps + 1) * max(sizes["ft_proj_batch"], sizes["ft_e2e_batch"])
        write_prompts_file(work / "train.jsonl", image_paths, classes, task, n_train, "train")
        write_prompts_file(work / "test.jsonl", image_paths, classes, task, sizes["classify_batch"], "test")
        summary["phases"]["classify"] = phase_classify(
            facade, test_records(work / "test.jsonl"), cache, classes, sizes["classify_batch"],
            config["classify"].get("max_new_tokens"), device, flops, peaks, seq_tokens)
        for mode in MODES:
            print(f"classify {mode}: {summary['phases']['classify'][mode]['samples_per_s']:.2f} samples/s", flush=True)

        hp = {"lr": settings["ft-proj"]["lr"], "per_device_batch": sizes["ft_proj_batch"]}
        summary["phases"]["ft-proj"] = phase_train(facade, "ft-proj", finetune_cfg["model_dtype"], hp,
                                                   work / "train.jsonl", cache, args.steps, device, work, flops,
                                                   peaks, finetune_cfg)
        ft_proj = summary["phases"]["ft-proj"]
        mfu = "null" if ft_proj["mfu"] is None else f"{ft_proj['mfu']:.3f}"
        print(f"ft-proj: {ft_proj['seconds_per_step']:.2f} s/step, MFU {mfu} ({ft_proj['work_dtype']})", flush=True)

        e2e_batch = sizes["ft_e2e_batch"]
        chosen, reason = e2e_dtype(args.ft_e2e, facade, device, e2e_batch, seq_tokens)
        if chosen is None:
            summary["phases"]["ft-e2e"] = {"status": reason}
        else:
            hp = {"lr": settings["ft-e2e"]["lr"], "per_device_batch": e2e_batch}
            summary["phases"]["ft-e2e"] = {"status": "ran", "why_this_dtype": reason, **phase_train(
                facade, "ft-e2e", chosen, hp, work / "train.jsonl", cache, args.steps, device, work, flops,
                peaks, finetune_cfg)}
        print(f"ft-e2e: {reason}", flush=True)
        del facade, cache
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    summary["check_seconds"] = time.perf_counter() - started

    if args.demo == "auto" and not args.tiny and torch.device(device).type == "cuda":
        summary["demo"] = run_demo(args.demo_timeout, args.demo_dir)
    else:
        summary["demo"] = {"status": "skipped" + (" (--tiny)" if args.tiny else " (no CUDA device)"
                                                   if args.demo == "auto" else " (--demo skip)")}
    write_json(args.out_json, summary)
    print(f"gpu check: {summary['check_seconds']:.0f} s; demo: {summary['demo']['status']}; JSON: {args.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
