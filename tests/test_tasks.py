"""Tasks beyond single-label classification: regression, multi-label and multi-head, end to end."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

import inference
import kfold_train
import train
from tests.conftest import make_config, run_dirs

BASE = {
    "name": "Task",
    "n_gpu": 0,
    "seed": 1,
    "arch": {"type": "MLP", "args": {"in_features": 6, "num_classes": 1, "hidden": [32]}},
    "data_loader": {"type": "TableDataLoader", "args": {"batch_size": 32, "shuffle": True,
                                                       "validation_split": 0.2, "num_workers": 0}},
    "optimizer": {"type": "Adam", "args": {"lr": 0.01}},
    "trainer": {"epochs": 3, "save_dir": "saved/", "verbosity": 1, "monitor": "min val_loss",
                "tensorboard": False, "progress_bar": False},
}


def regression_table(path, n=240, outputs=1):
    from sklearn.datasets import make_regression

    x, y = make_regression(n_samples=n, n_features=6, n_targets=outputs, noise=1.0, random_state=0)
    table = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    y = y.reshape(n, -1) / 100
    for k in range(outputs):
        table[f"y{k}"] = y[:, k]
    table.to_csv(path, index=False)
    return table


def regression_config(tmp_path, **changes):
    regression_table(tmp_path / "train.csv")
    config = BASE | {"task": "Regression", "loss": "mse_loss", "metrics": ["mae", "rmse", "r2"],
                     "dataset": {"type": "TableDataset", "args": {"csv_file": str(tmp_path / "train.csv"),
                                                                  "test_csv_file": str(tmp_path / "train.csv"),
                                                                  "label_column": "y0"}}}
    return make_config(tmp_path, config, **{"trainer.monitor": "min val_rmse"} | changes)


def test_regression_trains_predicts_and_scores_like_sklearn(tmp_path):
    config = regression_config(tmp_path, **{"trainer.epochs": 8, "trainer.tensorboard": True})
    train.main(["-c", str(config)])
    run = run_dirs(tmp_path, "Task")[0]
    metrics = pd.read_csv(run / "metrics.csv")
    assert {"mae", "rmse", "r2", "val_mae", "val_rmse", "val_r2"} <= set(metrics.columns)
    assert metrics["val_r2"].iloc[-1] > 0.9  # a linear target: an MLP fits it in a few epochs
    assert any(p.name.startswith("events") for p in (run / "tensorboard").iterdir())

    inference.main(["--resume", str(run / "model_best.pth"), "--split", "valid"])
    table = pd.read_csv(run / "predictions_valid.csv")
    assert list(table.columns) == ["id", "prediction", "target"]
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    saved = torch.load(run / "model_best.pth", weights_only=True)["metrics"]
    assert saved["val_mae"] == pytest.approx(mean_absolute_error(table["target"], table["prediction"]), rel=1e-4)
    assert saved["val_rmse"] == pytest.approx(mean_squared_error(table["target"], table["prediction"]) ** 0.5,
                                              rel=1e-4)
    assert saved["val_r2"] == pytest.approx(r2_score(table["target"], table["prediction"]), rel=1e-4)


def test_regression_kfold_stratifies_on_quantile_bins_and_ensembles_values(tmp_path):
    config = regression_config(tmp_path, **{"kfold.n_splits": 3, "kfold.n_bins": 4, "trainer.epochs": 2})
    kfold_train.main(["-c", str(config)])
    run = run_dirs(tmp_path, "Task")[0]
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert {"id", "prediction", "target"} <= set(oof.columns) and not oof.filter(like="prob_").columns.size
    assert sorted(oof["id"]) == list(range(240))
    # Each fold holds out about a third of every quantile bin of the target.
    edges = np.quantile(oof["target"], [0.25, 0.5, 0.75])
    held_out = [pd.read_csv(run / f"fold_{k}" / "oof_predictions.csv")["target"] for k in range(3)]
    counts = np.array([np.bincount(np.digitize(t, edges), minlength=4) for t in held_out])
    assert counts.max() - counts.min() <= 2
    from sklearn.metrics import mean_squared_error

    oof_metrics = json.loads((run / "oof_metrics.json").read_text())
    assert oof_metrics["oof_rmse"] == pytest.approx(mean_squared_error(oof["target"], oof["prediction"]) ** 0.5,
                                                    rel=1e-4)
    inference.main(["--resume", str(run)])
    predictions = pd.read_csv(run / "predictions.csv")
    # The ensemble's prediction is the mean of the folds' predictions.
    singles = []
    for fold in range(3):
        inference.main(["--resume", str(run / f"fold_{fold}"), "--output", str(tmp_path / f"p{fold}.csv")])
        singles.append(pd.read_csv(tmp_path / f"p{fold}.csv")["prediction"].to_numpy())
    np.testing.assert_allclose(predictions["prediction"], np.mean(singles, axis=0), rtol=1e-5, atol=1e-6)


def multilabel_table(path, n=300, labels=4):
    from sklearn.datasets import make_multilabel_classification

    x, y = make_multilabel_classification(n_samples=n, n_features=6, n_classes=labels, random_state=0)
    table = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    names = ["cat", "dog", "owl", "fox"][:labels]
    table["tags"] = [" ".join(n for n, on in zip(names, row) if on) or "none" for row in y]
    table.to_csv(path, index=False)
    return table


def multilabel_config(tmp_path, **changes):
    multilabel_table(tmp_path / "train.csv")
    config = BASE | {"task": "MultiLabel", "loss": "bce_with_logits",
                     "metrics": ["MultilabelF1", "subset_accuracy", "mean_average_precision"],
                     "dataset": {"type": "TableDataset", "args": {"csv_file": str(tmp_path / "train.csv"),
                                                                  "test_csv_file": str(tmp_path / "train.csv"),
                                                                  "label_column": "tags"}}}
    config["arch"] = {"type": "MLP", "args": {"in_features": 6, "num_classes": 5, "hidden": [32]}}
    return make_config(tmp_path, config, **{"trainer.monitor": "max val_MultilabelF1"} | changes)


def test_multilabel_kfold_tunes_thresholds_and_inference_uses_them(tmp_path):
    config = multilabel_config(tmp_path, **{"kfold.n_splits": 3, "trainer.epochs": 4})
    kfold_train.main(["-c", str(config)])
    run = run_dirs(tmp_path, "Task")[0]
    oof = pd.read_csv(run / "oof_predictions.csv")
    names = ["cat", "dog", "fox", "none", "owl"]
    assert [f"prob_{n}" for n in names] == [c for c in oof.columns if c.startswith("prob_")]
    thresholds = json.loads((run / "oof_thresholds.json").read_text())
    assert len(thresholds) == 5
    from sklearn.metrics import f1_score

    truth = np.array([[n in str(t).split() for n in names] for t in oof["target"]])
    probs = oof[[f"prob_{n}" for n in names]].to_numpy()
    for k in range(5):  # each threshold is the best one for its label's F1 on the OOF predictions
        best = f1_score(truth[:, k], probs[:, k] >= thresholds[k])
        assert all(best >= f1_score(truth[:, k], probs[:, k] >= t) - 1e-9 for t in np.linspace(0.05, 0.95, 19))
    oof_metrics = json.loads((run / "oof_metrics.json").read_text())
    tuned = (probs >= np.array(thresholds)).astype(int)
    assert oof_metrics["oof_MultilabelF1"] == pytest.approx(f1_score(truth, tuned, average="macro"), abs=1e-4)

    inference.main(["--resume", str(run)])
    predictions = pd.read_csv(run / "predictions.csv")
    chosen = predictions[[f"prob_{n}" for n in names]].to_numpy() >= np.array(thresholds)
    expected = [" ".join(n for n, on in zip(names, row) if on) for row in chosen]
    assert predictions["prediction"].fillna("").tolist() == expected


def multihead_config(tmp_path, **changes):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6))
    table = pd.DataFrame(x, columns=[f"f{i}" for i in range(6)])
    table["mask"] = np.digitize(x[:, 0], [-0.5, 0.5])
    table["gender"] = (x[:, 1] > 0).astype(int)
    table["age"] = np.digitize(x[:, 2] + x[:, 3], [-0.7, 0.7])
    table.to_csv(tmp_path / "train.csv", index=False)
    config = BASE | {"task": {"type": "MultiHead", "args": {"heads": {"mask": 3, "gender": 2, "age": 3},
                                                            "weights": {"age": 2.0}}},
                     "loss": "cross_entropy", "metrics": ["accuracy", "MacroF1"],
                     "dataset": {"type": "TableDataset", "args": {"csv_file": str(tmp_path / "train.csv"),
                                                                  "test_csv_file": str(tmp_path / "train.csv"),
                                                                  "label_column": ["mask", "gender", "age"]}}}
    config["arch"] = {"type": "MLP", "args": {"in_features": 6, "num_classes": 8, "hidden": [32]}}
    return make_config(tmp_path, config, **{"trainer.monitor": "max val_accuracy_age"} | changes)


def test_multihead_reports_per_head_and_combined_metrics(tmp_path):
    config = multihead_config(tmp_path, **{"trainer.epochs": 6})
    train.main(["-c", str(config)])
    run = run_dirs(tmp_path, "Task")[0]
    columns = pd.read_csv(run / "metrics.csv").columns
    for name in ("accuracy", "accuracy_mask", "accuracy_gender", "accuracy_age", "MacroF1_age"):
        assert name in columns and f"val_{name}" in columns
    inference.main(["--resume", str(run / "model_best.pth"), "--split", "valid"])
    table = pd.read_csv(run / "predictions_valid.csv")
    assert ["id", "prediction", "target", "prediction_mask", "prediction_gender", "prediction_age"] == list(
        table.columns[:6])
    assert [c for c in table.columns if c.startswith("prob_")] == (
        [f"prob_mask_{k}" for k in range(3)] + ["prob_gender_0", "prob_gender_1"] + [f"prob_age_{k}" for k in range(3)])
    # The combined class reads the heads as digits: mask·6 + gender·3 + age.
    combined = table["prediction_mask"] * 6 + table["prediction_gender"] * 3 + table["prediction_age"]
    assert (table["prediction"] == combined).all()
    from sklearn.metrics import accuracy_score, f1_score

    saved = torch.load(run / "model_best.pth", weights_only=True)["metrics"]
    assert saved["val_accuracy"] == pytest.approx(accuracy_score(table["target"], table["prediction"]), abs=1e-6)
    assert saved["val_accuracy_age"] == pytest.approx(accuracy_score(table["target_age"], table["prediction_age"]),
                                                      abs=1e-6)
    assert saved["val_MacroF1_gender"] == pytest.approx(
        f1_score(table["target_gender"], table["prediction_gender"], average="macro"), abs=1e-6)
    assert saved["val_accuracy"] > 0.5


@pytest.mark.parametrize("make, column, value, message", [
    (regression_config, "y0", "abc", "is not a number"),
    (multihead_config, "age", 7, "class 7 of head 'age' does not lie in [0, 3)"),
])
def test_a_bad_target_is_one_error_line_naming_the_row(tmp_path, capsys, make, column, value, message):
    config = make(tmp_path)
    table = pd.read_csv(tmp_path / "train.csv")
    table[column] = table[column].astype(object)
    table.loc[5, column] = value
    table.to_csv(tmp_path / "train.csv", index=False)
    from utils.cli import run_cli

    with pytest.raises(SystemExit) as stopped:
        run_cli(lambda: train.main(["-c", str(config)]))
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ") and message in error[0], error


def test_the_readme_task_configs_are_valid(tmp_path):
    import re

    from config_parser import ConfigParser
    from tests.conftest import REPO

    section = (REPO / "docs" / "tasks.md").read_text().split("## Add a task")[0]
    configs = [json.loads("{" + s + "}") for s in re.findall(r"```json\n(.*?)```", section, flags=re.S)]
    full = [c for c in configs if "name" in c]
    assert [c["task"] if isinstance(c["task"], str) else c["task"]["type"] for c in full] == [
        "Regression", "MultiLabel", "MultiHead"]
    for config in full:
        ConfigParser(config, modification={"trainer.save_dir": str(tmp_path)})


def test_monitor_names_a_task_metric_column(tmp_path):
    from config_parser import ConfigParser
    from utils.errors import ConfigError

    config = json.loads(multihead_config(tmp_path).read_text())
    ConfigParser(config | {"trainer": config["trainer"] | {"monitor": "max val_MacroF1_mask"}})
    with pytest.raises(ConfigError, match="is not a logged value"):
        ConfigParser(config | {"trainer": config["trainer"] | {"monitor": "max val_accuracy_height"}})


def test_dry_run_and_tensorboard_scatter_for_regression(tmp_path, capsys):
    config = regression_config(tmp_path, **{"trainer.tensorboard": True, "trainer.epochs": 1})
    train.main(["-c", str(config), "--dry-run"])
    assert "dry run" in capsys.readouterr().out and not (tmp_path / "saved").exists()
    train.main(["-c", str(config)])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dirs(tmp_path, "Task")[0] / "tensorboard"))
    events.Reload()
    images = events.Tags()["images"]
    assert "val/predicted_vs_true_best" in images and not any("confusion" in tag for tag in images)


@pytest.mark.slow
def test_multilabel_metrics_are_exact_under_ddp(tmp_path):
    """Two gloo processes validate half the samples each; the logged values equal scikit-learn's on all."""
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score

    from tests.test_distributed import torchrun

    config = multilabel_config(tmp_path, **{"trainer.epochs": 1, "data_loader.args.validation_split": 75})
    torchrun("train.py", "-c", str(config), check=True, timeout=300)
    run = run_dirs(tmp_path, "Task")[0]
    inference.main(["--resume", str(run / "last.pth"), "--split", "valid"])
    table = pd.read_csv(run / "predictions_valid.csv")
    names = ["cat", "dog", "fox", "none", "owl"]
    truth = np.array([[n in str(t).split() for n in names] for t in table["target"]]).astype(int)
    probs = table[[f"prob_{n}" for n in names]].to_numpy()
    logged = pd.read_csv(run / "metrics.csv").iloc[-1]
    assert logged["val_MultilabelF1"] == pytest.approx(f1_score(truth, (probs >= 0.5).astype(int), average="macro",
                                                                zero_division=0), abs=1e-6)
    assert logged["val_subset_accuracy"] == pytest.approx(accuracy_score(truth, (probs >= 0.5).astype(int)), abs=1e-6)
    present = truth.sum(axis=0) > 0
    assert logged["val_mean_average_precision"] == pytest.approx(
        average_precision_score(truth[:, present], probs[:, present], average="macro"), abs=1e-5)


