"""One home per hyperparameter: each stage's dataclass (src/projection_probe/hyperparams.py) makes its
subcommand's options, and the config schema's keys and any `default:` it gives agree with it."""
from __future__ import annotations

import copy
import dataclasses
import shlex
from pathlib import Path

import pytest
import yaml

from projection_probe.cli import build_parser
from projection_probe.hyperparams import (
    AlignHyperparams,
    ClassifyHyperparams,
    FinetuneHyperparams,
    FinetuneLaunch,
    ProbeHyperparams,
    defaults,
    from_args,
    to_options,
)

SCHEMA = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml")
                        .read_text())

# subcommand: (its dataclass, the options that are not hyperparameters: files, devices, the run's variant)
SUBCOMMANDS = {
    "finetune": (FinetuneHyperparams, {"base_model", "prompts", "vision_cache", "setting", "trust_remote_code",
                                       "threads", "out_dir"}),
    "align-projector": (AlignHyperparams, {"vision_json", "llm_dir", "vision_caches", "manifests", "threads",
                                           "out_dir"}),
    "classify": (ClassifyHyperparams, {"model", "prompts", "vision_cache", "classes", "mode", "device", "dtype",
                                       "threads", "trust_remote_code", "out"}),
    "train-probe": (ProbeHyperparams, {"train", "test", "classes", "feature", "threads", "device", "f1_classes",
                                       "out_predictions", "out_json"}),
}

# schema section: (its dataclasses, the keys only the workflow reads)
SCHEMA_SECTIONS = {
    "$defs.setting": ((FinetuneHyperparams, FinetuneLaunch), {"kind", "image_preprocessing"}),
    "finetune": ((FinetuneHyperparams, FinetuneLaunch), set()),
    "align": ((AlignHyperparams,), {"datasets"}),
    "$defs.probe": ((ProbeHyperparams,), {"feature"}),
    "classify": ((ClassifyHyperparams,), {"modes"}),
}


def subparser(name):
    return build_parser()._subparsers._group_actions[0].choices[name]


def section_properties(schema: dict, section: str) -> dict:
    if section.startswith("$defs."):
        return schema["$defs"][section.split(".", 1)[1]]["properties"]
    return schema["properties"][section]["properties"]


def schema_default_mismatches(schema: dict) -> list[str]:
    """Each schema key of a stage section that no dataclass holds, and each `default:` that is not
    the dataclass's."""
    problems = []
    for section, (classes, workflow_only) in SCHEMA_SECTIONS.items():
        known = {k: v for cls in classes for k, v in defaults(cls).items()}
        fields = {f.name for cls in classes for f in dataclasses.fields(cls)}
        for key, spec in section_properties(schema, section).items():
            if key in workflow_only:
                continue
            if key not in fields:
                problems.append(f"{section}.{key}: no field of {[c.__name__ for c in classes]}")
            elif "default" in spec and spec["default"] != known.get(key):
                problems.append(f"{section}.{key}: schema default {spec['default']!r}, dataclass {known.get(key)!r}")
    return problems


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_options_are_the_dataclass_fields(name):
    cls, other = SUBCOMMANDS[name]
    dests = {a.dest for a in subparser(name)._actions if a.dest != "help"}
    assert dests - other == {f.name for f in dataclasses.fields(cls)}
    assert other <= dests


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_option_defaults_are_the_dataclass_defaults(name):
    cls, _ = SUBCOMMANDS[name]
    actions = {a.dest: a for a in subparser(name)._actions}
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING:
            assert actions[f.name].required, f.name
        else:
            assert actions[f.name].default == f.default, f.name


def test_schema_keys_and_defaults_agree_with_the_dataclasses():
    assert schema_default_mismatches(SCHEMA) == []


def test_a_schema_default_that_disagrees_is_found():
    schema = copy.deepcopy(SCHEMA)
    schema["$defs"]["setting"]["properties"]["lora_r"]["default"] = 64
    schema["properties"]["classify"]["properties"]["temperature"]["default"] = 0.0  # agrees: not reported
    schema["properties"]["align"]["properties"]["warmup"] = {"type": "number"}
    assert schema_default_mismatches(schema) == [
        "$defs.setting.lora_r: schema default 64, dataclass 128",
        "align.warmup: no field of ['AlignHyperparams']",
    ]


# Command lines as the workflow's rules write them (`snakemake -n -p` of config/config.yaml, paths cut).
FINETUNE_LINE = (
    "finetune --base-model m --prompts p.jsonl --vision-cache v.safetensors --setting ft-lora --lr 0.0002"
    " --effective-batch 8 --per-device-batch 4 --epochs 1 --warmup-ratio 0.03 --weight-decay 0.0"
    " --lr-scheduler cosine --max-grad-norm 0.0 --seed 0 --optim adamw_torch --max-examples 0"
    " --model-max-length 2048 --lora-r 4 --lora-alpha 8 --lora-dropout 0.05 --template v1 --projector-lr 2e-05"
    " --model-dtype float32 --checkpoint-every-steps 50 --num-workers 0 --threads 1 --out-dir out")
ALIGN_LINE = (
    "align-projector --vision-json '{\"kind\": \"clip\"}' --llm-dir llm --projector mlp2x_gelu"
    " --vision-caches a.safetensors b.safetensors --manifests a.csv b.csv --caption-source imagenet_top1"
    " --template plain --lr 0.001 --epochs 1 --effective-batch 16 --per-device-batch 8 --max-examples 400"
    " --seed 0 --output-template v1 --threads 2 --out-dir base")
