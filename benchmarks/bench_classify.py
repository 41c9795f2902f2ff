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

`--family F [F ...]` (or `all`) compares model families instead: tiny random models of equal size
(`testing/tiny_families.py`, one `TinySize`) of each family and of llava, loaded through the family
registry, time `score_labels` (likelihood) and `constrained_generate` on the same synthetic images,
prompts and labels, and print each family's seconds per image and its ratio to llava's (target:
likelihood within FAMILY_RATIO_TARGET×). No workflow folder is needed.
"""
from __future__ import annotations

import argparse
import logging
import statistics
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
# A family's seconds per image in likelihood mode, at most this many times LLaVA's on models of equal size.
FAMILY_RATIO_TARGET = 1.5
FAMILY_MODES = ("likelihood", "constrained")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model folder with facade.json (e.g. results/models/base)")
    p.add_argument("--prompts", help="prompts_seed{seed}.jsonl; its test records are used")
    p.add_argument("--vision-cache", help="the dataset's vision.safetensors")
    p.add_argument("--classes", help="classes.json")
    p.add_argument("--family", nargs="+", metavar="FAMILY",
                   help="compare these model families (or `all`) with llava on tiny models of equal size, "
                        "instead of the four modes on one workflow model")
    p.add_argument("--lm-width", type=int, default=256, help="--family: the LM width of every tiny model")
    p.add_argument("--lm-layers", type=int, default=4, help="--family: the LM depth of every tiny model")
    p.add_argument("--image-tokens", type=int, default=16,
                   help="--family: H_v tokens per image (a square), where the family allows")
    p.add_argument("--n-classes", type=int, default=10, help="--family: labels per prompt")
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
    args = p.parse_args(argv)
    if args.family is None:
        missing = [f"--{k.replace('_', '-')}" for k in ("model", "prompts", "vision_cache", "classes")
                   if getattr(args, k) is None]
        if missing:
            p.error(f"{', '.join(missing)} required (or --family)")
    return args


def agreement(frame, free) -> tuple[float | None, int]:
    """Fraction of images where `frame` parsed the same class as free generation, over the images
    where free generation is valid; None when it is valid on none (e.g. an untrained model)."""
    valid = free["valid"].to_numpy()
    n = int(valid.sum())
    if n == 0:
        return None, 0
    same = (frame["parsed"].to_numpy() == free["parsed"].to_numpy()) & valid
    return float(same.sum()) / n, n


def synthetic_images(n: int, seed: int):
    """`n` random RGB images of differing sizes (every family resizes them to its own side)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (48, 40 + 4 * (i % 5), 3), dtype=np.uint8)) for i in range(n)]


def family_modes(facade, images, prompts: list[str], labels: list[str], batch_size: int):
    """{mode: a function that classifies every image once in that mode, prompts tokenized per batch as
    classify does}, on X_v computed once up front (classification reads X_v from its cache, so the
    tower is not timed)."""
    import torch

    with torch.inference_mode():
        x_v = facade.encode_images(facade.vision.preprocess_images(images, "pad"))

    def run(mode):
        for start in range(0, len(prompts), batch_size):
            inputs = facade.build_inputs(prompts[start:start + batch_size])
            if mode == "likelihood":
                facade.score_labels(inputs, x_v[start:start + batch_size], labels)
            else:
                facade.constrained_generate(inputs, x_v[start:start + batch_size], labels)

    return {mode: (lambda m=mode: run(m)) for mode in FAMILY_MODES}


