"""The `models` axis and the demo's connector kinds: the perceiver resampler gives the LLM its own
number of image tokens, `config/connectors.yaml` plans one study per connector on shared frozen parts,
and bad model names or an old `model:` block are refused before planning."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from projection_probe.configfile import duplicate_keys
from projection_probe.models.facade import MultimodalLM
from projection_probe.models.loaders import load_facade
from projection_probe.models.projector import RESAMPLER_QUERIES, build_projector
from projection_probe.models.spec import FacadeSpec
from projection_probe.names import PROJECTOR_KINDS

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "config" / "config.yaml"
CONNECTORS = REPO / "config" / "connectors.yaml"


@pytest.mark.parametrize("kind", PROJECTOR_KINDS)
def test_each_connector_maps_x_v_to_the_lm_width_and_trains(kind):
    torch.manual_seed(0)
    projector = build_projector(kind, 12, 16)
    x_v = torch.randn(3, 5, 12)
    h_v = projector(x_v)
    tokens = RESAMPLER_QUERIES if kind == "resampler" else 5
    assert h_v.shape == (3, tokens, 16)
    h_v.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())


def test_the_resampler_gives_its_queries_whatever_the_patch_count():
    torch.manual_seed(0)
    projector = build_projector("resampler", 12, 16)
    assert projector(torch.randn(2, 3, 12)).shape == projector(torch.randn(2, 49, 12)).shape == (2, 8, 16)


def test_a_resampler_model_gives_the_llm_one_image_token_per_query(tiny_models, tmp_path):
    """load_facade sizes the prompt's image run from the projector, not from `vision.num_patches`: the
    loss runs (it checks that the image positions equal H_v's tokens) and changes the queries."""
    FacadeSpec(vision={"kind": "clip", "path": str(tiny_models / "vision")},
               language_model={"path": str(tiny_models / "llm")}, template="v1",
               projector={"kind": "resampler", "in_features": 32, "out_features": 64}).to_json(tmp_path)
    facade: MultimodalLM = load_facade(tmp_path)
    assert facade.vision.num_patches == 16 and facade.num_image_tokens == RESAMPLER_QUERIES
    inputs = facade.build_inputs(["<image>\nWhat is it?"], answers=["a cat"])
    assert int(inputs.image_mask.sum()) == RESAMPLER_QUERIES
    x_v = torch.randn(1, facade.vision.num_patches, facade.vision.hidden_size)
    facade.loss(inputs, x_v).backward()
    assert facade.projector.latents.grad.abs().sum() > 0


# --- the workflow ---------------------------------------------------------------------------------

def dry_run(*configfiles: Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`snakemake -n -F` in the repository (plans every job, runs none)."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [str(bin_dir / "snakemake"), "-n", "-F", "--ignore-incomplete", "--cores", "1", "--quiet", "rules",
         "--configfile", *map(str, configfiles), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def job_counts(output: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^([a-z_]+)\s+(\d+)$", output, re.MULTILINE)}


def test_connectors_overlay_plans_one_study_per_connector_on_shared_frozen_parts():
    result = dry_run(DEMO, CONNECTORS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    counts, demo = job_counts(output), job_counts(dry_run(DEMO).stdout)
    models = list(yaml.safe_load(CONNECTORS.read_text())["models"])
    assert len(models) == 3 and demo["align_projector"] == 1
    # Per model: the base model, fine-tunes, classification, features and post-projection probes.
    for rule in ("align_projector", "finetune", "classify", "extract_features", "train_probe_post"):
        assert counts[rule] == 3 * demo[rule], (rule, counts)
    # Shared: data, the frozen tower's X_v, the converted LLM, the image-only probe and the baselines.
    for rule in ("prepare_dataset", "extract_vision_features", "convert_llm", "train_probe_image_only",
                 "random_baseline", "make_tables"):
        assert counts[rule] == demo[rule], (rule, counts)


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "overlay.yaml"
    path.write_text(text)
    return path


def test_an_old_model_block_is_refused_saying_how_to_rewrite_it(tmp_path):
    result = dry_run(DEMO, write_config(tmp_path, "model: {device: cpu}\n"))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats" not in output
    assert "`model:` is now `models:`" in output and "models: {<name>: {loader: ...}}" in output, output[-2000:]


def test_two_models_of_one_name_are_refused_naming_the_name(tmp_path):
    """YAML keeps the last of two equal keys; the workflow reads each config file again, strictly."""
    overlay = write_config(tmp_path, "models:\n  effnet-smollm2: {projector: linear}\n"
                                     "  effnet-smollm2: {projector: resampler}\n")
    assert duplicate_keys(overlay) == ["models.effnet-smollm2"] and duplicate_keys(DEMO) == []
    result = dry_run(DEMO, overlay)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats" not in output
    assert "names models.effnet-smollm2 twice" in output, output[-2000:]


def test_analyses_with_several_models_are_refused_naming_them(tmp_path):
    result = dry_run(DEMO, CONNECTORS, write_config(tmp_path, "analyses: {enabled: true}\n"))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats" not in output
    assert "analyses.enabled takes one model" in output and "effnet-smollm2-resampler" in output, output[-2000:]
