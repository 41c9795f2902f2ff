"""Subcommands for workflow/rules/baselines.smk: `random-baseline` and `encoder-zero-shot` (CLIP's own
zero-shot classification).

Nothing heavy is imported here; each handler imports its module when it runs.
"""
from __future__ import annotations

import argparse
import logging

from projection_probe.cli import add_threads_option, set_threads

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "This is a photo of {}."  # kept equal to zero_shot.DEFAULT_TEMPLATE (not imported: torch)


def run_random_baseline(args: argparse.Namespace) -> int:
    from projection_probe.baselines.random_baseline import random_predictions, read_classes_file, read_test_split
    from projection_probe.io import write_csv

    classes = read_classes_file(args.classes)
    test = read_test_split(args.manifest, classes)
    write_csv(args.out, random_predictions(test, classes, args.seed))
    log.info("random baseline (seed %d): %d predictions -> %s", args.seed, len(test), args.out)
    return 0


def candidate_classes(classes: list[str], test_labels, label_set: str) -> list[str]:
    """The classes CLIP's softmax runs over. ``pinned``: the dataset's whole class list; ``test``: only
    the classes that occur in the test split (in pinned order), as the authors' pipeline, which took
    the test set's unique labels."""
    if label_set == "pinned":
        return list(classes)
    if label_set == "test":
        present = set(test_labels)
        return [c for c in classes if c in present]
    raise ValueError(f"label_set={label_set!r}: use pinned or test")


def run_encoder_zero_shot(args: argparse.Namespace) -> int:
    from projection_probe.baselines.random_baseline import read_classes_file, read_test_split
    from projection_probe.baselines.zero_shot import clip_zero_shot_predictions
    from projection_probe.io import write_csv

    set_threads(args.threads)
    classes = read_classes_file(args.classes)
    test = read_test_split(args.manifest, classes)
    candidates = candidate_classes(classes, test["label"], args.label_set)
    frame, _ = clip_zero_shot_predictions(
        test, candidates, args.model,
        templates=args.template or [DEFAULT_TEMPLATE],
        lowercase_labels=args.lowercase_labels,
        image_preprocessing=args.image_preprocessing,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        dtype=args.dtype,
    )
    write_csv(args.out, frame)
    log.info("CLIP zero-shot: %d predictions -> %s", len(frame), args.out)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("random-baseline", help="uniform random predictions for the test split")
    p.add_argument("--manifest", required=True, help="manifest.csv (image_path,label,split)")
    p.add_argument("--classes", required=True, help='classes.json ({"task", "classes"})')
    p.add_argument("--seed", type=int, required=True, help="seed for numpy.random.default_rng")
    p.add_argument("--out", required=True, help="predictions CSV to write")
    p.set_defaults(handler=run_random_baseline)

    p = subparsers.add_parser("encoder-zero-shot",
                              help="the vision encoder's own (CLIP) zero-shot predictions for the test split")
    p.add_argument("--manifest", required=True, help="manifest.csv (image_path,label,split)")
    p.add_argument("--classes", required=True, help='classes.json ({"task", "classes"})')
    p.add_argument("--model", required=True, help="local folder of a saved CLIPModel and its tokenizer")
    p.add_argument("--template", action="append", default=None,
                   help=f"hypothesis template with one '{{}}'; repeat to ensemble (default {DEFAULT_TEMPLATE!r})")
    p.add_argument("--lowercase-labels", action=argparse.BooleanOptionalAction, default=True,
                   help="lowercase the labels in the text prompts (the authors' pipeline did)")
    p.add_argument("--image-preprocessing", choices=["square", "pad"], default="square",
                   help="square = resize + centre-crop (CLIP's processor); pad = LLaVA's expand2square first")
    p.add_argument("--label-set", choices=["pinned", "test"], default="pinned",
                   help="pinned = every class of the dataset (default); test = only the classes in the test "
                        "split (the authors)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for image decoding")
    p.add_argument("--device", default="auto", help="torch device, or auto (cuda when present)")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    add_threads_option(p)
    p.add_argument("--out", required=True, help="predictions CSV to write")
    p.set_defaults(handler=run_encoder_zero_shot)
