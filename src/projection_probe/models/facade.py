"""One multimodal model facade over (vision, projector, language_model).

Everything after a loader goes through this class: prompt building, the training loss, greedy
generation, label scoring, constrained decoding and pooled features. The loaders (`loaders.py`: a
llava-hf checkpoint, or separate parts) only decide where the three parts come from, so the CPU demo
runs the same code as LLaVA-1.5-7B. What differs between model families (the image run of a prompt,
the LM's positions and extra inputs) is asked of the facade's family adapter (`families/base.py`).
"""
from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from projection_probe.io import InputError
from projection_probe.models.families.base import LLAVA, FamilyAdapter
from projection_probe.models.templates import IMAGE_PLACEHOLDER, ConversationTemplate, get_template

IGNORE_INDEX = -100


@dataclass
class ModelInputs:
    input_ids: torch.Tensor  # B×T; image positions hold `image_token_id`
    attention_mask: torch.Tensor  # B×T
    image_mask: torch.Tensor  # B×T bool, exactly `num_image_tokens` True per row (where H_v goes)
    labels: torch.Tensor | None = None  # B×T, IGNORE_INDEX except on answer tokens

    def to(self, device) -> ModelInputs:
        return ModelInputs(*(None if t is None else t.to(device) for t in
                             (self.input_ids, self.attention_mask, self.image_mask, self.labels)))


def answer_line_ended(text: str) -> bool:
    """True once the generated text holds a newline after some non-whitespace: a newline ends the
    answer only once the answer has begun, so a model that opens with a blank line (SmolLM2 after
    "ASSISTANT:") still gets to say its label. The parser likewise reads the first non-empty line."""
    return "\n" in text.lstrip()


@functools.cache
def _forward_takes_logits_to_keep(lm_class: type) -> bool:
    return "logits_to_keep" in inspect.signature(lm_class.forward).parameters


def _cache_rows(past, rows: torch.Tensor):
    """A KV cache holding the batch rows `rows` of `past` (repeats allowed), leaving `past` as it is:
    each label chunk extends its own copy."""
    chunk = copy.copy(past)
    chunk.layers = [copy.copy(layer) for layer in past.layers]
    chunk.batch_select_indices(rows)  # rebinds each layer's keys and values to new tensors
    return chunk


