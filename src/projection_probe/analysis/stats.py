"""Statistics over seeds, and the paper's two claims tested on this run's ``all_runs.csv``.

Claims (per dataset and fine-tuned setting, paired by seed against ``original``):

- ``richness_drops``: the post-projection probe's macro-F1 (method ``probe_post``) is lower after
  fine-tuning (difference ft − original < 0);
- ``mllm_f1_rises``: the MLLM's macro-F1 (method ``mllm``) is higher after fine-tuning (> 0).

For each: mean ± sample std (ddof=1) per setting, the mean paired difference with a percentile
bootstrap CI over seeds (seeds resampled with replacement), a one-sided paired t-test and a
one-sided sign-flip permutation test of the mean difference (exact over all 2^n sign patterns when
that is at most ``n_permutations``, else Monte Carlo). With n seeds the smallest p the sign-flip test
can give is 2^-n (0.25 for 2 seeds): the table reports it, so a "not significant" with 2 seeds reads
as "no power", not as evidence against the claim.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from projection_probe.io import InputError

CLAIMS = {
    "richness_drops": {"method": "probe_post", "alternative": "less",
                       "text": "post-projection probe F1 drops after fine-tuning"},
    "mllm_f1_rises": {"method": "mllm", "alternative": "greater", "text": "MLLM F1 rises after fine-tuning"},
}
REFERENCE = "original"
CLAIM_COLUMNS = ["dataset", "claim", "statement", "setting", "method", "n_seeds", "original_mean", "original_std",
                 "setting_mean", "setting_std", "mean_diff", "ci_low", "ci_high", "t_p", "signflip_p",
                 "min_signflip_p", "holds", "verdict"]
SEED_STATS_COLUMNS = ["dataset", "setting", "method", "n_seeds", "mean", "std", "ci_low", "ci_high"]


def mean_std(values) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def bootstrap_ci(values, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over ``values`` (one per seed); NaN when n_boot is 0 or no
    values. With one value the interval is that value (there is nothing to resample)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0 or n_boot <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_t_p(diffs, alternative: str) -> float:
    """One-sided (``less``/``greater``) or ``two-sided`` p of a one-sample t-test on paired
    differences; NaN with fewer than 2 seeds or zero spread (the t statistic is undefined)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    if d.size < 2 or np.std(d, ddof=1) == 0:
        return math.nan
    return float(stats.ttest_1samp(d, 0.0, alternative=alternative).pvalue)


