"""CLI: classify (the MLLM on the test split)."""
from __future__ import annotations

from projection_probe.cli import add_threads_option, set_threads

MODES = ("generate", "constrained", "likelihood")
# Duplicated from evaluate.parse so that building the CLI imports nothing heavy; a test keeps them equal.
PARSERS = ("substring", "exact")
SEVERAL_CLASSES = ("invalid", "first")


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
    # Unset: classify_records' own default (LABEL_CHUNK_SIZE), so that the default lives in one place.
    chunking = {} if args.label_chunk_size is None else {"label_chunk_size": args.label_chunk_size}
    frame = classify_records(facade, records, load_vision_cache(args.vision_cache), classes, mode=args.mode,
                             batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                             stop_at_newline=args.stop_at_newline, temperature=args.temperature, seed=args.seed,
                             parser=args.parser, several_classes=args.several_classes, **chunking)
    write_csv(args.out, frame)


def register(subparsers) -> None:
    p = subparsers.add_parser("classify", help="the MLLM classifies the test split")
    p.add_argument("--model", required=True, help="model folder with facade.json")
    p.add_argument("--prompts", required=True, help="prompts_seed{seed}.jsonl")
    p.add_argument("--vision-cache", required=True)
    p.add_argument("--classes", required=True, help="classes.json")
    p.add_argument("--mode", choices=MODES, default="generate")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="generate mode: default the longest class's answer tokens (EOS included) + 4")
    p.add_argument("--stop-at-newline", action="store_true", default=True)
    p.add_argument("--no-stop-at-newline", dest="stop_at_newline", action="store_false")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); the authors used 0.2")
    p.add_argument("--parser", choices=PARSERS, default="substring",
                   help="generate mode: substring = the documented parser (default); exact = no parser, the "
                        "answer must equal a class string (the authors)")
    p.add_argument("--several-classes", choices=SEVERAL_CLASSES, default="invalid",
                   help="substring parser: an answer that names several classes is invalid (default), or reads "
                        "as the class named first")
    p.add_argument("--label-chunk-size", type=int, default=None,
                   help="likelihood mode: (image, class) continuations per forward pass; bounds memory, never "
                        "changes scores (default: LABEL_CHUNK_SIZE in evaluate/classify.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    add_threads_option(p)
    p.add_argument("--trust-remote-code", action="store_true", default=False)
    p.add_argument("--out", required=True)
    p.set_defaults(handler=run_classify)
