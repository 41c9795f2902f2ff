"""The facade against transformers' LlavaForConditionalGeneration, and its shared code path."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from projection_probe.models.facade import IGNORE_INDEX, MultimodalLM
from projection_probe.models.loaders import from_llava_hf, load_facade, load_llava_hf_vision_and_projector
from projection_probe.testing.tiny import make_tiny_llava

PROMPT = ('<image>\nClassify this image into one of the following categories relating to textures: '
          '"banded", "dotted", "striped". Only output a single final classification label and NOTHING ELSE.')
LABELS = ["banded", "dotted", "striped"]


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llava")
    model, tokenizer = make_tiny_llava(path)
    return path, model, tokenizer


@pytest.fixture(scope="module")
def facade(tiny_llava):
    return from_llava_hf(tiny_llava[0]).eval()


def random_images(n, size=40, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 7 * i, 3), dtype=np.uint8)) for i in range(n)]


def test_logits_equal_llava_for_conditional_generation(tiny_llava, facade):
    _, hf_model, _ = tiny_llava
    pixels = facade.vision.preprocess_images(random_images(1), "pad")
    inputs = facade.build_inputs([PROMPT])
    # HF needs its own image token at the image positions.
    assert bool((inputs.input_ids[inputs.image_mask] == hf_model.config.image_token_id).all())
    with torch.no_grad():
        ours = facade.logits(inputs, facade.encode_images(pixels))
        theirs = hf_model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                          pixel_values=pixels).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_generated_tokens_equal_llava_generate(tiny_llava, facade):
    _, hf_model, tokenizer = tiny_llava
    pixels = facade.vision.preprocess_images(random_images(1, seed=3), "pad")
    inputs = facade.build_inputs([PROMPT])
    ours = facade._greedy(inputs, facade.encode_images(pixels), max_new_tokens=6, stop_at_newline=False)[0]
    theirs = hf_model.generate(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask,
                               pixel_values=pixels, max_new_tokens=6, do_sample=False)[0, inputs.input_ids.shape[1]:]
    theirs = [t for t in theirs.tolist() if t != tokenizer.eos_token_id]
    assert ours == theirs[:len(ours)] and len(ours) == len(theirs)


def test_labels_masked_except_answer_tokens(facade):
    inputs = facade.build_inputs([PROMPT, PROMPT + " x"], answers=["dotted", "striped"])
    for row, label in enumerate(["dotted", "striped"]):
        kept = inputs.labels[row][inputs.labels[row] != IGNORE_INDEX]
        text = facade.tokenizer.decode(kept)
        assert text.strip() == f"{label}</s>"
        assert not bool(inputs.image_mask[row][inputs.labels[row] != IGNORE_INDEX].any())


def test_image_positions_match_vision_tokens(facade):
    inputs = facade.build_inputs([PROMPT, PROMPT.replace("textures", "many kinds of textures")])
    assert inputs.image_mask.sum(1).tolist() == [facade.num_image_tokens] * 2
    # Left padding: the shorter row is padded on the left.
    assert inputs.attention_mask[0, 0] == 0 and inputs.attention_mask[1, 0] == 1


def test_batched_generation_equals_unbatched(facade):
    pixels = facade.vision.preprocess_images(random_images(3, seed=5), "pad")
    x_v = facade.encode_images(pixels)
    prompts = [PROMPT, PROMPT.replace("textures", "surface textures of many kinds"), PROMPT]
    batched = facade.generate(facade.build_inputs(prompts), x_v, max_new_tokens=5)
    single = [facade.generate(facade.build_inputs([p]), x_v[i:i + 1], max_new_tokens=5)[0]
              for i, p in enumerate(prompts)]
    assert batched == single


def brute_force_label_logprob(facade, prompt, x_v, label):
    inputs = facade.build_inputs([prompt], answers=[label])
    with torch.no_grad():
        logits = facade.logits(inputs, x_v)
    logp = torch.log_softmax(logits[0, :-1].float(), -1)
    targets = inputs.labels[0, 1:]
    keep = targets != IGNORE_INDEX
    return logp[keep].gather(-1, targets[keep].unsqueeze(-1)).sum().item()


def test_likelihood_scores_equal_brute_force_k_passes(facade):
    pixels = facade.vision.preprocess_images(random_images(2, seed=7), "pad")
    x_v = facade.encode_images(pixels)
    prompts = [PROMPT, PROMPT.replace("textures", "surface textures")]
    labels = LABELS + ["striped and banded"]
    scores = facade.score_labels(facade.build_inputs(prompts), x_v, labels)
    for i, prompt in enumerate(prompts):
        for j, label in enumerate(labels):
            expected = brute_force_label_logprob(facade, prompt, x_v[i:i + 1], label)
            assert scores[i, j].item() == pytest.approx(expected, abs=1e-4)


def test_chunked_label_scores_equal_unchunked(facade):
    """Scoring (image, label) pairs in chunks bounds memory and must not change a single bit."""
    from projection_probe.io import InputError

    pixels = facade.vision.preprocess_images(random_images(2, seed=17), "pad")
    x_v = facade.encode_images(pixels)
    inputs = facade.build_inputs([PROMPT, PROMPT.replace("textures", "surface textures")])
    labels = LABELS + ["striped and banded"]  # answers of different lengths: padded continuations
    unchunked = facade.score_labels(inputs, x_v, labels)
    assert unchunked.shape == (2, len(labels)) and torch.isfinite(unchunked).all()
    for chunk_size in (1, 3, 2 * len(labels)):  # 3 leaves a shorter last chunk
        assert torch.equal(facade.score_labels(inputs, x_v, labels, chunk_size=chunk_size), unchunked), chunk_size
    with pytest.raises(InputError, match="label_chunk_size"):
        facade.score_labels(inputs, x_v, labels, chunk_size=0)


def test_constrained_outputs_are_always_labels(facade):
    pixels = facade.vision.preprocess_images(random_images(4, seed=11), "pad")
    x_v = facade.encode_images(pixels)
    out = facade.constrained_generate(facade.build_inputs([PROMPT] * 4), x_v, LABELS + ["striped and banded"])
    assert all(o in LABELS + ["striped and banded"] for o in out)


def test_constrained_picks_the_greedy_path_through_the_trie(facade):
    """With one label per first token, constrained decoding must pick the label whose first token
    the model prefers, the same as ranking by first-token log-probability."""
    pixels = facade.vision.preprocess_images(random_images(3, seed=13), "pad")
    x_v = facade.encode_images(pixels)
    inputs = facade.build_inputs([PROMPT] * 3)
    firsts = [facade.answer_token_ids(label)[0] for label in LABELS]
    assert len(set(firsts)) == len(LABELS)
    logits, _, _ = facade._prefill(inputs, x_v)
    expected = [LABELS[int(i)] for i in logits[:, firsts].argmax(-1)]
    assert facade.constrained_generate(inputs, x_v, LABELS) == expected


def test_loss_is_the_mean_cross_entropy_of_the_answer_tokens_alone(facade):
    """Masked prompt tokens add no loss: the loss equals the cross-entropy of each row's answer tokens
    (found as the last tokens of the unpadded row, not through the labels), each scored from the
    logits one position before it, averaged over the batch's answer tokens."""
    pixels = facade.vision.preprocess_images(random_images(2), "pad")
    x_v = facade.encode_images(pixels)
    answers = ["dotted", "striped and banded"]
    inputs = facade.build_inputs([PROMPT, PROMPT.replace("textures", "surface textures")], answers=answers)
    with torch.no_grad():
        loss = facade.loss(inputs, x_v)
        log_probs = torch.log_softmax(facade.logits(inputs, x_v).float(), -1)
    terms = []
    for row, answer in enumerate(answers):
        ids = facade.answer_token_ids(answer)
        end = int(inputs.attention_mask[row].sum())  # right-padded: the row's tokens come first
        assert inputs.input_ids[row, end - len(ids):end].tolist() == ids
        terms += [-log_probs[row, end - len(ids) + i - 1, token] for i, token in enumerate(ids)]
    assert len({len(facade.answer_token_ids(a)) for a in answers}) > 1  # rows of different answer lengths
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-5, abs=1e-6)