def test_the_readme_task_class_example_trains_and_predicts(tmp_path, monkeypatch):
    import re

    import model.task
    from tests.conftest import REPO

    section = (REPO / "docs" / "tasks.md").read_text().split("## Add a task")[1]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    namespace = vars(model.task).copy()
    exec(compile(code, "docs/tasks.md", "exec"), namespace)
    namespace["Ordinal"].__module__ = "model.task"
    monkeypatch.setattr(model.task, "Ordinal", namespace["Ordinal"], raising=False)
    table = regression_table(tmp_path / "train.csv")
    table["grade"] = np.digitize(table["y0"], np.quantile(table["y0"], [0.2, 0.4, 0.6, 0.8]))
    config = regression_config(tmp_path, **{"task": {"type": "Ordinal", "args": {"num_classes": 5}},
                                            "dataset.args.label_column": "grade", "trainer.epochs": 1})
    table.drop(columns="y0").to_csv(tmp_path / "train.csv", index=False)  # the regression table, graded
    train.main(["-c", str(config)])
    run = run_dirs(tmp_path, "Task")[0]
    inference.main(["--resume", str(run / "last.pth"), "--split", "valid"])
    predictions = pd.read_csv(run / "predictions_valid.csv")
    assert list(predictions.columns) == ["id", "prediction", "target", "value"]
    assert predictions["prediction"].between(0, 4).all()