CLASSIFY_LINE = (
    "classify --model m --prompts p.jsonl --vision-cache v.safetensors --classes c.json --mode generate"
    " --batch-size 20 --temperature 0.2 --parser exact --no-stop-at-newline --several-classes first"
    " --seed 1 --device cpu --dtype float32 --threads 1 --out o.csv")
PROBE_LINE = (
    "train-probe --train a --test b --classes c.json --feature post --hidden 32,16 --lr 0.001 --batch-size 16"
    " --max-epochs 15 --patience 3 --val-fraction 0.2 --val-source split --standardize --last-epoch --seed 1"
    " --device cpu --f1-classes true --threads 1 --out-predictions p.csv --out-json s.json")


def parse(line, cls):
    return from_args(cls, build_parser().parse_args(shlex.split(line)))


def test_workflow_command_lines_parse_into_the_dataclasses():
    finetune = parse(FINETUNE_LINE, FinetuneHyperparams)
    assert finetune == FinetuneHyperparams(
        lr=2e-4, effective_batch=8, per_device_batch=4, epochs=1.0, seed=0, checkpoint_every_steps=50,
        max_examples=None, lora_r=4, lora_alpha=8, template="v1")
    align = parse(ALIGN_LINE, AlignHyperparams)
    assert align == AlignHyperparams(per_device_batch=8, max_examples=400, seed=0)
    assert parse(CLASSIFY_LINE, ClassifyHyperparams) == ClassifyHyperparams(
        batch_size=20, temperature=0.2, parser="exact", stop_at_newline=False, several_classes="first", seed=1)
    assert parse(PROBE_LINE, ProbeHyperparams) == ProbeHyperparams(
        hidden=(32, 16), lr=1e-3, batch_size=16, max_epochs=15, patience=3, val_fraction=0.2, standardize=True,
        restore_best=False, seed=1)


@pytest.mark.parametrize("hp", [
    FinetuneHyperparams(lr=2e-4, effective_batch=8, per_device_batch=4, bf16=True, max_examples=None,
                        checkpoint_every_steps=None, template=None, optim="adamw torch"),
    FinetuneHyperparams(lr=1e-3, effective_batch=2, per_device_batch=1, gradient_checkpointing=True, max_examples=30,
                        template="chatml", model_max_length=None),
    ProbeHyperparams(hidden=(32, 16), standardize=True, restore_best=False, val_source="test"),
    ProbeHyperparams(),
    ClassifyHyperparams(stop_at_newline=False, max_new_tokens=7, parser="exact"),
], ids=["finetune-flags-on", "finetune-flags-off", "probe-changed", "probe-defaults", "classify"])
def test_generated_options_parse_back_into_the_same_dataclass(hp):
    """The workflow's option strings (to_options) are what the subcommand parses into its dataclass."""
    cls = type(hp)
    name, required = {FinetuneHyperparams: ("finetune", "--base-model m --prompts p --vision-cache v --setting ft-proj"
                                                        " --threads 1 --out-dir o"),
                      ProbeHyperparams: ("train-probe", "--train a --test b --classes c --feature post"
                                                        " --out-predictions p --out-json s"),
                      ClassifyHyperparams: ("classify", "--model m --prompts p --vision-cache v --classes c"
                                                        " --out o")}[cls]
    line = f"{name} {required} {to_options(cls, dataclasses.asdict(hp))}"
    assert parse(line, cls) == hp


def test_generated_options_refuse_a_key_that_is_not_a_field():
    with pytest.raises(ValueError, match="FinetuneHyperparams has no field 'kind'"):
        to_options(FinetuneHyperparams, {"lr": 1e-3, "kind": "ft-proj"})


def test_zero_means_none_and_bad_values_are_refused(capsys):
    line = FINETUNE_LINE.replace("--checkpoint-every-steps 50", "--checkpoint-every-steps 0").replace(
        " --template v1", "") + " --model-max-length 0"
    hp = parse(line, FinetuneHyperparams)
    assert (hp.checkpoint_every_steps, hp.max_examples, hp.model_max_length, hp.template) == (None, None, None, None)
    for bad, message in [(PROBE_LINE.replace("32,16", "32,x"), "--hidden '32,x'"),
                         (CLASSIFY_LINE.replace("--parser exact", "--parser fuzzy"), "--parser: invalid choice"),
                         (FINETUNE_LINE.replace("--lora-r 4", "--lora-r four"), "--lora-r: invalid int value")]:
        with pytest.raises(SystemExit):
            build_parser().parse_args(shlex.split(bad))
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # lr, effective and per-device batch have no fine-tune default
        build_parser().parse_args(shlex.split(FINETUNE_LINE.replace(" --lr 0.0002", "")))
    assert "--lr" in capsys.readouterr().err


def test_library_functions_take_the_dataclass_or_its_fields():
    torch = pytest.importorskip("torch")
    from projection_probe.probes.mlp import train_probe

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=gen), torch.arange(40) % 2
    hp = ProbeHyperparams(hidden=(4,), max_epochs=2, patience=2, seed=3)
    by_dataclass = train_probe(x[:30], y[:30], x[30:], y[30:], hp)
    by_fields = train_probe(x[:30], y[:30], x[30:], y[30:], hidden=[4], max_epochs=2, patience=2, seed=3)
    assert list(by_dataclass.predictions) == list(by_fields.predictions)
    with pytest.raises(TypeError, match="max_epoch"):
        train_probe(x[:30], y[:30], x[30:], y[30:], hp, max_epoch=3)
