"""Bad input, end to end through the CLI: every case exits 2 with a message that names the file, key
or value, and no output is written; images in odd modes are converted, not rejected; odd model
outputs end up in the invalid rate.

The library checks behind several cases have unit tests in test_data_manifest.py; here the same
problems go through the subcommand a user (or a rule) actually runs. docs/reliability.md lists the
exact messages.
"""
from __future__ import annotations

import json
import multiprocessing
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from projection_probe.cli import main
from projection_probe.data.images import load_rgb
from projection_probe.data.manifest import ManifestRow
from projection_probe.data.sources import register_source
from projection_probe.io import save_safetensors, write_json
from projection_probe.testing.micro import MICRO_MODEL, REPO_ROOT, micro_config, snakemake_command
from projection_probe.testing.tiny import make_tiny_parts

from layout_fixtures import (
    crisismmd_image,
    crisismmd_tsv,
    link_image,
    make_crisismmd,
    make_plantdoc,
    make_zero_byte,
    nest_folder,
    put_tab_in_tweet,
    truncate_image,
)

CLASSES = ["cat", "dog", "bird"]


# A source that returns the rows the test passes in its config, so that prepare-dataset can be fed
# exactly the bad dataset a case needs.
@register_source("_bad_input_rows")
def _rows_source(source_cfg, out_dir, classes):
    return [ManifestRow(p, label, split) for p, label, split in source_cfg["rows"]]


