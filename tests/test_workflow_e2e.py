"""The real workflow on the micro config (tiny random models, a few real images) in a temp dir.

The tests read the session's shared micro run (tests/conftest.py): outputs, every table value
recomputed from the per-image predictions, and what a rerun does after adding a dataset or changing
one learning rate (`snakemake -n`; tests/test_rerun_table.py covers every other config key).
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import f1_score

from projection_probe.testing.micro import MICRO_CONFIG, MICRO_FAMILY_MODEL, MICRO_MODEL, snakemake_command

from doc_paths import missing_doc_paths

pytestmark = pytest.mark.slow


def run(cmd, cwd=None):
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def test_tables_figure_report_and_logs_are_written(micro_run):
    results = micro_run / "results"
    for n in (1, 2, 3):
        for ext in ("csv", "md", "tex"):
            assert (results / "tables" / f"table{n}.{ext}").stat().st_size > 0
    assert (results / "figures" / "richness_vs_f1.png").read_bytes()[:4] == b"\x89PNG"
    assert (results / "figures" / "richness_vs_f1.pdf").read_bytes()[:4] == b"%PDF"
    html = (results / "report.html").read_text(errors="replace")
    assert "table1" in html and "richness_vs_f1" in html
    # One log file per job, for each of the two models.
    assert len(list((results / "logs" / "finetune").glob("*.log"))) == 2 * 2 * 3 * 2
    assert len(list((results / "logs" / "classify").glob("*.log"))) == 2 * 2 * 4 * 3 * 2


def test_tables_have_a_model_column_with_the_llava_style_and_the_family_models_rows(micro_run):
    """Two model families in one study: the tiny LLaVA-style parts model and a tiny checkpoint of another
    family (loader: family), each with the rows of every dataset and setting, in the config's order."""
    assert list(MICRO_CONFIG["models"]) == [MICRO_MODEL, MICRO_FAMILY_MODEL]
    rows_per_model = {"table1.csv": 2 * (2 + 4 * 3), "table2.csv": 2 * 4, "table3.csv": 2}
    for name, rows in rows_per_model.items():
        table = pd.read_csv(micro_run / "results" / "tables" / name)
        assert table.columns[0] == "model", (name, list(table.columns))
        assert list(dict.fromkeys(table["model"])) == [MICRO_MODEL, MICRO_FAMILY_MODEL], name
        assert table["model"].value_counts().to_dict() == {MICRO_MODEL: rows, MICRO_FAMILY_MODEL: rows}, name
    base = yaml.safe_load((micro_run / "results" / "models" / MICRO_FAMILY_MODEL / "base" / "facade.json").read_text())
    assert base["family_checkpoint"].endswith("idefics3")


