"""CLI: classify (the MLLM on the test split)."""
from __future__ import annotations

from projection_probe.cli import add_threads_option, set_threads
from projection_probe.hyperparams import ClassifyHyperparams, add_options, from_args
from projection_probe.names import MODES


def run_classify(args) -> None:
    import torch

    from projection_probe.data.prompts import read_classes_file
    from projection_probe.evaluate.classify import classify_records, test_records
    from projection_probe.features.cache import load_vision_cache
    from projection_probe.io import write_csv
    from projection_probe.models.loaders import load_facade

    set_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    facade = load_facade(args.model, device=args.device, dtype=dtype,
                         trust_remote_code=args.trust_remote_code).eval()
    _, classes = read_classes_file(args.classes)
    records = test_records(args.prompts)
    frame = classify_records(facade, records, load_vision_cache(args.vision_cache), classes, args.mode,
                             from_args(ClassifyHyperparams, args))
    write_csv(args.out, frame)


def register(subparsers) -> None:
    p = subparsers.add_parser("classify", help="the MLLM classifies the test split")
    p.add_argument("--model", required=True, help="model folder with facade.json")
    p.add_argument("--prompts", required=True, help="prompts_seed{seed}.jsonl")
    p.add_argument("--vision-cache", required=True)
    p.add_argument("--classes", required=True, help="classes.json")
    p.add_argument("--mode", choices=MODES, default="generate")
    add_options(p, ClassifyHyperparams)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    add_threads_option(p)
    p.add_argument("--trust-remote-code", action="store_true", default=False)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=run_classify)