def png(path: Path, seed: int, size=(32, 32)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def prepare_args(out_dir: Path, rows: list, *extra: str) -> list[str]:
    return ["prepare-dataset", "--dataset", "toy",
            "--source-json", json.dumps({"kind": "_bad_input_rows", "rows": rows}),
            "--classes-json", json.dumps(CLASSES), "--task", "animals", "--out-dir", str(out_dir), *extra]


def fails_naming(capsys, argv: list[str], *names: str) -> str:
    """Run the CLI in-process; it must return 2 (an InputError, not a crash) and print every one of
    `names` in its message: the last thing on stderr, from `error: ` on (one line, except for the
    messages that list several files)."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") or "\nerror: " in err, err[-2000:]
    message = err[err.rindex("error: ") if err.startswith("error: ") else err.rindex("\nerror: ") + 1:].rstrip("\n")
    for name in names:
        assert name in message, (name, message)
    print(f"[{argv[0]}] {message}")  # `pytest -rP` lists them: the table in docs/reliability.md
    return message


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A valid toy study built with the real subcommands: 3 classes × (2 train + 1 test) images,
    manifest, classes.json, prompts, the X_v cache, and a base model folder on tiny random parts."""
    root = tmp_path_factory.mktemp("bad_input")
    vision_dir, llm_dir = make_tiny_parts(root / "tiny")
    # Test images get other seeds than train ones: identical bytes in both splits would be a leak.
    rows = [[png(root / "img" / f"{split}_{c}_{k}.png", seed=i * 10 + k + (5 if split == "test" else 0)), c, split]
            for i, c in enumerate(CLASSES) for split, n in (("train", 2), ("test", 1)) for k in range(n)]
    data = root / "data"
    assert main(prepare_args(data, rows)) == 0
    assert main(["build-prompts", "--manifest", str(data / "manifest.csv"), "--classes", str(data / "classes.json"),
                 "--seed", "0", "--out", str(data / "prompts_seed0.jsonl")]) == 0
    vision_json = json.dumps({"kind": "clip", "path": str(vision_dir)})
    assert main(["extract-vision-features", "--vision-json", vision_json, "--manifest", str(data / "manifest.csv"),
                 "--threads", "1", "--out", str(data / "vision.safetensors")]) == 0
    from projection_probe.models.projector import build_projector

    base = root / "base"
    torch.manual_seed(0)
    save_safetensors(base / "projector.safetensors", build_projector("mlp2x_gelu", 32, 64).state_dict())
    write_json(base / "facade.json", {
        "format_version": 1, "vision": {"kind": "clip", "path": str(vision_dir)},
        "projector": {"kind": "mlp2x_gelu", "in_features": 32, "out_features": 64, "weights": "projector.safetensors"},
        "language_model": {"path": str(llm_dir)}, "base": None, "template": "v1", "image_preprocessing": "pad"})
    return {"root": root, "data": data, "base": base, "rows": rows, "vision_json": vision_json}


def classify_args(s: dict, out: Path, model=None, prompts=None, cache=None) -> list[str]:
    d = s["data"]
    return ["classify", "--model", str(model or s["base"]), "--prompts", str(prompts or d / "prompts_seed0.jsonl"),
            "--vision-cache", str(cache or d / "vision.safetensors"), "--classes", str(d / "classes.json"),
            "--mode", "generate", "--batch-size", "2", "--max-new-tokens", "3", "--threads", "1", "--out", str(out)]


def extract_features_args(s: dict, out_dir: Path, model=None) -> list[str]:
    d = s["data"]
    return ["extract-features", "--model", str(model or s["base"]), "--vision-cache", str(d / "vision.safetensors"),
            "--manifest", str(d / "manifest.csv"), "--classes", str(d / "classes.json"), "--threads", "1",
            "--out-dir", str(out_dir)]


def test_the_intact_inputs_pass(setup, tmp_path):
    """The control for every case below: with nothing broken the same commands succeed, so each
    failure there comes from the one thing that case breaks."""
    assert main(classify_args(setup, tmp_path / "pred.csv")) == 0
    assert len(pd.read_csv(tmp_path / "pred.csv")) == 3
    assert main(extract_features_args(setup, tmp_path / "feat")) == 0
    assert sorted(p.name for p in (tmp_path / "feat").iterdir()) == ["test.safetensors", "train.safetensors"]


# ---------------------------------------------------------------------------- truncated files
def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("command", ["classify", "extract-features"])
def test_truncated_projector_checkpoint_is_named(setup, tmp_path, capsys, command):
    model = tmp_path / "model"
    shutil.copytree(setup["base"], model)
    truncate(model / "projector.safetensors")
    out = tmp_path / "out"
    argv = (classify_args(setup, out / "pred.csv", model=model) if command == "classify"
            else extract_features_args(setup, out, model=model))
    fails_naming(capsys, argv, str(model / "projector.safetensors"), "truncated")
    assert not out.exists()


def test_truncated_vision_cache_is_named(setup, tmp_path, capsys):
    cache = tmp_path / "vision.safetensors"
    shutil.copy(setup["data"] / "vision.safetensors", cache)
    truncate(cache)
    fails_naming(capsys, classify_args(setup, tmp_path / "pred.csv", cache=cache), str(cache), "truncated")
    assert not (tmp_path / "pred.csv").exists()


def test_truncated_facade_json_is_named(setup, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(setup["base"], model)
    truncate(model / "facade.json")
    fails_naming(capsys, classify_args(setup, tmp_path / "pred.csv", model=model), str(model / "facade.json"),
                 "not valid JSON")


@pytest.mark.parametrize(("change", "says"), [
    ({"format_version": 2}, "format_version 2 is unknown; this version of projection-probe reads format_version 1"),
    ({"format_version": None}, "missing key 'format_version'"),
    ({"projector": None}, "missing key 'projector'"),
    ({"colour": "blue"}, "unknown key 'colour'"),
], ids=["newer-version", "no-version", "no-projector", "unknown-key"])
def test_facade_json_of_another_version_or_missing_a_key_is_refused_naming_folder_and_key(setup, tmp_path, capsys,
                                                                                            change, says):
    model = tmp_path / "model"
    shutil.copytree(setup["base"], model)
    spec = json.loads((model / "facade.json").read_text())
    for key, value in change.items():
        if value is None:
            del spec[key]
        else:
            spec[key] = value
    write_json(model / "facade.json", spec)
    fails_naming(capsys, classify_args(setup, tmp_path / "pred.csv", model=model), str(model / "facade.json"), says)


def test_prompts_cut_mid_line_name_file_and_line(setup, tmp_path, capsys):
    prompts = tmp_path / "prompts_seed0.jsonl"
    lines = (setup["data"] / "prompts_seed0.jsonl").read_text().splitlines()
    prompts.write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])
    fails_naming(capsys, classify_args(setup, tmp_path / "pred.csv", prompts=prompts), f"{prompts}:4",
                 "not valid JSON")