def compare_families(args, info: dict) -> int:
    """`--family`: seconds per image of each family against llava's, on tiny models of equal size."""
    import dataclasses
    import tempfile

    from projection_probe.data.prompts import format_human_turn
    from projection_probe.models.registry import load_family
    from projection_probe.testing.tiny_families import FAMILIES, TinySize, make_tiny_family

    families = list(FAMILIES) if args.family == ["all"] else list(dict.fromkeys(args.family))
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"--family {' '.join(unknown)}: no tiny model; families: {', '.join(FAMILIES)} or all")
    families = ["llava"] + [f for f in families if f != "llava"]
    size = TinySize(lm_width=args.lm_width, lm_layers=args.lm_layers, image_tokens=args.image_tokens)
    labels = [f"class {chr(ord('a') + i % 26)}{i // 26 or ''}" for i in range(args.n_classes)]
    prompts = [format_human_turn("textures", labels[i % len(labels):] + labels[:i % len(labels)])
               for i in range(args.n_images)]
    images = synthetic_images(args.n_images, args.seed)
    runs, shapes = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-families-") as root:
        for family in families:
            make_tiny_family(family, Path(root) / family, seed=args.seed, size=size)
            facade = load_family(Path(root) / family).eval()
            runs[family] = family_modes(facade, images, prompts, labels, args.batch_size)
            lm = facade.language_model.config
            shapes[family] = {"image_tokens": facade.num_image_tokens,
                              "prompt_tokens": len(facade.prompt_token_ids(prompts[0])[0]),
                              "lm_width": lm.hidden_size, "lm_layers": lm.num_hidden_layers,
                              "vocab": facade.language_model.get_input_embeddings().num_embeddings}
    for family_runs in runs.values():  # warm-up, untimed
        for run in family_runs.values():
            run()
    # Paired runs: each family right after a llava run, and its ratio taken to that run, so that the
    # load changes of a shared machine (minutes long) cancel; the median over repeats is reported.
    times = {family: {mode: [] for mode in FAMILY_MODES} for family in families}
    ratios = {family: {mode: [] for mode in FAMILY_MODES} for family in families}
    for _ in range(max(1, args.repeats)):
        for family in families:
            for mode in FAMILY_MODES:
                reference = timed(runs["llava"][mode])[1]
                seconds = timed(runs[family][mode])[1]
                times["llava"][mode].append(reference)
                times[family][mode].append(seconds)
                ratios[family][mode].append(seconds / reference)
    results, rows = {}, []
    for family in families:
        per_image = {m: statistics.median(times[family][m]) / len(images) for m in FAMILY_MODES}
        ratio = {m: statistics.median(ratios[family][m]) for m in FAMILY_MODES}
        verdict = "PASS" if ratio["likelihood"] <= FAMILY_RATIO_TARGET else "FAIL"
        results[family] = {**shapes[family], "seconds_per_image": per_image, "ratio_to_llava": ratio,
                           "seconds_all": times[family], "likelihood_within_target": verdict}
        rows.append([family, shapes[family]["image_tokens"], shapes[family]["prompt_tokens"],
                     per_image["likelihood"], f"×{ratio['likelihood']:.2f}", verdict,
                     per_image["constrained"], f"×{ratio['constrained']:.2f}"])
        print(f"{family:16s} likelihood {per_image['likelihood'] * 1e3:8.2f} ms/image ×{ratio['likelihood']:5.2f}  "
              f"constrained {per_image['constrained'] * 1e3:8.2f} ms/image ×{ratio['constrained']:5.2f}  {verdict}",
              flush=True)
    notes = [f"tiny random models: LM width {size.lm_width}, {size.lm_layers} layers, heads of 16 dimensions, "
             f"the tiny BPE vocabulary plus each family's image tokens; {size.image_tokens} image tokens per "
             "image where the family allows (LLaVA-NeXT/OneVision: anyres tiles and newline tokens give more)",
             f"{len(images)} synthetic images, batch {args.batch_size}, {len(labels)} labels; X_v computed once "
             f"before timing (classification reads the X_v cache); {args.repeats} repeats, each family's run "
             "right after a llava run: s/image is the median run, the ratio the median of the paired ratios",
             f"target: likelihood seconds per image ≤ {FAMILY_RATIO_TARGET:g}× llava's"]
    summary = {"benchmark": "classify_families", "machine": info, "size": dataclasses.asdict(size),
               "n_images": len(images), "n_classes": len(labels), "batch_size": args.batch_size,
               "repeats": args.repeats, "results": results, "notes": notes}
    write_json(args.out_json, summary)
    if args.markdown:
        table = markdown_table(["family", "image tokens", "prompt tokens", "likelihood s/image", "vs llava",
                                f"≤ {FAMILY_RATIO_TARGET:g}× llava", "constrained s/image", "vs llava"], rows)
        write_markdown(args.markdown, f"Classification speed per model family ({len(images)} images, "
                       f"{len(labels)} classes)", info, table, notes)
    failed = any(r["likelihood_within_target"] == "FAIL" for r in results.values())
    return 1 if (failed and args.strict) else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_progress_bars()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    threads = set_threads(args.threads)
    if args.family is not None:
        return compare_families(args, machine_info(threads))

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