def sign_flip_p(diffs, alternative: str, n_permutations: int = 10000, seed: int = 0) -> float:
    """p of the mean paired difference under random sign flips (H0: differences symmetric about 0)."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return math.nan
    observed = d.mean()
    if 2 ** d.size <= max(n_permutations, 1):
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        null = (signs * d).mean(axis=1)
        extra = 0
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((1.0, -1.0), size=(n_permutations, d.size))
        null = (signs * d).mean(axis=1)
        extra = 1  # Monte Carlo: count the observed pattern itself (Phipson & Smyth 2010)
    tol = 1e-12
    if alternative == "less":
        hits = np.sum(null <= observed + tol)
    elif alternative == "greater":
        hits = np.sum(null >= observed - tol)
    elif alternative == "two-sided":
        hits = np.sum(np.abs(null) >= abs(observed) - tol)
    else:
        raise InputError(f"alternative {alternative!r}: use less, greater or two-sided")
    return float((hits + extra) / (null.size + extra))


def verdict(mean_diff: float, alternative: str, p: float, alpha: float, min_p: float) -> tuple[bool, str]:
    if math.isnan(mean_diff):
        return False, "no data"
    holds = mean_diff < 0 if alternative == "less" else mean_diff > 0
    if mean_diff == 0:
        return False, "no change"
    if not holds:
        return False, "does not hold (opposite direction)"
    if not math.isnan(p) and p < alpha:
        return True, f"holds, significant (sign-flip p={p:.3g} < {alpha:g})"
    if min_p >= alpha:
        return True, (f"holds in direction only; untestable at {alpha:g} with these seeds "
                      f"(smallest attainable sign-flip p={min_p:.3g})")
    return True, f"holds in direction only; not significant (sign-flip p={p:.3g})"


def _f1(all_runs: pd.DataFrame, dataset: str, method: str) -> pd.DataFrame:
    """seed × setting table of macro-F1."""
    rows = all_runs[(all_runs["dataset"] == dataset) & (all_runs["method"] == method)
                    & (all_runs["metric"] == "macro_f1")]
    return rows.pivot_table(index="seed", columns="setting", values="value", aggfunc="first")


def seed_stats(all_runs: pd.DataFrame, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    rows = []
    for (dataset, setting, method), g in all_runs[(all_runs["metric"] == "macro_f1")
                                                  & all_runs["method"].isin([c["method"] for c in CLAIMS.values()])
                                                  ].groupby(["dataset", "setting", "method"], sort=False):
        v = g.sort_values("seed")["value"].to_numpy()
        m, s = mean_std(v)
        lo, hi = bootstrap_ci(v, n_boot, confidence, seed)
        rows.append(dict(dataset=dataset, setting=setting, method=method, n_seeds=len(v), mean=m, std=s,
                         ci_low=lo, ci_high=hi))
    return pd.DataFrame(rows, columns=SEED_STATS_COLUMNS)


def claims_table(all_runs: pd.DataFrame, n_boot: int = 1000, n_permutations: int = 10000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(claims, paired)``: one claims row per dataset × claim × fine-tuned setting, and the
    per-seed paired differences behind them (``dataset, claim, setting, seed, diff``)."""
    if not 0 < confidence < 1:
        raise InputError(f"confidence={confidence}: must lie strictly between 0 and 1")
    alpha = 1 - confidence
    rows, paired = [], []
    for dataset in dict.fromkeys(all_runs["dataset"]):
        for claim, spec in CLAIMS.items():
            table = _f1(all_runs, dataset, spec["method"])
            if REFERENCE not in table.columns:
                continue
            for setting in [c for c in table.columns if c != REFERENCE]:
                pair = table[[REFERENCE, setting]].dropna()
                d = (pair[setting] - pair[REFERENCE]).to_numpy()
                for s, v in zip(pair.index, d):
                    paired.append(dict(dataset=dataset, claim=claim, setting=setting, seed=int(s), diff=float(v)))
                lo, hi = bootstrap_ci(d, n_boot, confidence, seed)
                p = sign_flip_p(d, spec["alternative"], n_permutations, seed)
                min_p = 2.0 ** -len(d) if len(d) and 2 ** len(d) <= n_permutations else (
                    1 / (n_permutations + 1) if len(d) else math.nan)
                mean_diff = float(d.mean()) if len(d) else math.nan
                holds, text = verdict(mean_diff, spec["alternative"], p, alpha, min_p)
                o_m, o_s = mean_std(pair[REFERENCE])
                s_m, s_s = mean_std(pair[setting])
                rows.append(dict(dataset=dataset, claim=claim, statement=spec["text"], setting=setting,
                                 method=spec["method"], n_seeds=len(d), original_mean=o_m, original_std=o_s,
                                 setting_mean=s_m, setting_std=s_s, mean_diff=mean_diff, ci_low=lo, ci_high=hi,
                                 t_p=paired_t_p(d, spec["alternative"]), signflip_p=p, min_signflip_p=min_p,
                                 holds=holds, verdict=text))
    return (pd.DataFrame(rows, columns=CLAIM_COLUMNS),
            pd.DataFrame(paired, columns=["dataset", "claim", "setting", "seed", "diff"]))


def summarize_over_seeds(frame: pd.DataFrame, by: list[str], value: str, n_boot: int = 0,
                         confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Mean, std (ddof=1), n and (with n_boot > 0) a bootstrap CI of ``value`` over seeds per ``by``."""
    rows = []
    for key, g in frame.groupby(by, sort=False, dropna=False):
        v = g[value].to_numpy(dtype=float)
        m, s = mean_std(v)
        lo, hi = bootstrap_ci(v, n_boot, confidence, seed)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), f"{value}_mean": m,
                     f"{value}_std": s, f"{value}_ci_low": lo, f"{value}_ci_high": hi, "n_seeds": len(v)})
    return pd.DataFrame(rows)