# ---------------------------------------------------------------------------- images
@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n but the rest is junk"], ids=["zero-byte", "corrupt"])
def test_unreadable_image_stops_feature_extraction_naming_it(setup, tmp_path, capsys, content):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"image_path,label,split\n{setup['rows'][0][0]},cat,train\n{bad},dog,test\n")
    out = tmp_path / "vision.safetensors"
    message = fails_naming(capsys, ["extract-vision-features", "--vision-json", setup["vision_json"],
                                    "--manifest", str(manifest), "--threads", "1", "--out", str(out)], str(bad))
    assert ("zero-byte" if not content else "corrupt or unreadable") in message
    assert not out.exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_image_in_a_dataloader_worker_is_the_same_one_line_message(setup, tmp_path, capsys, workers):
    make_crisismmd(tmp_path / "c")
    good, bad = crisismmd_image(tmp_path / "c", "train", 0), truncate_image(crisismmd_image(tmp_path / "c", "test", 0))
    manifest = tmp_path / "manifest.csv"  # written by hand (no sha256): the image is read, not refused
    manifest.write_text(f"image_path,label,split\n{good},cat,train\n{bad},dog,test\n")
    message = fails_naming(capsys, ["extract-vision-features", "--vision-json", setup["vision_json"],
                                    "--manifest", str(manifest), "--num-workers", str(workers), "--batch-size", "1",
                                    "--threads", "1", "--out", str(tmp_path / "vision.safetensors")], str(bad))
    assert message == (f"error: {bad}: corrupt or unreadable image (Truncated File Read); re-download it, or "
                       f"set data.on_bad_image: skip so that prepare_dataset drops it and lists it in bad_images.txt")
    # The workers are gone when the command returns (torch would otherwise wait 5 s for each later).
    assert not multiprocessing.active_children()


