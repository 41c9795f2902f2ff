"""The cross-modal projector: X_v (B×N×D_v) → H_v (B×N×D_lm).

Parameter names match transformers' `LlavaMultiModalProjector` (`linear_1`, `linear_2`), so that
weights move between this package and llava-hf checkpoints without renaming.
"""
from __future__ import annotations

import torch
from torch import nn

from projection_probe.io import InputError
from projection_probe.names import PROJECTOR_KINDS


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


def build_projector(kind: str, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
    if kind == "mlp2x_gelu":
        return MLP2xGeluProjector(in_features, out_features, bias)
    if kind == "linear":
        return LinearProjector(in_features, out_features, bias)
    raise InputError(f"projector kind {kind!r} is unknown; use one of {PROJECTOR_KINDS}")
