"""Tables 1-3 of the paper, rebuilt from ``all_runs.csv``.

Each table is written three ways: CSV (one row per cell group, means and standard deviations in
separate numeric columns, for machines), Markdown and LaTeX (booktabs; formatted strings, for people).

Conventions:
- a cell is the mean over seeds ± the sample standard deviation (ddof=1); a cell of one seed shows its
  value alone (the CSV's std column is 0 there);
- Table 2's "% change vs Original" is ``(x - orig) / orig * 100`` on the *unrounded* means;
- a cell without data is empty in the CSV and shown as "–" in Markdown/LaTeX (never an error);
- with a paper-results file and a dataset map, columns "paper" and "Δ" (ours − paper) are added.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from projection_probe.io import InputError, read_json, write_csv, write_text
from projection_probe.names import PAPER_SETTINGS, SETTINGS
from projection_probe.report.aggregate import NO_SETTING, dataset_order, model_parts, summarize

MISSING = "–"
DIGITS = 4
SETTING_LABELS = {"original": "Original", "ft-proj": "FT-Proj", "ft-e2e": "FT-E2E", "ft-lora": "FT-LoRA"}
PAPER_COLUMNS = ["dataset", "method", "setting", "metric", "value"]


# ---------------------------------------------------------------- formatting

def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_value(x, digits: int = DIGITS) -> str:
    return MISSING if _isnan(x) else f"{x:.{digits}f}"


def fmt_mean_std(mean, std, n_seeds: int, digits: int = DIGITS) -> str:
    """``"0.1234 ± 0.0056"`` over 2 or more seeds, ``"0.1234"`` over one (it has no spread); "–" when
    the mean is missing."""
    if _isnan(mean):
        return MISSING
    if n_seeds < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {0.0 if _isnan(std) else std:.{digits}f}"


def fmt_f1_acc(f1_mean, f1_std, acc_mean, acc_std, n_seeds: int, digits: int = DIGITS) -> str:
    """``"F1 ± sd (acc ± sd)"``, the paper's "macro-F1 (accuracy)" cell."""
    f1 = fmt_mean_std(f1_mean, f1_std, n_seeds, digits)
    if f1 == MISSING or _isnan(acc_mean):
        return f1
    return f"{f1} ({fmt_mean_std(acc_mean, acc_std, n_seeds, digits)})"


def _no_negative_zero(x: float, digits: int) -> float:
    # A difference that rounds to zero prints as "+0.0000", not "-0.0000".
    return 0.0 if round(x, digits) == 0 else x


def fmt_signed(x, digits: int = DIGITS) -> str:
    return MISSING if _isnan(x) else f"{_no_negative_zero(x, digits):+.{digits}f}"


def fmt_pct(x) -> str:
    return MISSING if _isnan(x) else f"{_no_negative_zero(x, 2):+.2f}%"


def pct_change(value, reference) -> float:
    """``(value - reference) / reference * 100``; NaN when either is missing or the reference is 0."""
    if _isnan(value) or _isnan(reference) or reference == 0:
        return math.nan
    return (value - reference) / reference * 100.0


# ---------------------------------------------------------------- lookups

class Stats:
    """Lookup of mean/std/n over seeds for (dataset, setting, method, metric)."""

    def __init__(self, all_runs: pd.DataFrame):
        self.summary = summarize(all_runs)
        self._index = {(r.dataset, r.setting, r.method, r.metric): (r.mean, r.std, r.n_seeds)
                       for r in self.summary.itertuples(index=False)}
        self.datasets = dataset_order(all_runs)

    def get(self, dataset, setting, method, metric) -> tuple[float, float, int]:
        mean, std, n = self._index.get((dataset, setting, method, metric), (math.nan, math.nan, 0))
        return float(mean), float(std), int(n)

    def settings_for(self, methods: tuple[str, ...]) -> list[str]:
        """The paper's settings, then FT-LoRA / other variants that occur for ``methods``."""
        present = [s for s in dict.fromkeys(self.summary.loc[self.summary["method"].isin(methods), "setting"])
                   if s != NO_SETTING]
        known = [s for s in SETTINGS if s in PAPER_SETTINGS or s in present]
        return known + [s for s in present if s not in SETTINGS]


