"""Conversation templates. The project builds LLaVA's strings itself, so that training, generation and
scoring all see exactly the same tokens whichever tokenizer is used.

- `v1`: LLaVA-1.5's `conv_vicuna_v1`, used by `finetune_task.sh`: system prompt, `USER:`/`ASSISTANT:`
  turns separated by a space, the answer closed by the tokenizer's EOS string.
- `plain`: LLaVA's `--version plain` (the authors' `pretrain.sh`): the whole human turn is replaced by
  the image, and the answer ends with a newline (no EOS).
- `llava_hf`: the transformers port's chat template, `USER: <image>\n{text} ASSISTANT:`, no system prompt.
- `chatml`: the ChatML turns of SmolLM2-Instruct and other ChatML-trained LMs (the demo's LM), without a
  system turn: `<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n`, the answer closed by
  the tokenizer's EOS string (`<|im_end|>` there). An instruction-tuned LM answers in the format it
  was tuned on, as LLaVA's Vicuna does in `v1`.
"""
from __future__ import annotations

from dataclasses import dataclass

from projection_probe.io import InputError
from projection_probe.names import IMAGE_PLACEHOLDER

LLAVA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class ConversationTemplate:
    name: str
    prompt_format: str  # fields: {human}
    answer_format: str  # fields: {answer}, {eos}
    keeps_human_text: bool = True

    def render_prompt(self, human_turn: str) -> str:
        if IMAGE_PLACEHOLDER not in human_turn:
            raise InputError(f"prompt has no {IMAGE_PLACEHOLDER} placeholder: {human_turn[:80]!r}")
        human = human_turn if self.keeps_human_text else IMAGE_PLACEHOLDER
        return self.prompt_format.format(human=human)

    def render_answer(self, answer: str, eos: str) -> str:
        return self.answer_format.format(answer=answer, eos=eos)

    @property
    def answer_context(self) -> str:
        """The template text that always precedes the answer (`" ASSISTANT:"` in `v1`): the answer is
        tokenized after it, as inside the whole conversation."""
        return self.prompt_format.rsplit("{human}", 1)[-1]


TEMPLATES = {
    "v1": ConversationTemplate("v1", LLAVA_V1_SYSTEM + " USER: {human} ASSISTANT:", " {answer}{eos}"),
    "plain": ConversationTemplate("plain", "{human}", "{answer}\n", keeps_human_text=False),
    "llava_hf": ConversationTemplate("llava_hf", "USER: {human} ASSISTANT:", " {answer}{eos}"),
    "chatml": ConversationTemplate("chatml", "<|im_start|>user\n{human}<|im_end|>\n<|im_start|>assistant\n",
                                   "{answer}{eos}"),
}


def get_template(name: str) -> ConversationTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise InputError(f"conversation template {name!r} is unknown; use one of {sorted(TEMPLATES)}") from None
