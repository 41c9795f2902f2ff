"""The names that the workflow, the CLIs, the library and the config schema share, written once.

Imports nothing: `common.smk`, `projection-probe --help` and the CLIs' option choices read it without
loading torch. tests/test_names.py checks that the schema's enums equal these.
"""
from __future__ import annotations

# The zero-shot base MLLM (config `settings.original`, kind `none`) and the fine-tuning settings.
BASE_SETTING = "original"
FINETUNE_SETTINGS = ("ft-proj", "ft-e2e", "ft-lora")
# Every setting, in the order the tables and figures show them; other setting names come after.
SETTINGS = (BASE_SETTING, *FINETUNE_SETTINGS)
# The paper's three settings, which every table shows even without data (FT-LoRA is this project's).
PAPER_SETTINGS = SETTINGS[:3]
# The setting of a run that has none (random, encoder zero-shot, image-only probe) in all_runs.csv.
NO_SETTING = "-"

# How the MLLM classifies (`evaluate.classify`); the first one a config lists is its primary mode.
MODES = ("generate", "constrained", "likelihood")
# Free-text answer parsing (generate mode) and what an answer naming several classes counts as.
PARSERS = ("substring", "exact")
SEVERAL_CLASSES = ("invalid", "first")

# Conversation templates (`models.templates`) and projector (connector) kinds (`models.projector`).
TEMPLATES = ("v1", "plain", "llava_hf", "chatml")
PROJECTOR_KINDS = ("mlp2x_gelu", "linear", "resampler")
IMAGE_PREPROCESSINGS = ("pad", "square")

# The per-layer poolings of the analyses' hidden states (`analysis.layers`).
LAYER_POOLINGS = ("image_mean", "last_token")

# The image placeholder of a prompt's human turn, as LLaVA writes it.
IMAGE_PLACEHOLDER = "<image>"

# CLIP's image normalization (OpenAI CLIP, and so LLaVA-1.5's vision tower).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
