"""Training data: LLaVA-format prompt records joined with the cached vision features X_v.

The vision tower is frozen in every setting, so training never decodes an image: each example is
(human turn, answer, X_v row of its image). The collator lets the facade tokenize the batch, so the
training tokens are exactly those that classification later sees.
"""
from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from projection_probe.io import InputError, read_jsonl
from projection_probe.names import IMAGE_PLACEHOLDER

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainExample:
    prompt: str  # human turn containing <image>
    answer: str  # gpt turn: the bare label (or a caption for alignment)
    image: str  # image_path: the key into the vision cache
    label: str  # what stratified subsetting groups by


def read_train_examples(prompts_jsonl: str | Path, split: str = "train") -> list[TrainExample]:
    """The records of one split of a `prompts_seed{seed}.jsonl`, validated."""
    records = read_jsonl(prompts_jsonl)
    examples = []
    for line, record in enumerate(records, 1):
        for key in ("image", "split", "label", "conversations"):
            if key not in record:
                raise InputError(f"{prompts_jsonl}:{line}: key {key!r} missing; rerun build-prompts")
        if record["split"] != split:
            continue
        turns = record["conversations"]
        if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, dict) and "value" in t
                                                                   for t in turns[:2]):
            raise InputError(f"{prompts_jsonl}:{line}: conversations must hold a human and a gpt turn with 'value'")
        if IMAGE_PLACEHOLDER not in turns[0]["value"]:
            raise InputError(f"{prompts_jsonl}:{line}: the human turn has no {IMAGE_PLACEHOLDER} placeholder")
        examples.append(TrainExample(turns[0]["value"], turns[1]["value"], record["image"], record["label"]))
    if not examples:
        raise InputError(f"{prompts_jsonl}: no records with split={split!r}")
    return examples


def stratified_subset(examples: list[TrainExample], max_examples: int | None, seed: int) -> list[TrainExample]:
    """At most `max_examples` examples with the class proportions of `examples` (largest-remainder
    quotas, at least one per class while the budget allows), drawn with `seed`. Returned in their
    original order; the Trainer shuffles. `None` or a budget ≥ len(examples) keeps everything.

    Only the CPU demo uses this, to bound training time; the paper trains on the full train split."""
    if max_examples is None or max_examples >= len(examples):
        return list(examples)
    if max_examples < 1:
        raise InputError(f"max_examples={max_examples}: must be a positive number of examples (or unset)")
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_label[ex.label].append(i)
    labels = sorted(by_label)
    total = len(examples)
    exact = {c: max_examples * len(by_label[c]) / total for c in labels}
    quota = {c: int(exact[c]) for c in labels}
    # Classes that the floor left empty come first, then the largest fractional remainders.
    order = sorted(labels, key=lambda c: (quota[c] > 0, -(exact[c] - quota[c]), c))
    for c in order:
        if sum(quota.values()) >= max_examples:
            break
        if quota[c] < len(by_label[c]):
            quota[c] += 1
    rng = random.Random(seed)
    chosen = []
    for c in labels:
        chosen.extend(rng.sample(by_label[c], quota[c]))
    return [examples[i] for i in sorted(chosen)]


class CachedFeatureDataset(Dataset):
    """Examples joined with their rows of a `VisionCache` (no copy of X_v is made)."""

    def __init__(self, examples: list[TrainExample], cache, source: str = "vision cache"):
        self.examples = list(examples)
        try:
            self.rows = cache.rows([ex.image for ex in self.examples])
        except InputError as e:
            raise InputError(f"{source}: {e}") from None
        self.x_v = cache.x_v

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        ex = self.examples[index]
        return {"prompt": ex.prompt, "answer": ex.answer, "x_v": self.x_v[self.rows[index]]}


class MultimodalCollator:
    """Tokenizes a batch with `facade.build_inputs` (right padding, labels −100 except on the answer
    tokens) and stacks X_v: the keyword arguments of `MultimodalLM.forward`."""

    def __init__(self, facade, model_max_length: int | None = None):
        self.facade = facade
        self.model_max_length = model_max_length

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        inputs = self.facade.build_inputs([f["prompt"] for f in features], [f["answer"] for f in features],
                                          padding_side="right", max_length=self.model_max_length)
        return {"input_ids": inputs.input_ids, "attention_mask": inputs.attention_mask,
                "image_mask": inputs.image_mask, "labels": inputs.labels,
                "x_v": torch.stack([f["x_v"] for f in features])}
