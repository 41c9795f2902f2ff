"""The demo's pretrained weights are real and are the ones used.

EfficientNet-Lite0's ImageNet check (scikit-image's `chelsea()` is class 285) lives in test_train.py,
next to the alignment captions that depend on it. Here: the SmolLM2 GGUF conversion that the
`convert_llm` rule runs."""
from __future__ import annotations

import pytest
import torch

from projection_probe.cli import main

pytestmark = pytest.mark.slow


def test_convert_llm_gives_the_real_smollm2(tmp_path):
    pytest.importorskip("gguf")
    out = tmp_path / "llm"
    assert main(["convert-llm", "--out-dir", str(out)]) == 0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert 134_000_000 < model.num_parameters() < 135_000_000
    # Random weights would not know this; the instruct model does.
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(generated[0, ids.shape[1]:])
    assert not list(tmp_path.glob(".llm.*")), "the atomic writer left a temp dir behind"
