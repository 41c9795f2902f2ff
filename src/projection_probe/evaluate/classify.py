"""The MLLM classifies the test split, three ways, all batched:

- `generate`: greedy (or temperature) decoding of a left-padded batch, stopped at EOS/newline, then
  the parser (told which answers were cut off at `max_new_tokens`);
- `constrained`: decoding restricted to the class strings by a token trie: always a valid class;
- `likelihood`: the class whose answer tokens have the highest summed log-probability, from one
  prefill per image whose KV cache is reused for all K classes, `label_chunk_size` (image, class)
  continuations per forward pass.
"""
from __future__ import annotations

import logging
import time

import pandas as pd
import torch
from tqdm import tqdm

from projection_probe.evaluate.parse import PARSERS, SEVERAL_CLASSES, read_answer
from projection_probe.hyperparams import ClassifyHyperparams, with_fields
from projection_probe.io import InputError
from projection_probe.names import MODES

log = logging.getLogger(__name__)

# (image, class) continuations per forward pass of `likelihood` mode: memory and speed, never the
# scores (the benchmarks and `plan` read it).
LABEL_CHUNK_SIZE = ClassifyHyperparams.label_chunk_size


# Room beyond the longest class's answer tokens (EOS included) for quotes or a period around it.
MAX_NEW_TOKENS_MARGIN = 4


def resolve_max_new_tokens(facade, classes: list[str], configured: int | None) -> int:
    """`configured`, or the longest class's answer tokens plus `MAX_NEW_TOKENS_MARGIN` when it is None.
    A configured budget too short for a class is kept, with a warning naming that class."""
    lengths = {c: len(facade.answer_token_ids(c)) for c in classes}
    longest = max(lengths, key=lengths.get)
    if configured is None:
        return lengths[longest] + MAX_NEW_TOKENS_MARGIN
    too_long = [c for c, n in lengths.items() if n > configured]
    if too_long:
        log.warning("classify.max_new_tokens is %d, shorter than the class %r (%d tokens with its end token)%s; "
                    "such answers are cut off and read by the parser's cut-off rule. Leave the key out to "
                    "use %d (the longest class + %d)", configured, longest, lengths[longest],
                    f" and {len(too_long) - 1} other classes" if len(too_long) > 1 else "",
                    lengths[longest] + MAX_NEW_TOKENS_MARGIN, MAX_NEW_TOKENS_MARGIN)
    return configured


def classify_records(facade, records: list[dict], cache, classes: list[str], mode: str = "generate",
                     hp: ClassifyHyperparams | None = None, **fields) -> pd.DataFrame:
    """Classify `records` in one mode with the settings `hp` (or its fields as keywords).
    `max_new_tokens` None: derived from the classes (`resolve_max_new_tokens`)."""
    hp = with_fields(ClassifyHyperparams, hp, fields)
    batch_size, max_new_tokens, temperature, seed = hp.batch_size, hp.max_new_tokens, hp.temperature, hp.seed
    parser, several_classes = hp.parser, hp.several_classes
    if mode not in MODES:
        raise InputError(f"classify.mode: unknown value {mode!r}; use one of {MODES}")
    if parser not in PARSERS:
        raise InputError(f"classify.parser: unknown value {parser!r}; use one of {PARSERS}")
    if several_classes not in SEVERAL_CLASSES:
        raise InputError(f"classify.several_classes: unknown value {several_classes!r}; use one of {SEVERAL_CLASSES}")
    if mode == "generate":
        max_new_tokens = resolve_max_new_tokens(facade, classes, max_new_tokens)
        log.info("generating up to %d new tokens per answer", max_new_tokens)
    cache_mode, model_mode = getattr(cache, "image_preprocessing", None), getattr(facade, "image_preprocessing", None)
    if cache_mode and model_mode and cache_mode != model_mode:
        log.warning("the vision cache was built with %r preprocessing but the model expects %r; the workflow "
                    "pairs them per setting (settings.<name>.image_preprocessing)", cache_mode, model_mode)
    generator = torch.Generator().manual_seed(seed)
    eos_strings = tuple(s for s in (facade.tokenizer.eos_token, "</s>", "<|im_end|>", "<|endoftext|>") if s)
    rows = []
    started = time.perf_counter()
    for start in tqdm(range(0, len(records), batch_size), desc=f"classify ({mode})", unit="batch"):
        batch = records[start:start + batch_size]
        prompts = [r["conversations"][0]["value"] for r in batch]
        x_v = cache.select([r["image"] for r in batch]).float()
        inputs = facade.build_inputs(prompts)
        if mode == "generate":
            raws, cut_off = facade.generate_answers(inputs, x_v, max_new_tokens=max_new_tokens,
                                                    stop_at_newline=hp.stop_at_newline, temperature=temperature,
                                                    generator=generator)
            parsed = [read_answer(raw, classes, parser, eos_strings, cut, several_classes)
                      for raw, cut in zip(raws, cut_off)]
        elif mode == "constrained":
            raws = facade.constrained_generate(inputs, x_v, classes)
            parsed = [raw or None for raw in raws]
        else:
            scores = facade.score_labels(inputs, x_v, classes, chunk_size=hp.label_chunk_size)
            raws = [classes[int(i)] for i in scores.argmax(-1)]
            parsed = raws
        for record, raw, label in zip(batch, raws, parsed):
            rows.append({"image_path": record["image"], "label": record["label"], "raw": raw,
                         "parsed": label or "", "valid": label is not None and label != "", "mode": mode})
    elapsed = time.perf_counter() - started
    log.info("classified %d images in %.1f s (%.2f images/s, mode %s)", len(records), elapsed,
             len(records) / max(elapsed, 1e-9), mode)
    return pd.DataFrame(rows, columns=["image_path", "label", "raw", "parsed", "valid", "mode"])


def test_records(prompts_path, split: str = "test") -> list[dict]:
    from projection_probe.io import read_jsonl

    records = [r for r in read_jsonl(prompts_path) if r.get("split") == split]
    if not records:
        raise InputError(f"{prompts_path}: no {split} records; check the dataset's manifest")
    return records
