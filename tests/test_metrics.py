"""Metrics: an invalid prediction is wrong for accuracy and never a class for macro-F1."""
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from projection_probe.evaluate.metrics import PREDICTION_COLUMNS, classification_metrics, metrics_from_predictions_csv
from projection_probe.io import InputError

CLASSES = ["a", "b", "c"]
Y_TRUE = ["a", "a", "b", "b", "c"]
Y_PRED = ["a", None, "b", "a", ""]
# Hand computation over the three classes:
#   a: TP 1, FP 1 (b->a), FN 1 (invalid) -> P 1/2, R 1/2, F1 1/2
#   b: TP 1, FP 0, FN 1 (b->a)           -> P 1,   R 1/2, F1 2/3
#   c: TP 0, FN 1 (invalid)              -> F1 0
HAND_MACRO_F1 = (1 / 2 + 2 / 3 + 0) / 3


def test_invalid_prediction_is_never_a_class():
    m = classification_metrics(Y_TRUE, Y_PRED, CLASSES)
    assert m["macro_f1"] == pytest.approx(HAND_MACRO_F1)
    assert m["accuracy"] == pytest.approx(2 / 5)
    assert m["invalid_rate"] == pytest.approx(2 / 5)
    assert m["n"] == 5
    # sklearn's default would average an "INVALID" pseudo-class in as a fourth 0
    naive = f1_score(Y_TRUE, [p or "INVALID" for p in Y_PRED], average="macro", zero_division=0)
    assert naive == pytest.approx(HAND_MACRO_F1 * 3 / 4)
    assert m["macro_f1"] != pytest.approx(naive)


def test_nan_prediction_is_invalid():
    m = classification_metrics(["a", "b"], ["a", float("nan")], CLASSES)
    assert m["invalid_rate"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(0.5)


def test_f1_class_sets():
    classes = CLASSES + ["d"]  # d: no test image and never predicted
    true_only = classification_metrics(Y_TRUE, Y_PRED, classes)  # default: labels= the true classes
    observed = classification_metrics(Y_TRUE, Y_PRED, classes, f1_classes="observed")
    every = classification_metrics(Y_TRUE, Y_PRED, classes, f1_classes="all")
    assert true_only["macro_f1"] == pytest.approx(HAND_MACRO_F1)
    assert observed["macro_f1"] == pytest.approx(HAND_MACRO_F1)
    assert every["macro_f1"] == pytest.approx(HAND_MACRO_F1 * 3 / 4)
    # a class that is only predicted (a false positive) stays in the "observed" average ...
    fp = classification_metrics(["a", "a"], ["a", "d"], classes, f1_classes="observed")
    assert fp["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    # ... but not in the default, where it only costs the true class its recall
    fp_true = classification_metrics(["a", "a"], ["a", "d"], classes)
    assert fp_true["macro_f1"] == pytest.approx(2 / 3)


def test_perfect_and_all_invalid():
    assert classification_metrics(Y_TRUE, Y_TRUE, CLASSES)["macro_f1"] == pytest.approx(1.0)
    m = classification_metrics(Y_TRUE, [None] * 5, CLASSES)
    assert (m["macro_f1"], m["accuracy"], m["invalid_rate"]) == (0.0, 0.0, 1.0)


@pytest.mark.parametrize("y_true, y_pred, message", [
    (["a"], ["a", "b"], "1 true labels but 2"),
    ([], [], "no rows"),
    (["z"], ["a"], "label 'z'"),
    (["a"], ["z"], "prediction 'z'"),
])
def test_bad_input(y_true, y_pred, message):
    with pytest.raises(InputError, match=message):
        classification_metrics(y_true, y_pred, CLASSES)


def write_predictions(path, rows):
    pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS)).to_csv(path, index=False)


def test_metrics_from_predictions_csv(tmp_path):
    classes = ["NA", "None", "c"]  # strings pandas would turn into NaN by default
    rows = [
        ("x1.jpg", "NA", "NA", "NA", True, "generate"),
        ("x2.jpg", "NA", "blah", "", False, "generate"),
        ("x3.jpg", "None", "none.", "None", True, "generate"),
        ("x4.jpg", "None", "NA", "NA", True, "generate"),
        ("x5.jpg", "c", "", "", False, "generate"),
    ]
    path = tmp_path / "seed0.csv"
    write_predictions(path, rows)
    m = metrics_from_predictions_csv(path, classes)
    assert m == pytest.approx(classification_metrics(["NA", "NA", "None", "None", "c"],
                                                     ["NA", None, "None", "NA", None], classes))
    assert m["macro_f1"] == pytest.approx(HAND_MACRO_F1)


def test_predictions_csv_inconsistent_valid_flag(tmp_path):
    path = tmp_path / "bad.csv"
    write_predictions(path, [("x.jpg", "a", "a", "", True, "generate")])
    with pytest.raises(InputError, match="row 2: valid=True but parsed=''"):
        metrics_from_predictions_csv(path, CLASSES)


def test_predictions_csv_missing_column(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"image_path": ["x"], "label": ["a"]}).to_csv(path, index=False)
    with pytest.raises(InputError, match="missing columns"):
        metrics_from_predictions_csv(path, CLASSES)


def test_metrics_module_imports_no_torch():
    import subprocess
    import sys
    code = ("import sys, projection_probe.evaluate.metrics as m, projection_probe.evaluate.parse; "
            "m.classification_metrics(['a'], ['a'], ['a']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