def test_image_changed_since_prepare_stops_feature_extraction_naming_it(setup, tmp_path, capsys):
    """The manifest's sha256 column is checked before any image is encoded."""
    prepared = [line.split(",") for line in (setup["data"] / "manifest.csv").read_text().splitlines()[1:]]
    lines = ["image_path,label,split,sha256"]
    for path, label, split, sha256 in prepared:
        copy = tmp_path / "img" / Path(path).name
        copy.parent.mkdir(exist_ok=True)
        shutil.copy(path, copy)
        lines.append(f"{copy},{label},{split},{sha256}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "vision.safetensors"
    argv = ["extract-vision-features", "--vision-json", setup["vision_json"], "--manifest", str(manifest),
            "--threads", "1", "--out", str(out)]
    changed = tmp_path / "img" / Path(prepared[4][0]).name
    png(changed, seed=99)  # same name, other pixels: a re-download or an edit after prepare-dataset
    fails_naming(capsys, argv, str(changed), f"image changed since {manifest} was prepared", "rerun prepare_dataset")
    assert not out.exists()


def odd_mode_images(folder: Path) -> dict[str, Path]:
    """One 20×12 image per mode that a real dataset may hold, each saved in a format that keeps it."""
    folder.mkdir(parents=True, exist_ok=True)
    grey = np.tile(np.arange(20, dtype=np.uint8) * 12, (12, 1))
    images = {
        "L": (Image.fromarray(grey, "L"), "png"),
        "1": (Image.fromarray(grey > 100).convert("1"), "png"),
        "P": (Image.fromarray(grey, "L").convert("P"), "png"),
        "LA": (Image.merge("LA", [Image.fromarray(grey, "L"), Image.fromarray(np.full_like(grey, 128), "L")]), "png"),
        # Fully transparent: composited on white, it must come out white, not black.
        "RGBA": (Image.new("RGBA", (20, 12), (0, 0, 0, 0)), "png"),
        "CMYK": (Image.new("CMYK", (20, 12), (0, 255, 255, 0)), "jpg"),
        # 16-bit grey using only 1000..3000 of 0..65535: must be stretched, not clipped or crushed.
        "I;16": (Image.fromarray(np.tile(np.linspace(1000, 3000, 20).astype(np.uint16), (12, 1))), "png"),
    }
    paths = {}
    for mode, (im, ext) in images.items():
        paths[mode] = folder / f"{mode.replace(';', '_')}.{ext}"
        im.save(paths[mode])
        with Image.open(paths[mode]) as check:
            assert check.mode == mode or (mode == "I;16" and check.mode.startswith("I")), (mode, check.mode)
    return paths


def test_images_in_other_modes_are_converted_not_rejected(tmp_path):
    for mode, path in odd_mode_images(tmp_path).items():
        im = load_rgb(path)
        assert (im.mode, im.size) == ("RGB", (20, 12)), mode
        arr = np.asarray(im)
        if mode == "RGBA":
            assert (arr == 255).all()
        if mode == "I;16":
            assert arr.min() == 0 and arr.max() == 255 and len(np.unique(arr[..., 0])) == 20
        if mode == "CMYK":
            assert arr[..., 0].mean() > 200 and arr[..., 1:].mean() < 60  # cyan-free, magenta+yellow: red


def test_feature_extraction_accepts_a_mix_of_modes(setup, tmp_path):
    paths = odd_mode_images(tmp_path / "img")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image_path,label,split\n" + "".join(f"{p},cat,train\n" for p in paths.values()))
    out = tmp_path / "vision.safetensors"
    assert main(["extract-vision-features", "--vision-json", setup["vision_json"], "--manifest", str(manifest),
                 "--threads", "1", "--out", str(out)]) == 0
    from projection_probe.features.cache import load_vision_cache

    assert load_vision_cache(out).x_v.shape[0] == len(paths)


# ---------------------------------------------------------------------------- datasets and manifests
def test_test_class_missing_from_train_stops_prepare_dataset(setup, tmp_path, capsys):
    rows = [r for r in setup["rows"] if not (r[1] == "bird" and r[2] == "train")]
    out = tmp_path / "data"
    fails_naming(capsys, prepare_args(out, rows), str(out / "manifest.csv"), "['bird']", "no train images")
    assert not (out / "manifest.csv").exists()


def test_empty_split_stops_prepare_dataset(setup, tmp_path, capsys):
    rows = [r for r in setup["rows"] if r[2] == "train"]
    out = tmp_path / "data"
    fails_naming(capsys, prepare_args(out, rows), str(out / "manifest.csv"), "split 'test' has no images")
    assert not (out / "manifest.csv").exists()


def break_download(case: str, root: Path) -> tuple[list[str], dict, list[str]]:
    """A tiny official layout (tests/layout_fixtures.py) with one gotcha of real downloads; returns
    the classes, the source config and what the message must name."""
    if case in ("missing-listed-file", "zero-byte", "several-bad-files", "tab-in-tweet", "nested-split-folder"):
        classes, cfg = make_crisismmd(root)
        cfg["train_splits"] = ["train", "dev"]
    else:
        classes, cfg = make_plantdoc(root)
    tsv = crisismmd_tsv(root, "test")
    if case == "missing-listed-file":
        gone = crisismmd_image(root, "test", 0)
        gone.unlink()
        return classes, cfg, [f"{gone}: missing (listed in {tsv}:2)", "data.on_bad_image: skip"]
    if case == "zero-byte":
        return classes, cfg, [f"{make_zero_byte(crisismmd_image(root, 'train', 0))}: zero-byte file",
                              "data.on_bad_image: skip"]
    if case == "several-bad-files":
        names = [str(make_zero_byte(crisismmd_image(root, "train", 0))),
                 str(truncate_image(crisismmd_image(root, "train", 4)))]
        crisismmd_image(root, "test", 0).unlink()
        return classes, cfg, names + ["3 bad image file(s)", f"{root.parent / 'data.bad_images.txt'}"]
    if case == "tab-in-tweet":
        line = put_tab_in_tweet(root, "test", 1)
        return classes, cfg, [f"{tsv}:{line}", "a tab inside a tweet"]
    if case == "nested-split-folder":
        inner = nest_folder(root / "crisismmd_datasplit_all")
        return classes, cfg, [str(inner), "one level deeper"]
    train_image = root / "train" / "Apple Scab Leaf" / "apple_0.jpg"
    leak = link_image(train_image, root / "test" / "Apple Scab Leaf" / "leak.jpg")
    return classes, cfg, [f"{train_image} (train) and {leak} (test)", "data.cross_split_duplicates: drop_from_train"]


@pytest.mark.parametrize("case", ["missing-listed-file", "zero-byte", "several-bad-files", "tab-in-tweet",
                                  "nested-split-folder", "symlink-across-splits"])
def test_messy_download_stops_prepare_dataset(tmp_path, capsys, case):
    classes, cfg, names = break_download(case, tmp_path / "download")
    out = tmp_path / "data"
    argv = ["prepare-dataset", "--dataset", "toy", "--source-json", json.dumps(cfg), "--classes-json",
            json.dumps(classes), "--task", "things", "--out-dir", str(out)]
    message = fails_naming(capsys, argv, *names)
    assert ".prepare." not in message  # never the staging folder
    assert not (out / "manifest.csv").exists()


def write_manifest_bytes(tmp_path: Path, body: bytes) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_bytes(b"image_path,label,split\n" + body)
    return path


@pytest.mark.parametrize("case", ["non-utf8-label", "duplicate-path", "unknown-label"])
def test_hand_edited_manifest_stops_build_prompts(setup, tmp_path, capsys, case):
    a, b = setup["rows"][0][0], setup["rows"][1][0]
    body = {
        "non-utf8-label": f"{a},cat,train\n{b},caf".encode() + b"\xe9" + b",test\n",  # Latin-1 'é'
        "duplicate-path": f"{a},cat,train\n{b},dog,test\n{a},dog,test\n".encode(),
        "unknown-label": f"{a},cat,train\n{b},fish,test\n".encode(),
    }[case]
    manifest = write_manifest_bytes(tmp_path, body)
    expected = {"non-utf8-label": (f"{manifest}:3", "not UTF-8"),
                "duplicate-path": (f"{manifest}:4", f"duplicate image_path {a!r}"),
                "unknown-label": (f"{manifest}:3", "label 'fish'")}[case]
    out = tmp_path / "prompts.jsonl"
    fails_naming(capsys, ["build-prompts", "--manifest", str(manifest),
                          "--classes", str(setup["data"] / "classes.json"),
                          "--seed", "0", "--out", str(out)], *expected)
    assert not out.exists()


@pytest.mark.parametrize("name", ["classes.json", "prompts_seed0.jsonl"])
def test_non_utf8_json_inputs_are_named(setup, tmp_path, capsys, name):
    """A Latin-1 byte in a JSON input must give the one-line InputError, not a UnicodeDecodeError
    stack trace."""
    shutil.copy(setup["data"] / name, tmp_path / name)
    path = tmp_path / name
    path.write_bytes(path.read_bytes().replace(b"cat", b"c\xe0t", 1))
    argv = classify_args(setup, tmp_path / "pred.csv", prompts=tmp_path / name if name != "classes.json" else None)
    if name == "classes.json":
        argv[argv.index("--classes") + 1] = str(path)
    fails_naming(capsys, argv, str(path), "UTF-8")


# ---------------------------------------------------------------------------- config
def dry_run_with(tmp_path: Path, edit) -> subprocess.CompletedProcess:
    """`snakemake -n` on the micro config after `edit(config)`; validation runs before any job, so the
    tiny models it names need not exist."""
    config = micro_config(tmp_path / "no_models")
    edit(config)
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return subprocess.run(snakemake_command(tmp_path, "-n"), capture_output=True, text=True)


def test_config_typo_stops_the_workflow_before_any_job(tmp_path):
    # One case only: tests/test_config_schema.py covers the schema's keys, types and ranges.
    done = dry_run_with(tmp_path, lambda c: c["classify"].update(batch_sise=4))
    assert done.returncode != 0
    assert "'batch_sise' was unexpected" in done.stdout + done.stderr
    assert "rule " not in done.stdout  # no job was planned


@pytest.mark.parametrize("model_type, says", [("mllama", "cross-attention"), ("bert", "supported model types")])
def test_a_family_checkpoint_of_an_unsupported_model_type_stops_the_workflow_before_planning(tmp_path, model_type,
                                                                                           says):
    # Only its config.json is read (through the torch-free registry): a checkpoint of no weights is enough.
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    write_json(checkpoint / "config.json", {"model_type": model_type})
    other = {"loader": "family", "checkpoint": str(checkpoint)}
    done = dry_run_with(tmp_path, lambda c: c["models"].update(other=other))
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "models.other.checkpoint" in out and repr(model_type) in out and says in out, out[-3000:]
    if model_type == "bert":  # the supported list, named
        assert "'idefics3'" in out and "'qwen2_vl'" in out
    assert "rule " not in done.stdout  # no job was planned


@pytest.mark.parametrize("name", ["my digits", 'dig"its', "it's"])
def test_dataset_names_with_spaces_or_quotes_are_rejected_by_the_schema(name):
    # Names become wildcards, paths and shell words, so the schema refuses them outright; checked
    # in-process against the workflow's schema (the dry run above shows validation is wired in).
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = micro_config(Path("/no_models"))
    config["datasets"][name] = config["datasets"].pop("digits")
    config["align"]["datasets"] = [name]
    with pytest.raises(WorkflowError) as info:
        validate(config, schema=str(REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    assert repr(name) in str(info.value.args) or name in str(info.value), info.value


# ---------------------------------------------------------------------------- odd model outputs
class ScriptedFacade:
    """Stands in for the MLLM in `classify_records`: `generate` returns the scripted raw outputs in
    order, so the parser and metrics see exactly the strings a test chooses."""

    class tokenizer:  # noqa: N801 - mimics facade.tokenizer
        eos_token = "</s>"

    def __init__(self, outputs):
        self.outputs = list(outputs)

    def build_inputs(self, prompts):
        return prompts

    def answer_token_ids(self, label):
        return list(label.encode())

    def generate_answers(self, inputs, x_v, **kwargs):
        batch, self.outputs = self.outputs[:len(inputs)], self.outputs[len(inputs):]
        return batch, [False] * len(batch)


class OneRowCache:
    def select(self, paths):
        return torch.zeros(len(paths), 1, 1)


# (raw output, true label, the class the parser must read or None for invalid)
SCRIPT = [
    ("cat", "cat", "cat"),
    ("  \"Dog\".", "dog", "dog"),
    ("", "bird", None),  # empty
    ("   \n\n", "cat", None),  # whitespace only
    ("</s>bird", "bird", None),  # empty before EOS
    ("cat or dog", "cat", None),  # several classes
    ("a bird, maybe a cat", "bird", None),  # several classes
    ("x" * 5000, "dog", None),  # over-long, no class
    ("bird\n" + "cat dog " * 2000, "bird", "bird"),  # over-long, but the first line is one class
    ("it is a dog dog dog dog dog dog dog dog", "cat", "dog"),  # cut at max_new_tokens, one class
]


def test_empty_overlong_and_ambiguous_outputs_count_as_invalid_through_aggregate(tmp_path):
    from projection_probe.evaluate.classify import classify_records
    from projection_probe.io import write_csv

    records = [{"image": f"img{i}.png", "label": label, "conversations": [{"from": "human", "value": "<image>\n?"}]}
               for i, (_, label, _) in enumerate(SCRIPT)]
    frame = classify_records(ScriptedFacade([raw for raw, _, _ in SCRIPT]), records, OneRowCache(), CLASSES,
                             mode="generate", batch_size=3)
    predictions = tmp_path / "seed0.csv"
    write_csv(predictions, frame)
    write_json(tmp_path / "classes.json", {"task": "animals", "classes": CLASSES})

    # The predictions file records each verdict ...
    stored = pd.read_csv(predictions, dtype=str, keep_default_na=False)
    assert stored["parsed"].tolist() == [p or "" for _, _, p in SCRIPT]
    assert stored["valid"].tolist() == [str(p is not None) for _, _, p in SCRIPT]

    # ... and aggregate counts them.
    runs = [{"dataset": "toy", "setting": "original", "seed": 0, "method": "mllm",
             "predictions": str(predictions), "classes": str(tmp_path / "classes.json")}]
    assert main(["aggregate", "--runs", json.dumps(runs), "--out", str(tmp_path / "all_runs.csv")]) == 0
    metrics = pd.read_csv(tmp_path / "all_runs.csv").set_index("metric")["value"]
    invalid = sum(p is None for _, _, p in SCRIPT)
    correct = sum(p == label for _, label, p in SCRIPT)
    assert metrics["invalid_rate"] == pytest.approx(invalid / len(SCRIPT))
    assert metrics["accuracy"] == pytest.approx(correct / len(SCRIPT))


# ---------------------------------------------------------------------------- config strings and the shell
# Every shell metacharacter that could split, substitute or chain a command.
HOSTILE = "it's \"$(touch HACKED)\"; echo `id` | cat & $HOME"


@pytest.fixture(scope="module")
def hostile_dry_run(tmp_path_factory):
    """The shell commands `snakemake -n -p` plans when free-text config values hold HOSTILE, as
    argv lists (shlex.split of each printed command; None where the quoting does not even balance)."""
    workdir = tmp_path_factory.mktemp("hostile")
    config = micro_config(workdir / "no_models")
    config["datasets"]["digits"]["task"] = HOSTILE
    config["datasets"]["digits"]["classes"][1] = "one's $(touch HACKED) & more"
    config["models"][MICRO_MODEL]["vision"]["path"] = str(workdir / HOSTILE)
    llm = workdir / "llm" / HOSTILE  # an input of align_projector, so it must exist for the dry run
    llm.mkdir(parents=True)
    config["models"][MICRO_MODEL]["language_model"]["path"] = str(llm)
    config["baselines"]["encoder_zero_shot"]["model"] = str(workdir / HOSTILE)
    config["baselines"]["encoder_zero_shot"]["templates"] = ["A photo of {}; " + HOSTILE]
    config["report"]["encoder_name"] = HOSTILE
    config["report"]["mllm_name"] = HOSTILE
    config["finetune"]["optim"] = HOSTILE
    (workdir / "micro.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    done = subprocess.run(snakemake_command(workdir, "-n", "-p"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    commands = []
    for line in done.stdout.splitlines():
        if line.startswith("Shell command: "):
            raw = line[len("Shell command: "):]
            try:
                commands.append((raw, shlex.split(raw)))
            except ValueError:
                commands.append((raw, None))  # the quoting does not even balance
    return config, commands


def argument(commands: list[tuple[str, list[str] | None]], subcommand: str, flag: str) -> str:
    """The word after `flag` in the first planned `projection-probe <subcommand>` command."""
    for raw, argv in commands:
        if raw.startswith(f"projection-probe {subcommand} "):
            assert argv is not None, f"unbalanced quoting: {raw}"
            assert flag in argv, (flag, argv)
            return argv[argv.index(flag) + 1]
    raise AssertionError(f"no {subcommand} command planned")


def test_free_text_config_values_reach_the_cli_as_single_words(hostile_dry_run):
    config, commands = hostile_dry_run
    digits = config["datasets"]["digits"]
    prepare = [a for _, a in commands if a and a[:2] == ["projection-probe", "prepare-dataset"] and "digits" in a]
    assert prepare and prepare[0][prepare[0].index("--task") + 1] == HOSTILE
    assert json.loads(prepare[0][prepare[0].index("--classes-json") + 1]) == digits["classes"]
    assert json.loads(argument(commands, "extract-vision-features", "--vision-json"))["path"] == \
        config["models"][MICRO_MODEL]["vision"]["path"]
    assert argument(commands, "encoder-zero-shot", "--model") == config["baselines"]["encoder_zero_shot"]["model"]
    assert argument(commands, "encoder-zero-shot", "--template") == \
        config["baselines"]["encoder_zero_shot"]["templates"][0]
    assert argument(commands, "make-tables", "--encoder-name") == HOSTILE
    assert argument(commands, "make-tables", "--mllm-name") == HOSTILE


@pytest.mark.parametrize("subcommand, flag, key", [
    ("finetune", "--optim", ("finetune", "optim")),
    ("align-projector", "--llm-dir", ("models", MICRO_MODEL, "language_model")),
])
def test_unquoted_config_values_reach_the_cli_as_single_words(hostile_dry_run, subcommand, flag, key):
    config, commands = hostile_dry_run
    expected = config
    for part in key:
        expected = expected[part]
    expected = expected["path"] if isinstance(expected, dict) else expected
    assert argument(commands, subcommand, flag) == expected
