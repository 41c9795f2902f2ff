"""MLP probes on pooled image vectors (the paper's Tables 2 and 3).

The paper trains, on the mean-pooled post-projection embedding H_v (Table 2) or on the pooled vision
features (Table 3), a ReLU MLP without dropout, with Adam (lr 1e-4), batch 128 and early stopping on
the loss. We read "early stopping" as: hold out a stratified ``val_fraction`` of the training set,
stop when its loss has not improved for ``patience`` epochs and restore the best epoch's weights.

The authors' code instead validates on the *test* set (``val_source="test"``). That choice leaks test
labels into model selection; it is offered only to reproduce their numbers.

Every source of randomness (initialisation, validation split, batch order) is derived from ``seed``
through explicit generators, so the global torch/numpy RNG state is neither used nor changed, and
``torch.set_num_threads`` is left to the caller.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from projection_probe.hyperparams import ProbeHyperparams, with_fields
from projection_probe.io import InputError

log = logging.getLogger(__name__)

VAL_SOURCES = ("split", "test")
# Rows per forward pass when evaluating (validation loss, test predictions): bounds memory only.
EVAL_CHUNK = 4096


class MLPProbe(nn.Module):
    """``in_dim -> hidden[0] -> ... -> hidden[-1] -> n_classes``, ReLU between layers, no dropout.

    The input is first standardised with the buffers ``input_mean``/``input_scale`` (identity unless
    :meth:`set_standardization` is called), so a saved probe carries its own preprocessing.
    """

    def __init__(self, in_dim: int, hidden: list[int], n_classes: int):
        super().__init__()
        if in_dim < 1 or n_classes < 1 or any(int(h) < 1 for h in hidden):
            raise InputError(f"MLPProbe: sizes must be positive (in_dim={in_dim}, hidden={list(hidden)}, "
                             f"n_classes={n_classes})")
        self.in_dim, self.hidden, self.n_classes = int(in_dim), [int(h) for h in hidden], int(n_classes)
        layers: list[nn.Module] = []
        width = self.in_dim
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, self.n_classes))
        self.layers = nn.Sequential(*layers)
        self.register_buffer("input_mean", torch.zeros(self.in_dim))
        self.register_buffer("input_scale", torch.ones(self.in_dim))

    def reset_parameters(self, generator: torch.Generator) -> None:
        """PyTorch's default ``nn.Linear`` initialisation, drawn from ``generator`` instead of the
        global RNG so that the probe's start point depends on its seed only."""
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                bound = 1.0 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)

    def set_standardization(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        self.input_mean.copy_(mean)
        self.input_scale.copy_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers((x - self.input_mean) / self.input_scale)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@dataclass
class ProbeResult:
    """What :func:`train_probe` returns.

    ``history`` has one dict per epoch run: ``{"epoch", "train_loss", "val_loss"}`` (epochs count
    from 1; losses are mean cross-entropy per example). ``model`` holds the best epoch's weights.
    ``val_indices`` are the rows of ``x_train`` used for validation (``None`` when validating on the
    test set); ``train_indices`` the rows the optimiser saw.
    """

    predictions: np.ndarray
    history: list[dict]
    best_epoch: int
    best_val_loss: float
    model: MLPProbe
    train_indices: np.ndarray
    val_indices: np.ndarray | None
    val_source: str
    stratified: bool
    n_train: int
    n_val: int
    n_test: int
    epochs_run: int = field(init=False)

    def __post_init__(self) -> None:
        self.epochs_run = len(self.history)


def _as_features(name: str, x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array (rows x features), got shape {tuple(t.shape)}")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise InputError(f"{name}: contains NaN or infinite values; regenerate the features")
    return t


def _as_labels(name: str, y, n_rows: int, n_classes: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if t.ndim != 1 or t.shape[0] != n_rows:
        raise InputError(f"{name}: expected {n_rows} labels (one per feature row), got shape {tuple(t.shape)}")
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise InputError(f"{name}: labels must be integer class indices")
    t = t.to(torch.int64)
    if n_rows and (int(t.min()) < 0 or int(t.max()) >= n_classes):
        raise InputError(f"{name}: label index out of range [0, {n_classes}) "
                         f"(min {int(t.min())}, max {int(t.max())}); check classes.json")
    return t


def split_validation(y_train: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Indices ``(fit, val, stratified)`` holding out ``val_fraction`` of the training rows.

    Stratified by class (``random_state=seed``). When stratification is impossible (a class with a
    single example, or fewer validation rows than classes) the split is drawn without stratification
    and a warning is logged, instead of failing the whole run.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction={val_fraction}: must lie strictly between 0 and 1")
    idx = np.arange(len(y_train))
    if len(idx) < 2:
        raise InputError(f"training set has {len(idx)} rows; a validation split needs at least 2")
    try:
        fit, val = train_test_split(idx, test_size=val_fraction, stratify=y_train, random_state=seed)
        return np.sort(fit), np.sort(val), True
    except ValueError as e:
        log.warning("stratified validation split impossible (%s); using a non-stratified %.0f%% split", e,
                    100 * val_fraction)
        fit, val = train_test_split(idx, test_size=val_fraction, random_state=seed)
        return np.sort(fit), np.sort(val), False


@torch.no_grad()
def _mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    total = 0.0
    for start in range(0, x.shape[0], EVAL_CHUNK):
        xb = x[start:start + EVAL_CHUNK].to(device)
        yb = y[start:start + EVAL_CHUNK].to(device)
        total += float(nn.functional.cross_entropy(model(xb), yb, reduction="sum"))
    return total / max(x.shape[0], 1)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device | str = "cpu") -> np.ndarray:
    """Class index (argmax of the logits) for every row of ``x``."""
    model.eval()
    out = [model(x[s:s + EVAL_CHUNK].to(device)).argmax(dim=1).cpu() for s in range(0, x.shape[0], EVAL_CHUNK)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def train_probe(x_train, y_train, x_test, y_test, hp: ProbeHyperparams | None = None, *,
                n_classes: int | None = None, device: str | torch.device = "cpu", **fields) -> ProbeResult:
    """Train an :class:`MLPProbe` and predict the test rows.

    ``n_classes`` defaults to ``max(label) + 1`` over train and test; pass the length of the class
    list so a class absent from the data still gets an output unit. ``standardize`` z-scores each
    feature with the statistics of the rows the optimiser fits (never validation or test rows).
    Early stopping: an epoch counts as better only when its validation loss is strictly lower than
    the best so far; training stops after ``patience`` epochs without improvement or at
    ``max_epochs``, and the best epoch's weights are restored. ``restore_best=False`` keeps the
    last epoch's weights instead (the authors' probe: a fixed number of epochs, the last one kept);
    ``best_epoch``/``best_val_loss`` then describe that last epoch. The hyperparameters are ``hp``,
    or its fields as keywords.
    """
    hp = with_fields(ProbeHyperparams, hp, fields)
    hidden, lr, batch_size, max_epochs, patience = hp.hidden, hp.lr, hp.batch_size, hp.max_epochs, hp.patience
    val_fraction, val_source, seed = hp.val_fraction, hp.val_source, hp.seed
    standardize, restore_best = hp.standardize, hp.restore_best
    if val_source not in VAL_SOURCES:
        raise InputError(f"val_source={val_source!r}: must be one of {VAL_SOURCES}")
    if batch_size < 1 or max_epochs < 1 or patience < 1 or lr <= 0:
        raise InputError(f"batch_size={batch_size}, max_epochs={max_epochs}, patience={patience}, lr={lr}: "
                         f"all must be positive")
    xtr, xte = _as_features("x_train", x_train), _as_features("x_test", x_test)
    if xtr.shape[1] != xte.shape[1]:
        raise InputError(f"x_train has {xtr.shape[1]} features but x_test has {xte.shape[1]}; "
                         f"train and test must come from the same feature kind")
    if n_classes is None:
        n_classes = int(max(np.max(np.asarray(y_train), initial=-1), np.max(np.asarray(y_test), initial=-1))) + 1
    ytr = _as_labels("y_train", y_train, xtr.shape[0], n_classes)
    yte = _as_labels("y_test", y_test, xte.shape[0], n_classes)
    from projection_probe.models.loaders import resolve_device

    device = torch.device(resolve_device(device) if isinstance(device, str) else device)

    if val_source == "split":
        fit_idx, val_idx, stratified = split_validation(ytr.numpy(), val_fraction, seed)
        x_fit, y_fit = xtr[fit_idx], ytr[fit_idx]
        x_val, y_val = xtr[val_idx], ytr[val_idx]
    else:
        if xte.shape[0] == 0:
            raise InputError("val_source='test' but the test set is empty")
        fit_idx, val_idx, stratified = np.arange(xtr.shape[0]), None, False
        x_fit, y_fit, x_val, y_val = xtr, ytr, xte, yte
    if x_fit.shape[0] == 0:
        raise InputError("no training rows left after the validation split")

    gen = torch.Generator().manual_seed(int(seed))
    # nn.Linear initialises itself from the global RNG on construction; fork it so the caller's RNG
    # state is unchanged, then draw the real initial weights from the probe's own generator.
    with torch.random.fork_rng(devices=[]):
        model = MLPProbe(xtr.shape[1], hidden, n_classes)
    model.reset_parameters(gen)
    if standardize:
        mean = x_fit.mean(dim=0)
        scale = x_fit.std(dim=0, unbiased=False)
        # A constant feature carries no information; dividing by 1 keeps it at 0 instead of NaN.
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        model.set_standardization(mean, scale)
    model.to(device)
    # Move the (pooled, small) fit and validation rows once, not per batch.
    x_fit, y_fit, x_val, y_val = (t.to(device) for t in (x_fit, y_fit, x_val, y_val))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    history: list[dict] = []
    best_loss, best_epoch, best_state, bad_epochs = math.inf, 0, None, 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        order = torch.randperm(x_fit.shape[0], generator=gen).to(device)
        running = 0.0
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            xb, yb = x_fit[rows], y_fit[rows]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(xb), yb)
            loss.backward()
            optimizer.step()
            running += float(loss.detach()) * len(rows)
        model.eval()
        val_loss = _mean_loss(model, x_val, y_val, device)
        history.append({"epoch": epoch, "train_loss": running / x_fit.shape[0], "val_loss": val_loss})
        if val_loss < best_loss:
            best_loss, best_epoch, bad_epochs = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
            if bad_epochs >= patience:
                break
    if not restore_best:
        best_epoch, best_loss = len(history), history[-1]["val_loss"]
    elif best_state is None:  # every validation loss was NaN: keep the last weights, say so
        log.warning("validation loss never finite; keeping the last epoch's weights")
        best_epoch = len(history)
    else:
        model.load_state_dict(best_state)
    model.eval()
    log.info("probe: %d epochs, best epoch %d (val loss %.4f), %d fit / %d val / %d test rows",
             len(history), best_epoch, best_loss, x_fit.shape[0], x_val.shape[0], xte.shape[0])
    return ProbeResult(
        predictions=predict(model, xte, device), history=history, best_epoch=best_epoch,
        best_val_loss=float(best_loss), model=model, train_indices=fit_idx, val_indices=val_idx,
        val_source=val_source, stratified=stratified, n_train=int(x_fit.shape[0]),
        n_val=int(x_val.shape[0]), n_test=int(xte.shape[0]),
    )
