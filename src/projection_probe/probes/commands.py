"""CLI: ``train-probe`` (one MLP probe on one dataset/setting/seed's pooled features)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from projection_probe.cli import add_threads_option, set_threads
from projection_probe.hyperparams import ProbeHyperparams, add_options, from_args
from projection_probe.io import InputError

log = logging.getLogger(__name__)

# Which tensor of a features file a probe reads: `post` = mean-pooled H_v (Table 2); `pre` = mean of
# the vision patch features X_v (Table 3, the image-only MLP, default); `pooled` = the encoder's own
# pooled vector (CLIP's pooler output), the alternative pre-projection vector for Table 3.
FEATURE_KEYS = ("post", "pre", "pooled")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train-probe",
        help="train an MLP probe on pooled features and predict the test split",
        description="Train an MLP probe (Adam, early stopping on validation loss, best weights restored) on "
                    "one features file and write per-image test predictions plus a JSON summary.")
    p.add_argument("--train", required=True, help="train-split features .safetensors (pre, post, labels)")
    p.add_argument("--test", required=True, help="test-split features .safetensors")
    p.add_argument("--classes", required=True, help="classes.json ({'task', 'classes'})")
    p.add_argument("--feature", required=True, choices=FEATURE_KEYS,
                   help="post = mean-pooled post-projection H_v; pre = mean-pooled vision patch features; "
                        "pooled = the encoder's pooled vector (both image-only MLP inputs)")
    add_options(p, ProbeHyperparams)
    add_threads_option(p)
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--f1-classes", choices=("true", "observed", "all"), default="true",
                   help="classes macro-F1 averages over (see evaluate.metrics); the report recomputes it anyway")
    p.add_argument("--out-predictions", required=True, help="CSV image_path,label,raw,parsed,valid,mode")
    p.add_argument("--out-json", required=True, help="metrics and training summary")
    p.set_defaults(handler=run_train_probe)


def read_classes(path: str | Path) -> list[str]:
    from projection_probe.io import read_json

    obj = read_json(path)
    classes = obj.get("classes") if isinstance(obj, dict) else None
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise InputError(f"{path}: key 'classes' must be a non-empty list of strings")
    if len(set(classes)) != len(classes):
        raise InputError(f"{path}: 'classes' contains duplicates")
    return classes


def load_features(path: str | Path, feature: str, n_classes: int):
    """``(x, labels, image_paths)`` from one features file, checked against the file contract."""
    import torch
    from safetensors import safe_open

    from projection_probe.io import load_safetensors

    tensors = load_safetensors(path)
    for key in (feature, "labels"):
        if key not in tensors:
            raise InputError(f"{path}: tensor {key!r} missing (has {sorted(tensors)}); regenerate the features")
    x, labels = tensors[feature], tensors["labels"]
    if x.ndim != 2 or labels.ndim != 1 or x.shape[0] != labels.shape[0]:
        raise InputError(f"{path}: {feature!r} has shape {tuple(x.shape)} and 'labels' {tuple(labels.shape)}; "
                         f"expected N x D and N")
    if labels.dtype not in (torch.int64, torch.int32):
        raise InputError(f"{path}: 'labels' has dtype {labels.dtype}; expected int64 class indices")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise InputError(f"{path}: label index outside [0, {n_classes}); the features were made with a "
                         f"different classes.json")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    try:
        image_paths = json.loads(meta["image_paths"])
    except (KeyError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: metadata 'image_paths' missing or not a JSON list; regenerate the features") from e
    if not isinstance(image_paths, list) or len(image_paths) != x.shape[0]:
        count = len(image_paths) if isinstance(image_paths, list) else "?"
        raise InputError(f"{path}: metadata 'image_paths' has {count} "
                         f"entries for {x.shape[0]} rows")
    return x.float(), labels.long(), [str(p) for p in image_paths]


def run_train_probe(args) -> int:
    import pandas as pd

    from projection_probe.evaluate.metrics import classification_metrics
    from projection_probe.io import write_csv, write_json
    from projection_probe.probes.mlp import train_probe

    set_threads(args.threads)
    from projection_probe.models.loaders import resolve_device

    device = resolve_device(args.device)

    classes = read_classes(args.classes)
    x_train, y_train, _ = load_features(args.train, args.feature, len(classes))
    x_test, y_test, test_paths = load_features(args.test, args.feature, len(classes))
    if x_train.shape[1] != x_test.shape[1]:
        raise InputError(f"{args.train} has {x_train.shape[1]}-d {args.feature!r} features but {args.test} has "
                         f"{x_test.shape[1]}-d; they must come from the same model")

    hp = from_args(ProbeHyperparams, args)
    result = train_probe(x_train, y_train, x_test, y_test, hp, n_classes=len(classes), device=device)

    predicted = [classes[i] for i in result.predictions]
    truth = [classes[i] for i in y_test.tolist()]
    frame = pd.DataFrame({"image_path": test_paths, "label": truth, "raw": predicted, "parsed": predicted,
                          "valid": True, "mode": "probe"})
    metrics = classification_metrics(truth, predicted, classes, f1_classes=args.f1_classes)
    summary = {
        **metrics,
        "feature": args.feature, "epochs": result.epochs_run, "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch, "val_loss": result.best_val_loss,
        "n_train": result.n_train, "n_val": result.n_val, "n_test": result.n_test,
        "val_source": args.val_source, "val_fraction": args.val_fraction if args.val_source == "split" else None,
        "stratified_split": result.stratified, "hidden": list(hp.hidden), "in_dim": int(x_train.shape[1]),
        "n_classes": len(classes), "n_parameters": result.model.n_parameters(), "lr": args.lr,
        "batch_size": args.batch_size, "max_epochs": args.max_epochs, "patience": args.patience,
        "standardize": args.standardize, "restore_best": hp.restore_best, "seed": args.seed, "device": str(device),
        "train_features": str(args.train), "test_features": str(args.test), "history": result.history,
    }
    write_csv(args.out_predictions, frame)
    write_json(args.out_json, summary)
    log.info("probe (%s): macro-F1 %.4f, accuracy %.4f", args.feature, metrics["macro_f1"], metrics["accuracy"])
    return 0
