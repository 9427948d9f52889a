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
    table = pd.read_csv(run / "predictions.csv")
    assert list(table.columns) == ["id", "prediction", "target"]
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    saved = torch.load(run / "model_best.pth", weights_only=True)["metrics"]
    assert saved["val_mae"] == pytest.approx(mean_absolute_error(table["target"], table["prediction"]), rel=1e-4)
    assert saved["val_rmse"] == pytest.approx(mean_squared_error(table["target"], table["prediction"]) ** 0.5,
                                              rel=1e-4)
    assert saved["val_r2"] == pytest.approx(r2_score(table["target"], table["prediction"]), rel=1e-4)
