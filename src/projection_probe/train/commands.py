"""CLI: finetune (ft-proj / ft-e2e / ft-lora), align-projector (the demo's stage-1 base model) and
export-llava (any model folder → a LlavaForConditionalGeneration checkpoint).

The same subcommands run on several GPUs under `accelerate launch -m projection_probe.cli ...`; see
docs/training.md.
"""
from __future__ import annotations

import argparse

from projection_probe.cli import add_threads_option, parse_json_arg, set_threads

SETTINGS = ("ft-proj", "ft-e2e", "ft-lora")  # mirrors train.finetune.SETTINGS without importing torch


def _optional_positive(value: int | None) -> int | None:
    return value if value and value > 0 else None


def run_finetune(args) -> None:
    from projection_probe.train.finetune import finetune

    set_threads(args.threads)
    finetune(args.base_model, args.prompts, args.vision_cache, args.out_dir, args.setting, lr=args.lr,
             effective_batch=args.effective_batch, per_device_batch=args.per_device_batch, epochs=args.epochs,
             warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay, lr_scheduler=args.lr_scheduler,
             max_grad_norm=args.max_grad_norm if args.max_grad_norm > 0 else None, seed=args.seed, bf16=args.bf16,
             gradient_checkpointing=args.gradient_checkpointing,
             checkpoint_every_steps=_optional_positive(args.checkpoint_every_steps),
             max_examples=_optional_positive(args.max_examples), template=args.template, lora_r=args.lora_r,
             lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout, projector_lr=args.projector_lr,
             optim=args.optim, num_workers=args.num_workers, model_dtype=args.model_dtype,
             model_max_length=_optional_positive(args.model_max_length),
             trust_remote_code=args.trust_remote_code)


def run_align(args) -> None:
    from projection_probe.train.align import align_projector

    set_threads(args.threads)
    align_projector(parse_json_arg("--vision-json", args.vision_json), args.llm_dir, args.vision_caches,
                    args.manifests, args.out_dir, lr=args.lr,
                    epochs=args.epochs, effective_batch=args.effective_batch, per_device_batch=args.per_device_batch,
                    max_examples=_optional_positive(args.max_examples), seed=args.seed, template=args.template,
                    output_template=args.output_template, caption_source=args.caption_source,
                    projector_kind=args.projector, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
                    max_grad_norm=args.max_grad_norm if args.max_grad_norm > 0 else None, bf16=args.bf16,
                    checkpoint_every_steps=_optional_positive(args.checkpoint_every_steps),
                    num_workers=args.num_workers)


def run_export(args) -> None:
    import torch

    from projection_probe.train.export import export_llava_hf

    set_threads(args.threads)
    export_llava_hf(args.model, args.out_dir, dtype={"float32": torch.float32, "bfloat16": torch.bfloat16,
                                                     "float16": torch.float16}[args.dtype])


def _add_schedule_args(p, lr_default: float | None) -> None:
    p.add_argument("--lr", type=float, required=lr_default is None, default=lr_default)
    p.add_argument("--effective-batch", type=int, required=True,
                   help="examples per optimizer step over all GPUs; gradient accumulation = "
                        "effective / (per-device × GPUs), must divide exactly")
    p.add_argument("--per-device-batch", type=int, required=True)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--warmup-ratio", type=float, default=0.03)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=0.0, help="0 or negative: no clipping (the paper)")
    p.add_argument("--seed", type=int, default=42, help="trainer seed: data order, initialisation, subset")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False,
                   help="bf16 mixed precision (fp32 master weights unless --model-dtype bfloat16)")
    p.add_argument("--checkpoint-every-steps", type=int, default=0,
                   help="save a resumable checkpoint every N optimizer steps into <out-dir>.work (0: never)")
    p.add_argument("--max-examples", type=int, default=0,
                   help="train on a seeded, stratified subset of at most N examples (0: all; CPU demo only)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers")
    add_threads_option(p)
    p.add_argument("--out-dir", required=True)


def register(subparsers) -> None:
    p = subparsers.add_parser("finetune", help="fine-tune a base model folder: ft-proj, ft-e2e or ft-lora",
                              description="Trainer-based fine-tuning on cached vision features; resumable; "
                                          "publishes a model folder with facade.json pointing at the base.")
    p.add_argument("--base-model", required=True, help="base model folder (facade.json)")
    p.add_argument("--prompts", required=True, help="prompts_seed{seed}.jsonl (its train split is used)")
    p.add_argument("--vision-cache", required=True, help="vision.safetensors of the same data set")
    p.add_argument("--setting", required=True, choices=SETTINGS)
    _add_schedule_args(p, lr_default=None)
    p.add_argument("--lr-scheduler", default="cosine")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--template", default=None, choices=["v1", "plain", "llava_hf", "chatml"],
                   help="override the base model's conversation template (plain = the authors' pretrain.sh)")
    p.add_argument("--lora-r", type=int, default=128)
    p.add_argument("--lora-alpha", type=int, default=256)
    p.add_argument("--lora-dropout", type=float, default=0.05)
    p.add_argument("--projector-lr", type=float, default=2e-5, help="ft-lora only: the projector's learning rate")
    p.add_argument("--optim", default="adamw_torch",
                   help="a TrainingArguments optim: adamw_torch, adamw_torch_fused, paged_adamw_8bit (bitsandbytes)")
    p.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="dtype of the weights being trained; bfloat16 = pure-bf16 training (single-GPU 7B E2E)")
    p.add_argument("--model-max-length", type=int, default=2048, help="longest allowed example in tokens (0: no limit)")
    p.add_argument("--trust-remote-code", action="store_true", default=False,
                   help="run Python code shipped with the checkpoint (off unless model.trust_remote_code)")
    p.set_defaults(handler=run_finetune)

    p = subparsers.add_parser("align-projector",
                              help="the demo's Original MLLM: a fresh projector aligned on label-free captions")
    p.add_argument("--vision-json", required=True, help='vision spec, e.g. {"kind": "efficientnet_lite0"}')
    p.add_argument("--llm-dir", required=True, help="causal LM folder (config, safetensors, tokenizer)")
    p.add_argument("--vision-caches", nargs="+", required=True, help="vision.safetensors of each demo data set")
    p.add_argument("--manifests", nargs="+", required=True,
                   help="manifest.csv of each data set, in the order of --vision-caches (selects the train split)")
    p.add_argument("--caption-source", default="imagenet_top1", choices=["imagenet_top1", "none-fixed"])
    p.add_argument("--template", default="plain", choices=["plain", "v1", "llava_hf", "chatml"],
                   help="template used for alignment (LLaVA stage 1: plain)")
    p.add_argument("--output-template", default="v1", choices=["v1", "plain", "llava_hf", "chatml"],
                   help="template recorded in the base model's facade.json for later fine-tuning and evaluation")
    p.add_argument("--projector", default="mlp2x_gelu", choices=["mlp2x_gelu", "linear"])
    _add_schedule_args(p, lr_default=1e-3)
    p.set_defaults(handler=run_align)

    p = subparsers.add_parser("export-llava",
                              help="merge a model folder into a LlavaForConditionalGeneration checkpoint")
    p.add_argument("--model", required=True, help="model folder (facade.json) on a llava_hf or CLIP-parts base")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    add_threads_option(p)
    p.add_argument("--out-dir", required=True)
    p.set_defaults(handler=run_export)