class MultimodalLM(nn.Module):
    def __init__(self, vision: nn.Module | None, projector: nn.Module, language_model: nn.Module | None,
                 tokenizer=None, template: str | ConversationTemplate = "v1", image_token_id: int | None = None,
                 image_preprocessing: str = "pad", num_image_tokens: int | None = None,
                 family: FamilyAdapter = LLAVA):
        super().__init__()
        self.family = family
        self.vision = vision
        self.projector = projector
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.template = get_template(template) if isinstance(template, str) else template
        self.image_preprocessing = image_preprocessing
        if num_image_tokens is None and vision is not None:
            num_image_tokens = vision.num_patches
        self.num_image_tokens = num_image_tokens
        if image_token_id is None and tokenizer is not None:
            # Parts-built models have no image token in their vocabulary; the id only fills the
            # placeholder positions, which `embed` overwrites with H_v.
            image_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.image_token_id = image_token_id
        if vision is not None:
            vision.requires_grad_(False)

    # ------------------------------------------------------------------ parts
    @property
    def device(self) -> torch.device:
        return next(self.projector.parameters()).device

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """X_v: B×N×D_v from the frozen vision tower."""
        if self.vision is None:
            raise RuntimeError("this facade was loaded without its vision tower")
        with torch.no_grad():
            return self.vision(pixel_values.to(self.device))

    def project(self, x_v: torch.Tensor) -> torch.Tensor:
        """H_v: B×N×D_lm."""
        weight = next(self.projector.parameters())
        return self.projector(x_v.to(device=weight.device, dtype=weight.dtype))

    def pooled_features(self, x_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pre, post): X_v and H_v mean-pooled over the patch tokens. Never touches the LLM."""
        return x_v.float().mean(dim=1), self.project(x_v).float().mean(dim=1)

    # ------------------------------------------------------------------ prompts
    @property
    def eos_text(self) -> str:
        return self.tokenizer.eos_token or ""

    @property
    def pad_token_id(self) -> int:
        """The id that fills padding: the tokenizer's pad token, else its EOS. Padded positions are
        never attended to nor scored, so the id does not change a result."""
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id
        if pad_id is None:
            raise InputError(f"tokenizer {self.tokenizer.name_or_path} has neither a pad nor an EOS token to pad with")
        return pad_id

    def _require_lm(self):
        if self.language_model is None or self.tokenizer is None:
            raise RuntimeError("this facade was loaded without its language model")

    def prompt_token_ids(self, human_turn: str) -> tuple[list[int], int]:
        """Token ids of the templated prompt and the index of its first image position."""
        ids, is_image = self._prompt_ids_and_image_positions(human_turn)
        return ids, is_image.index(True)

    def _prompt_ids_and_image_positions(self, human_turn: str) -> tuple[list[int], list[bool]]:
        """Token ids of the templated prompt and, per id, whether H_v goes there.

        The text is split at `<image>`, the chunks are tokenized separately and the family's image
        run is spliced in between: LLaVA's `tokenizer_image_token`."""
        text = self.template.render_prompt(human_turn)
        if text.count(IMAGE_PLACEHOLDER) != 1:
            raise InputError(f"prompt must contain exactly one {IMAGE_PLACEHOLDER}: {human_turn[:80]!r}")
        before, after = text.split(IMAGE_PLACEHOLDER)
        ids = self.tokenizer(before, add_special_tokens=True).input_ids
        run, run_is_image = self.family.image_run(self.image_token_id, self.num_image_tokens, self.tokenizer)
        is_image = [False] * len(ids) + run_is_image
        ids = ids + run
        if after:
            tail = self.tokenizer(after, add_special_tokens=False).input_ids
            ids, is_image = ids + tail, is_image + [False] * len(tail)
        return ids, is_image

    def answer_token_ids(self, answer: str) -> list[int]:
        """The answer's ids (EOS included) as the whole conversation tokenizes them, which is what
        LLaVA trains on (`preprocess_v1` tokenizes and masks the conversation): tokenized after the
        template text that precedes every answer, whose own ids are then cut off. Tokenized alone, a
        SentencePiece tokenizer can give the answer an extra leading `▁`."""
        return self._ids_after(self.template.answer_context, self.template.render_answer(answer, self.eos_text))

    def _ids_after(self, context: str, text: str) -> list[int]:
        head = self.tokenizer(context, add_special_tokens=False).input_ids if context else []
        whole = self.tokenizer(context + text, add_special_tokens=False).input_ids
        if whole[:len(head)] != head:
            raise InputError(f"tokenizer {self.tokenizer.name_or_path}: the answer {text!r} merges with the "
                             f"text before it ({context[-40:]!r}) into other tokens, so its own tokens inside "
                             "the conversation are not defined; the template and this tokenizer do not fit")
        return whole[len(head):]

    def conversation_answer_ids(self, human_turn: str, answer: str) -> list[int]:
        """The answer's ids inside this very conversation (the training target), refused unless they are
        the ids that `score_labels` and `constrained_generate` score."""
        after = self.template.render_prompt(human_turn).split(IMAGE_PLACEHOLDER, 1)[1]
        text = self.template.render_answer(answer, self.eos_text)
        ids = self._ids_after(after, text)
        if ids != self.answer_token_ids(answer):
            raise InputError(f"tokenizer {self.tokenizer.name_or_path}: the answer {text!r} tokenizes as {ids} "
                             f"after this prompt but as {self.answer_token_ids(answer)} after "
                             f"{self.template.answer_context!r}; training and scoring would disagree")
        return ids

    def build_inputs(self, prompts: list[str], answers: list[str] | None = None,
                     padding_side: str | None = None, max_length: int | None = None) -> ModelInputs:
        """Token ids for a batch. With `answers`, the answer tokens are appended and are the only
        positions whose labels are not IGNORE_INDEX. Padding defaults to right for training and left
        for generation and scoring."""
        self._require_lm()
        padding_side = padding_side or ("right" if answers is not None else "left")
        seqs, label_seqs, image_positions = [], [], []
        for i, prompt in enumerate(prompts):
            ids, is_image = self._prompt_ids_and_image_positions(prompt)
            image_positions.append(is_image)
            labels = [IGNORE_INDEX] * len(ids)
            if answers is not None:
                answer_ids = self.conversation_answer_ids(prompt, answers[i])
                ids = ids + answer_ids
                labels = labels + answer_ids
            if max_length is not None and len(ids) > max_length:
                raise InputError(f"example {i} has {len(ids)} tokens, more than model_max_length={max_length}")
            seqs.append(ids)
            label_seqs.append(labels)
        width = max(len(s) for s in seqs)
        batch = len(seqs)
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, width), dtype=torch.long)
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long)
        image_mask = torch.zeros((batch, width), dtype=torch.bool)
        for row, (ids, labs) in enumerate(zip(seqs, label_seqs)):
            n = len(ids)
            span = slice(width - n, width) if padding_side == "left" else slice(0, n)
            input_ids[row, span] = torch.tensor(ids)
            attention_mask[row, span] = 1
            labels[row, span] = torch.tensor(labs)
            # Image positions come from the prompt layout, not from the id, because a parts-built
            # model's placeholder id is an ordinary vocabulary id.
            image_mask[row, span.start:span.start + len(image_positions[row])] = torch.tensor(image_positions[row])
        return ModelInputs(input_ids, attention_mask, image_mask, labels if answers is not None else None)

    # ------------------------------------------------------------------ forward
    def embed(self, inputs: ModelInputs, h_v: torch.Tensor) -> torch.Tensor:
        """LM input embeddings with H_v spliced in at the image positions (row-major, like
        LLaVA's `masked_scatter`)."""
        embeddings = self.language_model.get_input_embeddings()
        ids = inputs.input_ids.masked_fill(inputs.image_mask, 0)
        inputs_embeds = embeddings(ids)
        if int(inputs.image_mask.sum()) != h_v.shape[0] * h_v.shape[1]:
            raise ValueError(f"{int(inputs.image_mask.sum())} image positions but H_v has "
                             f"{h_v.shape[0]}×{h_v.shape[1]} tokens")
        mask = inputs.image_mask.unsqueeze(-1).expand_as(inputs_embeds)
        return inputs_embeds.masked_scatter(mask, h_v.to(inputs_embeds.dtype))

    def _lm_forward(self, inputs: ModelInputs, x_v: torch.Tensor, **kwargs):
        self._require_lm()
        inputs = inputs.to(self.device)
        inputs_embeds = self.embed(inputs, self.project(x_v))
        extra = self.family.lm_inputs(inputs.input_ids, inputs.attention_mask, inputs.image_mask, inputs.labels)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=inputs.attention_mask,
                                   position_ids=self._position_ids(inputs), **extra, **kwargs), inputs

    def _position_ids(self, inputs: ModelInputs) -> torch.Tensor:
        """The prompt's positions: B×T, or A×B×T where the family's positions have several axes."""
        return self.family.position_ids(inputs.input_ids, inputs.attention_mask, inputs.image_mask)

    @property
    def lm_keeps_logits(self) -> bool:
        """Whether the language model's forward takes `logits_to_keep` (running its head only at the
        positions asked for). A peft wrapper passes it on to the model it wraps."""
        lm = self.language_model
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        return _forward_takes_logits_to_keep(type(base))

    def logits(self, inputs: ModelInputs, x_v: torch.Tensor) -> torch.Tensor:
        out, _ = self._lm_forward(inputs, x_v)
        return out.logits

    def loss(self, inputs: ModelInputs, x_v: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over the answer tokens only (the same value as the LM's own
        `labels=` loss). The LM head runs only at the positions that predict an answer token in some
        row (`logits_to_keep` as an index tensor): a 49k-token vocabulary head is about a fifth of a
        135M LM's FLOPs, and the answer is a few tokens out of about a hundred."""
        if inputs.labels is None:
            raise ValueError("loss needs inputs built with answers")
        labels = inputs.labels.to(self.device)
        targets = labels[:, 1:]  # position k predicts token k + 1
        if not self.lm_keeps_logits:  # full logits and the LM's own loss
            out, _ = self._lm_forward(inputs, x_v, labels=labels)
            return out.loss
        keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
        out, _ = self._lm_forward(inputs, x_v, logits_to_keep=keep)
        logits = out.logits.float()
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets[:, keep].reshape(-1),
                               ignore_index=IGNORE_INDEX)

    def forward(self, input_ids, attention_mask, image_mask, x_v, labels=None):
        """`nn.Module` entry point for the HF Trainer: returns the loss."""
        return {"loss": self.loss(ModelInputs(input_ids, attention_mask, image_mask, labels), x_v)}

    # ------------------------------------------------------------------ decoding
    def _stop_token_ids(self) -> set[int]:
        ids = set()
        for tok_id in (self.tokenizer.eos_token_id,):
            if tok_id is not None:
                ids.add(int(tok_id))
        gen_cfg = getattr(self.language_model, "generation_config", None)
        eos = getattr(gen_cfg, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(e) for e in eos)
        return ids

    def _prefill(self, inputs: ModelInputs, x_v: torch.Tensor):
        keep = {"logits_to_keep": 1} if self.lm_keeps_logits else {}
        out, moved = self._lm_forward(inputs, x_v, use_cache=True, **keep)
        return out.logits[:, -1].float(), out.past_key_values, moved

    @torch.inference_mode()
    def generate(self, inputs: ModelInputs, x_v: torch.Tensor, max_new_tokens: int = 16,
                 stop_at_newline: bool = True, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> list[str]:
        """Decoding of a left-padded batch: greedy by default, or sampling at `temperature` (the
        authors' 0.2) with a seeded `generator`. Each row stops at EOS or, optionally, at the first
        newline after some non-whitespace text. Returns the decoded new text per row (EOS not included)."""
        return self.generate_answers(inputs, x_v, max_new_tokens, stop_at_newline, temperature, generator)[0]

    @torch.inference_mode()
    def generate_answers(self, inputs: ModelInputs, x_v: torch.Tensor, max_new_tokens: int = 16,
                         stop_at_newline: bool = True, temperature: float = 0.0,
                         generator: torch.Generator | None = None) -> tuple[list[str], list[bool]]:
        """`generate`'s texts, and per row whether it was cut off: it used all `max_new_tokens` tokens
        without reaching EOS or (with `stop_at_newline`) the end of its answer line."""
        tokens = self._greedy(inputs, x_v, max_new_tokens, stop_at_newline, temperature, generator)
        texts = [self.tokenizer.decode(t, skip_special_tokens=False) for t in tokens]
        cut_off = [len(t) >= max_new_tokens and not (stop_at_newline and answer_line_ended(text))
                   for t, text in zip(tokens, texts)]
        return texts, cut_off

    def _greedy(self, inputs, x_v, max_new_tokens, stop_at_newline, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> list[list[int]]:
        """Free-text decoding: a stop token ends a row and is not kept; with `stop_at_newline`, so
        does the end of the answer line."""
        line_ended = (lambda tokens: answer_line_ended(self.tokenizer.decode(tokens))) if stop_at_newline else None
        return self._decode(inputs, x_v, max_new_tokens, self._stop_token_ids(), line_ended,
                            temperature=temperature, generator=generator)

    def _decode(self, inputs: ModelInputs, x_v: torch.Tensor, max_new_tokens: int, stop_ids: set[int],
                row_ended: Callable[[list[int]], bool] | None = None,
                logits_hook: Callable[[torch.Tensor, list[list[int]]], torch.Tensor] | None = None,
                temperature: float = 0.0, generator: torch.Generator | None = None) -> list[list[int]]:
        """The one decoding loop: a KV-cached, left-padded batch, greedy or sampled at `temperature`.

        Each step, `logits_hook` (if any) gets the B×V next-token logits and the tokens generated so
        far per row, and returns the logits to pick from (constrained decoding masks them). A row
        ends at a token in `stop_ids` (not kept) or once `row_ended` holds for its kept tokens;
        ended rows feed padding that no later position attends to. Returns the kept tokens per row."""
        logits, past, moved = self._prefill(inputs, x_v)
        attention_mask = moved.attention_mask
        positions = self._position_ids(moved)[..., -1:]
        batch = logits.shape[0]
        generated: list[list[int]] = [[] for _ in range(batch)]
        done = torch.zeros(batch, dtype=torch.bool)
        for step in range(max_new_tokens):
            if logits_hook is not None:
                logits = logits_hook(logits, generated)
            if temperature > 0:
                probs = torch.softmax(logits.cpu() / temperature, -1)
                next_ids = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                next_ids = logits.argmax(-1).cpu()
            for row in range(batch):
                if done[row]:
                    continue
                tok = int(next_ids[row])
                if tok in stop_ids:
                    done[row] = True
                    continue
                generated[row].append(tok)
                if row_ended is not None and row_ended(generated[row]):
                    done[row] = True
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            next_ids = torch.where(done, torch.full_like(next_ids, self.pad_token_id), next_ids)
            attention_mask = torch.cat([attention_mask, (~done).long().unsqueeze(1).to(attention_mask.device)], 1)
            positions = positions + 1
            out = self.language_model(input_ids=next_ids.unsqueeze(1).to(self.device), attention_mask=attention_mask,
                                      position_ids=positions, past_key_values=past, use_cache=True)
            logits, past = out.logits[:, -1].float(), out.past_key_values
        return generated

    @torch.inference_mode()
    def score_labels(self, inputs: ModelInputs, x_v: torch.Tensor, labels: list[str],
                     chunk_size: int | None = None) -> torch.Tensor:
        """B×K summed log-probabilities of each label's answer tokens (EOS included) after the prompt.

        One prefill per image; the K label continuations then run on copies of its KV cache, batched
        as (image, label) pairs, at most `chunk_size` pairs per forward pass (None: all B·K at once).
        Memory grows with the chunk, not with K: all 47 of DTD's labels × a batch of 32 at once
        would copy a 7B model's ~950-token KV cache 1,504 times. The scores do not depend on it.
        """
        if chunk_size is not None and chunk_size < 1:
            raise InputError(f"the label chunk size (classify.label_chunk_size, --label-chunk-size) must be a "
                             f"positive integer, got {chunk_size}")
        candidates = [self.answer_token_ids(label) for label in labels]
        k, width = len(candidates), max(len(c) for c in candidates)
        cont = torch.full((k, width), self.pad_token_id, dtype=torch.long)
        cont_mask = torch.zeros((k, width), dtype=torch.long)
        for i, c in enumerate(candidates):
            cont[i, :len(c)] = torch.tensor(c)
            cont_mask[i, :len(c)] = 1
        last_logits, past, moved = self._prefill(inputs, x_v)
        batch = last_logits.shape[0]
        first = F.log_softmax(last_logits, -1)[:, cont[:, 0].to(last_logits.device)]  # B×K
        scores = first.cpu()
        if width > 1:
            pairs = batch * k  # pair p = (image p // K, label p % K)
            chunk_size = pairs if chunk_size is None else chunk_size
            next_position = self._position_ids(moved)[..., -1:] + 1
            rest = torch.empty(pairs)
            for start in range(0, pairs, chunk_size):
                pair = torch.arange(start, min(start + chunk_size, pairs))
                image, label = pair // k, pair % k
                on_device = image.to(self.device)
                step_ids = cont[label, :-1].to(self.device)  # P×(W−1)
                step_mask = cont_mask[label, :-1].to(self.device)
                positions = next_position[..., on_device, :] + torch.arange(width - 1, device=self.device)
                out = self.language_model(
                    input_ids=step_ids, attention_mask=torch.cat([moved.attention_mask[on_device], step_mask], 1),
                    position_ids=positions, past_key_values=_cache_rows(past, on_device), use_cache=True)
                logp = F.log_softmax(out.logits.float(), -1)  # P×(W−1)×V
                token_logp = logp.gather(-1, cont[label, 1:].to(self.device).unsqueeze(-1)).squeeze(-1)
                rest[start:start + len(pair)] = (token_logp * cont_mask[label, 1:].to(self.device)).sum(-1).cpu()
                del out, logp
            scores = scores + rest.view(batch, k)
        return scores

    @torch.inference_mode()
    def constrained_generate(self, inputs: ModelInputs, x_v: torch.Tensor, labels: list[str]) -> list[str]:
        """Greedy decoding restricted by a token trie to the labels' answer-token sequences, so that
        every output is a valid label. Unlike `score_labels` it needs no chunking: only the B rows
        decode, and the trie masks their next-token logits, so memory does not grow with the labels."""
        sequences = {label: tuple(self.answer_token_ids(label)) for label in labels}
        trie: dict[tuple[int, ...], set[int]] = {}
        for seq in sequences.values():
            for i in range(len(seq)):
                trie.setdefault(seq[:i], set()).add(seq[i])
        complete = {seq: label for label, seq in sequences.items()}

        def allowed(logits, generated):
            masked = torch.full_like(logits, float("-inf"))
            for row, prefix in enumerate(generated):
                nxt = trie.get(tuple(prefix))
                if nxt:
                    idx = torch.tensor(sorted(nxt), device=logits.device)
                    masked[row, idx] = logits[row, idx]
                else:  # finished rows: anything (ignored)
                    masked[row] = logits[row]
            return masked

        # Stop tokens are part of the label sequences here, so each row ends where it completes one.
        longest = max(len(s) for s in sequences.values())
        tokens = self._decode(inputs, x_v, longest, stop_ids=set(), row_ended=lambda t: tuple(t) in complete,
                              logits_hook=allowed)
        return [complete.get(tuple(t), "") for t in tokens]