class PaperResults:
    """The paper's numbers (``resources/paper_results.csv``) and which paper dataset each of ours is."""

    def __init__(self, frame: pd.DataFrame, dataset_map: dict[str, str]):
        self._index = {(r.dataset, r.method, r.setting, r.metric): float(r.value)
                       for r in frame.itertuples(index=False)}
        self.dataset_map = dataset_map

    @classmethod
    def load(cls, csv_path: str | Path, map_path: str | Path) -> PaperResults:
        csv_path = Path(csv_path)
        if not csv_path.exists():
            raise InputError(f"{csv_path}: paper results file not found")
        frame = pd.read_csv(csv_path, dtype={"setting": str}, keep_default_na=False)
        missing = [c for c in PAPER_COLUMNS if c not in frame.columns]
        if missing:
            raise InputError(f"{csv_path}: columns {missing} missing; expected {PAPER_COLUMNS}")
        values = pd.to_numeric(frame["value"], errors="coerce")
        if values.isna().any():
            raise InputError(f"{csv_path}: column 'value' has non-numeric entries such as "
                             f"{frame.loc[values.isna(), 'value'].iloc[0]!r}")
        frame = frame.assign(value=values)
        if str(map_path).lstrip().startswith("{"):  # the rule passes the config's map inline
            import json

            try:
                dataset_map = json.loads(str(map_path))
            except json.JSONDecodeError as e:
                raise InputError(f"--paper-map: not valid JSON ({e})") from e
        else:
            dataset_map = read_json(map_path)
        if not isinstance(dataset_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                        for k, v in dataset_map.items()):
            raise InputError(f"{map_path}: expected a JSON object mapping our dataset name to the paper's "
                             f"dataset name, e.g. {{\"plantdoc\": \"plantdoc\"}}")
        unknown = sorted(set(dataset_map.values()) - set(frame["dataset"]))
        if unknown:
            raise InputError(f"{map_path}: paper datasets {unknown} not in {csv_path} "
                             f"(it has {sorted(set(frame['dataset']))})")
        return cls(frame, dataset_map)

    def get(self, dataset, method, setting, metric) -> float:
        paper_dataset = self.dataset_map.get(dataset)
        if paper_dataset is None:
            return math.nan
        return self._index.get((paper_dataset, method, setting, metric), math.nan)


# ---------------------------------------------------------------- tables

@dataclass
class Table:
    """``numeric`` goes to CSV; ``display`` (and each extra ``sections`` entry) to Markdown/LaTeX."""

    name: str
    title: str
    numeric: pd.DataFrame
    display: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    sections: list[tuple[str, pd.DataFrame]] = field(default_factory=list)


def _seed_note(counts: list[int]) -> str:
    counts = sorted({c for c in counts if c > 0})
    if not counts:
        return "No runs found."
    if counts == [1]:
        return f"One run per cell (1 seed), so no standard deviation. {MISSING} = no run."
    span = str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    one = "; a cell of 1 seed shows its value alone" if counts[0] == 1 else ""
    return f"Mean ± sample standard deviation (ddof=1) over {span} seeds per cell{one}. {MISSING} = no run."


