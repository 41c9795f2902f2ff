"""Determinism: the same config and seeds give byte-identical results in a fresh working directory,
and a different seed gives a different model and different probe results.

Two fresh runs of a reduced micro config (digits only, Original and FT-Proj, the generate mode; the
full micro config is covered by test_workflow_e2e.py). Both share one folder of tiny models, so what
is compared is the workflow's own determinism, not that of the tiny-model builder.
"""
from __future__ import annotations

import subprocess

import pytest
import torch

from projection_probe.io import load_safetensors, read_json
from projection_probe.testing.micro import MICRO_CONFIG, make_micro_models, make_micro_workdir, snakemake_command

pytestmark = pytest.mark.slow

OVERRIDES = dict(
    datasets={"digits": MICRO_CONFIG["datasets"]["digits"]},
    settings={k: MICRO_CONFIG["settings"][k] for k in ("original", "ft-proj")},
    classify=dict(MICRO_CONFIG["classify"], modes=["generate"]),
    baselines=dict(MICRO_CONFIG["baselines"], encoder_zero_shot=dict(
        MICRO_CONFIG["baselines"]["encoder_zero_shot"], enabled=False)),
)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("determinism")
    models = make_micro_models(root / "tiny_models")
    workdirs = []
    for name in ("run_a", "run_b"):
        workdir = make_micro_workdir(root / name, models_dir=models, **OVERRIDES)
        done = subprocess.run(snakemake_command(workdir), capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        workdirs.append(workdir / "results")
    return workdirs


def test_same_seeds_give_byte_identical_results(two_runs):
    a, b = two_runs
    assert (a / "metrics/all_runs.csv").read_bytes() == (b / "metrics/all_runs.csv").read_bytes()
    # The per-image files behind it too, and the trained weights, so that equal metrics cannot hide
    # different predictions.
    for relative in ("models/digits/ft-proj/seed0/projector.safetensors", "models/base/projector.safetensors",
                     "predictions/digits/ft-proj/generate/seed1.csv", "probes/digits/post/ft-proj/seed1.csv",
                     "probes/digits/image_only/seed0.csv", "baselines/digits/random/seed0.csv"):
        assert (a / relative).read_bytes() == (b / relative).read_bytes(), relative


def test_different_seeds_give_different_weights_and_probe_results(two_runs):
    results = two_runs[0]
    seed0 = load_safetensors(results / "models/digits/ft-proj/seed0/projector.safetensors")
    seed1 = load_safetensors(results / "models/digits/ft-proj/seed1/projector.safetensors")
    assert seed0.keys() == seed1.keys()
    assert any(not torch.equal(seed0[k], seed1[k]) for k in seed0)

    # Both start from the same base projector, so the difference comes from the seed, not the start.
    probes = [read_json(results / f"probes/digits/post/ft-proj/seed{s}.json") for s in (0, 1)]
    assert probes[0]["val_loss"] != probes[1]["val_loss"]
    predictions = [(results / f"probes/digits/post/ft-proj/seed{s}.csv").read_bytes() for s in (0, 1)]
    assert predictions[0] != predictions[1]
