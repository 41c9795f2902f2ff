"""BLIP-2: ViT · Q-Former connector (learned `query_tokens`, `qformer`, `language_projection`) · OPT/T5.

X_v is the tower's last hidden state (CLS included), what the Q-Former cross-attends to; H_v is the
`num_query_tokens` projected query outputs, a fixed number per image. Only decoder-only LMs fit
(the facade is a causal LM); their forward is the LM's own, which BLIP-2 itself calls with the
query outputs spliced in, so the LM part is `language_model` as it is.
"""
from __future__ import annotations

import torch

from projection_probe.io import InputError
from projection_probe.models.families.hf import HFFamily


class Blip2(HFFamily):
    name = "blip-2"
    vision_prefixes = ("vision_model.",)
    connector_prefixes = ("qformer.", "query_tokens", "language_projection.")
    lm_prefixes = ("language_model.",)

    def x_v_shape(self, config):
        return self.patches(config) + 1, config.vision_config.hidden_size

    def num_image_tokens(self, config):
        return config.num_query_tokens

    def x_v_of(self, args, kwargs, batch):
        return kwargs["encoder_hidden_states"]

    def connect(self, modules, x_v):
        query = modules["query_tokens"].expand(x_v.shape[0], -1, -1)
        mask = torch.ones(x_v.shape[:-1], dtype=torch.long, device=x_v.device)
        out = modules["qformer"](query_embeds=query, encoder_hidden_states=x_v, encoder_attention_mask=mask,
                                 return_dict=True).last_hidden_state
        return modules["language_projection"](out.to(x_v.dtype))

    def language_model_part(self, model, modules):
        if not model.config.use_decoder_only_language_model:
            raise InputError(f"{model.config.text_config.model_type}: a BLIP-2 with an encoder–decoder LM has no "
                             "causal LM to splice H_v into; use a decoder-only one (OPT)")
        return model.language_model


ADAPTERS = {"blip-2": Blip2()}
