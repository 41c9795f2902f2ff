"""CLI: extract-vision-features (X_v cache per dataset) and extract-features (pooled pre/post)."""
from __future__ import annotations

import argparse

from projection_probe.cli import add_threads_option, parse_json_arg, set_threads
from projection_probe.names import IMAGE_PREPROCESSINGS


def run_extract_vision(args) -> None:
    from projection_probe.data.manifest import read_manifest, verify_image_hashes
    from projection_probe.features.cache import build_vision_cache
    from projection_probe.models.loaders import build_vision, resolve_device

    set_threads(args.threads)
    rows = read_manifest(args.manifest)
    verify_image_hashes(rows, args.manifest)  # before the model loads: a stale manifest fails fast
    vision = build_vision(parse_json_arg("--vision-json", args.vision_json))
    build_vision_cache(vision, [r.image_path for r in rows], args.out, args.image_preprocessing,
                       batch_size=args.batch_size, num_workers=args.num_workers,
                       device=resolve_device(args.device), exif_transpose=args.exif_transpose)


def run_extract_features(args) -> None:
    from projection_probe.features.extract import extract_model_features

    set_threads(args.threads)
    extract_model_features(args.model, args.vision_cache, args.manifest, args.classes, args.out_dir,
                           device=args.device)


def register(subparsers) -> None:
    p = subparsers.add_parser("extract-vision-features", help="cache X_v for every image of a dataset")
    p.add_argument("--vision-json", required=True, help='vision spec, e.g. {"kind": "efficientnet_lite0"}')
    p.add_argument("--manifest", required=True)
    p.add_argument("--image-preprocessing", choices=IMAGE_PREPROCESSINGS, default="pad")
    p.add_argument("--exif-transpose", action=argparse.BooleanOptionalAction, default=False,
                   help="apply each image's EXIF orientation (default: off, as LLaVA reads images)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="cpu")
    add_threads_option(p)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=run_extract_vision)

    p = subparsers.add_parser("extract-features", help="pooled pre/post-projection vectors of one model")
    p.add_argument("--model", required=True, help="model folder with facade.json")
    p.add_argument("--vision-cache", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--classes", required=True, help="classes.json")
    p.add_argument("--device", default="cpu")
    add_threads_option(p)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(handler=run_extract_features)
