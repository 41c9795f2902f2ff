"""Figure 1 (right): how much the post-projection embedding "knows" vs what the MLLM says.

x = macro-F1 of the MLP probe on the pooled post-projection embedding H_v, y = the MLLM's own
macro-F1, one marker per (dataset, setting) with error bars = sample std over seeds. Colour = dataset,
marker = setting; an arrow leads from each dataset's Original point to each fine-tuned point. Points
above the dashed diagonal are settings where the MLLM does better than a probe on its own projected
image features. A study of several models draws one panel per model, side by side, on shared axes.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from projection_probe.io import atomic_path
from projection_probe.names import SETTINGS
from projection_probe.report.aggregate import MODEL_COLUMN, dataset_order, model_parts, summarize

SETTING_MARKERS = {"original": "o", "ft-proj": "s", "ft-e2e": "^", "ft-lora": "D"}
EXTRA_MARKERS = ("v", "P", "X", "*", "h")
SETTING_LABELS = {"original": "Original", "ft-proj": "FT-Proj", "ft-e2e": "FT-E2E", "ft-lora": "FT-LoRA"}


def richness_points(all_runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, setting) having both a post-projection probe and an MLLM macro-F1:
    ``dataset, setting, probe_mean, probe_std, mllm_mean, mllm_std``."""
    cols = ["dataset", "setting", "probe_mean", "probe_std", "mllm_mean", "mllm_std"]
    summary = summarize(all_runs)
    f1 = summary[summary["metric"] == "macro_f1"]
    probe = f1[f1["method"] == "probe_post"].set_index(["dataset", "setting"])
    mllm = f1[f1["method"] == "mllm"].set_index(["dataset", "setting"])
    out = probe[["mean", "std"]].rename(columns={"mean": "probe_mean", "std": "probe_std"}).join(
        mllm[["mean", "std"]].rename(columns={"mean": "mllm_mean", "std": "mllm_std"}), how="inner")
    if out.empty:
        return pd.DataFrame(columns=cols)
    out = out.reset_index()
    order = {d: i for i, d in enumerate(dataset_order(all_runs))}
    setting_rank = {s: i for i, s in enumerate(SETTINGS)}
    out = out.sort_values(["dataset", "setting"], key=lambda c: c.map(order) if c.name == "dataset"
                          else c.map(lambda s: setting_rank.get(s, len(SETTINGS))))
    return out[cols].reset_index(drop=True)


def plot_richness(all_runs: pd.DataFrame, out_png: str | Path, out_pdf: str | Path) -> pd.DataFrame:
    """Draw Figure 1 (right) and save it as PNG (150 dpi) and PDF; return the plotted points (with a
    leading ``model`` column when there are several models, one panel each)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    parts = [(model, richness_points(runs)) for model, runs in model_parts(all_runs)]
    every = pd.concat([points for _, points in parts], ignore_index=True)
    datasets = list(dict.fromkeys(every["dataset"]))
    settings = list(dict.fromkeys(every["setting"]))
    colours = {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(datasets)}
    extra = iter(EXTRA_MARKERS * 10)
    markers = {s: SETTING_MARKERS.get(s) or next(extra) for s in settings}

    fig, axes = plt.subplots(1, len(parts), figsize=(6.4 * len(parts), 5.2), squeeze=False)
    for ax, (model, points) in zip(axes[0], parts):
        _draw_richness(ax, points, colours, markers)
        if model is not None:
            ax.set_title(model, fontsize=10)
    ax = axes[0][0]
    dataset_handles = [Line2D([], [], linestyle="", marker="o", markersize=8, color=colours[d], label=d)
                       for d in datasets]
    setting_handles = [Line2D([], [], linestyle="", marker=markers[s], markersize=8, color="0.5",
                              markeredgecolor="black", label=SETTING_LABELS.get(s, s)) for s in settings]
    setting_handles.append(Line2D([], [], linestyle="--", color="0.6", label="MLLM = probe"))
    if dataset_handles:
        first = ax.legend(handles=dataset_handles, title="dataset", loc="upper left", fontsize=8, title_fontsize=8)
        ax.add_artist(first)
        ax.legend(handles=setting_handles, title="setting", loc="lower right", fontsize=8, title_fontsize=8)
    n_seeds = summarize(all_runs)
    n_seeds = n_seeds.loc[n_seeds["method"].isin(["mllm", "probe_post"]), "n_seeds"]
    seeds_text = "" if n_seeds.empty else (f"{int(n_seeds.min())}" if n_seeds.min() == n_seeds.max()
                                           else f"{int(n_seeds.min())}–{int(n_seeds.max())}")
    title = "Post-projection richness vs MLLM" + (f" (mean ± std, {seeds_text} seeds)" if seeds_text else "")
    if len(parts) == 1:
        ax.set_title(title, fontsize=10)
    else:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    for path, fmt in ((out_png, "png"), (out_pdf, "pdf")):
        with atomic_path(path, suffix=f".{fmt}") as tmp:
            fig.savefig(tmp, format=fmt, dpi=150)
    plt.close(fig)
    if len(parts) == 1:
        return parts[0][1]
    return pd.concat([points.assign(**{MODEL_COLUMN: model})[[MODEL_COLUMN, *points.columns]]
                      for model, points in parts], ignore_index=True)


def _draw_richness(ax, points: pd.DataFrame, colours: dict, markers: dict) -> None:
    """One panel: a marker per (dataset, setting), arrows from each dataset's Original point."""
    if points.empty:
        ax.text(0.5, 0.5, "no (dataset, setting) has both a post-projection probe\nand an MLLM result yet",
                ha="center", va="center", transform=ax.transAxes)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, zorder=0)
    for row in points.itertuples(index=False):
        ax.errorbar(row.probe_mean, row.mllm_mean, xerr=row.probe_std, yerr=row.mllm_std,
                    fmt=markers[row.setting], color=colours[row.dataset], markersize=8, capsize=3,
                    markeredgecolor="black", markeredgewidth=0.6, elinewidth=1, zorder=3)
    for ds in dict.fromkeys(points["dataset"]):
        own = points[points["dataset"] == ds].set_index("setting")
        if "original" not in own.index:
            continue
        start = own.loc["original"]
        for s in own.index:
            if s == "original":
                continue
            end = own.loc[s]
            ax.annotate("", xy=(end.probe_mean, end.mllm_mean), xytext=(start.probe_mean, start.mllm_mean),
                        arrowprops=dict(arrowstyle="->", color=colours[ds], alpha=0.6, linewidth=1.2,
                                        shrinkA=6, shrinkB=6), zorder=2)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("post-projection MLP probe macro-F1")
    ax.set_ylabel("MLLM macro-F1")
    ax.grid(alpha=0.3)
