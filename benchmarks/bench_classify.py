#!/usr/bin/env python
"""Classification throughput: the authors' per-image free generation against the three batched modes.

One process, one model, the same N test images. Four runs of `classify_records`:

  free         batch 1, up to --free-max-new-tokens new tokens, no newline stop, then the parser:
               the authors' way (LLaVA's CLI, one image per process; they sampled 512 tokens at
               temperature 0.2, here greedy by default so that agreement is deterministic)
  generate     batched, max_new_tokens 8, stops at the first newline, then the parser
  constrained  batched, trie-constrained to the class strings
  likelihood   batched, one prefill per image + K label continuations on the reused KV cache

For each: images/s, the ratio to `free`, the invalid rate, and the agreement with `free` on the
images where `free` gave a valid class. The speed targets below are checked and printed as PASS/FAIL.

A fifth, reference row, `prefill only`, times the batched prompt prefill alone (last-position logits,
no decoding, no label continuations). Every mode has to read the whole prompt once per image, so
`free` seconds / `prefill only` seconds is the largest speed-up any batched mode can reach on this
machine with this prompt; it says whether a missed target is the code's fault or the hardware's.

Run it in the workflow's working directory: image paths in the prompts and the cache are relative
to it. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    machine_info,
    markdown_table,
    quiet_progress_bars,
    set_threads,
    synchronize,
    timed,
    write_json,
    write_markdown,
)

# Speed-up over per-image free generation that batched modes aim at, and the agreement they must keep.
SPEEDUP_TARGETS = {"likelihood": 20.0, "constrained": 20.0, "generate": 5.0}
AGREEMENT_TARGET = 0.95


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder with facade.json (e.g. results/models/base)")
    p.add_argument("--prompts", required=True, help="prompts_seed{seed}.jsonl; its test records are used")
    p.add_argument("--vision-cache", required=True, help="the dataset's vision.safetensors")
    p.add_argument("--classes", required=True, help="classes.json")
    p.add_argument("--n-images", type=int, default=50, help="first N test records (default 50)")
    p.add_argument("--batch-size", type=int, default=20, help="batch of the batched modes (demo config: 20)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (0 = torch's default)")
    p.add_argument("--free-max-new-tokens", type=int, default=64,
                   help="token budget of per-image free generation (the authors: 512)")
    p.add_argument("--free-temperature", type=float, default=0.0,
                   help="0 = greedy (default); the authors sampled at 0.2")
    p.add_argument("--generate-max-new-tokens", type=int, default=8)
    p.add_argument("--repeats", type=int, default=1,
                   help="timed runs per batched mode, median reported (free generation always runs once)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda when present)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model weights (the paper config: bfloat16 on a GPU)")
    p.add_argument("--out-json", required=True)
    p.add_argument("--markdown", help="also write a Markdown section (title, command, machine, table)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    return p.parse_args(argv)


def agreement(frame, free) -> tuple[float | None, int]:
    """Fraction of images where `frame` parsed the same class as free generation, over the images
    where free generation is valid; None when it is valid on none (e.g. an untrained model)."""
    valid = free["valid"].to_numpy()
    n = int(valid.sum())
    if n == 0:
        return None, 0
    same = (frame["parsed"].to_numpy() == free["parsed"].to_numpy()) & valid
    return float(same.sum()) / n, n


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_progress_bars()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    threads = set_threads(args.threads)

    import torch

    from projection_probe.data.prompts import read_classes_file
    from projection_probe.evaluate.classify import classify_records, test_records
    from projection_probe.features.cache import load_vision_cache
    from projection_probe.models.loaders import load_facade, resolve_device

    torch.manual_seed(args.seed)
    info = machine_info(threads)
    device = resolve_device(args.device)
    facade = load_facade(args.model, device=device, dtype=getattr(torch, args.dtype)).eval()
    _, classes = read_classes_file(args.classes)
    records = test_records(args.prompts)[:args.n_images]
    cache = load_vision_cache(args.vision_cache)
    prompt_tokens = len(facade.prompt_token_ids(records[0]["conversations"][0]["value"])[0])

    runs = {
        "free": dict(mode="generate", batch_size=1, max_new_tokens=args.free_max_new_tokens,
                     stop_at_newline=False, temperature=args.free_temperature),
        "generate": dict(mode="generate", batch_size=args.batch_size, max_new_tokens=args.generate_max_new_tokens,
                         stop_at_newline=True),
        "constrained": dict(mode="constrained", batch_size=args.batch_size),
        "likelihood": dict(mode="likelihood", batch_size=args.batch_size),
    }

    def classify(name, subset):
        return classify_records(facade, subset, cache, classes, seed=args.seed, **runs[name])

    # Warm-up: one batch of each run, untimed, so that lazy initialisation (allocator, kernels,
    # tokenizer caches) is not charged to whichever run comes first.
    for name, kw in runs.items():
        classify(name, records[:kw["batch_size"]])

    def prefill_only(subset):
        with torch.inference_mode():
            for start in range(0, len(subset), args.batch_size):
                batch = subset[start:start + args.batch_size]
                x_v = cache.select([r["image"] for r in batch]).float()
                facade._prefill(facade.build_inputs([r["conversations"][0]["value"] for r in batch]), x_v)
        synchronize(device)  # the other modes end on host-side results; the prefill alone does not

    prefill_only(records[:args.batch_size])

    frames, seconds, all_times = {}, {}, {}
    for name in runs:
        repeats = 1 if name == "free" else args.repeats
        frames[name], seconds[name], all_times[name] = timed(lambda n=name: classify(n, records), repeats)
        print(f"{name:12s} {len(records) / seconds[name]:8.2f} images/s  ({seconds[name]:.1f} s)", flush=True)

    _, prefill_seconds, prefill_all = timed(lambda: prefill_only(records), args.repeats)
    print(f"{'prefill only':12s} {len(records) / prefill_seconds:8.2f} images/s  ({prefill_seconds:.1f} s)", flush=True)

    n = len(records)
    ceiling = seconds["free"] / prefill_seconds
    free = frames["free"]
    results, checks = {}, {}
    for name, frame in frames.items():
        agree, n_agree = agreement(frame, free)
        results[name] = {
            **{k: v for k, v in runs[name].items()},
            "seconds": seconds[name],
            "seconds_all": all_times[name],
            "images_per_s": n / seconds[name],
            "speedup_vs_free": seconds["free"] / seconds[name],
            "invalid_rate": float(1.0 - frame["valid"].mean()),
            "agreement_with_free": agree,
            "agreement_n": n_agree,
        }
    for name, target in SPEEDUP_TARGETS.items():
        ok = results[name]["speedup_vs_free"] >= target
        checks[f"{name}_speedup_ge_{target:g}x"] = "PASS" if ok else "FAIL"
    for name in SPEEDUP_TARGETS:
        agree = results[name]["agreement_with_free"]
        # No valid free answer means nothing to compare against: not a pass, not a fail.
        checks[f"{name}_agreement_ge_{AGREEMENT_TARGET:g}"] = (
            "N/A" if agree is None else "PASS" if agree >= AGREEMENT_TARGET else "FAIL")

    summary = {
        "benchmark": "classify",
        "machine": info,
        "inputs": {"model": str(Path(args.model).resolve()), "prompts": args.prompts,
                   "vision_cache": args.vision_cache, "classes": args.classes, "n_images": n,
                   "n_classes": len(classes), "prompt_tokens": prompt_tokens,
                   "num_image_tokens": facade.num_image_tokens, "device": device, "dtype": args.dtype},
        "notes": [f"free generation: greedy up to {args.free_max_new_tokens} new tokens, temperature "
                  f"{args.free_temperature}; the authors generated up to 512 tokens at temperature 0.2, "
                  "one image per process",
                  "warm-up: one untimed batch of every run before timing"],
        "results": results,
        "prefill_only": {"batch_size": args.batch_size, "seconds": prefill_seconds, "seconds_all": prefill_all,
                         "images_per_s": n / prefill_seconds,
                         "max_speedup_vs_free": ceiling},
        "checks": checks,
    }
    write_json(args.out_json, summary)

    print()
    for name, r in results.items():
        agree = "n/a" if r["agreement_with_free"] is None else f"{r['agreement_with_free']:.3f}"
        print(f"{name:12s} ×{r['speedup_vs_free']:7.2f} vs free  invalid {r['invalid_rate']:.3f}  "
              f"agreement {agree} (n={r['agreement_n']})")
    print(f"{'prefill only':12s} ×{ceiling:7.2f} vs free  (the ceiling of any batched mode)")
    for check, verdict in checks.items():
        print(f"{verdict:4s} {check}")

    if args.markdown:
        rows = []
        for name, r in results.items():
            target = SPEEDUP_TARGETS.get(name)
            verdicts = [] if target is None else [checks[f"{name}_speedup_ge_{target:g}x"],
                                                  checks[f"{name}_agreement_ge_{AGREEMENT_TARGET:g}"]]
            rows.append([name, r["batch_size"], r.get("max_new_tokens", "—"), r["images_per_s"],
                         f"×{r['speedup_vs_free']:.1f}", r["invalid_rate"],
                         "—" if r["agreement_with_free"] is None else f"{r['agreement_with_free']:.3f}",
                         "—" if target is None else f"≥×{target:g}, agree ≥{AGREEMENT_TARGET:g}",
                         " / ".join(verdicts) or "—"])
        rows.append(["prefill only (ceiling)", args.batch_size, "0", n / prefill_seconds,
                     f"×{ceiling:.1f}", "—", "—", "—", "—"])
        table = markdown_table(["mode", "batch", "max new tokens", "images/s", "vs free", "invalid rate",
                                "agreement with free", "target", "speed / agreement"], rows)
        write_markdown(args.markdown, f"Classification throughput ({n} images, {len(classes)} classes, "
                       f"{prompt_tokens} prompt tokens)", info, table, summary["notes"])

    failed = any(v == "FAIL" for v in checks.values())
    return 1 if (failed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
