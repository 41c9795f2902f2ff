"""CLI: finetune (ft-proj / ft-e2e / ft-lora), align-projector (the demo's stage-1 base model) and
export-llava (any model folder → a LlavaForConditionalGeneration checkpoint).

The same subcommands run on several GPUs under `accelerate launch -m projection_probe.cli ...`; see
docs/training.md.
"""
from __future__ import annotations

from projection_probe.cli import add_threads_option, parse_json_arg, set_threads
from projection_probe.hyperparams import AlignHyperparams, FinetuneHyperparams, add_options, from_args
from projection_probe.names import FINETUNE_SETTINGS


def run_finetune(args) -> None:
    from projection_probe.train.finetune import finetune

    set_threads(args.threads)
    finetune(args.base_model, args.prompts, args.vision_cache, args.out_dir, args.setting,
             from_args(FinetuneHyperparams, args), trust_remote_code=args.trust_remote_code)


def run_align(args) -> None:
    from projection_probe.train.align import align_projector

    set_threads(args.threads)
    align_projector(parse_json_arg("--vision-json", args.vision_json), args.llm_dir, args.vision_caches,
                    args.manifests, args.out_dir, from_args(AlignHyperparams, args))


def run_export(args) -> None:
    import torch

    from projection_probe.train.export import export_llava_hf

    set_threads(args.threads)
    export_llava_hf(args.model, args.out_dir, dtype={"float32": torch.float32, "bfloat16": torch.bfloat16,
                                                     "float16": torch.float16}[args.dtype])


def _add_threads_and_out_dir(p, handler) -> None:
    add_threads_option(p)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(handler=handler)


def register(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a base model folder: ft-proj, ft-e2e or ft-lora",
                              description="Trainer-based fine-tuning on cached vision features; resumable; "
                                          "publishes a model folder with facade.json pointing at the base.")
    p.add_argument("--base-model", required=True, help="base model folder (facade.json)")
    p.add_argument("--prompts", required=True, help="prompts_seed{seed}.jsonl (its train split is used)")
    p.add_argument("--vision-cache", required=True, help="vision.safetensors of the same data set")
    p.add_argument("--setting", required=True, choices=FINETUNE_SETTINGS)
    add_options(p, FinetuneHyperparams)
    p.add_argument("--trust-remote-code", action="store_true", default=False,
                   help="run Python code shipped with the checkpoint (off unless models.<name>.trust_remote_code)")
    _add_threads_and_out_dir(p, run_finetune)

    p = subparsers.add_parser("align-projector",
                              help="the demo's Original MLLM: a fresh projector aligned on label-free captions")
    p.add_argument("--vision-json", required=True, help='vision spec, e.g. {"kind": "efficientnet_lite0"}')
    p.add_argument("--llm-dir", required=True, help="causal LM folder (config, safetensors, tokenizer)")
    p.add_argument("--vision-caches", nargs="+", required=True, help="vision.safetensors of each demo data set")
    p.add_argument("--manifests", nargs="+", required=True,
                   help="manifest.csv of each data set, in the order of --vision-caches (selects the train split)")
    add_options(p, AlignHyperparams)
    _add_threads_and_out_dir(p, run_align)

    p = subparsers.add_parser("export-llava",
                              help="merge a model folder into a LlavaForConditionalGeneration checkpoint")
    p.add_argument("--model", required=True, help="model folder (facade.json) on a llava_hf or CLIP-parts base")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    _add_threads_and_out_dir(p, run_export)