def independent_metrics(path: Path) -> tuple[float, float]:
    """Macro-F1 over the classes present in the ground truth (`metrics.f1_classes: "true"`), with an
    invalid output never a class, and accuracy, straight from sklearn."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    truth = frame["label"].tolist()
    predicted = [p if v == "True" else "<invalid>" for p, v in zip(frame["parsed"], frame["valid"])]
    labels = sorted(set(truth))
    f1 = f1_score(truth, predicted, labels=labels, average="macro", zero_division=0)
    return float(f1), float(np.mean([p == t for p, t in zip(predicted, truth)]))


def mean_std(values):
    values = np.asarray(values, dtype=float)
    return values.mean(), (values.std(ddof=1) if len(values) > 1 else 0.0)


def test_every_table_value_is_recomputable_from_per_image_predictions(micro_run):
    results = micro_run / "results"
    table1 = pd.read_csv(results / "tables" / "table1.csv")
    table2 = pd.read_csv(results / "tables" / "table2.csv")
    table3 = pd.read_csv(results / "tables" / "table3.csv")
    seeds = [0, 1]

    def files(pattern):
        return [results / pattern.format(seed=s) for s in seeds]

    checked = 0
    for _, row in table1.iterrows():
        d, method, setting = row["dataset"], row["method"], row["setting"]
        predictions = f"predictions/{row['model']}"
        if method == "random":
            paths = files(f"baselines/{d}/random/seed{{seed}}.csv")
        elif method == "encoder_zero_shot":
            paths = [results / f"baselines/{d}/encoder_zero_shot.csv"] * 2
        else:
            mode = "generate" if method == "mllm" else method.split("-", 1)[1]
            paths = files(f"{predictions}/{d}/{setting}/{mode}/seed{{seed}}.csv")
        f1s, accs = zip(*(independent_metrics(p) for p in paths))
        assert row["macro_f1_mean"] == pytest.approx(mean_std(f1s)[0], abs=1e-9)
        assert row["macro_f1_std"] == pytest.approx(mean_std(f1s)[1], abs=1e-9)
        assert row["accuracy_mean"] == pytest.approx(mean_std(accs)[0], abs=1e-9)
        checked += 1
    for _, row in table2.iterrows():
        d, setting = row["dataset"], row["setting"]
        predictions, probes = f"predictions/{row['model']}", f"probes/{row['model']}"
        probe = [independent_metrics(p)[0] for p in files(f"{probes}/{d}/post/{setting}/seed{{seed}}.csv")]
        mllm = [independent_metrics(p)[0] for p in files(f"{predictions}/{d}/{setting}/generate/seed{{seed}}.csv")]
        original = [independent_metrics(p)[0] for p in files(f"{probes}/{d}/post/original/seed{{seed}}.csv")]
        assert row["probe_macro_f1_mean"] == pytest.approx(mean_std(probe)[0], abs=1e-9)
        assert row["mllm_macro_f1_mean"] == pytest.approx(mean_std(mllm)[0], abs=1e-9)
        expected_change = (np.mean(probe) - np.mean(original)) / np.mean(original) * 100
        assert row["pct_change_vs_original"] == pytest.approx(expected_change, abs=1e-6)
        checked += 1
    for _, row in table3.iterrows():
        probes = f"probes/{row['model']}"
        f1s, accs = zip(*(independent_metrics(p)
                          for p in files(f"{probes}/{row['dataset']}/image_only/seed{{seed}}.csv")))
        assert row["macro_f1_mean"] == pytest.approx(mean_std(f1s)[0], abs=1e-9)
        assert row["accuracy_mean"] == pytest.approx(mean_std(accs)[0], abs=1e-9)
        checked += 1
    # Per model, Table 1: random, zero-shot, 4 settings × 3 modes per dataset; Table 2: 4 settings; Table 3: 1.
    assert checked == 2 * (2 * (2 + 4 * 3) + 2 * 4 + 2)


def dry_run_jobs(workdir: Path, config: dict) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job `snakemake -n` would run with `config`."""
    (workdir / "edited.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = snakemake_command(workdir, "-n")
    cmd[cmd.index("--configfile") + 1] = str(workdir / "edited.yaml")
    out = run(cmd)
    assert out.returncode == 0, out.stderr[-2000:]
    jobs, current = [], None
    for line in out.stdout.splitlines():
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            current = (m.group(1), {})
            jobs.append(current)
        m = re.match(r"^\s+wildcards: (.*)$", line)
        if m and current is not None:
            current[1].update(dict(kv.split("=", 1) for kv in m.group(1).split(", ")))
    return jobs


def base_config(workdir):
    return yaml.safe_load((workdir / "micro.yaml").read_text())


DOWNSTREAM_OF_ALL = {"aggregate", "make_tables", "make_figure", "all"}


def test_changing_one_learning_rate_reruns_only_that_setting(micro_run):
    config = base_config(micro_run)
    config["settings"]["ft-proj"]["lr"] = 5.0e-4
    jobs = dry_run_jobs(micro_run, config)
    rules = {rule for rule, _ in jobs}
    assert rules == {"finetune", "classify", "extract_features", "train_probe_post"} | DOWNSTREAM_OF_ALL
    assert all(w["setting"] == "ft-proj" for rule, w in jobs if rule not in DOWNSTREAM_OF_ALL)
    assert sum(rule == "finetune" for rule, _ in jobs) == 2 * 2 * 2  # models × datasets × seeds


def test_adding_a_dataset_runs_only_its_jobs(micro_run):
    config = base_config(micro_run)
    extra = dict(config["datasets"]["digits"])
    extra["source"] = dict(extra["source"], train_per_class=5)
    config["datasets"]["digits5"] = extra
    jobs = dry_run_jobs(micro_run, config)
    assert jobs and all(w.get("dataset") == "digits5" for rule, w in jobs if rule not in DOWNSTREAM_OF_ALL)


def test_cpu_benchmarks_run_on_the_workflow_outputs(micro_run, tmp_path):
    """The issue-6 benchmark scripts run as documented in benchmarks/README.md, on the micro run's
    own artefacts, and report every row (their speed targets are checked in the benchmark, not here)."""
    import json
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    data = "results/data/digits"
    classify = run([sys.executable, str(bench / "bench_classify.py"), "--model", f"results/models/{MICRO_MODEL}/base",
                    "--prompts", f"{data}/prompts_seed0.jsonl",
                    "--vision-cache", f"results/features/{MICRO_MODEL}/digits/vision.safetensors",
                    "--classes", f"{data}/classes.json", "--n-images", "4", "--batch-size", "2", "--threads", "1",
                    "--free-max-new-tokens", "4", "--out-json", str(tmp_path / "classify.json"),
                    "--markdown", str(tmp_path / "classify.md")], cwd=micro_run)
    assert classify.returncode == 0, classify.stdout[-2000:] + classify.stderr[-2000:]
    summary = json.loads((tmp_path / "classify.json").read_text())
    assert set(summary["results"]) == {"free", "generate", "constrained", "likelihood"}
    assert all(r["images_per_s"] > 0 for r in summary["results"].values())
    assert summary["prefill_only"]["max_speedup_vs_free"] > 0
    # Constrained and likelihood read a class string, so they are never invalid.
    assert summary["results"]["constrained"]["invalid_rate"] == 0
    assert summary["results"]["likelihood"]["invalid_rate"] == 0
    assert "prefill only (ceiling)" in (tmp_path / "classify.md").read_text()

    extract = run([sys.executable, str(bench / "bench_extract.py"), "--model", f"results/models/{MICRO_MODEL}/base",
                   "--manifest", f"{data}/manifest.csv", "--n-images", "4", "--batch-size", "2", "--threads", "1",
                   "--out-json", str(tmp_path / "extract.json")], cwd=micro_run)
    assert extract.returncode == 0, extract.stdout[-2000:] + extract.stderr[-2000:]
    assert json.loads((tmp_path / "extract.json").read_text())["results"]



def test_every_path_the_readme_and_docs_name_exists(micro_run):
    """Backticked repository paths in README.md and docs/ exist; `results/...` paths (patterns allowed)
    exist in a finished micro run, whose layout is the demo's (the analyses' outputs are checked
    against the analysis run, in tests/test_analysis.py)."""
    missing = missing_doc_paths(micro_run, analyses=False)
    assert not missing, "paths named in the docs that do not exist:\n" + "\n".join(missing)
