"""The LLaVA path on the real Llama-1/2 SentencePiece vocabulary (Vicuna's, LLaVA-1.5's).

The vocabulary is fetched once from the llama-cpp-python sdist on PyPI and cached outside the
repository (`projection_probe.testing.llama_vocab`); without the registry these tests skip.

Two variants of the same vocabulary are tested: `metaspace`, as transformers builds it today (a leading
space is not doubled), and `legacy`, the dummy-prefix normalisation of sentencepiece itself, which
LLaVA's training used (`use_fast=False`). Under `legacy`, `" dotted</s>"` tokenized alone starts with
an extra `▁` that the whole conversation does not have.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from projection_probe.data.prompts import format_human_turn
from projection_probe.evaluate.classify import resolve_max_new_tokens
from projection_probe.io import InputError
from projection_probe.models.facade import IGNORE_INDEX
from projection_probe.models.loaders import from_llava_hf
from projection_probe.models.templates import ConversationTemplate
from projection_probe.testing.llama_vocab import VocabUnavailable, fetch_llama_vocab, load_llama_tokenizer
from projection_probe.testing.tiny import make_tiny_llava

REPO = Path(__file__).resolve().parents[1]

PAPER = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
DERMNET = PAPER["datasets"]["dermnet"]["classes"]
DTD = PAPER["datasets"]["dtd"]["classes"]
PLANTDOC = PAPER["datasets"]["plantdoc"]["classes"]

# ---------------------------------------------------------------------------------------------------
# Reference: LLaVA's own v1 preprocessing, written from haotian-liu/LLaVA (v1.2.2):
# - llava/conversation.py `conv_vicuna_v1` (SeparatorStyle.TWO, sep " ", sep2 "</s>") and its
#   `get_prompt`: system + " " + "USER: " + human + " " + "ASSISTANT: " + answer + "</s>"; at inference
#   the answer is None and the prompt ends "ASSISTANT:".
# - llava/mm_utils.py `tokenizer_image_token`: split at "<image>", tokenize every chunk with BOS,
#   keep the first chunk's BOS only, put one IMAGE_TOKEN_INDEX (-200) between chunks.
# - llava/train/train.py `preprocess_v1`: the target masks BOS (cur_len = 1), then per "</s>"-round
#   masks `len(tokenizer_image_token(instruction + "ASSISTANT: ")) - 2` tokens (BOS and the trailing
#   "▁" of "ASSISTANT: " are not in the conversation at that place) and advances by the round's length
#   with BOS, which stands for the round's "</s>"; anything after the last round is masked, and a
#   length that does not add up masks the whole example ("tokenization mismatch").
LLAVA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the user's questions.")
LLAVA_IMAGE_TOKEN_INDEX = -200


def llava_tokenizer_image_token(text: str, tokenizer) -> list[int]:
    chunks = [tokenizer(chunk).input_ids for chunk in text.split("<image>")]
    offset = 1 if chunks[0] and chunks[0][0] == tokenizer.bos_token_id else 0
    ids = chunks[0][:offset]
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(LLAVA_IMAGE_TOKEN_INDEX)
        ids += chunk[offset:]
    return ids


def llava_prompt_ids(human: str, tokenizer) -> list[int]:
    return llava_tokenizer_image_token(f"{LLAVA_SYSTEM} USER: {human} ASSISTANT:", tokenizer)


def llava_preprocess_v1(human: str, answer: str, tokenizer) -> tuple[list[int], list[int]]:
    conversation = f"{LLAVA_SYSTEM} USER: {human} ASSISTANT: {answer}</s>"
    input_ids = llava_tokenizer_image_token(conversation, tokenizer)
    target = list(input_ids)
    sep = " ASSISTANT: "
    cur_len = 1
    target[:cur_len] = [IGNORE_INDEX] * cur_len
    for rou in conversation.split("</s>"):
        if rou == "":
            break
        instruction = rou.split(sep)[0] + sep
        round_len = len(llava_tokenizer_image_token(rou, tokenizer))
        instruction_len = len(llava_tokenizer_image_token(instruction, tokenizer)) - 2
        target[cur_len:cur_len + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur_len += round_len
    target[cur_len:] = [IGNORE_INDEX] * (len(target) - cur_len)
    assert cur_len == len(input_ids), "LLaVA itself would mask this example (tokenization mismatch)"
    return input_ids, target


def expand_image(ids: list[int], values: list[int], fill: int, n: int) -> list[int]:
    """`values` aligned with LLaVA's `ids`, its one position per -200 placeholder widened to the
    facade's run of `n` image positions, holding `fill`."""
    out = []
    for i, v in zip(ids, values):
        out += [fill] * n if i == LLAVA_IMAGE_TOKEN_INDEX else [v]
    return out


# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def llama_vocab_dir():
    pytest.importorskip("gguf", reason="transformers reads the GGUF vocabulary with the gguf package")
    try:
        return fetch_llama_vocab()
    except VocabUnavailable as exc:
        pytest.skip(f"the Llama vocabulary could not be fetched: {exc}")