def table1(all_runs: pd.DataFrame, encoder_name: str = "CLIP", mllm_name: str = "MLLM",
           paper: PaperResults | None = None) -> Table:
    """Classification: Random, encoder zero-shot and the MLLM per setting; macro-F1 (accuracy)
    per dataset, plus the MLLM rows' invalid-output rate as a second section."""
    stats = Stats(all_runs)
    rows = [("Random", "random", NO_SETTING), (f"{encoder_name} zero-shot", "encoder_zero_shot", NO_SETTING)]
    for s in stats.settings_for(("mllm",)):
        label = f"{mllm_name} zero-shot" if s == "original" else SETTING_LABELS.get(s, s)
        rows.append((label, "mllm", s))
    extra_modes = sorted(m for m in all_runs["method"].unique() if str(m).startswith("mllm-"))
    for method in extra_modes:
        for s in stats.settings_for((method,)):
            label = f"{mllm_name} zero-shot" if s == "original" else SETTING_LABELS.get(s, s)
            rows.append((f"{label} [{method.split('-', 1)[1]}]", method, s))

    numeric, display, invalid, counts = [], [], [], []
    for label, method, setting in rows:
        shown = {"Method": label}
        invalid_row = {"Method": label}
        for ds in stats.datasets:
            f1m, f1s, n = stats.get(ds, setting, method, "macro_f1")
            accm, accs, _ = stats.get(ds, setting, method, "accuracy")
            invm, invs, _ = stats.get(ds, setting, method, "invalid_rate")
            counts.append(n)
            rec = {"row": label, "method": method, "setting": setting, "dataset": ds, "n_seeds": n,
                   "macro_f1_mean": f1m, "macro_f1_std": f1s, "accuracy_mean": accm, "accuracy_std": accs,
                   "invalid_rate_mean": invm, "invalid_rate_std": invs}
            shown[ds] = fmt_f1_acc(f1m, f1s, accm, accs, n)
            invalid_row[ds] = fmt_mean_std(invm, invs, n)
            if paper is not None:
                pf1 = paper.get(ds, method, setting, "macro_f1")
                pacc = paper.get(ds, method, setting, "accuracy")
                rec.update(paper_macro_f1=pf1, paper_accuracy=pacc, delta_macro_f1=_delta(f1m, pf1))
                shown[f"{ds} paper"] = _paper_cell(pf1, pacc)
                shown[f"{ds} Δ F1"] = fmt_signed(_delta(f1m, pf1))
            numeric.append(rec)
        display.append(shown)
        if method == "mllm" or method.startswith("mllm-"):
            invalid.append(invalid_row)
    notes = ["Cells: macro-F1 (accuracy) on the test split. " + _seed_note(counts)]
    if paper is not None:
        notes.append("paper = the paper's Table 1 (mean of 5 seeds); Δ F1 = our mean − paper.")
    sections = [("Invalid-output rate of the MLLM rows (share of test outputs the parser could not map "
                 "to a class; counted as wrong above)", pd.DataFrame(invalid, columns=["Method", *stats.datasets]))]
    return Table("table1", "Table 1: classification macro-F1 (accuracy)", pd.DataFrame(numeric),
                 pd.DataFrame(display, columns=_display_columns(["Method"], stats.datasets, paper,
                                                                ["paper", "Δ F1"])),
                 notes, sections)


