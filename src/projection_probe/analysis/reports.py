"""One table (CSV + Markdown) and one figure (PNG + PDF) per analysis, from saved result files only.

Every cell is a mean over seeds with the sample std (ddof=1; 0 with one seed) and, where stated, a
percentile bootstrap CI over seeds. Selectivity = accuracy − control-task accuracy, paired by seed.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from projection_probe.analysis.similarity import order_settings, setting_rank
from projection_probe.analysis.stats import bootstrap_ci, claims_table, mean_std, seed_stats, summarize_over_seeds
from projection_probe.io import atomic_path, write_csv, write_text

PROBE_KEYS = ["dataset", "setting", "seed", "analysis", "family", "representation", "pooling", "layer"]


# ---------------------------------------------------------------- helpers
def write_table(frame: pd.DataFrame, out_csv, out_md, title: str, note: str = "") -> None:
    write_csv(out_csv, frame)
    if frame.empty:
        body = "_no rows: the analysis had no input for this configuration_"
    else:
        body = frame.to_markdown(index=False, floatfmt=".4f")
    write_text(out_md, f"# {title}\n\n{note + chr(10) + chr(10) if note else ''}{body}\n")


def save_figure(fig, out_png, out_pdf) -> None:
    import matplotlib.pyplot as plt

    for path, fmt in ((out_png, "png"), (out_pdf, "pdf")):
        with atomic_path(path, suffix=f".{fmt}") as tmp:
            fig.savefig(tmp, format=fmt, dpi=150)
    plt.close(fig)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def MaxNLocator(**kwargs):  # noqa: N802 - matplotlib's name, imported lazily
    from matplotlib.ticker import MaxNLocator as locator

    return locator(**kwargs)


def read_csvs(paths) -> pd.DataFrame:
    frames = [pd.read_csv(p, keep_default_na=False, na_values=[""]) for p in paths]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def with_controls(probes: pd.DataFrame) -> pd.DataFrame:
    """One row per probe and seed: real ``macro_f1``/``accuracy``, ``control_macro_f1``,
    ``control_accuracy`` and ``selectivity`` = accuracy − control accuracy (NaN without controls)."""
    real = probes[probes["task"] == "real"].drop(columns=["task"])
    control = probes[probes["task"] == "control"][PROBE_KEYS + ["macro_f1", "accuracy"]].rename(
        columns={"macro_f1": "control_macro_f1", "accuracy": "control_accuracy"})
    out = real.merge(control, on=PROBE_KEYS, how="left")
    out["selectivity"] = out["accuracy"] - out["control_accuracy"]
    return out


def _sorted(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    if frame.empty:
        return frame
    ds = {d: i for i, d in enumerate(dict.fromkeys(frame["dataset"]))}
    key = frame.apply(lambda r: tuple(ds[r["dataset"]] if c == "dataset" else
                                      setting_rank(str(r[c])) if c in ("setting", "a", "b") else r[c]
                                      for c in cols), axis=1)
    return frame.loc[key.sort_values().index].reset_index(drop=True)


def _summary(per_seed: pd.DataFrame, by: list[str], values: list[str], n_boot: int, confidence: float):
    out = None
    for v in values:
        s = summarize_over_seeds(per_seed, by, v, n_boot if v == "macro_f1" else 0, confidence)
        if v != "macro_f1":
            s = s.drop(columns=[f"{v}_ci_low", f"{v}_ci_high"])
        out = s if out is None else out.merge(s.drop(columns=["n_seeds"]), on=by)
    return out


# ---------------------------------------------------------------- layer-wise probes
def layerwise_report(probes: pd.DataFrame, out_csv, out_md, out_png, out_pdf, n_boot: int = 1000,
                     confidence: float = 0.95) -> pd.DataFrame:
    plt = _plt()
    per_seed = with_controls(probes[probes["analysis"] == "layerwise"]) if not probes.empty else pd.DataFrame()
    by = ["dataset", "setting", "family", "pooling", "layer"]
    table = (_summary(per_seed, by, ["macro_f1", "accuracy", "control_accuracy", "selectivity"], n_boot, confidence)
             if not per_seed.empty else pd.DataFrame(columns=by))
    table = _sorted(table, by)
    write_table(table, out_csv, out_md, "Layer-wise probes",
                f"Probe macro-F1 per LLM layer (0 = embeddings, i.e. H_v spliced into the prompt) and pooling; "
                f"mean ± std over seeds, {confidence:.0%} bootstrap CI; selectivity = accuracy − control accuracy.")
    panels = [] if table.empty else list(table[["family", "pooling"]].drop_duplicates().itertuples(index=False))
    datasets = list(dict.fromkeys(table["dataset"])) if not table.empty else []
    fig, axes = plt.subplots(max(len(datasets), 1), max(len(panels), 1), squeeze=False,
                             figsize=(4.2 * max(len(panels), 1), 3.3 * max(len(datasets), 1)))
    for i, d in enumerate(datasets):
        for j, (family, pooling) in enumerate(panels):
            ax = axes[i][j]
            sub = table[(table["dataset"] == d) & (table["family"] == family) & (table["pooling"] == pooling)]
            for s in order_settings(sub["setting"]):
                line = sub[sub["setting"] == s].sort_values("layer")
                ax.plot(line["layer"], line["macro_f1_mean"], marker="o", markersize=3, label=s)
                ax.fill_between(line["layer"], line["macro_f1_mean"] - line["macro_f1_std"],
                                line["macro_f1_mean"] + line["macro_f1_std"], alpha=0.2)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{d}: {family} probe, {pooling}", fontsize=9)
            ax.set_xlabel("LLM layer (0 = input embeddings)")
            ax.set_ylabel("probe macro-F1")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    if not datasets:
        axes[0][0].text(0.5, 0.5, "no layer-wise probes", ha="center", va="center")
    fig.tight_layout()
    save_figure(fig, out_png, out_pdf)
    return table


# ---------------------------------------------------------------- matched pre/post probes
def matched_report(probes: pd.DataFrame, out_csv, out_md, out_png, out_pdf, n_boot: int = 1000,
                   confidence: float = 0.95) -> pd.DataFrame:
    plt = _plt()
    per_seed = with_controls(probes[probes["analysis"] == "matched"]) if not probes.empty else pd.DataFrame()
    rows = []
    if not per_seed.empty:
        for (d, s, fam), g in per_seed.groupby(["dataset", "setting", "family"], sort=False):
            pre = g[g["representation"] == "pre"].set_index("seed")
            post = g[g["representation"] == "post"].set_index("seed")
            seeds = pre.index.intersection(post.index)
            diff = (post.loc[seeds, "macro_f1"] - pre.loc[seeds, "macro_f1"]).to_numpy()
            row = dict(dataset=d, setting=s, family=fam, n_seeds=len(seeds))
            for rep, frame in (("pre", pre), ("post", post)):
                v = frame.loc[seeds, "macro_f1"]
                row[f"{rep}_f1_mean"], row[f"{rep}_f1_std"] = v.mean(), (v.std(ddof=1) if len(v) > 1 else 0.0)
                sel = frame.loc[seeds, "selectivity"]
                row[f"{rep}_selectivity_mean"] = sel.mean()
            row["post_minus_pre_mean"], row["post_minus_pre_std"] = mean_std(diff)
            row["post_minus_pre_ci_low"], row["post_minus_pre_ci_high"] = bootstrap_ci(diff, n_boot, confidence)
            rows.append(row)
    table = _sorted(pd.DataFrame(rows), ["dataset", "setting", "family"]) if rows else pd.DataFrame(
        columns=["dataset", "setting", "family"])
    write_table(table, out_csv, out_md, "Matched pre/post-projection probes",
                "The same pooling (mean over patches) and probe family on X_v (pre) and H_v (post): the difference "
                "is the projector's effect. post_minus_pre is paired by seed.")
    datasets = list(dict.fromkeys(table["dataset"])) if not table.empty else []
    fig, axes = plt.subplots(1, max(len(datasets), 1), squeeze=False, figsize=(5.5 * max(len(datasets), 1), 3.8))
    for j, d in enumerate(datasets):
        ax = axes[0][j]
        sub = _sorted(table[table["dataset"] == d], ["dataset", "setting", "family"])
        x = np.arange(len(sub))
        ax.bar(x - 0.2, sub["pre_f1_mean"], 0.4, yerr=sub["pre_f1_std"], capsize=3, label="pre (X_v)")
        ax.bar(x + 0.2, sub["post_f1_mean"], 0.4, yerr=sub["post_f1_std"], capsize=3, label="post (H_v)")
        ax.set_xticks(x, [f"{s}\n{f}" for s, f in zip(sub["setting"], sub["family"])], fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probe macro-F1")
        ax.set_title(f"{d}: matched pre/post probes", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    if not datasets:
        axes[0][0].text(0.5, 0.5, "no matched probes", ha="center", va="center")
    fig.tight_layout()
    save_figure(fig, out_png, out_pdf)
    return table


# ---------------------------------------------------------------- control tasks
def selectivity_report(probes: pd.DataFrame, out_csv, out_md, out_png, out_pdf) -> pd.DataFrame:
    plt = _plt()
    per_seed = with_controls(probes) if not probes.empty else pd.DataFrame()
    by = ["dataset", "setting", "analysis", "family", "representation", "pooling", "layer"]
    table = (_summary(per_seed, by, ["accuracy", "control_accuracy", "selectivity", "macro_f1", "control_macro_f1"],
                      0, 0.95) if not per_seed.empty else pd.DataFrame(columns=by))
    table = _sorted(table, by)
    write_table(table, out_csv, out_md, "Control tasks and selectivity",
                "Each probe retrained on control labels (a fixed random permutation of the labels over images per "
                "seed); selectivity = accuracy − control accuracy, mean ± std over seeds.")
    lw = table[(table["analysis"] == "layerwise")] if not table.empty else table
    datasets = list(dict.fromkeys(table["dataset"])) if not table.empty else []
    panels = list(lw[["family", "pooling"]].drop_duplicates().itertuples(index=False)) if not lw.empty else []
    ncols = len(panels) + 1
    fig, axes = plt.subplots(max(len(datasets), 1), ncols, squeeze=False,
                             figsize=(4.2 * ncols, 3.3 * max(len(datasets), 1)))
    for i, d in enumerate(datasets):
        for j, (family, pooling) in enumerate(panels):
            ax = axes[i][j]
            sub = lw[(lw["dataset"] == d) & (lw["family"] == family) & (lw["pooling"] == pooling)]
            for s in order_settings(sub["setting"]):
                line = sub[sub["setting"] == s].sort_values("layer")
                ax.plot(line["layer"], line["selectivity_mean"], marker="o", markersize=3, label=s)
            ax.axhline(0, color="0.5", linewidth=0.8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{d}: {family}, {pooling}", fontsize=9)
            ax.set_xlabel("LLM layer")
            ax.set_ylabel("selectivity (acc − control acc)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        ax = axes[i][-1]
        m = table[(table["dataset"] == d) & (table["analysis"] == "matched")]
        if not m.empty:
            m = m.assign(_pre_first=(m["representation"] != "pre").astype(int))
            m = _sorted(m, ["setting", "family", "_pre_first"])
            x = np.arange(len(m))
            ax.bar(x, m["selectivity_mean"], yerr=m["selectivity_std"], capsize=3,
                   color=["C0" if r == "pre" else "C1" for r in m["representation"]])
            ax.set_xticks(x, [f"{s}\n{f}\n{r}" for s, f, r in zip(m["setting"], m["family"], m["representation"])],
                          fontsize=6)
            from matplotlib.patches import Patch

            ax.legend(handles=[Patch(color="C0", label="pre (X_v)"), Patch(color="C1", label="post (H_v)")],
                      fontsize=7)
        ax.axhline(0, color="0.5", linewidth=0.8)
        ax.set_title(f"{d}: matched pre/post", fontsize=9)
        ax.set_ylabel("selectivity")
    if not datasets:
        axes[0][0].text(0.5, 0.5, "no probes", ha="center", va="center")
    fig.tight_layout()
    save_figure(fig, out_png, out_pdf)
    return table


# ---------------------------------------------------------------- similarity
def similarity_report(similarity: pd.DataFrame, out_csv, out_md, out_png, out_pdf) -> pd.DataFrame:
    plt = _plt()
    by = ["dataset", "comparison", "pooling", "layer", "a", "b", "metric"]
    table = (summarize_over_seeds(similarity, by, "value").drop(columns=["value_ci_low", "value_ci_high"])
             if not similarity.empty else pd.DataFrame(columns=by))
    table = _sorted(table, ["dataset", "comparison", "metric", "pooling", "a", "b", "layer"])
    write_table(table, out_csv, out_md, "Representation similarity",
                "Linear CKA and mutual k-NN overlap (cosine) on the test images, mean ± std over seeds: every pair of "
                "settings at every LLM layer and pooling, and X_v vs H_v (pre_post) per setting.")
    datasets = list(dict.fromkeys(table["dataset"])) if not table.empty else []
    st = table[table["comparison"] == "settings"] if not table.empty else table
    panels = (list(st[["metric", "pooling"]].drop_duplicates().itertuples(index=False)) if not st.empty else [])
    ncols = len(panels) + 1
    fig, axes = plt.subplots(max(len(datasets), 1), ncols, squeeze=False,
                             figsize=(3.8 * ncols, 2.8 * max(len(datasets), 1)))
    for i, d in enumerate(datasets):
        for j, (metric, pooling) in enumerate(panels):
            ax = axes[i][j]
            sub = st[(st["dataset"] == d) & (st["metric"] == metric) & (st["pooling"] == pooling)].copy()
            sub["pair"] = sub["a"] + " vs " + sub["b"]
            # dropna=False keeps layers where the measure is undefined (a constant representation, e.g.
            # the last prompt token's embedding at layer 0): they show blank instead of vanishing.
            grid = sub.pivot_table(index="pair", columns="layer", values="value_mean", dropna=False)
            if not grid.empty:
                if grid.shape[1] <= 16:
                    for (r, c), v in np.ndenumerate(grid.to_numpy()):
                        ax.text(c, r, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                                color="w", fontsize=6)
                im = ax.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
                ax.set_yticks(range(len(grid.index)), grid.index, fontsize=6)
                ax.set_xticks(range(len(grid.columns)), grid.columns, fontsize=6)
                fig.colorbar(im, ax=ax, fraction=0.046)
            ax.set_xlabel("LLM layer")
            ax.set_title(f"{d}: {metric}, {pooling}", fontsize=9)
        ax = axes[i][-1]
        pp = table[(table["dataset"] == d) & (table["comparison"] == "pre_post")].copy()
        if not pp.empty:
            pp["setting"] = pp["a"].str.split(":").str[0]
            grid = pp.pivot_table(index="setting", columns="metric", values="value_mean")
            grid = grid.loc[order_settings(grid.index)]
            im = ax.imshow(grid.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
            ax.set_yticks(range(len(grid.index)), grid.index, fontsize=7)
            ax.set_xticks(range(len(grid.columns)), grid.columns, fontsize=7)
            for (r, c), v in np.ndenumerate(grid.to_numpy()):
                ax.text(c, r, f"{v:.2f}", ha="center", va="center", color="w", fontsize=7)
        ax.set_title(f"{d}: X_v vs H_v", fontsize=9)
    if not datasets:
        axes[0][0].text(0.5, 0.5, "no similarities", ha="center", va="center")
    fig.tight_layout()
    save_figure(fig, out_png, out_pdf)
    return table


# ---------------------------------------------------------------- claims
def claims_report(all_runs: pd.DataFrame, out_claims_csv, out_claims_md, out_stats_csv, out_stats_md, out_png,
                  out_pdf, n_boot: int = 1000, n_permutations: int = 10000, confidence: float = 0.95):
    plt = _plt()
    claims, paired = claims_table(all_runs, n_boot, n_permutations, confidence)
    stats = _sorted(seed_stats(all_runs, n_boot, confidence), ["dataset", "setting", "method"])
    n = sorted(set(claims["n_seeds"])) if not claims.empty else []
    power = ""
    if n and min(n) <= 3:
        seeds = "1 seed" if min(n) == 1 else f"{min(n)} seeds"
        power = (f" With {seeds} the smallest attainable one-sided sign-flip p is {2.0 ** -min(n):.3g}: "
                 f"no claim can reach significance at {1 - confidence:g}, so these verdicts state direction only.")
    write_table(claims, out_claims_csv, out_claims_md, "The paper's claims in this run",
                f"Paired by seed against original (diff = setting − original, macro-F1); {confidence:.0%} bootstrap "
                f"CI over seeds, one-sided paired t-test and sign-flip test.{power}")
    write_table(stats, out_stats_csv, out_stats_md, "Seed statistics",
                f"Macro-F1 per dataset, setting and method: mean ± std (ddof=1) and {confidence:.0%} bootstrap CI "
                f"over seeds.")
    datasets = list(dict.fromkeys(claims["dataset"])) if not claims.empty else []
    fig, axes = plt.subplots(1, max(len(datasets), 1), squeeze=False, figsize=(5.5 * max(len(datasets), 1), 3.8))
    for j, d in enumerate(datasets):
        ax = axes[0][j]
        sub = claims[claims["dataset"] == d].reset_index(drop=True)
        for x, row in sub.iterrows():
            pts = paired[(paired["dataset"] == d) & (paired["claim"] == row["claim"])
                         & (paired["setting"] == row["setting"])]
            ax.scatter(np.full(len(pts), x), pts["diff"], color="0.4", s=12, zorder=3)
            lo, hi = row["ci_low"], row["ci_high"]
            err = None if math.isnan(lo) else [[row["mean_diff"] - lo], [hi - row["mean_diff"]]]
            ax.errorbar(x, row["mean_diff"], yerr=err, fmt="D", color="C2" if row["holds"] else "C3", capsize=4)
        ax.axhline(0, color="0.5", linewidth=0.8)
        ax.set_xticks(range(len(sub)), [f"{c.replace('_', ' ')}\n{s}" for c, s in zip(sub["claim"], sub["setting"])],
                      fontsize=7)
        ax.set_ylabel("macro-F1: setting − original")
        ax.set_title(f"{d}: claims (green = holds in direction)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    if not datasets:
        axes[0][0].text(0.5, 0.5, "no fine-tuned setting to compare with original", ha="center", va="center")
    fig.tight_layout()
    save_figure(fig, out_png, out_pdf)
    return claims, stats
