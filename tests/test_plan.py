"""`projection-probe plan`: exact parameter, gradient and optimizer bytes on the tiny LLaVA (compared
with a real optimizer step), the sweep's table from the config alone, and the jobs that cannot fit."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from test_train import make_llava_base
from transformers import Trainer, TrainingArguments

from projection_probe.cli import main
from projection_probe.io import InputError, read_json
from projection_probe.models.loaders import load_facade
from projection_probe.plan.estimate import finetune_cli_defaults, load_config, training_state
from projection_probe.train.finetune import MODEL_DTYPES, configure_trainable

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    return root, make_llava_base(root)


def measured_state(base, setting: str, options: dict, tmp_path) -> dict:
    """Bytes after one real optimizer step, set up as finetune() does."""
    facade = load_facade(base, dtype=MODEL_DTYPES[options["model_dtype"]])
    x_v = torch.randn(1, facade.num_image_tokens, facade.vision.hidden_size)
    facade.vision = None
    facade.projector.float()
    configure_trainable(facade, setting, lora_r=options["lora_r"], lora_alpha=options["lora_alpha"],
                        lora_dropout=options["lora_dropout"])
    trainable = [p for p in facade.parameters() if p.requires_grad]
    args = TrainingArguments(output_dir=str(tmp_path), optim=options["optim"], use_cpu=True, report_to="none")
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, facade)
    optimizer = optimizer_cls(trainable, **kwargs)
    inputs = facade.build_inputs(["<image>\nWhat is this?"], ["banded"])
    facade.logits(inputs, x_v.to(facade.projector.linear_1.weight.dtype)).float().square().mean().backward()
    optimizer.step()
    counts, trainable_counts = {}, {}
    for p in facade.parameters():
        name = str(p.dtype).replace("torch.", "")
        counts[name] = counts.get(name, 0) + p.numel()
        if p.requires_grad:
            trainable_counts[name] = trainable_counts.get(name, 0) + p.numel()
    assert all(p.grad is not None for p in trainable)
    return {
        "parameters": counts, "trainable": trainable_counts,
        "parameter_bytes": sum(p.numel() * p.element_size() for p in facade.parameters()),
        "gradient_bytes": sum(p.grad.numel() * p.grad.element_size() for p in trainable),
        "optimizer_bytes": sum(v.numel() * v.element_size() for state in optimizer.state.values()
                               for v in state.values() if torch.is_tensor(v)),
    }


@pytest.mark.parametrize("setting,model_dtype", [("ft-proj", "float32"), ("ft-e2e", "float32"),
                                                 ("ft-e2e", "bfloat16"), ("ft-lora", "float32")])
def test_predicted_bytes_equal_the_real_ones(tiny, setting, model_dtype, tmp_path):
    root, base = tiny
    options = {**finetune_cli_defaults(), "model_dtype": model_dtype, "lora_r": 4, "lora_alpha": 8}
    predicted = training_state(read_json(root / "llava" / "config.json"), setting, options)
    real = measured_state(base, setting, options, tmp_path)
    assert predicted.parameters == real["parameters"]
    assert predicted.trainable == real["trainable"]
    assert predicted.parameter_bytes == real["parameter_bytes"]
    assert predicted.gradient_bytes == real["gradient_bytes"]
    assert predicted.optimizer_bytes == real["optimizer_bytes"]


def tiny_config(root, base_dir) -> dict:
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    config["models"]["llava15-7b"]["llava_hf"] = str(base_dir)
    for setting in config["settings"].values():
        if setting["kind"] == "ft-lora":
            setting.update(lora_r=4, lora_alpha=8)
    return config


def test_plan_of_the_tiny_model_fits(tiny, tmp_path, capsys):
    root, _ = tiny
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(root, root / "llava")))
    args = ["plan", "--configfile", str(config_file), "--results", str(tmp_path / "results"), "--directory", str(REPO)]
    assert main(args + ["--gpu-memory-gb", "1000"]) == 0
    out = capsys.readouterr().out
    assert "Every job fits." in out and "| ft-e2e | 2 (fsdp) |" in out
    assert "dermnet: 19,559 images (" in out  # no manifest yet: the stated assumption


@pytest.mark.slow  # builds LLaVA-1.5-7B on the meta device 8 times: about 30 s here
def test_plan_names_every_job_that_does_not_fit(tmp_path, capsys):
    """From the paper config alone (no model folder: LLaVA-1.5-7B's shapes): FT-E2E fits 80 GB GPUs
    on 2 GPUs with FSDP, and on one GPU it does not, and the plan names those 20 jobs."""
    paper = tmp_path / "paper.yaml"
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    config["models"]["llava15-7b"]["llava_hf"] = str(tmp_path / "not-downloaded")
    paper.write_text(yaml.safe_dump(config))
    one_gpu = tmp_path / "one_gpu.yaml"
    one_gpu.write_text(yaml.safe_dump({"settings": {"ft-e2e": {"num_gpus": 1, "accelerate_config": None}}}))
    args = ["plan", "--results", str(tmp_path / "results"), "--directory", str(REPO), "--gpu-memory-gb", "80",
            "--configfile", str(paper)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "not-downloaded/config.json absent: llava-hf/llava-1.5-7b-hf's shapes assumed" in out
    assert "| ft-e2e | 2 (fsdp) | 6,759.9M float32 | 6,759.9M float32 | 27.0 | 54.1 | 81.1 | 13.6 |" in out
    assert "Every job fits." in out
    assert main(args + [str(one_gpu)]) == 1
    out = capsys.readouterr().out
    too_big = out.split("jobs do not fit:\n")[1].splitlines()
    assert sorted(line.split(":")[0] for line in too_big) == sorted(
        f"- finetune ft-e2e {d} seeds 0,1,2,3,4" for d in ("plantdoc", "dtd", "dermnet", "crisismmd"))
    assert "20 jobs do not fit" in out


def test_plan_reads_the_manifests_when_they_exist(tiny, tmp_path, capsys):
    root, _ = tiny
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config(root, root / "llava")))
    manifest = tmp_path / "results" / "data" / "dtd" / "manifest.csv"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("image_path,label,split\n" + "a.jpg,banded,train\n" * 7)
    assert main(["plan", "--configfile", str(config_file), "--results", str(tmp_path / "results"),
                 "--directory", str(REPO)]) == 0
    assert "dtd: 7 images;" in capsys.readouterr().out


def test_plan_bad_input_names_the_file_or_key(tiny, tmp_path, capsys):
    root, _ = tiny
    assert main(["plan", "--configfile", str(tmp_path / "missing.yaml")]) == 2
    assert f"{tmp_path / 'missing.yaml'}: config file not found" in capsys.readouterr().err
    config = tiny_config(root, root / "llava")
    config["finetune"]["optim"] = "sgd"
    config_file = tmp_path / "sgd.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert main(["plan", "--configfile", str(config_file), "--directory", str(REPO)]) == 2
    assert "finetune.optim 'sgd'" in capsys.readouterr().err
    with pytest.raises(InputError, match="no `settings` key"):
        config_file.write_text(yaml.safe_dump({"datasets": {}, "models": {}, "seeds": [0]}))
        load_config([config_file])


@pytest.mark.parametrize("overlay", ["ft_e2e_one_h200.yaml", "ft_e2e_one_80gb.yaml"])
def test_one_gpu_overlays_validate_over_the_paper_config(overlay):
    from snakemake.utils import validate

    from projection_probe.plan.estimate import merge

    config = load_config([REPO / "config" / "paper.yaml", REPO / "config" / overlay])
    validate(merge({}, config), str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    ft_e2e = config["settings"]["ft-e2e"]
    assert (ft_e2e["kind"], ft_e2e["num_gpus"], ft_e2e["accelerate_config"], ft_e2e["effective_batch"]) == (
        "ft-e2e", 1, None, 32)


def test_plan_refuses_what_it_cannot_size(tmp_path, capsys):
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    config["models"] = {"parts-model": {"loader": "parts"}}
    parts = tmp_path / "parts.yaml"
    parts.write_text(yaml.safe_dump(config))
    assert main(["plan", "--configfile", str(parts)]) == 2
    assert "models parts-model: no loader is llava_hf" in capsys.readouterr().err
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    config["models"]["llava15-7b"]["llava_hf"] = str(tmp_path / "not-downloaded")
    config["datasets"]["dtd"]["source"]["kind"] = "sklearn_digits"
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump(config))
    assert main(["plan", "--configfile", str(unknown), "--results", str(tmp_path / "results"),
                 "--directory", str(REPO)]) == 2
    assert f"datasets.dtd: {tmp_path / 'results' / 'data' / 'dtd' / 'manifest.csv'} does not exist" in (
        capsys.readouterr().err)
    assert main(["plan", "--configfile", str(unknown), "--gpu-memory-gb", "0"]) == 2
    assert "--gpu-memory-gb 0.0: must be positive" in capsys.readouterr().err


def families_config() -> dict:
    return load_config([REPO / "config" / "paper.yaml", REPO / "config" / "families.yaml"])


def test_families_overlay_sizes_each_checkpoint_on_the_shapes_it_is_named_after():
    """Without downloads, every checkpoint model of config/families.yaml is sized on the published
    config.json its folder is named after, of a family that an adapter runs, and the plan says so."""
    from projection_probe.models.registry import FAMILIES
    from projection_probe.plan.estimate import model_config, planned_models

    config = families_config()
    names = planned_models(config)
    assert len(names) == 6 and names[0] == "llava15-7b"
    for name in names:
        model = config["models"][name]
        shapes, source = model_config(model)
        folder = model.get("checkpoint") or model["llava_hf"]
        assert source.startswith(f"{folder}/config.json absent: ") and source.endswith("'s shapes assumed")
        assert source.split("/")[-1].split("'")[0].lower() == Path(folder).name.lower()  # the repo it is named after
        assert shapes["model_type"] in FAMILIES


def test_plan_of_a_family_checkpoint_names_its_assumed_shapes_and_image_tokens(tmp_path, capsys):
    args = ["plan", "--configfile", str(REPO / "config" / "paper.yaml"), str(REPO / "config" / "families.yaml"),
            "--results", str(tmp_path / "results"), "--directory", str(REPO), "--model", "paligemma-3b"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert ("Model: paligemma-3b, models/paligemma-3b-pt-224/config.json absent: google/paligemma-3b-pt-224's "
            "shapes assumed; 256 image tokens per image (H_v), X_v 256 × 1152") in out
    assert "| ft-proj | 1 (single) | 2,511.0M float32 | 2.4M float32 |" in out  # the Linear connector: 1152 × 2048


def test_plan_refuses_a_family_folder_it_knows_no_shapes_of(tmp_path, capsys):
    config = families_config()
    config["models"]["smolvlm"]["checkpoint"] = str(tmp_path / "my-own-vlm")
    config_file = tmp_path / "own.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert main(["plan", "--configfile", str(config_file), "--model", "smolvlm", "--results",
                 str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'my-own-vlm' / 'config.json'} absent" in err and "HuggingFaceTB/SmolVLM-Instruct" in err