def table2(all_runs: pd.DataFrame, paper: PaperResults | None = None) -> Table:
    """Post-projection probe F1 per setting, its % change vs Original, and the MLLM's own F1."""
    stats = Stats(all_runs)
    settings = stats.settings_for(("mllm", "probe_post"))
    numeric, display, counts = [], [], []
    for ds in stats.datasets:
        orig, _, _ = stats.get(ds, "original", "probe_post", "macro_f1")
        porig = paper.get(ds, "probe_post", "original", "macro_f1") if paper is not None else math.nan
        for s in settings:
            pm, ps, pn = stats.get(ds, s, "probe_post", "macro_f1")
            mm, ms, mn = stats.get(ds, s, "mllm", "macro_f1")
            counts += [pn, mn]
            change = pct_change(pm, orig)
            rec = {"dataset": ds, "setting": s, "probe_n_seeds": pn, "probe_macro_f1_mean": pm,
                   "probe_macro_f1_std": ps, "pct_change_vs_original": change, "mllm_n_seeds": mn,
                   "mllm_macro_f1_mean": mm, "mllm_macro_f1_std": ms}
            shown = {"Dataset": ds, "Setting": SETTING_LABELS.get(s, s),
                     "Post-proj. probe macro-F1": fmt_mean_std(pm, ps, pn),
                     "% change vs Original": "(reference)" if s == "original" and not _isnan(pm) else fmt_pct(change),
                     "MLLM macro-F1": fmt_mean_std(mm, ms, mn)}
            if paper is not None:
                pp = paper.get(ds, "probe_post", s, "macro_f1")
                pmllm = paper.get(ds, "mllm", s, "macro_f1")
                ppct = pct_change(pp, porig)
                rec.update(paper_probe_macro_f1=pp, paper_pct_change_vs_original=ppct, paper_mllm_macro_f1=pmllm,
                           delta_probe_macro_f1=_delta(pm, pp), delta_mllm_macro_f1=_delta(mm, pmllm))
                shown.update({"paper probe": fmt_value(pp),
                              "paper % change": "(reference)" if s == "original" and not _isnan(pp) else fmt_pct(ppct),
                              "paper MLLM": fmt_value(pmllm), "Δ probe F1": fmt_signed(_delta(pm, pp))})
            numeric.append(rec)
            display.append(shown)
    notes = ["Post-proj. probe: MLP on the mean-pooled post-projection embedding H_v of each setting's model; "
             "% change = (x − Original) / Original × 100 on unrounded means. " + _seed_note(counts)]
    if paper is not None:
        notes.append("paper = the paper's Table 2 / Table 1; its % change is recomputed from its rounded F1 values.")
    columns = ["Dataset", "Setting", "Post-proj. probe macro-F1", "% change vs Original", "MLLM macro-F1"]
    if paper is not None:
        columns += ["paper probe", "paper % change", "paper MLLM", "Δ probe F1"]
    return Table("table2", "Table 2: post-projection probe vs MLLM macro-F1", pd.DataFrame(numeric),
                 pd.DataFrame(display, columns=columns), notes)


def table3(all_runs: pd.DataFrame, paper: PaperResults | None = None) -> Table:
    """Image-only MLP on the pooled vision features: macro-F1 (accuracy) per dataset."""
    stats = Stats(all_runs)
    numeric, display, counts = [], [], []
    for ds in stats.datasets:
        f1m, f1s, n = stats.get(ds, NO_SETTING, "probe_image_only", "macro_f1")
        accm, accs, _ = stats.get(ds, NO_SETTING, "probe_image_only", "accuracy")
        counts.append(n)
        rec = {"dataset": ds, "n_seeds": n, "macro_f1_mean": f1m, "macro_f1_std": f1s,
               "accuracy_mean": accm, "accuracy_std": accs}
        shown = {"Dataset": ds, "Image-only MLP macro-F1 (accuracy)": fmt_f1_acc(f1m, f1s, accm, accs, n)}
        if paper is not None:
            pf1 = paper.get(ds, "probe_image_only", NO_SETTING, "macro_f1")
            pacc = paper.get(ds, "probe_image_only", NO_SETTING, "accuracy")
            rec.update(paper_macro_f1=pf1, paper_accuracy=pacc, delta_macro_f1=_delta(f1m, pf1))
            shown.update({"paper": _paper_cell(pf1, pacc), "Δ F1": fmt_signed(_delta(f1m, pf1))})
        numeric.append(rec)
        display.append(shown)
    columns = ["Dataset", "Image-only MLP macro-F1 (accuracy)"] + (["paper", "Δ F1"] if paper is not None else [])
    notes = ["MLP on the pooled vision-encoder features alone (no projector, no LLM). " + _seed_note(counts)]
    return Table("table3", "Table 3: image-only MLP macro-F1 (accuracy)", pd.DataFrame(numeric),
                 pd.DataFrame(display, columns=columns), notes)


def _delta(ours, paper_value) -> float:
    return math.nan if _isnan(ours) or _isnan(paper_value) else ours - paper_value


