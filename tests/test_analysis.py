"""The numbers of analyze.py on small synthetic prediction CSVs, each checked against scikit-learn,
scipy or the formula written out here: per-class F1, the bootstrap summary's values, the worst
samples, the expected calibration error and the fitted temperature, McNemar's p-value, the config
keys that differ, and the capped confusion picture."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats
from sklearn import metrics

from logger.report.figures import MAX_CONFUSION_CLASSES, confusion_picture, most_confused_classes
from tests.conftest import run_in_process
from utils.analysis.calibration import expected_calibration_error, fit_temperature, softmax
from utils.analysis.classification import analyze_classification
from utils.analysis.compare import differing_keys, mcnemar
from utils.analysis.sources import read_predictions
from utils.analysis.tasks import analyze_multilabel, analyze_regression


def synthetic_logits(n: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from their own softmax: a perfectly calibrated model."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, classes)).astype(np.float32)
    probs = softmax(logits)
    targets = (probs.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1).clip(0, classes - 1)
    return logits, targets


def write_csv(path, probs: np.ndarray, targets: np.ndarray, **extra) -> None:
    table = {"id": [f"s{i}" for i in range(len(targets))], "prediction": probs.argmax(axis=1), "target": targets}
    table |= extra | {f"prob_{k}": probs[:, k] for k in range(probs.shape[1])}
    pd.DataFrame(table).to_csv(path, index=False)


@pytest.fixture(scope="module")
def csv_predictions(tmp_path_factory):
    """600 predictions of 7 classes, twice too confident, with folds and groups: the CSV and its analysis."""
    logits, targets = synthetic_logits(600, 7)
    path = tmp_path_factory.mktemp("analysis") / "oof_predictions.csv"
    rng = np.random.default_rng(1)
    write_csv(path, softmax(2 * logits), targets, fold=np.arange(600) % 3, group=rng.integers(0, 40, 600))
    predictions = read_predictions(path)
    return path, predictions, analyze_classification(predictions, top=15)


def test_per_class_table_equals_sklearn(csv_predictions):
    path, _, analysis = csv_predictions
    table = pd.read_csv(path)
    report = metrics.classification_report(table["target"], table["prediction"], output_dict=True, zero_division=0)
    per_class = analysis["per_class"].set_index("index")
    for k in range(7):
        for ours, theirs in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"),
                             ("support", "support")):
            assert per_class.loc[k, ours] == pytest.approx(report[str(k)][theirs]), (k, ours)
    assert list(analysis["per_class"]["f1"]) == sorted(analysis["per_class"]["f1"]), "worst first"
    assert (analysis["confusion"] == metrics.confusion_matrix(table["target"], table["prediction"])).all()


def test_summary_values_equal_sklearn_and_lie_in_their_intervals(csv_predictions):
    path, _, analysis = csv_predictions
    table = pd.read_csv(path)
    probs = table.filter(regex="^prob_").to_numpy()
    expected = {"accuracy": metrics.accuracy_score(table["target"], table["prediction"]),
                "macro_f1": metrics.f1_score(table["target"], table["prediction"], average="macro"),
                "loss": metrics.log_loss(table["target"], probs / probs.sum(axis=1, keepdims=True))}
    for row in analysis["summary"].itertuples():
        assert row.value == pytest.approx(expected[row.metric], rel=1e-4), row.metric
        assert row.ci95_low < row.value < row.ci95_high, row.metric
    # The accuracy's 95% interval is about the binomial one: +-1.96 standard errors.
    accuracy = analysis["summary"].set_index("metric").loc["accuracy"]
    half_width = 1.96 * np.sqrt(expected["accuracy"] * (1 - expected["accuracy"]) / len(table))
    assert accuracy.ci95_high - accuracy.ci95_low == pytest.approx(2 * half_width, rel=0.2)


def test_worst_samples_are_the_highest_losses(csv_predictions):
    path, _, analysis = csv_predictions
    table = pd.read_csv(path)
    probs = table.filter(regex="^prob_").to_numpy()
    loss = -np.log(probs[np.arange(len(table)), table["target"]])
    expected = table["id"].to_numpy()[np.argsort(-loss, kind="stable")[:15]]
    assert list(analysis["worst"]["id"]) == list(expected)
    assert analysis["worst"]["loss"].to_numpy() == pytest.approx(np.sort(loss)[::-1][:15], rel=1e-5)


def test_folds_and_groups_error_rates(csv_predictions):
    path, _, analysis = csv_predictions
    table = pd.read_csv(path).assign(wrong=lambda t: t["prediction"] != t["target"])
    by_fold = table.groupby("fold")["wrong"].mean()
    assert analysis["folds"].set_index("fold")["error_rate"].to_dict() == pytest.approx(by_fold.to_dict())
    groups = analysis["groups"]
    by_group = table.groupby(table["group"].astype(str))["wrong"].mean()
    assert groups.set_index("group")["error_rate"].to_dict() == pytest.approx(by_group.to_dict())
    assert groups["error_rate"].iloc[0] == by_group.max(), "worst group first"


def reference_ece(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """The textbook formula, bin by bin: bins (i/15, (i+1)/15], the first one including 0."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == targets
    total = 0.0
    for i in range(bins):
        lo, hi = i / bins, (i + 1) / bins
        inside = (confidence > lo) & (confidence <= hi) if i else (confidence <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


def test_temperature_undoes_overconfidence_and_lowers_the_error():
    logits, targets = synthetic_logits(4000, 5, seed=3)
    overconfident = 3 * logits
    temperature = fit_temperature(overconfident, targets)
    assert temperature == pytest.approx(3, rel=0.1)
    before, after = softmax(overconfident), softmax(overconfident, temperature)
    assert expected_calibration_error(before, targets) == pytest.approx(reference_ece(before, targets), abs=1e-6)
    assert expected_calibration_error(after, targets) == pytest.approx(reference_ece(after, targets), abs=1e-6)
    assert expected_calibration_error(after, targets) <= expected_calibration_error(before, targets)
    nll = [metrics.log_loss(targets, p, labels=range(5)) for p in (before, after)]
    assert nll[1] < nll[0]


@pytest.mark.parametrize("b, c", [(3, 9), (0, 4), (7, 7), (40, 61), (120, 80)])
def test_mcnemar_p_value_equals_scipy(b, c):
    a_correct = np.array([True] * b + [False] * c + [True] * 50 + [False] * 10)
    b_correct = np.array([False] * b + [True] * c + [True] * 50 + [False] * 10)
    result = mcnemar(a_correct, b_correct)
    assert (result["a_only_correct"], result["b_only_correct"]) == (b, c)
    if b + c < 25:
        expected = stats.binomtest(b, b + c, 0.5).pvalue
        assert result["test"] == "exact binomial"
    else:
        expected = stats.chi2.sf((abs(b - c) - 1) ** 2 / (b + c), df=1)
        assert result["test"] == "chi-square, continuity corrected"
    assert result["p_value"] == pytest.approx(expected, rel=1e-9)


def test_differing_keys_are_exactly_the_changed_ones():
    base = {"seed": 1, "optimizer": {"type": "Adam", "args": {"lr": 0.01}}, "metrics": ["accuracy"],
            "trainer": {"epochs": 3, "ema": None}}
    other = {"seed": 1, "optimizer": {"type": "Adam", "args": {"lr": 0.1}}, "metrics": ["accuracy", "top_k_acc"],
             "trainer": {"epochs": 3, "ema": None}}
    table = differing_keys({"a": base, "b": other})
    assert list(table["key"]) == ["metrics", "optimizer.args.lr"]
    assert table.set_index("key").loc["optimizer.args.lr"].to_dict() == {"a": "0.01", "b": "0.1"}
    third = other | {"trainer": {"epochs": 3}}  # a key missing in one run differs too
    assert "trainer.ema" in set(differing_keys({"a": base, "b": other, "c": third})["key"])


def test_confusion_picture_of_1000_classes_shows_the_most_confused(tmp_path):
    rng = np.random.default_rng(0)
    confusion = np.diag(rng.integers(5, 10, 1000))
    confused = rng.choice(1000, 40, replace=False)
    confusion[confused, np.roll(confused, 1)] = np.arange(40) + 1  # 40 classes with 1 to 40 mistakes each
    shown = most_confused_classes(confusion)
    assert len(shown) == MAX_CONFUSION_CLASSES
    errors = confusion.sum(0) + confusion.sum(1) - 2 * np.diag(confusion)
    assert errors[shown].min() >= np.sort(errors)[-MAX_CONFUSION_CLASSES]
    path, drawn = confusion_picture(confusion, [f"class {k}" for k in range(1000)], tmp_path / "c.png")
    assert drawn == MAX_CONFUSION_CLASSES
    with Image.open(path) as image:
        assert max(image.size) < 1200, image.size


def test_regression_and_multilabel_tables_equal_sklearn(tmp_path):
    rng = np.random.default_rng(2)
    target = rng.normal(size=300)
    prediction = target + rng.normal(scale=0.3, size=300)
    pd.DataFrame({"id": range(300), "prediction": prediction, "target": target}).to_csv(tmp_path / "r.csv", index=False)
    regression = analyze_regression(read_predictions(tmp_path / "r.csv"))
    summary = regression["summary"].set_index("metric")["value"]
    assert summary["mae"] == pytest.approx(metrics.mean_absolute_error(target, prediction))
    assert summary["rmse"] == pytest.approx(metrics.root_mean_squared_error(target, prediction))
    assert regression["per_target_bin"]["samples"].sum() == 300
    truth = rng.random((200, 3)) < 0.4
    probs = np.clip(truth * 0.5 + rng.random((200, 3)) * 0.6, 0, 1)
    names = ["cat", "dog", "sun"]
    tags = [" ".join(n for n, on in zip(names, row) if on) for row in truth]
    pd.DataFrame({"id": range(200), "prediction": "", "target": tags} | {f"prob_{n}": probs[:, k] for k, n in
                 enumerate(names)}).to_csv(tmp_path / "m.csv", index=False)
    per_label = analyze_multilabel(read_predictions(tmp_path / "m.csv"), [0.5, 0.6, 0.7])["per_label"]
    for k, name in enumerate(names):
        row = per_label.set_index("label").loc[name]
        assert row["f1"] == pytest.approx(metrics.f1_score(truth[:, k], probs[:, k] >= [0.5, 0.6, 0.7][k]))
        assert row["average_precision"] == pytest.approx(metrics.average_precision_score(truth[:, k], probs[:, k]),
                                                         rel=1e-5)


def test_bad_input_is_one_error_line(tmp_path):
    pd.DataFrame({"id": [0, 1], "prob_0": [0.5, 0.5]}).to_csv(tmp_path / "unlabelled.csv", index=False)
    (tmp_path / "empty.csv").write_text("id,prediction,target,prob_0,prob_1\n")
    for target, message in ((tmp_path / "missing.csv", "no such predictions file"),
                            (tmp_path / "empty.csv", "has no predictions"),
                            (tmp_path / "unlabelled.csv", "needs the columns id and target"),
                            (tmp_path, "neither a training run")):
        result = run_in_process("analyze.py", str(target), "--out", str(tmp_path / "report"))
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_multihead_heads_and_combined_and_every_task_page(tmp_path):
    rng = np.random.default_rng(4)
    n, heads = 300, {"mask": 3, "age": 2}
    table = {"id": range(n)}
    targets, right = {}, np.ones(n, dtype=bool)
    for head, size in heads.items():
        targets[head] = rng.integers(0, size, n)
        probs = softmax(rng.normal(size=(n, size)).astype(np.float32) + 2 * np.eye(size)[targets[head]])
        table |= {f"prediction_{head}": probs.argmax(1), f"target_{head}": targets[head]}
        table |= {f"prob_{head}_{k}": probs[:, k] for k in range(size)}
        right &= probs.argmax(1) == targets[head]
    table["target"] = targets["mask"] * 2 + targets["age"]
    table["prediction"] = np.where(right, table["target"], (table["target"] + 1) % 6)
    pd.DataFrame(table).to_csv(tmp_path / "heads.csv", index=False)
    result = run_in_process("analyze.py", str(tmp_path / "heads.csv"), "--out", str(tmp_path / "report"),
                            "--no-progress", check=True)
    assert "multihead" in result.stdout
    for head in heads:
        summary = pd.read_csv(tmp_path / "report" / "heads" / head / "summary.csv").set_index("metric")
        assert summary.loc["accuracy", "value"] == pytest.approx(
            metrics.accuracy_score(table[f"target_{head}"], table[f"prediction_{head}"]))
    combined = pd.read_csv(tmp_path / "report" / "heads" / "combined_summary.csv")
    assert combined["value"].iloc[0] == pytest.approx(right.mean())
    # The regression and multi-label pages are written too.
    pd.DataFrame({"id": range(50), "prediction": np.arange(50) * 1.1, "target": np.arange(50)}).to_csv(
        tmp_path / "r.csv", index=False)
    pd.DataFrame({"id": range(4), "prediction": ["a", "", "a b", "b"], "target": ["a", "b", "a b", ""],
                  "prob_a": [0.9, 0.2, 0.8, 0.1], "prob_b": [0.1, 0.4, 0.7, 0.6]}).to_csv(tmp_path / "m.csv",
                                                                                         index=False)
    result = run_in_process("analyze.py", str(tmp_path / "r.csv"), str(tmp_path / "m.csv"), "--out",
                            str(tmp_path / "both"), "--no-progress", check=True)
    assert (tmp_path / "both" / "r" / "residuals.png").is_file()
    assert (tmp_path / "both" / "m" / "per_label.csv").is_file()
