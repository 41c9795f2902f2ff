"""Each stage's hyperparameters with their defaults, written once.

The CLI options of a stage's subcommand are generated from its dataclass (`add_options`), its library
function takes the dataclass, and the workflow (workflow/rules/common.smk) and `plan` read their
defaults from here. The config schema gives no `default:` for these keys: Snakemake's validation would
write such defaults into the config, and so into the rules' params (tests/test_hyperparams.py checks
that any it gets agree with these).

Imports nothing heavy: `projection-probe --help` and the workflow read this module.
"""
from __future__ import annotations

import argparse
import dataclasses
import shlex
import types
import typing
from dataclasses import dataclass, field

from projection_probe.names import LAYER_POOLINGS, PARSERS, PROJECTOR_KINDS, SEVERAL_CLASSES, TEMPLATES


def option(default=dataclasses.MISSING, help: str = "", *, choices=None, none_at_or_below_zero: bool = False,
           parse=None, negative_flag: str | None = None):
    """A dataclass field that is also a CLI option, `--field-name`.

    none_at_or_below_zero: the option's 0 (or a negative number) gives None, the library's "no limit"
    or "never". parse: a function from the option's text to the value. negative_flag: a boolean that
    defaults to True is given as one flag that turns it off (e.g. --last-epoch for restore_best=False)."""
    metadata = {"help": help, "choices": choices, "none_at_or_below_zero": none_at_or_below_zero,
                "parse": parse, "negative_flag": negative_flag}
    if isinstance(default, (list, dict, set)):
        raise TypeError("a mutable default would be shared between instances; use a tuple")
    return field(default=default, metadata=metadata)


def _positive_or_none(convert):
    def parse(text: str):
        value = convert(text)
        return value if value > 0 else None

    parse.__name__ = convert.__name__  # argparse names it in "invalid int value"
    return parse


def _base_type(hint):
    """int for `int | None`, tuple for `tuple[int, ...]`."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return _base_type(args[0])
    return typing.get_origin(hint) or hint


def add_options(parser: argparse.ArgumentParser, cls) -> None:
    """One option per field of the dataclass `cls`: its default, type, choices and help come from the
    field. A field without a default is a required option."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        required = f.default is dataclasses.MISSING
        kwargs = {"dest": f.name, "help": meta.get("help") or None}
        base = _base_type(hints[f.name])
        if base is bool:
            if meta.get("negative_flag"):
                parser.add_argument(meta["negative_flag"], action="store_false", default=f.default, **kwargs)
                continue
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            convert = meta.get("parse") or base
            kwargs["type"] = _positive_or_none(convert) if meta.get("none_at_or_below_zero") else convert
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default
            shown = 0 if f.default is None and meta.get("none_at_or_below_zero") else "%(default)s"
            kwargs["help"] = f"{kwargs['help'] or ''} (default: {shown})".lstrip()
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def to_options(cls, values: dict) -> str:
    """The command-line options, as `add_options` made them, that give the fields in `values` (field
    name → value) of the dataclass `cls`: how the workflow's rules pass a stage's settings. A boolean at
    its default gives no option, so that a command line changes only with a changed setting; None gives
    the option's 0 where 0 means None, and no option where None is the default."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {unknown[0]!r}; its fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    options = []
    for name, value in values.items():
        meta, flag = fields[name].metadata, "--" + name.replace("_", "-")
        if _base_type(hints[name]) is bool:
            if value != fields[name].default:
                options.append(meta.get("negative_flag") or (flag if value else "--no-" + flag[2:]))
        elif value is None and meta.get("none_at_or_below_zero"):
            options.append(f"{flag} 0")
        elif value is None:
            if fields[name].default is not None:
                raise ValueError(f"{cls.__name__}.{name}: None is not a value of this option")
        elif isinstance(value, (tuple, list)):
            options.append(f"{flag} {','.join(str(v) for v in value)}")
        else:
            options.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(options)


def from_args(cls, args: argparse.Namespace):
    """The dataclass `cls` from the options `add_options` added."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def with_fields(cls, hp, fields: dict):
    """`hp` (an instance of `cls`, or None for one made from `fields` alone) with `fields` set: how a
    library function takes its dataclass, or the dataclass's fields as keywords."""
    if hp is None:
        return cls(**fields)
    return dataclasses.replace(hp, **fields) if fields else hp


