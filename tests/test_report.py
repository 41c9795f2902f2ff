"""Report stage: all_runs.csv from predictions, Tables 1-3 recomputed by hand, the figure."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from projection_probe.cli import main
from projection_probe.io import InputError
from projection_probe.report.aggregate import collect_runs, read_all_runs, summarize
from projection_probe.report.figures import plot_richness, richness_points
from projection_probe.report.tables import (
    MISSING,
    PaperResults,
    fmt_f1_acc,
    fmt_mean_std,
    fmt_pct,
    make_tables,
    pct_change,
    table1,
    table2,
    table3,
)

REPO = Path(__file__).resolve().parents[1]


def runs_frame(rows: list[tuple]) -> pd.DataFrame:
    """rows of (dataset, setting, seed, method, metric, value)."""
    return pd.DataFrame(rows, columns=["dataset", "setting", "seed", "method", "metric", "value"])


def synthetic_runs() -> pd.DataFrame:
    rows = []
    # "toy": everything, two seeds.  Probe means: original 0.10004, ft-proj 0.10996, ft-e2e 0.09.
    # Rounding the means to 4 digits first would give (0.1100 - 0.1000) / 0.1000 = +10.00% instead of
    # the true +9.92%.
    values = {
        ("original", "probe_post", "macro_f1"): (0.10002, 0.10006),
        ("ft-proj", "probe_post", "macro_f1"): (0.10990, 0.11002),
        ("ft-e2e", "probe_post", "macro_f1"): (0.08, 0.10),
        ("original", "mllm", "macro_f1"): (0.2, 0.4),
        ("original", "mllm", "accuracy"): (0.25, 0.35),
        ("original", "mllm", "invalid_rate"): (0.1, 0.3),
        ("ft-proj", "mllm", "macro_f1"): (0.5, 0.5),
        ("ft-proj", "mllm", "accuracy"): (0.6, 0.6),
        ("ft-proj", "mllm", "invalid_rate"): (0.0, 0.0),
        ("-", "probe_image_only", "macro_f1"): (0.7, 0.8),
        ("-", "probe_image_only", "accuracy"): (0.75, 0.85),
    }
    for (setting, method, metric), (a, b) in values.items():
        rows += [("toy", setting, 0, method, metric, a), ("toy", setting, 1, method, metric, b)]
    rows += [("toy", "-", 0, "random", "macro_f1", 0.05), ("toy", "-", 0, "random", "accuracy", 0.06)]
    # "other": only a random baseline (one seed): every other cell must show as missing.
    rows += [("other", "-", 0, "random", "macro_f1", 0.3), ("other", "-", 0, "random", "accuracy", 0.4)]
    return runs_frame(rows)


# ---------------------------------------------------------------- formatting and maths

def test_formatting():
    assert fmt_mean_std(0.123456, 0.01, 2) == "0.1235 ± 0.0100"
    assert fmt_mean_std(math.nan, 0.1, 2) == MISSING
    assert fmt_f1_acc(0.5, 0.0, 0.25, 0.125, 3) == "0.5000 ± 0.0000 (0.2500 ± 0.1250)"
    assert fmt_f1_acc(0.5, 0.0, math.nan, math.nan, 3) == "0.5000 ± 0.0000"
    # One seed has no spread: its value alone, never "± 0.0000".
    assert fmt_mean_std(0.123456, 0.0, 1) == "0.1235"
    assert fmt_f1_acc(0.5, 0.0, 0.25, 0.0, 1) == "0.5000 (0.2500)"
    assert fmt_pct(-27.4864) == "-27.49%" and fmt_pct(3.0) == "+3.00%" and fmt_pct(math.nan) == MISSING
    assert math.isnan(pct_change(0.5, 0.0)) and math.isnan(pct_change(math.nan, 0.5))


def test_summary_uses_sample_std_and_zero_for_one_seed():
    s = summarize(synthetic_runs()).set_index(["dataset", "setting", "method", "metric"])
    cell = s.loc[("toy", "original", "mllm", "macro_f1")]
    assert cell["mean"] == pytest.approx(0.3)
    assert cell["std"] == pytest.approx(math.sqrt(((0.2 - 0.3) ** 2 + (0.4 - 0.3) ** 2) / 1))
    assert cell["n_seeds"] == 2
    one = s.loc[("toy", "-", "random", "macro_f1")]
    assert one["std"] == 0.0 and one["n_seeds"] == 1


def test_table2_percent_change_uses_unrounded_means():
    t = table2(synthetic_runs())
    num = t.numeric.set_index(["dataset", "setting"])
    exact = (0.10996 - 0.10004) / 0.10004 * 100
    assert num.loc[("toy", "ft-proj"), "pct_change_vs_original"] == pytest.approx(exact)
    shown = t.display.set_index(["Dataset", "Setting"])
    assert shown.loc[("toy", "FT-Proj"), "% change vs Original"] == "+9.92%"
    rounded_first = (round(0.10996, 4) - round(0.10004, 4)) / round(0.10004, 4) * 100
    assert f"{rounded_first:+.2f}%" == "+10.00%"  # the test values really tell the two apart
    assert num.loc[("toy", "ft-e2e"), "pct_change_vs_original"] == pytest.approx((0.09 - 0.10004) / 0.10004 * 100)
    assert shown.loc[("toy", "Original"), "% change vs Original"] == "(reference)"
    assert shown.loc[("toy", "FT-Proj"), "MLLM macro-F1"] == "0.5000 ± 0.0000"  # two equal seeds
    assert shown.loc[("toy", "FT-E2E"), "MLLM macro-F1"] == MISSING  # no MLLM run for ft-e2e
    # A dataset without probes still gets its rows, all missing.
    assert shown.loc[("other", "FT-Proj"), "Post-proj. probe macro-F1"] == MISSING
    assert math.isnan(num.loc[("other", "ft-proj"), "pct_change_vs_original"])
    assert "FT-LoRA" not in set(shown.reset_index()["Setting"])


def test_table1_by_hand():
    t = table1(synthetic_runs(), encoder_name="CLIP", mllm_name="LLaVA")
    shown = t.display.set_index("Method")
    assert list(shown.index) == ["Random", "CLIP zero-shot", "LLaVA zero-shot", "FT-Proj", "FT-E2E"]
    assert list(shown.columns) == ["toy", "other"]
    assert shown.loc["LLaVA zero-shot", "toy"] == "0.3000 ± 0.1414 (0.3000 ± 0.0707)"
    assert shown.loc["Random", "toy"] == "0.0500 (0.0600)"  # one seed
    assert shown.loc["Random", "other"] == "0.3000 (0.4000)"
    assert shown.loc["CLIP zero-shot", "toy"] == MISSING
    assert shown.loc["FT-E2E", "toy"] == MISSING
    invalid = t.sections[0][1].set_index("Method")
    assert list(invalid.index) == ["LLaVA zero-shot", "FT-Proj", "FT-E2E"]
    assert invalid.loc["LLaVA zero-shot", "toy"] == "0.2000 ± 0.1414"
    num = t.numeric.set_index(["method", "setting", "dataset"])
    row = num.loc[("mllm", "original", "toy")]
    assert (row["macro_f1_mean"], row["accuracy_mean"], row["invalid_rate_mean"]) == pytest.approx((0.3, 0.3, 0.2))
    assert row["macro_f1_std"] == pytest.approx(math.sqrt(0.02)) and row["n_seeds"] == 2
    assert math.isnan(num.loc[("encoder_zero_shot", "-", "toy"), "macro_f1_mean"])


def test_table1_shows_lora_only_when_present():
    runs = pd.concat([synthetic_runs(), runs_frame([("toy", "ft-lora", 0, "mllm", "macro_f1", 0.6)])])
    shown = table1(runs).display.set_index("Method")
    assert shown.loc["FT-LoRA", "toy"] == "0.6000"


def test_table3_by_hand():
    t = table3(synthetic_runs())
    shown = t.display.set_index("Dataset")
    assert shown.loc["toy", "Image-only MLP macro-F1 (accuracy)"] == "0.7500 ± 0.0707 (0.8000 ± 0.0707)"
    assert shown.loc["other", "Image-only MLP macro-F1 (accuracy)"] == MISSING
    num = t.numeric.set_index("dataset")
    assert num.loc["toy", "macro_f1_mean"] == pytest.approx(0.75)
    assert num.loc["toy", "macro_f1_std"] == pytest.approx(math.sqrt(0.005))


def test_paper_columns_and_resource_file(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"toy": "plantdoc"}))
    paper = PaperResults.load(REPO / "resources" / "paper_results.csv", tmp_path / "map.json")
    t2 = table2(synthetic_runs(), paper)
    num = t2.numeric.set_index(["dataset", "setting"])
    # The paper's own example: (0.4134 - 0.5701) / 0.5701 = -27.49%.
    assert num.loc[("toy", "ft-proj"), "paper_pct_change_vs_original"] == pytest.approx(-27.4864, abs=1e-3)
    assert t2.display.set_index(["Dataset", "Setting"]).loc[("toy", "FT-Proj"), "paper % change"] == "-27.49%"
    assert num.loc[("toy", "ft-proj"), "delta_probe_macro_f1"] == pytest.approx(0.10996 - 0.4134)
    assert math.isnan(num.loc[("other", "ft-proj"), "paper_probe_macro_f1"])  # "other" is not mapped
    t1 = table1(synthetic_runs(), paper=paper).display.set_index("Method")
    assert t1.loc["MLLM zero-shot", "toy paper"] == "0.1064 (0.1255)"
    assert t1.loc["MLLM zero-shot", "toy Δ F1"] == f"{0.3 - 0.1064:+.4f}"
    assert t1.loc["Random", "other paper"] == MISSING
    t3 = table3(synthetic_runs(), paper).display.set_index("Dataset")
    assert t3.loc["toy", "paper"] == "0.6991 (0.7118)"


def test_paper_map_naming_unknown_dataset_is_rejected(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps({"toy": "imagenet"}))
    with pytest.raises(InputError, match="imagenet"):
        PaperResults.load(REPO / "resources" / "paper_results.csv", tmp_path / "map.json")


def test_make_tables_cli_writes_all_formats(tmp_path):
    synthetic_runs().to_csv(tmp_path / "all_runs.csv", index=False)
    (tmp_path / "map.json").write_text(json.dumps({"toy": "dtd"}))
    rc = main(["make-tables", "--all-runs", str(tmp_path / "all_runs.csv"), "--out-dir", str(tmp_path / "tables"),
               "--encoder-name", "SigLIP", "--paper-results", str(REPO / "resources" / "paper_results.csv"),
               "--paper-map", str(tmp_path / "map.json")])
    assert rc == 0
    for n in (1, 2, 3):
        for ext in ("csv", "md", "tex"):
            assert (tmp_path / "tables" / f"table{n}.{ext}").stat().st_size > 0
    md = (tmp_path / "tables" / "table1.md").read_text()
    assert "SigLIP zero-shot" in md and "0.3000 ± 0.1414 (0.3000 ± 0.0707)" in md and "Invalid-output rate" in md
    tex = (tmp_path / "tables" / "table2.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"+9.92\%" in tex and r"$\pm$" in tex
    # The CSV is machine-readable: the mean and std are separate numeric columns.
    csv = pd.read_csv(tmp_path / "tables" / "table2.csv")
    row = csv[(csv["dataset"] == "toy") & (csv["setting"] == "original")].iloc[0]
    assert row["probe_macro_f1_mean"] == pytest.approx(0.10004)
    assert row["probe_macro_f1_std"] == pytest.approx(math.sqrt(2 * 0.00002 ** 2))


def test_make_tables_requires_paper_map_with_paper_results(tmp_path, capsys):
    synthetic_runs().to_csv(tmp_path / "all_runs.csv", index=False)
    rc = main(["make-tables", "--all-runs", str(tmp_path / "all_runs.csv"), "--out-dir", str(tmp_path / "t"),
               "--paper-results", str(REPO / "resources" / "paper_results.csv")])
    assert rc == 2 and "--paper-map" in capsys.readouterr().err


def test_empty_all_runs_gives_tables_of_missing_cells(tmp_path):
    written = make_tables(runs_frame([]), tmp_path)
    assert len(written) == 9
    assert "Random" in (tmp_path / "table1.md").read_text()


# ---------------------------------------------------------------- aggregate

def write_predictions(path: Path, labels: list[str], parsed: list[str | None]) -> None:
    rows = [{"image_path": f"img{i}.jpg", "label": t, "raw": p or "gibberish", "parsed": p or "",
             "valid": p is not None, "mode": "generate"} for i, (t, p) in enumerate(zip(labels, parsed))]
    pd.DataFrame(rows).to_csv(path, index=False)


def test_aggregate_recomputes_metrics_from_predictions(tmp_path):
    classes = ["cat", "dog", "bird"]
    (tmp_path / "classes.json").write_text(json.dumps({"task": "animals", "classes": classes}))
    truth = ["cat", "cat", "dog", "dog", "bird", "bird"]
    write_predictions(tmp_path / "mllm.csv", truth, ["cat", "dog", "dog", None, "bird", "cat"])
    write_predictions(tmp_path / "random.csv", truth, ["dog", "bird", "bird", "dog", "cat", "cat"])
    entries = [
        {"dataset": "toy", "setting": "original", "seed": 0, "method": "mllm",
         "predictions": str(tmp_path / "mllm.csv"), "classes": str(tmp_path / "classes.json")},
        {"dataset": "toy", "setting": "-", "seed": 0, "method": "random",
         "predictions": str(tmp_path / "random.csv"), "classes": str(tmp_path / "classes.json")},
    ]
    (tmp_path / "runs.json").write_text(json.dumps(entries))
    assert main(["aggregate", "--runs-json", str(tmp_path / "runs.json"), "--out", str(tmp_path / "all_runs.csv")]) == 0
    frame = read_all_runs(tmp_path / "all_runs.csv")
    assert list(frame.columns) == ["dataset", "setting", "seed", "method", "metric", "value"]
    got = frame.set_index(["method", "metric"])["value"]
    # By hand, MLLM: 3 of 6 right; one invalid (never a class). Per class (precision, recall):
    # cat (1/2, 1/2), dog (1/2, 1/2), bird (1/1, 1/2) -> F1 0.5, 0.5, 2/3.
    assert got[("mllm", "accuracy")] == pytest.approx(0.5)
    assert got[("mllm", "invalid_rate")] == pytest.approx(1 / 6)
    assert got[("mllm", "macro_f1")] == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)
    assert got[("random", "accuracy")] == pytest.approx(1 / 6)  # only the 4th row ("dog") is right
    assert got[("random", "invalid_rate")] == 0.0
    # The "-" setting survives a CSV round trip as a string.
    assert set(frame["setting"]) == {"original", "-"}


@pytest.mark.parametrize("change, message", [
    ({"method": "llava"}, "method 'llava' unknown"),
    ({"method": "random", "setting": "original"}, "use setting '-'"),
    ({"setting": "-"}, "needs a setting"),
    ({"seed": "zero"}, "seed 'zero'"),
])
def test_bad_run_entries_raise_input_error(tmp_path, change, message):
    entry = {"dataset": "toy", "setting": "original", "seed": 0, "method": "mllm",
             "predictions": "p.csv", "classes": "c.json", **change}
    with pytest.raises(InputError, match=message):
        collect_runs([entry])


def test_duplicate_and_missing_files_raise_input_error(tmp_path):
    entry = {"dataset": "toy", "setting": "original", "seed": 0, "method": "mllm",
             "predictions": str(tmp_path / "nope.csv"), "classes": "c.json"}
    with pytest.raises(InputError, match="nope.csv: predictions file not found"):
        collect_runs([entry])
    with pytest.raises(InputError, match="duplicates run 0"):
        collect_runs([entry, dict(entry)])


def test_read_all_runs_rejects_duplicates(tmp_path):
    runs_frame([("toy", "-", 0, "random", "macro_f1", 0.1)] * 2).to_csv(tmp_path / "a.csv", index=False)
    with pytest.raises(InputError, match="duplicate"):
        read_all_runs(tmp_path / "a.csv")


# ---------------------------------------------------------------- figure

def test_figure_points_and_files(tmp_path):
    points = richness_points(synthetic_runs()).set_index(["dataset", "setting"])
    # Only settings with both a probe and an MLLM result are plotted (ft-e2e has no MLLM run).
    assert sorted(points.index) == [("toy", "ft-proj"), ("toy", "original")]
    assert points.loc[("toy", "original"), "probe_mean"] == pytest.approx(0.10004)
    assert points.loc[("toy", "original"), "mllm_mean"] == pytest.approx(0.3)
    assert points.loc[("toy", "original"), "mllm_std"] == pytest.approx(math.sqrt(0.02))
    synthetic_runs().to_csv(tmp_path / "all_runs.csv", index=False)
    rc = main(["make-figure", "--all-runs", str(tmp_path / "all_runs.csv"),
               "--out-png", str(tmp_path / "fig" / "f.png"), "--out-pdf", str(tmp_path / "fig" / "f.pdf")])
    assert rc == 0
    assert (tmp_path / "fig" / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "fig" / "f.pdf").read_bytes()[:5] == b"%PDF-"


def test_figure_without_points_still_writes_files(tmp_path):
    plot_richness(runs_frame([]), tmp_path / "e.png", tmp_path / "e.pdf")
    assert (tmp_path / "e.png").stat().st_size > 0 and (tmp_path / "e.pdf").stat().st_size > 0


def test_differences_that_round_to_zero_have_no_minus_sign():
    from projection_probe.report.tables import fmt_signed
    assert fmt_signed(-0.00001) == "+0.0000" and fmt_pct(-0.001) == "+0.00%"
    assert fmt_signed(-0.0001) == "-0.0001"


def test_one_seed_tables_show_no_std_and_say_1_seed():
    runs = runs_frame([("toy", "-", 0, "probe_image_only", "macro_f1", 0.75),
                       ("toy", "-", 0, "probe_image_only", "accuracy", 0.8)])
    t = table3(runs)
    assert t.display.loc[0, "Image-only MLP macro-F1 (accuracy)"] == "0.7500 (0.8000)"
    assert "1 seed" in t.notes[0] and "seed(s)" not in t.notes[0] and "±" not in t.notes[0], t.notes
    two = table3(synthetic_runs())
    assert "over 2 seeds per cell." in two.notes[0] and "seed(s)" not in two.notes[0], two.notes
    # Cells of 1 and of 2 seeds in one table: the range, and how a one-seed cell reads.
    mixed = table1(synthetic_runs())
    assert "over 1–2 seeds per cell; a cell of 1 seed shows its value alone." in mixed.notes[0], mixed.notes


@pytest.mark.parametrize("name", ["workflow.rst", "table2.rst", "table3.rst"])
def test_report_texts_say_over_1_seed_or_n_seeds(name):
    """The report's front page and captions as Snakemake renders them (jinja2 with trim_blocks and
    lstrip_blocks, snakemake/report/__init__.py), joined into lines as reStructuredText does."""
    from types import SimpleNamespace

    from jinja2 import Environment

    template = Environment(trim_blocks=True, lstrip_blocks=True).from_string(
        (REPO / "workflow" / "report" / name).read_text())

    def text(seeds):
        return " ".join(template.render(snakemake=SimpleNamespace(config={"seeds": seeds})).split())

    one, three = text([0]), text([0, 1, 2])
    assert re.search(r"over 1 (probe )?seed\b(?!s)", one) and "1seed" not in one, one
    assert re.search(r"over 3 (probe )?seeds\b", three), three


def two_model_runs() -> pd.DataFrame:
    """The synthetic study twice: model "b" has every probe F1 halved."""
    one = synthetic_runs()
    other = one.assign(value=one["value"].where(one["method"] != "probe_post", one["value"] / 2))
    return pd.concat([one.assign(model="a"), other.assign(model="b")], ignore_index=True)[
        ["model", *one.columns]]


def test_several_models_give_each_table_a_model_column_with_each_models_own_rows(tmp_path):
    one = {n: pd.read_csv(p) for n, p in zip((1, 2, 3), sorted(
        p for p in make_tables(synthetic_runs(), tmp_path / "one") if p.suffix == ".csv"))}
    two = {n: pd.read_csv(p) for n, p in zip((1, 2, 3), sorted(
        p for p in make_tables(two_model_runs(), tmp_path / "two") if p.suffix == ".csv"))}
    for n in (1, 2, 3):
        assert "model" not in one[n].columns
        assert list(two[n].columns) == ["model", *one[n].columns]
        # Model "a" is the one-model study itself, row for row.
        pd.testing.assert_frame_equal(two[n][two[n]["model"] == "a"].drop(columns="model").reset_index(drop=True),
                                      one[n], check_dtype=False)
    b = two[2][(two[2]["model"] == "b") & (two[2]["setting"] == "original")].iloc[0]
    assert b["probe_macro_f1_mean"] == pytest.approx(0.10004 / 2)
    md = (tmp_path / "two" / "table2.md").read_text()
    assert md.count("| a ") >= 2 and md.count("| b ") >= 2 and "Model" in md


def test_aggregate_keeps_each_runs_model_and_refuses_a_list_that_names_it_for_some_runs_only(tmp_path):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"task": "animals", "classes": ["cat", "dog"]}))
    write_predictions(tmp_path / "p.csv", ["cat", "dog"], ["cat", "cat"])
    run = {"dataset": "toy", "setting": "original", "seed": 0, "method": "mllm", "predictions": str(tmp_path / "p.csv"),
           "classes": str(classes)}
    frame = collect_runs([{**run, "model": "a"}, {**run, "model": "b"}])
    assert list(frame.columns) == ["model", "dataset", "setting", "seed", "method", "metric", "value"]
    frame.to_csv(tmp_path / "all_runs.csv", index=False)
    assert sorted(set(read_all_runs(tmp_path / "all_runs.csv")["model"])) == ["a", "b"]
    with pytest.raises(InputError, match="other runs name their 'model'"):
        collect_runs([{**run, "model": "a"}, run])


def test_several_models_draw_one_panel_each(tmp_path):
    points = plot_richness(two_model_runs(), tmp_path / "f.png", tmp_path / "f.pdf")
    assert list(points.columns)[0] == "model" and sorted(set(points["model"])) == ["a", "b"]
    halved = points.set_index(["model", "dataset", "setting"])["probe_mean"]
    assert halved[("b", "toy", "original")] == pytest.approx(halved[("a", "toy", "original")] / 2)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["table1.rst", "table2.rst", "table3.rst", "figure_richness.rst"])
def test_captions_name_the_model_column_only_with_several_models(name):
    from types import SimpleNamespace

    from jinja2 import Environment

    template = Environment(trim_blocks=True, lstrip_blocks=True).from_string(
        (REPO / "workflow" / "report" / name).read_text())

    def text(models):
        return template.render(snakemake=SimpleNamespace(config={"seeds": [0], "models": models}))

    assert "several models" not in text({"demo": {}})
    assert "With several models (3)" in text({"a": {}, "b": {}, "c": {}})
