"""Random and CLIP zero-shot baselines, end to end through the CLI on a tiny random CLIP."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from projection_probe.cli import main
from projection_probe.evaluate.metrics import PREDICTION_COLUMNS, metrics_from_predictions_csv, read_predictions_csv

CLASSES = ["Cat", "dog", "T-shirt", "shirt"]
# WordLevel vocabulary for the tiny tokenizer; eos must not be id 2, which CLIPTextTransformer treats
# as the legacy "pool at argmax(input_ids)" marker.
VOCAB = ["<pad>", "<unk>", "<bos>", "<eos>", "this", "is", "a", "photo", "of", "an", "image", "cat",
         "dog", "t-shirt", "shirt", "Cat", "."]


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    sizes = [(40, 24), (24, 40), (32, 32), (50, 30), (30, 31), (36, 20), (28, 44)]
    for i, (w, h) in enumerate(sizes):
        path = tmp_path / "images" / f"img{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        rows.append((str(path), CLASSES[i % len(CLASSES)], "test"))
    rows.append((str(tmp_path / "images" / "missing_train.png"), "dog", "train"))  # never opened
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows, columns=["image_path", "label", "split"]).to_csv(manifest, index=False)
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"task": "things", "classes": CLASSES}))
    return manifest, classes


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(".", behavior="isolated")])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>",
                                                       special_tokens=[("<bos>", 2), ("<eos>", 3)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                        eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16),
        projection_dim=8)
    path = tmp_path_factory.mktemp("tiny_clip")
    CLIPModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ---- random baseline -------------------------------------------------------------------------

def run_random(dataset, out, seed):
    manifest, classes = dataset
    assert main(["random-baseline", "--manifest", str(manifest), "--classes", str(classes),
                 "--seed", str(seed), "--out", str(out)]) == 0
    return read_predictions_csv(out)


def test_random_baseline_deterministic_per_seed(dataset, tmp_path):
    a = run_random(dataset, tmp_path / "a.csv", 1)
    b = run_random(dataset, tmp_path / "b.csv", 1)
    c = run_random(dataset, tmp_path / "c.csv", 2)
    assert list(a.columns) == list(PREDICTION_COLUMNS)
    assert len(a) == 7  # test split only
    assert a.equals(b)
    assert list(a["parsed"]) != list(c["parsed"])
    assert set(a["mode"]) == {"random"} and a["valid"].all()
    assert set(a["parsed"]) <= set(CLASSES) and (a["raw"] == a["parsed"]).all()
    rng = np.random.default_rng(1)
    assert list(a["parsed"]) == [CLASSES[i] for i in rng.integers(0, len(CLASSES), size=7)]


def test_random_baseline_bad_label(dataset, tmp_path, capsys):
    manifest, classes = dataset
    classes.write_text(json.dumps({"task": "things", "classes": ["Cat", "dog"]}))
    assert main(["random-baseline", "--manifest", str(manifest), "--classes", str(classes),
                 "--seed", "0", "--out", str(tmp_path / "x.csv")]) == 2
    assert "not in classes.json" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


# ---- CLIP zero-shot --------------------------------------------------------------------------

def test_default_template_matches():
    from projection_probe.baselines import commands, zero_shot
    assert commands.DEFAULT_TEMPLATE == zero_shot.DEFAULT_TEMPLATE == "This is a photo of {}."


@pytest.fixture
def text_feature_calls(monkeypatch):
    """The batch size of every CLIPModel.get_text_features call: each label text is encoded once."""
    from transformers import CLIPModel

    calls = []
    original = CLIPModel.get_text_features

    def counting(self, *args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CLIPModel, "get_text_features", counting)
    return calls


def test_clip_zero_shot_cli_end_to_end(dataset, clip_dir, tmp_path, text_feature_calls):
    calls = text_feature_calls
    manifest, classes = dataset
    out = tmp_path / "preds" / "clip.csv"
    assert main(["encoder-zero-shot", "--manifest", str(manifest), "--classes", str(classes),
                 "--model", str(clip_dir), "--batch-size", "3", "--num-workers", "1",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert calls == [len(CLASSES)]  # one call, each label once, for 3 image batches
    frame = read_predictions_csv(out)
    assert len(frame) == 7 and frame["valid"].all()
    assert set(frame["mode"]) == {"clip_zero_shot"}
    assert set(frame["parsed"]) <= set(CLASSES) and (frame["raw"] == frame["parsed"]).all()
    m = metrics_from_predictions_csv(out, CLASSES)
    assert m["n"] == 7 and m["invalid_rate"] == 0.0

    calls.clear()
    out2 = tmp_path / "clip2.csv"
    assert main(["encoder-zero-shot", "--manifest", str(manifest), "--classes", str(classes),
                 "--model", str(clip_dir), "--template", "a photo of {}.", "--template", "an image of {}.",
                 "--no-lowercase-labels", "--image-preprocessing", "pad", "--device", "cpu",
                 "--out", str(out2)]) == 0
    assert calls == [len(CLASSES), len(CLASSES)]  # one call per template


def test_batched_equals_per_image(dataset, clip_dir):
    from projection_probe.baselines.random_baseline import read_classes_file, read_test_split
    from projection_probe.baselines.zero_shot import clip_zero_shot_predictions

    manifest, classes_path = dataset
    classes = read_classes_file(classes_path)
    test = read_test_split(manifest, classes)
    batched, p_batched = clip_zero_shot_predictions(test, classes, clip_dir, batch_size=4, device="cpu")
    single, p_single = clip_zero_shot_predictions(test, classes, clip_dir, batch_size=1, device="cpu")
    assert p_batched.shape == (7, len(CLASSES))
    np.testing.assert_allclose(p_batched.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(p_batched, p_single, rtol=1e-5, atol=1e-6)
    assert batched.equals(single)
    # the preprocessing switch reaches the pixels: pad and square give different scores
    _, p_pad = clip_zero_shot_predictions(test, classes, clip_dir, image_preprocessing="pad", device="cpu")
    assert not np.allclose(p_pad, p_batched)


def test_single_template_ensemble_is_plain_embedding(clip_dir):
    from transformers import AutoTokenizer

    from projection_probe.baselines.zero_shot import encode_label_texts, label_texts, load_clip

    model, tokenizer = load_clip(clip_dir, torch.device("cpu"), torch.float32)
    template = "This is a photo of {}."
    ensembled = encode_label_texts(model, tokenizer, CLASSES, [template], lowercase_labels=True)
    texts = label_texts(CLASSES, template, lowercase_labels=True)
    assert texts[0] == "This is a photo of cat." and texts[2] == "This is a photo of t-shirt."
    assert label_texts(CLASSES, template, lowercase_labels=False)[0] == "This is a photo of Cat."
    with torch.inference_mode():
        batch = AutoTokenizer.from_pretrained(clip_dir)(texts, padding=True, return_tensors="pt")
        plain = model.get_text_features(**batch).pooler_output
    plain = plain / plain.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(ensembled, plain)
    torch.testing.assert_close(encode_label_texts(model, tokenizer, CLASSES, [template, template], True), plain)
    other = encode_label_texts(model, tokenizer, CLASSES, [template, "an image of {}."], True)
    assert not torch.allclose(other, plain)
    torch.testing.assert_close(other.norm(dim=-1), torch.ones(len(CLASSES)))


def test_image_settings_from_preprocessor_config(clip_dir, tmp_path):
    import shutil

    from projection_probe.baselines.zero_shot import CLIP_MEAN, CLIP_STD, image_settings, load_clip
    from projection_probe.io import InputError

    model, _ = load_clip(clip_dir, torch.device("cpu"), torch.float32)
    assert image_settings(clip_dir, model) == (32, CLIP_MEAN, CLIP_STD)  # no preprocessor_config.json
    copy = tmp_path / "clip_copy"
    shutil.copytree(clip_dir, copy)
    (copy / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 48, "width": 48}, "size": {"shortest_edge": 48},
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    assert image_settings(copy, model) == (48, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    (copy / "preprocessor_config.json").write_text(json.dumps({"crop_size": 48, "size": {"shortest_edge": 56}}))
    with pytest.raises(InputError, match="differs from crop_size"):
        image_settings(copy, model)


def test_bad_template_and_missing_model(dataset, clip_dir, tmp_path, capsys):
    manifest, classes = dataset
    base = ["encoder-zero-shot", "--manifest", str(manifest), "--classes", str(classes), "--device", "cpu",
            "--out", str(tmp_path / "x.csv")]
    assert main(base + ["--model", str(clip_dir), "--template", "a photo"]) == 2
    assert "exactly one '{}'" in capsys.readouterr().err
    assert main(base + ["--model", str(tmp_path / "nowhere")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_label_set_test_drops_classes_without_test_images(dataset, clip_dir, tmp_path, text_feature_calls):
    """`--label-set test` (the authors' pipeline): CLIP's softmax runs only over the classes that occur
    in the test split, so a train-only class can never be predicted."""
    from projection_probe.baselines.commands import candidate_classes

    assert candidate_classes(CLASSES, ["shirt", "Cat", "shirt"], "test") == ["Cat", "shirt"]  # pinned order
    assert candidate_classes(CLASSES, ["shirt"], "pinned") == CLASSES
    manifest, classes = dataset
    frame = pd.read_csv(manifest)
    frame = frame[~((frame["split"] == "test") & (frame["label"] == "dog"))]  # "dog" is now train-only
    frame.to_csv(manifest, index=False)
    calls = text_feature_calls
    out = tmp_path / "clip_test_labels.csv"
    assert main(["encoder-zero-shot", "--manifest", str(manifest), "--classes", str(classes), "--model",
                 str(clip_dir), "--label-set", "test", "--device", "cpu", "--out", str(out)]) == 0
    assert calls == [len(CLASSES) - 1]
    assert "dog" not in set(read_predictions_csv(out)["parsed"])