def defaults(cls) -> dict:
    """{field: default} for the fields of `cls` that have one, in field order."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


# ---------------------------------------------------------------------------- training (align, fine-tune)
# Fields whose default differs between the stages that share them.
def _lr(default=dataclasses.MISSING):
    return option(default, "learning rate")


def _effective_batch(default=dataclasses.MISSING):
    return option(default, "examples per optimizer step over all GPUs; gradient accumulation = "
                           "effective / (per-device × GPUs), must divide exactly")


def _per_device_batch(default=dataclasses.MISSING):
    return option(default, "examples per forward pass on each GPU")


def _checkpoint_every_steps(default):
    return option(default, "save a resumable checkpoint every N optimizer steps into <out-dir>.work (0: never)",
                  none_at_or_below_zero=True)


@dataclass(frozen=True, kw_only=True)
class TrainingHyperparams:
    """The Trainer's schedule, shared by projector alignment and fine-tuning (`train.finetune.train_facade`)."""
    lr: float = _lr()
    effective_batch: int = _effective_batch()
    per_device_batch: int = _per_device_batch()
    epochs: float = option(1)
    warmup_ratio: float = option(0.03, "share of the optimizer steps with a linear learning-rate warmup")
    weight_decay: float = option(0.0)
    lr_scheduler: str = option("cosine", choices=("cosine", "linear", "constant", "constant_with_warmup"))
    max_grad_norm: float = option(0.0, "0 or negative: no clipping (the paper)")
    seed: int = option(42, "trainer seed: data order, initialisation, subset")
    bf16: bool = option(False, "bf16 mixed precision (fp32 master weights unless --model-dtype bfloat16)")
    gradient_checkpointing: bool = option(False, "recompute the LLM's activations in the backward pass")
    optim: str = option("adamw_torch", "a TrainingArguments optim: adamw_torch, adamw_torch_fused, "
                                       "paged_adamw_8bit (bitsandbytes)")
    checkpoint_every_steps: int | None = _checkpoint_every_steps(None)
    max_examples: int | None = option(
        None, "train on a seeded, stratified subset of at most N examples (0: all; CPU demo only)",
        none_at_or_below_zero=True)
    model_max_length: int | None = option(2048, "longest allowed example in tokens (0: no limit)",
                                          none_at_or_below_zero=True)
    num_workers: int = option(0, "DataLoader workers")


@dataclass(frozen=True, kw_only=True)
class AlignHyperparams(TrainingHyperparams):
    """The parts loader's stage 1: a fresh projector aligned on label-free captions (`train.align`)."""
    lr: float = _lr(1e-3)
    effective_batch: int = _effective_batch(16)
    per_device_batch: int = _per_device_batch(16)
    caption_source: str = option("imagenet_top1", choices=("imagenet_top1", "none-fixed"))
    template: str = option("plain", "template used for alignment (LLaVA stage 1: plain)", choices=TEMPLATES)
    output_template: str = option("v1", "template recorded in the base model's facade.json for later "
                                         "fine-tuning and evaluation", choices=TEMPLATES)
    projector: str = option("mlp2x_gelu", choices=PROJECTOR_KINDS)


@dataclass(frozen=True, kw_only=True)
class LoraHyperparams:
    """LoRA adapters on every linear layer of the LLM (`train.finetune.configure_trainable`)."""
    lora_r: int = option(128)
    lora_alpha: int = option(256)
    lora_dropout: float = option(0.05)