def llama_tokenizer(vocab_dir, variant: str):
    tokenizer = load_llama_tokenizer(vocab_dir)
    if variant == "legacy":
        from tokenizers import normalizers

        backend = tokenizer.backend_tokenizer
        backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        backend.pre_tokenizer = None
    return tokenizer


@pytest.fixture(scope="module", params=["metaspace", "legacy"])
def llama_llava(request, llama_vocab_dir, tmp_path_factory):
    """A tiny random LLaVA with the real Llama tokenizer (plus `<pad>` and `<image>`), loaded through
    `from_llava_hf`. The LM head is scaled up so that greedy choices are not near-ties."""
    tokenizer = llama_tokenizer(llama_vocab_dir, request.param)
    folder = tmp_path_factory.mktemp(f"llava-{request.param}")
    make_tiny_llava(folder, tokenizer=tokenizer)
    facade = from_llava_hf(folder).eval()
    torch.manual_seed(0)
    torch.nn.init.normal_(facade.language_model.lm_head.weight, std=0.5)
    return request.param, facade, folder


def human_turns():
    return [format_human_turn("skin diseases", DERMNET), format_human_turn("textures", DTD),
            format_human_turn("plant leaf diseases", PLANTDOC)]


def test_llama_vocabulary_is_the_llama_tokenizer(llama_vocab_dir):
    tokenizer = load_llama_tokenizer(llama_vocab_dir)
    assert len(tokenizer) == 32002  # 32,000 SentencePiece pieces + <pad> + <image>
    assert tokenizer.convert_tokens_to_ids("<image>") == 32001
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<s>", "</s>")
    assert tokenizer.convert_ids_to_tokens(tokenizer("ASSISTANT: dotted</s>", add_special_tokens=False).input_ids) \
        == ["▁A", "SS", "IST", "ANT", ":", "▁d", "otted", "</s>"]


def test_prompt_and_answer_ids_equal_llava_preprocess_v1(llama_llava):
    variant, facade, _ = llama_llava
    tokenizer, n = facade.tokenizer, facade.num_image_tokens
    humans = human_turns()
    answers = ["Acne and Rosacea Photos", "crosshatched", "Tomato leaf late blight"]
    batch = facade.build_inputs(humans, answers, padding_side="right")
    prompts = facade.build_inputs(humans, padding_side="right")
    for row, (human, answer) in enumerate(zip(humans, answers)):
        ids, target = llava_preprocess_v1(human, answer, tokenizer)
        ids, target = expand_image(ids, ids, facade.image_token_id, n), expand_image(ids, target, IGNORE_INDEX, n)
        width = len(ids)
        assert batch.input_ids[row, :width].tolist() == ids
        assert batch.labels[row, :width].tolist() == target
        assert int(batch.attention_mask[row].sum()) == width
        prompt = llava_prompt_ids(human, tokenizer)
        prompt = expand_image(prompt, prompt, facade.image_token_id, n)
        assert prompts.input_ids[row, :len(prompt)].tolist() == prompt
        # The answer tokenized on its own: under sentencepiece's legacy normalisation it has one more
        # (a leading "▁"), which would have become a training target and a scored token.
        alone = tokenizer(f" {answer}</s>", add_special_tokens=False).input_ids
        in_conversation = [t for t in target if t != IGNORE_INDEX]
        if variant == "legacy":
            assert alone == [tokenizer.convert_tokens_to_ids("▁")] + in_conversation
        else:
            assert alone == in_conversation


def test_label_mask_covers_exactly_the_answer_and_eos(llama_llava):
    _, facade, _ = llama_llava
    tokenizer = facade.tokenizer
    humans = human_turns()[:2]
    answers = ["Atopic Dermatitis Photos", "zigzagged"]
    batch = facade.build_inputs(humans, answers)
    for row, answer in enumerate(answers):
        kept = (batch.labels[row] != IGNORE_INDEX).nonzero().squeeze(-1)
        real = batch.attention_mask[row].nonzero().squeeze(-1)
        # one contiguous run that ends the sequence, its last token EOS
        assert kept.tolist() == list(range(int(real[-1]) - len(kept) + 1, int(real[-1]) + 1))
        ids = batch.labels[row, kept].tolist()
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=False) == f"{answer}</s>"
        assert ids == facade.answer_token_ids(answer)


def brute_force_scores(facade, humans, x_v, labels) -> torch.Tensor:
    """Summed log-probabilities of each label's answer tokens from full-sequence forward passes of the
    whole conversation (prompt + answer), one pass per label."""
    scores = torch.zeros(len(humans), len(labels))
    with torch.no_grad():
        for j, label in enumerate(labels):
            inputs = facade.build_inputs(humans, [label] * len(humans))
            logp = torch.log_softmax(facade.logits(inputs, x_v).float(), -1)
            targets = inputs.labels[:, 1:]
            keep = targets != IGNORE_INDEX
            token_logp = logp[:, :-1].gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            scores[:, j] = (token_logp * keep).sum(-1)
    return scores


