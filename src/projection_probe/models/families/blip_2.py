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



# `plan`'s shapes for a folder named after this hub repository that has no config.json yet (see llava.py).
ASSUMED_CONFIGS = {
    "Salesforce/blip2-opt-2.7b": {
        "model_type": "blip-2",
        "vision_config": {"hidden_size": 1408, "intermediate_size": 6144, "num_hidden_layers": 39,
                          "num_attention_heads": 16, "image_size": 224, "patch_size": 14},
        "qformer_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                           "num_attention_heads": 12, "encoder_hidden_size": 1408, "vocab_size": 30522},
        "text_config": {"model_type": "opt", "hidden_size": 2560, "ffn_dim": 10240, "num_hidden_layers": 32,
                        "num_attention_heads": 32, "word_embed_proj_dim": 2560, "vocab_size": 50304,
                        "max_position_embeddings": 2048},
        "num_query_tokens": 32, "image_token_id": 50265,
    },
}

ADAPTERS = {"blip-2": Blip2()}
