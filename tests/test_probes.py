"""MLP probe: learning, early stopping, determinism, validation sources, CLI round trip.

Synthetic features and tiny hidden sizes keep every test under a few seconds on one CPU core.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from projection_probe.cli import main
from projection_probe.io import InputError, save_safetensors
from projection_probe.probes.mlp import MLPProbe, split_validation, train_probe


def blobs(n_per_class: int, n_classes: int = 3, dim: int = 8, seed: int = 0, spread: float = 0.3):
    """Well-separated Gaussian clusters: linearly separable with overwhelming probability."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(n_classes, dim))
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = centres[y] + rng.normal(0, spread, size=(len(y), dim))
    return x.astype(np.float32), y.astype(np.int64)


def macro_f1(y_true, y_pred):
    from sklearn.metrics import f1_score
    return f1_score(y_true, y_pred, average="macro")


def test_probe_architecture_is_relu_stack_without_dropout():
    model = MLPProbe(8, [16, 4], 3)
    kinds = [type(m).__name__ for m in model.layers]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert model.n_parameters() == (8 * 16 + 16) + (16 * 4 + 4) + (4 * 3 + 3)


def test_probe_learns_separable_task():
    xtr, ytr = blobs(40, seed=1)
    xte, yte = blobs(20, seed=1)
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    res = train_probe(xtr, ytr, xte, yte, hidden=[16], lr=1e-2, batch_size=16, max_epochs=60, patience=10, seed=0)
    assert macro_f1(yte, res.predictions) > 0.9
    assert res.n_train + res.n_val == len(ytr) and res.n_test == len(yte)
    assert res.stratified
    # The probe draws from its own generator: the global RNG is untouched.
    assert torch.equal(torch.get_rng_state(), global_state)


def test_early_stopping_restores_best_weights():
    # Noisy, overlapping classes with a high learning rate: the validation loss bottoms out and then
    # rises as the probe overfits, so early stopping triggers before max_epochs.
    xtr, ytr = blobs(30, n_classes=3, dim=6, seed=2, spread=4.0)
    xte, yte = blobs(10, n_classes=3, dim=6, seed=3, spread=4.0)
    res = train_probe(xtr, ytr, xte, yte, hidden=[64, 64], lr=3e-2, batch_size=8, max_epochs=200,
                      patience=3, val_fraction=0.3, seed=0)
    losses = [h["val_loss"] for h in res.history]
    assert res.epochs_run < 200, "the task was meant to overfit and stop early"
    assert res.best_epoch == int(np.argmin(losses)) + 1
    assert res.epochs_run == res.best_epoch + 3  # stopped exactly `patience` epochs after the best
    assert losses[-1] > min(losses)
    # The returned model is the best epoch's, not the last one's.
    with torch.no_grad():
        xv = torch.as_tensor(xtr[res.val_indices])
        yv = torch.as_tensor(ytr[res.val_indices])
        val_loss = float(torch.nn.functional.cross_entropy(res.model(xv), yv))
    assert val_loss == pytest.approx(min(losses), rel=1e-5)
    assert val_loss == pytest.approx(res.best_val_loss, rel=1e-5)
    assert val_loss != pytest.approx(losses[-1], rel=1e-3)


def test_restore_best_false_keeps_the_last_epoch():
    """The authors' probe: train a fixed number of epochs and keep the last weights."""
    xtr, ytr = blobs(30, n_classes=3, dim=6, seed=2, spread=4.0)
    xte, yte = blobs(10, n_classes=3, dim=6, seed=3, spread=4.0)
    kwargs = dict(hidden=[64, 64], lr=3e-2, batch_size=8, max_epochs=12, patience=12, val_fraction=0.3, seed=0)
    last = train_probe(xtr, ytr, xte, yte, restore_best=False, **kwargs)
    best = train_probe(xtr, ytr, xte, yte, **kwargs)
    losses = [h["val_loss"] for h in last.history]
    assert [h["val_loss"] for h in best.history] == losses  # same training run, different selection
    assert last.best_epoch == len(losses) and last.best_val_loss == losses[-1]
    with torch.no_grad():
        xv, yv = torch.as_tensor(xtr[last.val_indices]), torch.as_tensor(ytr[last.val_indices])
        assert float(torch.nn.functional.cross_entropy(last.model(xv), yv)) == pytest.approx(losses[-1], rel=1e-5)
    if int(np.argmin(losses)) + 1 != len(losses):  # the best epoch is not the last: the weights differ
        assert not torch.equal(next(last.model.parameters()), next(best.model.parameters()))


def test_same_seed_same_result_other_seed_differs():
    xtr, ytr = blobs(20, seed=4, spread=2.0)
    xte, yte = blobs(10, seed=5, spread=2.0)
    kw = dict(hidden=[8], lr=1e-2, batch_size=8, max_epochs=5, patience=5)
    a = train_probe(xtr, ytr, xte, yte, seed=7, **kw)
    b = train_probe(xtr, ytr, xte, yte, seed=7, **kw)
    c = train_probe(xtr, ytr, xte, yte, seed=8, **kw)
    assert a.history == b.history
    assert np.array_equal(a.predictions, b.predictions)
    assert np.array_equal(a.val_indices, b.val_indices)
    assert a.history != c.history


