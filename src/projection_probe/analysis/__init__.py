"""Beyond the paper: where in the MLLM the domain knowledge lives.

- :mod:`.layers`: per-layer hidden states of the LLM (mean over image tokens, final prompt token);
- :mod:`.probing`: logistic-regression (and optional MLP) probes per layer, matched pre/post probes,
  control tasks (Hewitt & Liang 2019) and selectivity;
- :mod:`.similarity`: linear CKA and mutual k-NN overlap;
- :mod:`.stats`: mean ± std, bootstrap CI over seeds, paired t and sign-flip tests, the claims table;
- :mod:`.reports`: one table (CSV + Markdown) and one plot (PNG + PDF) per analysis.

Everything after :mod:`.layers` reads only saved files (``layers_{split}.safetensors``, the pooled
features files and ``all_runs.csv``), never a model.
"""
