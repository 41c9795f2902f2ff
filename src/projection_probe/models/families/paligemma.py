"""PaliGemma: SigLIP tower · Linear connector · Gemma LM.

Its prefix (image and prompt) is one bidirectional block and only the answer (suffix) is causal:
the LM's `token_type_ids` are 0 on the prefix and 1 on answer tokens. Positions start at 1.
"""
from __future__ import annotations

from projection_probe.models.facade import IGNORE_INDEX
from projection_probe.models.families.base import position_ids_from_mask
from projection_probe.models.families.hf import HFFamily


class PaliGemma(HFFamily):
    name = "paligemma"

    def position_ids(self, input_ids, attention_mask, image_mask):
        return position_ids_from_mask(attention_mask) + 1

    def lm_inputs(self, input_ids, attention_mask, image_mask, labels):
        suffix = labels != IGNORE_INDEX if labels is not None else input_ids.new_zeros(input_ids.shape, dtype=bool)
        return {"token_type_ids": suffix.long()}


ADAPTERS = {"paligemma": PaliGemma()}
