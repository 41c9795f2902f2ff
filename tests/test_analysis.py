"""The analyses beyond the paper: similarity measures, control tasks, claims statistics, and the
session's shared micro workflow run with the analyses switched on (`analysis_run`, tests/conftest.py).
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from projection_probe.analysis.control import control_labels
from projection_probe.analysis.similarity import linear_cka, mutual_knn
from projection_probe.analysis.stats import bootstrap_ci, claims_table, paired_t_p, sign_flip_p
from projection_probe.testing.micro import ANALYSES, MICRO_CONFIG, MICRO_MODEL, snakemake_command

from doc_paths import missing_doc_paths


# ---------------------------------------------------------------- similarity
def _rep(n=40, d=12, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


def test_cka_of_a_representation_with_itself_is_one():
    x = _rep()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling():
    x = _rep()
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(12, 12)))
    y = _rep(seed=2)  # a different representation of the same 40 images
    reference = linear_cka(x, y)
    assert linear_cka(x @ q * 3.7, y) == pytest.approx(reference, abs=1e-10)
    assert linear_cka(x, y @ q.T * 0.01) == pytest.approx(reference, abs=1e-10)
    # ...and it is a real measure: unrelated random features are far from 1.
    assert reference < 0.9


def test_cka_compares_different_widths():
    x = _rep(d=12)
    y = np.hstack([x, np.zeros((40, 5))])  # the same geometry, padded to 17 dims
    assert linear_cka(x, y) == pytest.approx(1.0, abs=1e-12)


def test_mutual_knn_of_identical_representations_is_one_and_of_unrelated_ones_is_low():
    x = _rep(n=60)
    assert mutual_knn(x, x, k=5) == 1.0
    assert mutual_knn(x, x * 2.0, k=5) == 1.0  # cosine neighbours ignore scale
    assert mutual_knn(x, _rep(n=60, seed=9), k=5) < 0.5


# ---------------------------------------------------------------- control tasks
def test_control_labels_are_a_fixed_permutation_per_seed():
    ids = [f"img_{i:03d}.png" for i in range(50)]
    labels = np.repeat(np.arange(5), 10)
    a = control_labels(ids, labels, seed=0, split="train")
    assert np.array_equal(a, control_labels(ids, labels, seed=0, split="train"))  # same seed, same labels
    assert not np.array_equal(a, control_labels(ids, labels, seed=1, split="train"))  # new seed, new labels
    assert np.array_equal(np.bincount(a), np.bincount(labels))  # a permutation: histogram preserved
    assert not np.array_equal(a, labels)
    # Keyed by image id: reordering the rows moves each image's control label with it, so layers,
    # settings and files with another row order see the same label per image.
    order = np.random.default_rng(3).permutation(50)
    shuffled = control_labels([ids[i] for i in order], labels[order], seed=0, split="train")
    assert np.array_equal(shuffled, a[order])


# ---------------------------------------------------------------- statistics
def test_sign_flip_and_t_test_on_synthetic_pairs():
    diffs = np.array([-0.1, -0.2, -0.15, -0.05, -0.12])
    # Exact test over 2^5 sign patterns: only the all-negative one is as extreme → p = 1/32.
    assert sign_flip_p(diffs, "less") == pytest.approx(1 / 32)
    assert sign_flip_p(diffs, "greater") == pytest.approx(1.0)
    assert paired_t_p(diffs, "less") < 0.01
    assert np.isnan(paired_t_p([-0.1], "less"))
    lo, hi = bootstrap_ci(diffs, 2000, 0.95)
    assert lo <= diffs.mean() <= hi and hi < 0


def _all_runs(probe, mllm):
    rows = []
    for setting in probe:
        for seed, (p, m) in enumerate(zip(probe[setting], mllm[setting])):
            for method, value in (("probe_post", p), ("mllm", m)):
                rows.append(dict(dataset="d", setting=setting, seed=seed, method=method, metric="macro_f1",
                                 value=value))
    return pd.DataFrame(rows)


def test_claims_hold_with_enough_seeds_and_are_direction_only_with_two():
    five = _all_runs({"original": [0.8, 0.82, 0.79, 0.81, 0.8], "ft-proj": [0.7, 0.71, 0.69, 0.72, 0.7]},
                     {"original": [0.3, 0.32, 0.29, 0.31, 0.3], "ft-proj": [0.2, 0.22, 0.21, 0.2, 0.25]})
    claims, paired = claims_table(five, n_boot=500)
    by = claims.set_index("claim")
    assert bool(by.loc["richness_drops", "holds"]) and "significant" in by.loc["richness_drops", "verdict"]
    assert by.loc["richness_drops", "signflip_p"] == pytest.approx(1 / 32)
    assert not bool(by.loc["mllm_f1_rises", "holds"])  # the MLLM got worse: the claim fails
    assert "opposite" in by.loc["mllm_f1_rises", "verdict"]
    assert len(paired) == 2 * 5

    two = _all_runs({"original": [0.8, 0.82], "ft-proj": [0.7, 0.71]}, {"original": [0.3, 0.3], "ft-proj": [0.5, 0.6]})
    claims, _ = claims_table(two, n_boot=500)
    assert claims["holds"].all()
    assert (claims["min_signflip_p"] == 0.25).all()
    assert claims["verdict"].str.contains("untestable").all()


# ---------------------------------------------------------------- per-layer states (tiny LLaVA, no workflow)
class _Cache:
    """Stands in for the X_v cache: one random N_patch×D_v block per image id."""

    def __init__(self, ids, n_patch, d_v):
        import torch

        gen = torch.Generator().manual_seed(0)
        self.x = {i: torch.randn(n_patch, d_v, generator=gen) for i in ids}

    def select(self, ids):
        import torch

        return torch.stack([self.x[i] for i in ids])


def test_layer_states_count_pooling_and_batch_invariance(tmp_path):
    import torch

    from projection_probe.analysis.layers import layer_states, num_hidden_layers
    from projection_probe.models.loaders import from_llava_hf
    from projection_probe.testing.tiny import make_tiny_llava

    make_tiny_llava(tmp_path)
    facade = from_llava_hf(tmp_path).eval()
    ids = ["a.png", "b.png", "c.png"]
    # Prompts of different lengths, so that a batch is left-padded.
    texts = ["<image>\nzero", "<image>\nzero one two three", "<image>\nclothing items handwritten digits"]
    records = [{"image": i, "conversations": [{"from": "human", "value": t}]} for i, t in zip(ids, texts)]
    d_v = facade.projector.linear_1.in_features
    cache = _Cache(ids, facade.num_image_tokens, d_v)
    batched = layer_states(facade, records, cache, batch_size=3)
    single = layer_states(facade, records, cache, batch_size=1)
    n_layers = num_hidden_layers(facade)
    assert n_layers == facade.language_model.config.num_hidden_layers
    assert batched["image_mean"].shape[0] == batched["last_token"].shape[0] == n_layers + 1
    assert batched["image_mean"].shape[1] == 3
    for k in ("image_mean", "last_token"):
        assert torch.allclose(batched[k], single[k], atol=1e-4), k  # padding does not leak into the states
    with torch.no_grad():
        pooled_h_v = facade.project(cache.select(ids)).mean(1)
    assert torch.allclose(batched["image_mean"][0], pooled_h_v, atol=1e-5)  # layer 0 = the spliced H_v


# ---------------------------------------------------------------- the micro workflow
# `analysis_run` (tests/conftest.py) runs `study`, then `analysis_all` on top, then the report.


def _command(workdir: Path, *extra: str, configfile: Path | None = None) -> list[str]:
    cmd = snakemake_command(workdir, *extra)
    if configfile is not None:
        cmd[cmd.index("--configfile") + 1] = str(configfile)
    return cmd


slow = pytest.mark.slow


@slow
def test_micro_run_writes_every_table_figure_and_report_section(analysis_run):
    workdir = analysis_run
    results = workdir / "results"
    for name, figure in (("layerwise", "layerwise_f1"), ("matched", "matched"), ("selectivity", "selectivity"),
                         ("similarity", "similarity"), ("claims", "claims")):
        table = pd.read_csv(results / "tables" / f"analysis_{name}.csv")
        assert len(table) > 0, name
        assert (results / "tables" / f"analysis_{name}.md").stat().st_size > 0
        assert (results / "figures" / f"analysis_{figure}.png").read_bytes()[:4] == b"\x89PNG"
        assert (results / "figures" / f"analysis_{figure}.pdf").read_bytes()[:4] == b"%PDF"
    assert len(pd.read_csv(results / "tables" / "analysis_seed_stats.csv")) == 2 * 2  # 2 settings × 2 methods
    html = (results / "report.html").read_text(errors="replace")
    assert "Beyond the paper" in html


@slow
def test_saved_layer_count_is_num_hidden_layers_plus_one_and_layer0_is_pooled_h_v(analysis_run):
    from projection_probe.analysis.layers import read_layer_file
    from projection_probe.io import load_safetensors

    workdir = analysis_run
    llm = Path(yaml.safe_load((workdir / "micro.yaml").read_text())["models"][MICRO_MODEL]["language_model"]["path"])
    n_layers = json.loads((llm / "config.json").read_text())["num_hidden_layers"]
    for setting in ("original", "ft-proj"):
        states, labels, ids = read_layer_file(
            workdir / "results" / "analysis" / MICRO_MODEL / "digits" / setting / "seed0" / "layers_test.safetensors")
        assert states["image_mean"].shape[0] == states["last_token"].shape[0] == n_layers + 1
        assert len(ids) == len(labels) == 3 * 10
        # Layer 0 is the input embedding sequence, so its mean over image positions is the pooled
        # H_v of the features stage (fp16 storage → loose tolerance).
        features = workdir / "results" / "features" / MICRO_MODEL / "digits"
        post = load_safetensors(features / setting / "seed0" / "test.safetensors")
        assert np.allclose(states["image_mean"][0].numpy(), post["post"].numpy(), atol=2e-2, rtol=1e-2)


@slow
def test_micro_probe_tables_cover_layers_poolings_controls_and_matched(analysis_run):
    workdir = analysis_run
    probes = pd.read_csv(workdir / "results" / "analysis" / MICRO_MODEL / "digits" / "ft-proj" / "seed1" / "probes.csv")
    lw = probes[probes["analysis"] == "layerwise"]
    assert set(lw["pooling"]) == {"image_mean", "last_token"} and set(lw["task"]) == {"real", "control"}
    matched = probes[probes["analysis"] == "matched"]
    assert set(zip(matched["representation"], matched["family"])) == {("pre", "linear"), ("pre", "mlp"),
                                                                     ("post", "linear"), ("post", "mlp")}
    sim = pd.read_csv(workdir / "results" / "tables" / "analysis_similarity.csv")
    assert set(sim["comparison"]) == {"settings", "pre_post"}
    undefined = sim[sim["value_mean"].isna()]
    # CKA is undefined only for a constant representation: the final prompt token's input embedding
    # (layer 0, last_token) is the same token for every image.
    assert set(zip(undefined["metric"], undefined["pooling"], undefined["layer"])) <= {("cka", "last_token", 0)}
    assert sim["value_mean"].dropna().between(-1e-9, 1 + 1e-9).all()


@slow
def test_recompute_cli_reproduces_the_workflow_tables_from_saved_layer_files(analysis_run, tmp_path):
    workdir = analysis_run
    options = {"linear_probe": ANALYSES["linear_probe"], "knn_k": 5, "bootstrap": 200, "control_tasks": True,
               "mlp": {k: v for k, v in MICRO_CONFIG["probes"]["post"].items()}}
    out = subprocess.run(["projection-probe", "analysis-recompute", "--results", "results", "--out-dir",
                          str(tmp_path), "--options", json.dumps(options), "--threads", "1"],
                         cwd=workdir, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("layerwise", "similarity", "claims"):
        ours = pd.read_csv(tmp_path / "tables" / f"analysis_{name}.csv")
        theirs = pd.read_csv(workdir / "results" / "tables" / f"analysis_{name}.csv")
        pd.testing.assert_frame_equal(ours, theirs, check_exact=False, atol=1e-9)


@slow
def test_analyses_disabled_request_nothing(analysis_run, tmp_path):
    workdir = analysis_run
    config = yaml.safe_load((workdir / "micro.yaml").read_text())
    config["analyses"]["enabled"] = False
    (tmp_path / "off.yaml").write_text(yaml.safe_dump(config))
    out = subprocess.run(_command(workdir, "analysis_all", "-n", configfile=tmp_path / "off.yaml"),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    # `analysis_all` has no inputs then (analysis_targets() == []), so it is the only job listed:
    # no extraction, probe, similarity or report job is requested.
    jobs = re.findall(r"^(?:local)?rule (\w+):", out.stdout, flags=re.M)
    assert jobs == ["analysis_all"], jobs


@slow
def test_rule_all_includes_the_enabled_analyses(analysis_run):
    """`all` = `study` + `analysis_all`: after both ran, `all` has nothing left to do, and it lists
    the analysis reports among its inputs."""
    workdir = analysis_run
    out = subprocess.run(_command(workdir, "all", "-n"), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Nothing to be done" in out.stdout + out.stderr, out.stdout[-2000:]
    listed = subprocess.run(_command(workdir, "all", "-n", "--forceall"), capture_output=True, text=True)
    jobs = set(re.findall(r"^(?:local)?rule (\w+):", listed.stdout, flags=re.M))
    assert {"analysis_claims", "analysis_layerwise_report", "make_tables"} <= jobs, jobs


@slow
def test_every_analysis_output_the_docs_name_exists(analysis_run):
    """The analyses' output paths that README.md and docs/ name exist in the analysis run (the other
    paths: tests/test_workflow_e2e.py)."""
    missing = missing_doc_paths(analysis_run, analyses=True)
    assert not missing, "analysis outputs named in the docs that do not exist:\n" + "\n".join(missing)