@dataclass(frozen=True, kw_only=True)
class FinetuneHyperparams(LoraHyperparams, TrainingHyperparams):
    """FT-Proj, FT-E2E and FT-LoRA (`train.finetune.finetune`)."""
    # A fine-tune is long enough to be worth resuming; alignment (above) is not checkpointed by default.
    checkpoint_every_steps: int | None = _checkpoint_every_steps(50)
    template: str | None = option(None, "override the base model's conversation template (plain = the authors' "
                                        "pretrain.sh)", choices=TEMPLATES)
    projector_lr: float = option(2e-5, "ft-lora only: the projector's learning rate")
    model_dtype: str = option("float32", "dtype of the weights being trained; bfloat16 = pure-bf16 training "
                                         "(single-GPU 7B E2E)", choices=("float32", "bfloat16"))


@dataclass(frozen=True, kw_only=True)
class FinetuneLaunch:
    """How the workflow launches a fine-tune: not options of `finetune` itself (accelerate launch reads them)."""
    num_gpus: int = 1
    accelerate_config: str | None = None


# ---------------------------------------------------------------------------- probes
def _hidden_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--hidden {text!r}: expected comma-separated integers, e.g. 2048,1024,256") from None
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"--hidden {text!r}: layer sizes must be positive")
    return sizes


@dataclass(frozen=True, kw_only=True)
class ProbeHyperparams:
    """An MLP probe (`probes.mlp.train_probe`): Adam, early stopping on validation loss."""
    hidden: tuple[int, ...] = option((2048, 1536, 1024, 512, 256), "hidden layer sizes, comma-separated (the "
                                     "paper's post-projection MLP)", parse=_hidden_sizes)
    lr: float = option(1e-4)
    batch_size: int = option(128)
    max_epochs: int = option(200)
    patience: int = option(10)
    val_fraction: float = option(0.1)
    val_source: str = option("split", "split = stratified part of train (the paper); test = the test set "
                                      "(authors' code; leaks)", choices=("split", "test"))
    standardize: bool = option(False, "z-score features with the fit rows' statistics")
    restore_best: bool = option(True, "keep the last epoch's weights instead of restoring the best epoch's (the "
                                      "authors' probe)", negative_flag="--last-epoch")
    seed: int = option(0, "data split, initialisation and batch order")


# ---------------------------------------------------------------------------- classification
@dataclass(frozen=True, kw_only=True)
class ClassifyHyperparams:
    """The MLLM classifying the test split (`evaluate.classify.classify_records`), in any mode."""
    batch_size: int = option(16, "records per batch")
    max_new_tokens: int | None = option(None, "generate mode: default the longest class's answer tokens (EOS "
                                              "included) + 4")
    stop_at_newline: bool = option(True, "generate mode: the answer ends at the first newline")
    temperature: float = option(0.0, "0 = greedy; the authors used 0.2")
    parser: str = option("substring", "generate mode: substring = the documented parser; exact = no parser, the "
                                      "answer must equal a class string (the authors)", choices=PARSERS)
    several_classes: str = option("invalid", "substring parser: an answer that names several classes is invalid, "
                                             "or reads as the class named first", choices=SEVERAL_CLASSES)
    # Each (image, class) continuation holds its own copy of the prompt's KV cache (LLaVA-1.5-7B: 0.5 MB
    # per token, about 0.5 GB per pair at ~950 tokens), so 16 pairs add about 8 GB there.
    label_chunk_size: int = option(16, "likelihood mode: (image, class) continuations per forward pass; bounds "
                                       "memory, never changes scores")
    seed: int = option(0, "sampling seed (temperature > 0)")


# ---------------------------------------------------------------------------- analyses (docs/analysis.md)
@dataclass(frozen=True, kw_only=True)
class AnalysisDefaults:
    """The analyses' defaults (config `analyses`): the workflow and the analysis subcommands read them here."""
    poolings: tuple[str, ...] = LAYER_POOLINGS
    storage_dtype: str = "float16"
    layer_batch_size: int = 8
    linear_c: float = 1.0
    linear_max_iter: int = 500
    knn_k: int = 10
    bootstrap: int = 1000
    permutations: int = 10000
    confidence: float = 0.95


ANALYSIS_DEFAULTS = AnalysisDefaults()
