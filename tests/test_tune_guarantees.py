"""The guarantees of the search, checked against independent computations: tune_summary.csv's order and
best_config.json on an in-memory Optuna study whose best trial is not the last, the values the pruner
receives, and ``tune.py --kfold`` (kfold_train.py's folds: whole groups, the task's stratification
labels; out-of-fold predictions made with the EMA weights each fold selected)."""
import copy
import json
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from PIL import Image

from dataset.image_dataset import ImageDataset
from model.model import MLP
from tests.conftest import make_config, run_in_process
from utils.tune.report import write_summary
from utils.tune.study import Reporter

VALUES = [0.3, 0.9, 0.5, 0.7]  # the best trial is neither the first nor the last, for either direction


def finished_study(direction: str) -> optuna.Study:
    study = optuna.create_study(direction=direction)
    distributions = {"lr": optuna.distributions.FloatDistribution(0.001, 1.0)}
    for number, value in enumerate(VALUES):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.01 * (number + 1)}, distributions=distributions, value=value,
            user_attrs={"config": {"trial": number}, "run_dir": f"trial_{number}"}))
    study.add_trial(optuna.trial.create_trial(  # a pruned trial with a better value still comes after them
        params={"lr": 0.5}, distributions=distributions, state=optuna.trial.TrialState.PRUNED,
        user_attrs={"config": {"trial": 4}, "best_value": 0.0 if direction == "minimize" else 1.0}))
    return study


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_summary_is_best_first_and_best_config_is_the_best_trials(tmp_path, direction):
    write_summary(finished_study(direction), tmp_path)
    by_value = sorted(range(len(VALUES)), key=lambda n: VALUES[n], reverse=direction == "maximize")
    table = pd.read_csv(tmp_path / "tune_summary.csv")
    assert table["number"].tolist() == [*by_value, 4]
    assert table["value"].tolist()[:4] == [VALUES[n] for n in by_value]
    assert json.loads((tmp_path / "best_config.json").read_text()) == {"trial": by_value[0]}


def test_the_pruner_receives_every_epochs_value():
    study = optuna.create_study(direction="minimize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    trainer = type("Trainer", (), {"monitor_best": 0.2, "best_epoch": 1})()  # the best so far is not reported
    callback = Reporter(trial, "val_loss").epoch_callback(trainer)
    losses = {1: 0.2, 2: 0.6, 3: 0.4}
    for epoch, loss in losses.items():
        callback(epoch, {"val_loss": loss, "loss": 9.0})
    study.tell(trial, 0.2)
    assert study.trials[0].intermediate_values == losses


# -- tune.py --kfold: a regression on grouped images, with EMA -------------------------------------------------
PEOPLE, PHOTOS = 12, 4
GROUPED_VALUES = {
    "name": "GroupedValues",
    "n_gpu": 0,
    "seed": 2,
    "task": "Regression",
    "arch": {"type": "MLP", "args": {"in_features": 192, "num_classes": 1, "hidden": [8]}},
    "dataset": {"type": "ImageDataset", "args": {"root": "", "csv_file": "train.csv", "label_column": "value",
                                                 "group_column": "person"}},
    "data_loader": {"type": "ImageDataLoader", "args": {"batch_size": 8, "validation_split": 0.25,
                                                         "num_workers": 0}},
    "optimizer": {"type": "SGD", "args": {"lr": 0.05}},
    "loss": "mse_loss",
    "metrics": ["mae"],
    "trainer": {"epochs": 2, "save_dir": "saved/", "monitor": "min val_loss", "tensorboard": False,
                "progress_bar": False, "ema": {"decay": 0.5}},
    "tune": {"space": {"optimizer.args.lr": {"type": "categorical", "choices": [0.05]}},
             "sampler": {"type": "RandomSampler", "args": {"seed": 0}}, "pruner": {"type": "NopPruner"},
             "plots": False},
}


def grouped_values(root):
    """Each person's photos share a value near the person's own: groups matter."""
    rng = np.random.default_rng(0)
    rows = []
    for person in range(PEOPLE):
        for photo in range(PHOTOS):
            path = f"{person:03d}/{photo}.png"
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / path)
            rows.append({"path": path, "value": person / PEOPLE + 0.01 * photo + 0.5, "person": f"p{person}"})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root


@pytest.fixture(scope="module")
def kfold_trial(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tune_kfold")
    root = grouped_values(tmp_path / "images")
    config = make_config(tmp_path, copy.deepcopy(GROUPED_VALUES), **{"dataset.args.root": str(root)})
    run_in_process("tune.py", "-c", str(config), "--trials", "1", "--kfold", "--folds", "2", "--run-id", "sweep",
                   check=True)
    sweep = tmp_path / "saved" / "GroupedValues" / "sweep"
    return sweep, root


def test_tune_kfold_of_a_regression_keeps_every_group_in_one_fold(kfold_trial):
    sweep, _ = kfold_trial
    trial = sweep / "trial_0"
    oof = pd.read_csv(trial / "oof_predictions.csv")
    assert len(oof) == PEOPLE * PHOTOS and oof["id"].is_unique
    person = oof["id"].map(lambda path: Path(path).parent.name)  # the folder of a person's photos
    assert person.groupby(oof["fold"]).nunique().sum() == PEOPLE, "a person's photos in two folds"
    assert sorted(oof["fold"].unique()) == [0, 1]
    # The study heard the running mean of the folds' best values after each fold.
    folds = pd.read_csv(trial / "kfold_summary.csv").set_index("fold")["best_val_loss"]
    best = [float(folds.loc[str(k)]) for k in range(2)]
    (study,) = optuna.get_all_study_summaries(f"sqlite:///{sweep / 'study.db'}")
    reported = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{sweep / 'study.db'}").trials[0]
    expected = {k: sum(best[:k + 1]) / (k + 1) for k in range(2)}
    assert reported.intermediate_values == pytest.approx(expected, rel=1e-9)


def test_tune_kfold_predicts_out_of_fold_with_the_ema_weights_it_selected(kfold_trial):
    sweep, root = kfold_trial
    dataset = ImageDataset(str(root), csv_file="train.csv", label_column="value", group_column="person").evaluation()
    oof = pd.read_csv(sweep / "trial_0" / "oof_predictions.csv").set_index("id")
    for fold in range(2):
        fold_rows = oof[oof["fold"] == fold]
        index = [dataset.sample_id(i) for i in range(len(dataset))]
        inputs = torch.stack([dataset[index.index(sample)][0] for sample in fold_rows.index])
        checkpoint = torch.load(sweep / "trial_0" / f"fold_{fold}" / "model_best.pth", weights_only=True)
        predictions = {}
        for weights in ("ema", "raw"):
            model = MLP(192, 1, [8]).eval()
            model.load_state_dict(checkpoint["ema"]["state_dict"] if weights == "ema" else checkpoint["state_dict"])
            with torch.no_grad():
                predictions[weights] = model(inputs)[:, 0].numpy()
        assert np.abs(predictions["ema"] - predictions["raw"]).max() > 1e-3, "the EMA differs from the weights"
        np.testing.assert_allclose(fold_rows["prediction"].to_numpy(), predictions["ema"], rtol=0, atol=1e-5)
