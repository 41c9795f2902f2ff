"""Which model families the facade runs, where each one's adapter lives, and which are refused and why.

Imports no torch (the config check and `plan` read it): an adapter module is imported only when a
model of its family is loaded. One file per family under `models/families/`, except where families
share their code literally (idefics3 and smolvlm, qwen2_vl and qwen2_5_vl,
llava_next and llava_onevision).
"""
from __future__ import annotations

import importlib
from pathlib import Path

from projection_probe.io import InputError, read_json

# model_type (config.json) → adapter module
FAMILIES = {
    "llava": "projection_probe.models.families.llava",
    "paligemma": "projection_probe.models.families.paligemma",
    "gemma3": "projection_probe.models.families.gemma3",
    "idefics3": "projection_probe.models.families.idefics3",
    "smolvlm": "projection_probe.models.families.idefics3",
    "internvl": "projection_probe.models.families.internvl",
    "qwen2_vl": "projection_probe.models.families.qwen2_vl",
    "qwen2_5_vl": "projection_probe.models.families.qwen2_vl",
    "blip-2": "projection_probe.models.families.blip_2",
    "llava_next": "projection_probe.models.families.llava_next",
    "llava_onevision": "projection_probe.models.families.llava_next",
    "mistral3": "projection_probe.models.families.mistral3",
}

_NO_TOKEN_SEQUENCE = ("its image features never enter the LM's token sequence, so there is no H_v token "
                      "sequence to probe or to splice in")
REFUSED = {
    "mllama": f"cross-attention: the LM reads the image through cross-attention layers; {_NO_TOKEN_SEQUENCE}",
    "idefics": f"gated cross-attention (Flamingo-style); {_NO_TOKEN_SEQUENCE}",
    "pix2struct": f"an encoder–decoder model; {_NO_TOKEN_SEQUENCE}",
    "vision-encoder-decoder": f"an encoder–decoder model; {_NO_TOKEN_SEQUENCE}",
    "florence2": f"an encoder–decoder model; {_NO_TOKEN_SEQUENCE}",
    "chameleon": "VQ image tokens: images become discrete vocabulary ids, there is no connector and no H_v",
    "emu3": "VQ image tokens: images become discrete vocabulary ids, there is no connector and no H_v",
}


def model_type_of(folder: str | Path) -> str:
    config_file = Path(folder) / "config.json"
    if not config_file.exists():
        raise InputError(f"{folder}: no config.json; a model family checkpoint folder holds one")
    model_type = read_json(config_file).get("model_type")
    if not model_type:
        raise InputError(f"{config_file}: no model_type; the family of this checkpoint is unknown")
    return model_type


def check_family(model_type: str, folder: str | Path) -> str:
    """`model_type`, refused unless a family adapter runs it, naming the folder, the type and the
    supported list (or, for a known non-fitting family, why)."""
    if model_type in REFUSED:
        raise InputError(f"{folder}: model_type {model_type!r} is not supported: {REFUSED[model_type]}")
    if model_type not in FAMILIES:
        raise InputError(f"{folder}: model_type {model_type!r} has no family adapter; supported model types: "
                         f"{sorted(FAMILIES)}")
    return model_type


def family_adapter(model_type: str, folder: str | Path = "model"):
    """The adapter of `model_type` (imports torch and transformers): its module's `ADAPTERS` entry."""
    return importlib.import_module(FAMILIES[check_family(model_type, folder)]).ADAPTERS[model_type]


def load_family(folder: str | Path, **options):
    """The facade of a family checkpoint folder, through the adapter its `config.json` names
    (`options`: dtype, device, template, image_preprocessing, trust_remote_code)."""
    return family_adapter(model_type_of(folder), folder).load(folder, **options)
