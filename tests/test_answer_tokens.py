"""The answer's token ids come from the whole conversation, and a tokenizer under which the ids inside a
conversation differ from the ids that scoring uses is refused, naming the tokenizer folder. (The real
Llama tokenizer is in test_llama_tokenizer.py; this stand-in needs no download.)"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from torch import nn

from projection_probe.io import InputError
from projection_probe.models.facade import MultimodalLM


class ContextSensitiveTokenizer:
    """One id per character, except that after a "¶" every "d" becomes id 1000: the answer then
    tokenizes differently inside a conversation whose human turn holds a "¶"."""

    name_or_path = "/models/context-sensitive-tokenizer"
    eos_token, eos_token_id, pad_token_id = "</s>", 2, 0

    def __call__(self, text, add_special_tokens=True):
        ids, seen_mark = [], False
        for ch in text:
            seen_mark = seen_mark or ch == "¶"
            ids.append(1000 if seen_mark and ch == "d" else ord(ch))
        return SimpleNamespace(input_ids=([1] if add_special_tokens else []) + ids)


@pytest.fixture
def facade():
    return MultimodalLM(None, nn.Linear(2, 2), None, ContextSensitiveTokenizer(), num_image_tokens=1)


def test_answer_ids_are_cut_from_the_conversation(facade):
    # " ASSISTANT:" is cut off: what remains is the answer with its EOS string
    assert facade.answer_token_ids("dotted") == [ord(c) for c in " dotted</s>"]
    assert facade.conversation_answer_ids("<image>\nWhich texture?", "dotted") == facade.answer_token_ids("dotted")


def test_answer_that_tokenizes_differently_in_its_conversation_is_refused(facade):
    with pytest.raises(InputError, match="tokenizer /models/context-sensitive-tokenizer: the answer"):
        facade.conversation_answer_ids("<image>\n¶ Which texture?", "dotted")