def _paper_cell(f1, acc) -> str:
    if _isnan(f1):
        return MISSING
    return fmt_value(f1) if _isnan(acc) else f"{fmt_value(f1)} ({fmt_value(acc)})"


def _display_columns(lead: list[str], datasets: list[str], paper, paper_suffixes: list[str]) -> list[str]:
    cols = list(lead)
    for ds in datasets:
        cols.append(ds)
        if paper is not None:
            cols += [f"{ds} {s}" for s in paper_suffixes]
    return cols


# ---------------------------------------------------------------- writers

def to_markdown(table: Table) -> str:
    from tabulate import tabulate

    def md(frame: pd.DataFrame) -> str:
        if frame.empty and not len(frame.columns):
            return "_(no data)_"
        return tabulate(frame.fillna(MISSING).values.tolist(), headers=list(frame.columns), tablefmt="github",
                        disable_numparse=True)

    parts = [f"### {table.title}", "", md(table.display), ""]
    for title, frame in table.sections:
        parts += [f"**{title}**", "", md(frame), ""]
    parts += [p for n in table.notes for p in (f"_{n}_", "")]
    return "\n".join(parts).rstrip("\n") + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "–": "--", "−": "$-$", "Δ": r"$\Delta$", "×": r"$\times$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def _latex_tabular(frame: pd.DataFrame) -> str:
    spec = "l" * min(len(frame.columns), 2 if "Setting" in frame.columns else 1) + \
        "r" * max(len(frame.columns) - (2 if "Setting" in frame.columns else 1), 0)
    lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in frame.columns) + r" \\", r"\midrule"]
    for row in frame.fillna(MISSING).values.tolist():
        lines.append(" & ".join(latex_escape(v) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def to_latex(table: Table) -> str:
    """A booktabs ``tabular`` (needs ``\\usepackage{booktabs}``), with the notes as ``%`` comments."""
    parts = [f"% {table.title}"] + [f"% {n}" for n in table.notes] + [_latex_tabular(table.display)]
    for title, frame in table.sections:
        parts += ["", r"\medskip", rf"\textit{{{latex_escape(title)}}}\par", _latex_tabular(frame)]
    return "\n".join(parts) + "\n"


def write_table(table: Table, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    paths = [out_dir / f"{table.name}.{ext}" for ext in ("csv", "md", "tex")]
    write_csv(paths[0], table.numeric)
    write_text(paths[1], to_markdown(table))
    write_text(paths[2], to_latex(table))
    return paths


def _with_model_column(per_model: list[tuple[str, Table]]) -> Table:
    """One table from each model's: its rows under a leading model column, in the models' order."""

    def stacked(frames: list[tuple[str, pd.DataFrame]], column: str) -> pd.DataFrame:
        return pd.concat([frame.assign(**{column: model})[[column, *frame.columns]] for model, frame in frames],
                         ignore_index=True)

    first = per_model[0][1]
    return Table(first.name, first.title, stacked([(m, t.numeric) for m, t in per_model], "model"),
                 stacked([(m, t.display) for m, t in per_model], "Model"), first.notes,
                 [(title, stacked([(m, t.sections[i][1]) for m, t in per_model], "Model"))
                  for i, (title, _) in enumerate(first.sections)])


def make_tables(all_runs: pd.DataFrame, out_dir: str | Path, encoder_name: str = "CLIP", mllm_name: str = "MLLM",
                paper: PaperResults | None = None) -> list[Path]:
    """Write ``table{1,2,3}.{csv,md,tex}`` into ``out_dir``; return the paths written. With several
    models (an ``all_runs`` with a ``model`` column) each table has a leading model column."""
    parts = model_parts(all_runs)
    per_model = [(model, (table1(runs, encoder_name, mllm_name, paper), table2(runs, paper), table3(runs, paper)))
                 for model, runs in parts]
    written = []
    for i in range(3):
        tables = [(model, made[i]) for model, made in per_model]
        table = tables[0][1] if parts[0][0] is None else _with_model_column(tables)
        written += write_table(table, out_dir)
    return written
