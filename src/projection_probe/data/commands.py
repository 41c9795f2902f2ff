"""Data-stage subcommands: ``prepare-dataset`` and ``build-prompts``."""
from __future__ import annotations

import argparse
from pathlib import Path

from projection_probe.cli import parse_json_arg


def register(subparsers) -> None:
    from projection_probe.data.download import register_download_commands
    from projection_probe.data.manifest import BAD_IMAGE_POLICIES, CROSS_SPLIT_DUPLICATE_POLICIES

    register_download_commands(subparsers)
    p = subparsers.add_parser(
        "prepare-dataset",
        help="build manifest.csv, classes.json, bad_images.txt and warnings.txt for one dataset")
    p.add_argument("--dataset", required=True, help="dataset name (used in messages)")
    p.add_argument("--source-json", required=True, help="the dataset's `source:` config dict as JSON")
    p.add_argument("--classes-json", required=True,
                   help="the pinned class list as a JSON list of strings; null: the dataset's ClassLabel names")
    p.add_argument("--task", required=True, help="phrase completing 'categories relating to ...'")
    p.add_argument("--on-bad-image", choices=BAD_IMAGE_POLICIES, default="fail",
                   help="missing, empty or undecodable images: fail listing them all (default), or drop "
                        "them and list them in bad_images.txt")
    p.add_argument("--cross-split-duplicates", choices=CROSS_SPLIT_DUPLICATE_POLICIES, default="fail",
                   help="an image in both train and test (same file or same bytes): fail (default) or drop "
                        "its train copies")
    p.add_argument("--allow-train-only-classes", action=argparse.BooleanOptionalAction, default=True,
                   help="a class with train images but no test images is a warning (default) or an error")
    p.add_argument("--source-fingerprint", default=None,
                   help="the local dataset's fingerprint the workflow planned with; data that changed since is refused")
    p.add_argument("--out-dir", required=True, type=Path)
    p.set_defaults(handler=prepare_dataset_command)

    p = subparsers.add_parser("build-prompts", help="write the LLaVA-format prompts JSONL for one seed")
    p.add_argument("--manifest", required=True, type=Path)
    p.add_argument("--classes", required=True, type=Path, help="classes.json from prepare-dataset")
    p.add_argument("--seed", required=True, type=int)
    p.add_argument("--output-cue", action=argparse.BooleanOptionalAction, default=False,
                   help="append the authors' '\\n\\nOutput:' cue (the paper's text omits it)")
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(handler=build_prompts_command)


def prepare_dataset_command(args) -> int:
    from projection_probe.data.sources import prepare_dataset

    source_cfg = parse_json_arg("--source-json", args.source_json)
    classes = parse_json_arg("--classes-json", args.classes_json)
    prepare_dataset(dataset=args.dataset, source_cfg=source_cfg, classes=classes, task=args.task,
                    on_bad_image=args.on_bad_image, allow_train_only_classes=args.allow_train_only_classes,
                    out_dir=args.out_dir, cross_split_duplicates=args.cross_split_duplicates,
                    source_fingerprint=args.source_fingerprint)
    return 0


def build_prompts_command(args) -> int:
    import logging

    from projection_probe.data.manifest import read_manifest, validate_manifest
    from projection_probe.data.prompts import read_classes_file, write_prompts

    task, classes = read_classes_file(args.classes)
    rows = read_manifest(args.manifest)
    # Train-only classes were already judged by prepare-dataset; here only labels and paths matter.
    validate_manifest(rows, classes, args.manifest, allow_train_only_classes=True)
    n = write_prompts(rows, classes, task, args.seed, args.output_cue, args.out)
    logging.getLogger(__name__).info("wrote %d prompts to %s", n, args.out)
    return 0
