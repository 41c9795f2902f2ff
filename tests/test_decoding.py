"""The facade's cached decoding loop against a step-by-step reference that recomputes the whole
sequence each step: free text (greedy and seeded sampling) and constrained decoding."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from projection_probe.models.facade import ModelInputs, answer_line_ended
from projection_probe.models.loaders import from_llava_hf
from projection_probe.testing.tiny import make_tiny_llava

PROMPT = '<image>\nClassify this image into one of: "banded", "dotted", "striped". Only output the label.'
PROMPTS = [PROMPT, PROMPT.replace("one of", "exactly one of the following"), PROMPT + " x", PROMPT]
# Shared first tokens and different lengths, so rows finish at different steps.
LABELS = ["banded", "dotted", "striped", "striped and banded", "banded dots", "dotted lines everywhere"]


@pytest.fixture(scope="module")
def facade(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llava")
    make_tiny_llava(path)
    return from_llava_hf(path).eval()


@pytest.fixture(scope="module")
def batch(facade):
    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40 + 7 * i, 3), dtype=np.uint8)) for i in range(len(PROMPTS))]
    return facade.build_inputs(PROMPTS), facade.encode_images(facade.vision.preprocess_images(images, "pad"))


def reference_decode(facade, inputs, x_v, steps, pick, stop_ids=(), row_ended=lambda tokens: False):
    """Each step runs the prompt plus every row's kept tokens through the model from scratch (no
    KV cache), lets `pick(logits, kept)` choose the next ids, and ends rows as the facade does."""
    rows = inputs.input_ids.shape[0]
    kept: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    for step in range(steps):
        tail = torch.tensor([k + [facade.pad_token_id] * (step - len(k)) for k in kept], dtype=torch.long)
        tail_mask = torch.tensor([[1] * len(k) + [0] * (step - len(k)) for k in kept], dtype=torch.long)
        grown = ModelInputs(torch.cat([inputs.input_ids, tail.view(rows, step)], 1),
                            torch.cat([inputs.attention_mask, tail_mask.view(rows, step)], 1),
                            torch.cat([inputs.image_mask, torch.zeros(rows, step, dtype=torch.bool)], 1))
        with torch.no_grad():
            logits = facade.logits(grown, x_v)[:, -1].float()
        next_ids = pick(logits, kept)
        for row in [r for r in range(rows) if not done[r]]:
            tok = int(next_ids[row])
            stopped = tok in stop_ids  # a stop token ends the row and is not kept
            kept[row] += [] if stopped else [tok]
            done[row] = stopped or row_ended(kept[row])
        if all(done):
            break
    return kept


@pytest.mark.parametrize("temperature, seed", [(0.0, None), (0.2, 0), (1.0, 1)])
def test_free_text_decoding_equals_the_recomputed_reference(facade, batch, temperature, seed):
    inputs, x_v = batch
    budget = 8
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    texts, cut_off = facade.generate_answers(inputs, x_v, max_new_tokens=budget, temperature=temperature,
                                             generator=generator)

    reference_generator = None if seed is None else torch.Generator().manual_seed(seed)

    def pick(logits, kept):
        if temperature == 0:
            return logits.argmax(-1)
        return torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=reference_generator).squeeze(1)

    def pick_again():
        """`pick` with a fresh generator of the same seed: the same draws over again."""
        nonlocal reference_generator
        reference_generator = None if seed is None else torch.Generator().manual_seed(seed)
        return pick

    tokens = reference_decode(facade, inputs, x_v, budget, pick, stop_ids=facade._stop_token_ids(),
                              row_ended=lambda t: answer_line_ended(facade.tokenizer.decode(t)))
    expected = [facade.tokenizer.decode(t) for t in tokens]
    assert texts == expected
    # Cut off: the answer would have gone on had the budget been larger (the reference, given more steps).
    longer = reference_decode(facade, inputs, x_v, 4 * budget, pick_again(), stop_ids=facade._stop_token_ids(),
                              row_ended=lambda t: answer_line_ended(facade.tokenizer.decode(t)))
    assert [t == long[:len(t)] for t, long in zip(tokens, longer)] == [True] * len(tokens)
    assert cut_off == [len(long) > len(t) for t, long in zip(tokens, longer)]
    assert any(cut_off)  # the budget is short enough to cut answers off
    if temperature == 1.0:  # the sampling path really ran: it left the greedy path
        assert texts != facade.generate(inputs, x_v, max_new_tokens=budget)


def test_constrained_decoding_equals_the_recomputed_reference(facade, batch):
    inputs, x_v = batch
    sequences = {tuple(facade.answer_token_ids(label)): label for label in LABELS}

    def pick(logits, kept):  # the best-scoring next token among the labels that extend each prefix
        ids = []
        for row, prefix in enumerate(kept):
            allowed = sorted({s[len(prefix)] for s in sequences if s[:len(prefix)] == tuple(prefix) and
                              len(s) > len(prefix)}) or [0]
            ids.append(allowed[int(logits[row, allowed].argmax())])
        return ids

    tokens = reference_decode(facade, inputs, x_v, max(map(len, sequences)), pick,
                              row_ended=lambda t: tuple(t) in sequences)
    chosen = facade.constrained_generate(inputs, x_v, LABELS)
    assert chosen == [sequences[tuple(t)] for t in tokens]
    # Rows end at different steps, so rows that finished early ride along while others decode.
    assert len({len(facade.answer_token_ids(label)) for label in chosen}) > 1


class LMWithoutLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward has no `logits_to_keep`: the facade must not pass it one."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        self.generation_config = lm.generation_config

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, position_ids=None, labels=None,
                past_key_values=None, use_cache=None):
        return self.lm(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                       position_ids=position_ids, labels=labels, past_key_values=past_key_values, use_cache=use_cache)


def test_an_lm_without_logits_to_keep_gives_the_same_loss_and_answers(facade, batch):
    import copy

    from peft import LoraConfig, get_peft_model

    from projection_probe.models.facade import MultimodalLM

    inputs, x_v = batch
    plain = MultimodalLM(facade.vision, facade.projector, LMWithoutLogitsToKeep(facade.language_model),
                         facade.tokenizer, template=facade.template, image_token_id=facade.image_token_id).eval()
    assert facade.lm_keeps_logits and not plain.lm_keeps_logits
    with_answers = facade.build_inputs(PROMPTS[:2], answers=["dotted", "striped and banded"])
    with torch.no_grad():
        assert plain.loss(with_answers, x_v[:2]).item() == pytest.approx(facade.loss(with_answers, x_v[:2]).item(),
                                                                         abs=1e-5)
    assert plain.generate(inputs, x_v, max_new_tokens=4) == facade.generate(inputs, x_v, max_new_tokens=4)
    # A peft wrapper's forward names no logits_to_keep but passes it on to the model it wraps.
    lora = copy.deepcopy(facade)
    lora.language_model = get_peft_model(lora.language_model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert lora.lm_keeps_logits