def test_answer_only_loss_equals_the_full_logits_loss_and_its_gradients(facade):
    """The loss computes the LM head only where an answer token is predicted; value and gradients
    must equal the LM's own loss over full logits (rows with different prompt lengths, right-padded)."""
    pixels = facade.vision.preprocess_images(random_images(3, seed=5), "pad")
    x_v = facade.encode_images(pixels)
    prompts = [PROMPT, PROMPT.replace("textures", "surface textures of fabrics"), PROMPT]
    inputs = facade.build_inputs(prompts, answers=["dotted", "banded", "striped and banded"])
    facade.zero_grad()
    ours = facade.loss(inputs, x_v)
    ours.backward()
    grads = {n: p.grad.clone() for n, p in facade.named_parameters() if p.grad is not None}
    facade.zero_grad()
    out, _ = facade._lm_forward(inputs, x_v, labels=inputs.labels)
    out.loss.backward()
    assert ours.item() == pytest.approx(out.loss.item(), rel=1e-5, abs=1e-6)
    assert grads and all(torch.allclose(grads[n], p.grad, atol=1e-5, rtol=1e-4)
                         for n, p in facade.named_parameters() if p.grad is not None)
    facade.zero_grad()


def test_pooled_features_need_no_language_model(tiny_llava, tmp_path):
    path = tiny_llava[0]
    vision, projector, _ = load_llava_hf_vision_and_projector(path)
    lean = MultimodalLM(vision, projector, None)
    full = from_llava_hf(path)
    pixels = vision.preprocess_images(random_images(2), "pad")
    pre_a, post_a = lean.pooled_features(lean.encode_images(pixels))
    pre_b, post_b = full.pooled_features(full.encode_images(pixels))
    assert torch.allclose(pre_a, pre_b, atol=1e-5) and torch.allclose(post_a, post_b, atol=1e-5)
    assert post_a.shape == (2, full.language_model.config.hidden_size)


def test_load_facade_from_spec_with_base_pointer(tiny_llava, tmp_path):
    from projection_probe.models.loaders import save_projector
    from projection_probe.models.spec import FacadeSpec

    base = tmp_path / "base"
    FacadeSpec(llava_hf=str(tiny_llava[0]), template="v1").to_json(base)
    facade = load_facade(base)
    with torch.no_grad():
        for p in facade.projector.parameters():
            p.add_(1.0)
    tuned = tmp_path / "tuned"
    save_projector(facade, tuned / "projector.safetensors")
    FacadeSpec(base="../base", projector={"weights": "projector.safetensors"}).to_json(tuned)
    reloaded = load_facade(tuned, with_language_model=False)
    for a, b in zip(reloaded.projector.parameters(), facade.projector.parameters()):
        assert torch.equal(a, b)
    assert reloaded.language_model is None


@pytest.mark.parametrize("text, ended", [(" \n", False), ("\n\n", False), (" coat", False), (" coat\n", True),
                                         ("\n coat\nmore", True), ("coat \n", True)])
def test_newline_stops_only_after_the_answer_began(text, ended):
    from projection_probe.models.facade import answer_line_ended

    assert answer_line_ended(text) is ended