def test_val_source_test_uses_all_train_rows_and_validates_on_test():
    xtr, ytr = blobs(10, seed=6)
    xte, yte = blobs(5, seed=7)
    res = train_probe(xtr, ytr, xte, yte, hidden=[8], lr=1e-2, max_epochs=3, patience=3, val_source="test", seed=0)
    assert res.val_indices is None
    assert res.n_train == len(ytr) and res.n_val == len(yte)
    with torch.no_grad():
        loss = float(torch.nn.functional.cross_entropy(res.model(torch.as_tensor(xte)), torch.as_tensor(yte)))
    assert loss == pytest.approx(res.best_val_loss, rel=1e-5)


def test_single_example_class_falls_back_to_unstratified_split(caplog):
    xtr, ytr = blobs(10, n_classes=3, seed=8)
    xtr, ytr = xtr[:21], ytr[:21]  # class 2 keeps one example
    fit, val, stratified = split_validation(ytr, 0.2, seed=0)
    assert not stratified
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(21))
    with caplog.at_level(logging.WARNING):
        res = train_probe(xtr, ytr, xtr, ytr, hidden=[4], max_epochs=2, patience=2, val_fraction=0.2, seed=0)
    assert not res.stratified
    assert "stratified validation split impossible" in caplog.text


def test_standardize_uses_fit_rows_only():
    xtr, ytr = blobs(10, seed=9)
    xtr = xtr * 100 + 50
    res = train_probe(xtr, ytr, xtr, ytr, hidden=[4], max_epochs=1, patience=1, seed=0, standardize=True)
    fit_rows = torch.as_tensor(xtr[res.train_indices])
    assert torch.allclose(res.model.input_mean, fit_rows.mean(0))
    assert not torch.allclose(res.model.input_mean, torch.as_tensor(xtr).mean(0))


def test_bad_labels_raise_input_error():
    xtr, ytr = blobs(5, seed=0)
    with pytest.raises(InputError, match="out of range"):
        train_probe(xtr, ytr, xtr, ytr, hidden=[4], n_classes=2, max_epochs=1)
    with pytest.raises(InputError, match="val_source"):
        train_probe(xtr, ytr, xtr, ytr, hidden=[4], val_source="valid")


def write_features(path, x, y, classes_dim_post=6):
    n = len(y)
    rng = np.random.default_rng(0)
    post = np.concatenate([x, rng.normal(size=(n, classes_dim_post - x.shape[1]))], axis=1) \
        if classes_dim_post > x.shape[1] else x
    save_safetensors(path, {"pre": torch.as_tensor(x), "post": torch.as_tensor(post, dtype=torch.float32),
                            "labels": torch.as_tensor(y)},
                     metadata={"image_paths": json.dumps([f"img/{path.stem}_{i}.jpg" for i in range(n)])})


def test_train_probe_cli_writes_predictions_and_summary(tmp_path):
    classes = ["leaf a", "leaf b", "leaf c"]
    (tmp_path / "classes.json").write_text(json.dumps({"task": "plant leaf diseases", "classes": classes}))
    xtr, ytr = blobs(20, dim=4, seed=1)
    xte, yte = blobs(8, dim=4, seed=1)
    write_features(tmp_path / "train.safetensors", xtr, ytr)
    write_features(tmp_path / "test.safetensors", xte, yte)
    out_csv, out_json = tmp_path / "out" / "pred.csv", tmp_path / "out" / "probe.json"
    rc = main(["train-probe", "--train", str(tmp_path / "train.safetensors"), "--test",
               str(tmp_path / "test.safetensors"), "--classes", str(tmp_path / "classes.json"), "--feature", "pre",
               "--hidden", "8", "--lr", "0.01", "--batch-size", "16", "--max-epochs", "40", "--patience", "5",
               "--seed", "0", "--threads", "1", "--device", "cpu",
               "--out-predictions", str(out_csv), "--out-json", str(out_json)])
    assert rc == 0
    pred = pd.read_csv(out_csv, keep_default_na=False)
    assert list(pred.columns) == ["image_path", "label", "raw", "parsed", "valid", "mode"]
    assert len(pred) == len(yte)
    assert pred["label"].tolist() == [classes[i] for i in yte]
    assert (pred["raw"] == pred["parsed"]).all() and pred["valid"].all() and (pred["mode"] == "probe").all()
    summary = json.loads(out_json.read_text())
    assert summary["in_dim"] == 4 and summary["hidden"] == [8] and summary["n_test"] == len(yte)
    assert summary["n_train"] + summary["n_val"] == len(ytr)
    assert summary["epochs_run"] == len(summary["history"])
    assert 1 <= summary["best_epoch"] <= summary["epochs_run"]
    # The summary's metrics agree with the per-image predictions it wrote.
    from projection_probe.evaluate.metrics import metrics_from_predictions_csv
    assert summary["macro_f1"] == pytest.approx(metrics_from_predictions_csv(out_csv, classes)["macro_f1"])
    assert summary["accuracy"] > 0.9


def test_train_probe_cli_rejects_missing_tensor(tmp_path, capsys):
    (tmp_path / "classes.json").write_text(json.dumps({"task": "t", "classes": ["a", "b"]}))
    save_safetensors(tmp_path / "f.safetensors", {"pre": torch.zeros(2, 3), "labels": torch.tensor([0, 1])},
                     metadata={"image_paths": json.dumps(["x", "y"])})
    rc = main(["train-probe", "--train", str(tmp_path / "f.safetensors"), "--test", str(tmp_path / "f.safetensors"),
               "--classes", str(tmp_path / "classes.json"), "--feature", "post", "--hidden", "4", "--seed", "0",
               "--out-predictions", str(tmp_path / "p.csv"), "--out-json", str(tmp_path / "p.json")])
    assert rc == 2
    assert "'post' missing" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