def brute_force_constrained(facade, human, x_v, labels) -> str:
    """Greedy decoding over the labels' answer tokens, each step a full-sequence forward pass."""
    sequences = {label: facade.answer_token_ids(label) for label in labels}
    prefix: list[int] = []
    with torch.no_grad():
        while True:
            done = [label for label, seq in sequences.items() if seq == prefix]
            if done:
                return done[0]
            allowed = sorted({seq[len(prefix)] for seq in sequences.values()
                              if len(seq) > len(prefix) and seq[:len(prefix)] == prefix})
            inputs = facade.build_inputs([human])
            ids = torch.cat([inputs.input_ids, torch.tensor([prefix], dtype=torch.long)], 1)
            mask = torch.ones_like(ids)
            image_mask = torch.cat([inputs.image_mask, torch.zeros(1, len(prefix), dtype=torch.bool)], 1)
            logits = facade.logits(type(inputs)(ids, mask, image_mask), x_v[:1])[0, -1]
            prefix = prefix + [allowed[int(logits[allowed].argmax())]]


@pytest.mark.slow  # about 15 s per tokenizer variant on the 2-core machine
def test_score_labels_and_constrained_match_full_sequence_scoring(llama_llava):
    _, facade, _ = llama_llava
    # DermNet classes whose answer tokens share first pieces ("▁Vas", "▁Ac"), and the longest class.
    labels = [c for c in DERMNET if c.startswith(("Vas", "Ac", "Systemic", "Eczema"))]
    humans = [format_human_turn("skin diseases", labels), format_human_turn("skin diseases", labels[::-1])]
    torch.manual_seed(1)
    x_v = torch.randn(2, facade.num_image_tokens, facade.vision.hidden_size)
    inputs = facade.build_inputs(humans)
    scores = facade.score_labels(inputs, x_v, labels)
    expected = brute_force_scores(facade, humans, x_v, labels)
    assert torch.allclose(scores, expected, atol=1e-3, rtol=1e-4)
    chosen = facade.constrained_generate(inputs, x_v, labels)
    assert chosen == [brute_force_constrained(facade, h, x_v[i:i + 1], labels) for i, h in enumerate(humans)]


def test_max_new_tokens_is_derived_per_dataset_from_the_longest_class(llama_llava, caplog):
    _, facade, _ = llama_llava
    # the longest class's answer tokens, EOS included, + 4
    assert resolve_max_new_tokens(facade, DERMNET, None) == 20 + 4  # "Actinic Keratosis ... Lesions"
    assert resolve_max_new_tokens(facade, DTD, None) == 6 + 4
    assert resolve_max_new_tokens(facade, PLANTDOC, None) == 11 + 4
    with caplog.at_level(logging.WARNING, logger="projection_probe.evaluate.classify"):
        assert resolve_max_new_tokens(facade, DERMNET, 16) == 16  # config/paper.yaml's former value
        assert "'Actinic Keratosis Basal Cell Carcinoma and other Malignant Lesions'" in caplog.text
        assert "max_new_tokens is 16" in caplog.text
        caplog.clear()
        assert resolve_max_new_tokens(facade, DERMNET, 20) == 20
        assert caplog.text == ""


def test_tokenizer_without_image_token_is_refused(llama_llava, tmp_path):
    import json

    _, _, folder = llama_llava
    copy = tmp_path / "llava"
    shutil.copytree(folder, copy)
    tokenizer_file, config_file = copy / "tokenizer.json", copy / "tokenizer_config.json"
    spec = json.loads(tokenizer_file.read_text())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] != "<image>"]
    tokenizer_file.write_text(json.dumps(spec))
    settings = json.loads(config_file.read_text())
    settings.pop("extra_special_tokens", None)
    config_file.write_text(json.dumps(settings))
    with pytest.raises(InputError, match=f"{copy}.*no <image> token"):
        from_llava_hf(copy)


def test_answer_that_cannot_be_aligned_is_refused(llama_llava):
    _, facade, folder = llama_llava
    # The answer continues the word that ends the prompt, so the prompt's last token changes.
    template = facade.template
    facade.template = ConversationTemplate("split-word", "USER: {human} AS", "SISTANT: {answer}{eos}")
    try:
        with pytest.raises(InputError, match=f"tokenizer {folder}"):
            facade.answer_token_ids("dotted")
        with pytest.raises(InputError, match=f"tokenizer {folder}"):
            facade.build_inputs([human_turns()[1]], ["dotted"])
    finally:
        facade.template = template


def test_cache_folder_honours_xdg_cache_home(monkeypatch, tmp_path):
    from projection_probe.testing.llama_vocab import cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "projection-probe" / "llama-spm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "projection-probe" / "llama-spm"


def test_unreachable_registry_is_reported_and_leaves_no_file(monkeypatch, tmp_path):
    # pip reads its index and retry settings from the environment
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(VocabUnavailable, match="could not reach the package registry"):
        fetch_llama_vocab(tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