@pytest.mark.parametrize("make", [multilabel_config, multihead_config])
def test_a_run_stopped_mid_epoch_resumes_bitwise(tmp_path, monkeypatch, make):
    """Stopped in the middle of epoch 2 (as by SIGTERM) and resumed, with AMP and accumulation: the same
    weights and the same metrics as a run that was never stopped."""
    import signal

    from trainer.trainer import Trainer
    from utils.errors import TrainingInterrupted

    changes = {"trainer.epochs": 3, "trainer.amp": "bf16", "trainer.grad_accum_steps": 2, "trainer.log_step": 1}
    train.main(["-c", str(make(tmp_path, **changes)), "--run-id", "whole"])
    original_step = Trainer._train_step

    def stop_in_epoch_two(self, data, target):
        if self.global_step == 5:  # 240 training samples, batches of 32: 4 optimizer steps an epoch
            self.stop_signal = signal.SIGTERM
        return original_step(self, data, target)

    monkeypatch.setattr(Trainer, "_train_step", stop_in_epoch_two)
    with pytest.raises(TrainingInterrupted):
        train.main(["-c", str(make(tmp_path, **changes)), "--run-id", "split"])
    monkeypatch.setattr(Trainer, "_train_step", original_step)
    runs = tmp_path / "saved" / "Task"
    assert torch.load(runs / "split" / "last.pth", weights_only=True)["batches_done"] > 0
    train.main(["-r", str(runs / "split")])
    whole = torch.load(runs / "whole" / "last.pth", weights_only=True)
    split = torch.load(runs / "split" / "last.pth", weights_only=True)
    for key, value in whole["state_dict"].items():
        assert torch.equal(value, split["state_dict"][key]), key
    timing = ("epoch_time", "data_wait")
    timeless = [{k: v for k, v in run["metrics"].items() if k not in timing} for run in (whole, split)]
    assert timeless[0] == timeless[1]
    pd.testing.assert_frame_equal(pd.read_csv(runs / "whole" / "metrics.csv").drop(columns=["epoch_time", "data_wait"]),
                                  pd.read_csv(runs / "split" / "metrics.csv").drop(columns=["epoch_time", "data_wait"]))
