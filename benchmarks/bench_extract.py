#!/usr/bin/env python
"""Post-projection feature extraction: from pixels against from the cached X_v.

  pixels  decode + preprocess + vision tower (`build_vision_cache` into a temporary file), then the
          projector (`extract_pooled_features`): what every model would cost without the cache
  cached  load the X_v cache + projector only (`extract_pooled_features`): what the workflow's
          `extract_features` rule does for each setting and seed

Neither path loads the language model (`load_facade(..., with_language_model=False)`). Both run on
the same first N manifest rows; the cached path reads the cache that the pixels path has just
written, so the inputs are identical. Reports images/s of each and their ratio.

Run it in the workflow's working directory: manifest image paths are relative to it.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder with facade.json (e.g. results/models/base)")
    p.add_argument("--manifest", required=True, help="the dataset's manifest.csv")
    p.add_argument("--vision-json",
                   help='vision spec as in the workflow (e.g. \'{"kind": "efficientnet_lite0"}\'); '
                        "default: the model's own vision tower")
    p.add_argument("--n-images", type=int, default=200, help="first N manifest rows (default 200)")
    p.add_argument("--batch-size", type=int, default=64, help="as features.batch_size (demo: 64)")
    p.add_argument("--num-workers", type=int, default=0, help="image-decoding DataLoader workers (demo: 0)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (0 = torch's default)")
    p.add_argument("--repeats", type=int, default=5,
                   help="timed runs of the cached path, median reported (it takes milliseconds); "
                        "the pixels path runs --pixel-repeats times")
    p.add_argument("--pixel-repeats", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda when present)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="vision tower and projector weights (the paper config: bfloat16 on a GPU)")
    p.add_argument("--out-json", required=True)
    p.add_argument("--markdown", help="also write a Markdown section (title, command, machine, table)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_progress_bars()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    threads = set_threads(args.threads)

    import torch

    from projection_probe.data.images import load_rgb
    from projection_probe.data.manifest import read_manifest
    from projection_probe.features.cache import VisionCache, build_vision_cache, load_vision_cache
    from projection_probe.features.extract import extract_pooled_features
    from projection_probe.models.loaders import build_vision, load_facade, resolve_device

    info = machine_info(threads)
    device, dtype = resolve_device(args.device), getattr(torch, args.dtype)
    facade = load_facade(args.model, device=device, dtype=dtype, with_language_model=False).eval()
    assert facade.language_model is None  # the claim under test: extraction never loads the LLM
    vision = build_vision(json.loads(args.vision_json), dtype) if args.vision_json else facade.vision
    vision = vision.to(device).eval()
    rows = read_manifest(args.manifest)[:args.n_images]
    paths = [r.image_path for r in rows]
    labels = [0] * len(paths)  # labels only travel along; their values do not change the work
    mode = facade.image_preprocessing

    with tempfile.TemporaryDirectory(prefix="bench_extract_") as tmp:
        cache_file = Path(tmp) / "vision.safetensors"

        def from_pixels():
            build_vision_cache(vision, paths, cache_file, mode, batch_size=args.batch_size,
                               num_workers=args.num_workers, device=device)
            return extract_pooled_features(facade, load_vision_cache(cache_file), paths, labels,
                                           batch_size=args.batch_size)

        def from_cache():
            return extract_pooled_features(facade, load_vision_cache(cache_file), paths, labels,
                                           batch_size=args.batch_size)

        # Warm-up, untimed: one batch through the vision tower and the projector.
        with torch.inference_mode():
            pixels = vision.preprocess_images([load_rgb(p) for p in paths[:args.batch_size]], mode)
            facade.pooled_features(vision(pixels.to(device)))
        synchronize(device)

        _, pixel_s, pixel_all = timed(from_pixels, args.pixel_repeats)
        cached_out, cached_s, cached_all = timed(from_cache, args.repeats)
        # The projector alone, cache already in memory: the floor of the cached path.
        mapped = load_vision_cache(cache_file)
        cache = VisionCache(mapped.x_v[:], mapped.pooled[:], mapped.image_paths, mapped.image_preprocessing)
        _, project_s, project_all = timed(
            lambda: extract_pooled_features(facade, cache, paths, labels, batch_size=args.batch_size), args.repeats)

    n = len(paths)
    results = {
        "pixels": {"seconds": pixel_s, "seconds_all": pixel_all, "images_per_s": n / pixel_s},
        "cached": {"seconds": cached_s, "seconds_all": cached_all, "images_per_s": n / cached_s},
        "projector_only": {"seconds": project_s, "seconds_all": project_all, "images_per_s": n / project_s},
    }
    ratio = pixel_s / cached_s
    summary = {
        "benchmark": "extract",
        "machine": info,
        "inputs": {"model": str(Path(args.model).resolve()), "manifest": args.manifest, "n_images": n,
                   "batch_size": args.batch_size, "num_workers": args.num_workers, "image_preprocessing": mode,
                   "device": device, "dtype": args.dtype,
                   "num_patches": facade.num_image_tokens, "post_dim": int(cached_out["post"].shape[1])},
        "results": results,
        "speedup_cached_vs_pixels": ratio,
        "notes": ["pixels = build_vision_cache (decode, preprocess, vision tower, fp16 save) + load + projector; "
                  "cached = load the cache + projector; projector_only = cache already in memory",
                  "language model not loaded in either path"],
    }
    write_json(args.out_json, summary)
    for name, r in results.items():
        print(f"{name:15s} {r['images_per_s']:10.1f} images/s  ({r['seconds']:.3f} s)")
    print(f"cached is ×{ratio:.1f} faster than from pixels")

    if args.markdown:
        table = markdown_table(["path", "images/s", "seconds", "vs pixels"],
                               [[name, r["images_per_s"], r["seconds"], f"×{pixel_s / r['seconds']:.1f}"]
                                for name, r in results.items()])
        write_markdown(args.markdown, f"Feature extraction ({n} images, batch {args.batch_size})", info, table,
                       summary["notes"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
