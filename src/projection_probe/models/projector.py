"""The cross-modal projector (connector): X_v (B×N×D_v) → H_v (B×N_out×D_lm).

`mlp2x_gelu` and `linear` keep the token count (N_out = N); `resampler` gives N_out = its number of
learned queries. The MLP's parameter names match transformers' `LlavaMultiModalProjector`
(`linear_1`, `linear_2`), so that weights move between this package and llava-hf checkpoints without
renaming.
"""
from __future__ import annotations

import torch
from torch import nn

from projection_probe.io import InputError
from projection_probe.names import PROJECTOR_KINDS

# The resampler's learned queries, and so its image tokens per image: half the demo's 16 patches.
RESAMPLER_QUERIES = 8


class MLP2xGeluProjector(nn.Module):
    """LLaVA-1.5's projector (`mlp2x_gelu`): Linear, activation, Linear. The activation is exact GELU
    unless a llava-hf checkpoint names another `projector_hidden_act` (any transformers activation
    name, looked up as `LlavaMultiModalProjector` does)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, hidden_act: str = "gelu"):
        super().__init__()
        from transformers.activations import ACT2FN

        if hidden_act not in ACT2FN:
            raise InputError(f"projector_hidden_act: {hidden_act!r} is not a transformers activation; "
                             f"use one of {sorted(ACT2FN)}")
        self.hidden_act = hidden_act
        self.linear_1 = nn.Linear(in_features, out_features, bias=bias)
        self.act = ACT2FN[hidden_act]
        self.linear_2 = nn.Linear(out_features, out_features, bias=bias)

    def forward(self, x_v: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x_v)))


class LinearProjector(nn.Module):
    """LLaVA-1's projector: one Linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)

    def forward(self, x_v: torch.Tensor) -> torch.Tensor:
        return self.linear(x_v)


class PerceiverResampler(nn.Module):
    """A one-layer perceiver resampler, as in Flamingo and Idefics2: `num_queries` learned latent
    queries attend to X_v (mapped to D_lm) and to themselves, then pass a residual MLP. H_v is the
    N_q×D_lm latents, whatever the number of patches."""

    def __init__(self, in_features: int, out_features: int, num_queries: int = RESAMPLER_QUERIES,
                 bias: bool = True):
        super().__init__()
        self.num_queries = num_queries
        # The most heads (up to 8) that split D_lm evenly: 8 for the demo's 576, 1 for odd test sizes.
        heads = next(h for h in (8, 4, 2, 1) if out_features % h == 0)
        self.latents = nn.Parameter(torch.randn(num_queries, out_features) * 0.02)
        self.context = nn.Linear(in_features, out_features, bias=bias)
        self.norm_context = nn.LayerNorm(out_features)
        self.norm_latents = nn.LayerNorm(out_features)
        self.attention = nn.MultiheadAttention(out_features, heads, bias=bias, batch_first=True)
        self.norm_mlp = nn.LayerNorm(out_features)
        self.mlp = nn.Sequential(nn.Linear(out_features, 4 * out_features, bias=bias), nn.GELU(),
                                 nn.Linear(4 * out_features, out_features, bias=bias))
        self.norm_out = nn.LayerNorm(out_features)

    def forward(self, x_v: torch.Tensor) -> torch.Tensor:
        latents = self.latents.unsqueeze(0).expand(x_v.shape[0], -1, -1)
        queries = self.norm_latents(latents)
        # Flamingo's keys and values: the image tokens and the latents themselves.
        keys = torch.cat([self.norm_context(self.context(x_v)), queries], dim=1)
        attended, _ = self.attention(queries, keys, keys, need_weights=False)
        latents = latents + attended
        latents = latents + self.mlp(self.norm_mlp(latents))
        return self.norm_out(latents)


def projected_tokens(projector: nn.Module, num_patches: int) -> int:
    """How many image tokens the LLM receives: the resampler's queries, else one per patch."""
    return projector.num_queries if isinstance(projector, PerceiverResampler) else num_patches


def build_projector(kind: str, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
    if kind == "mlp2x_gelu":
        return MLP2xGeluProjector(in_features, out_features, bias)
    if kind == "linear":
        return LinearProjector(in_features, out_features, bias)
    if kind == "resampler":
        return PerceiverResampler(in_features, out_features, bias=bias)
    raise InputError(f"projector kind {kind!r} is unknown; use one of {PROJECTOR_KINDS}")
