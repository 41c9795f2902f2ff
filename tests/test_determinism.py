"""Determinism: the same config and seeds give byte-identical results in a fresh working directory,
and a different seed gives a different model and different probe results.

The two same-seed runs are the session's shared analysis run (tests/conftest.py: digits only,
Original and FT-Proj, the generate mode, two seeds) and one more fresh run of that same config,
here. Both use the session's one folder of tiny models, so what is compared is the workflow's own
determinism, not that of the tiny-model builder. The full micro config is covered by
test_workflow_e2e.py.
"""
from __future__ import annotations

import pytest
import torch

from projection_probe.io import load_safetensors, read_json
from projection_probe.testing.micro import ANALYSIS_OVERRIDES, MICRO_MODEL, make_micro_workdir

from conftest import run_workflow

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(analysis_run, tiny_models, tmp_path_factory):
    """The shared analysis run and a second fresh run of its config (its `study` target: the paper's
    results, which the compared files all belong to). The second run needs its own folder: comparing
    a run with itself would show nothing."""
    again = make_micro_workdir(tmp_path_factory.mktemp("determinism"), models_dir=tiny_models, **ANALYSIS_OVERRIDES)
    assert (again / "micro.yaml").read_text() == (analysis_run / "micro.yaml").read_text()
    run_workflow(again, "determinism: second run", "study")
    return [analysis_run / "results", again / "results"]


def test_same_seeds_give_byte_identical_results(two_runs):
    a, b = two_runs
    assert (a / "metrics/all_runs.csv").read_bytes() == (b / "metrics/all_runs.csv").read_bytes()
    # The per-image files behind it too, and the trained weights, so that equal metrics cannot hide
    # different predictions.
    for relative in (f"models/{MICRO_MODEL}/digits/ft-proj/seed0/projector.safetensors",
                     f"models/{MICRO_MODEL}/base/projector.safetensors",
                     f"predictions/{MICRO_MODEL}/digits/ft-proj/generate/seed1.csv",
                     f"probes/{MICRO_MODEL}/digits/post/ft-proj/seed1.csv",
                     f"probes/{MICRO_MODEL}/digits/image_only/seed0.csv", "baselines/digits/random/seed0.csv"):
        assert (a / relative).read_bytes() == (b / relative).read_bytes(), relative


def test_different_seeds_give_different_weights_and_probe_results(analysis_run):
    results = analysis_run / "results"
    seed0 = load_safetensors(results / f"models/{MICRO_MODEL}/digits/ft-proj/seed0/projector.safetensors")
    seed1 = load_safetensors(results / f"models/{MICRO_MODEL}/digits/ft-proj/seed1/projector.safetensors")
    assert seed0.keys() == seed1.keys()
    assert any(not torch.equal(seed0[k], seed1[k]) for k in seed0)

    # Both start from the same base projector, so the difference comes from the seed, not the start.
    probes = [read_json(results / f"probes/{MICRO_MODEL}/digits/post/ft-proj/seed{s}.json") for s in (0, 1)]
    assert probes[0]["val_loss"] != probes[1]["val_loss"]
    predictions = [(results / f"probes/{MICRO_MODEL}/digits/post/ft-proj/seed{s}.csv").read_bytes() for s in (0, 1)]
    assert predictions[0] != predictions[1]
