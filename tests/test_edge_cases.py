"""Edge cases of resuming, k-fold and inference that users hit: each is refused clearly or handled."""
import math
import signal

import pandas as pd
import pytest
import torch

from base.metric_tracker import MetricTracker
from tests.conftest import IRIS_CONFIG, launch, make_config, run_in_process


def one_error(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def iris_runs(tmp_path_factory):
    """A finished plain run and a finished 3-fold run of the iris MLP, in the same save_dir."""
    tmp_path = tmp_path_factory.mktemp("iris")
    config = make_config(tmp_path, IRIS_CONFIG, **{"trainer.epochs": 2})
    run_in_process("train.py", "-c", str(config), "--run-id", "plain", check=True)
    run_in_process("kfold_train.py", "-c", str(config), "--folds", "3", "--run-id", "kfold", check=True)
    return tmp_path, config, tmp_path / "saved" / "TinyIris"


def test_each_script_refuses_the_other_kind_of_run(iris_runs):
    _, _, runs = iris_runs
    assert "kfold_train.py -r" in one_error(run_in_process("train.py", "-r", str(runs / "kfold")))
    assert "train.py -r" in one_error(run_in_process("kfold_train.py", "-r", str(runs / "plain")))


def test_auto_picks_the_newest_run_of_the_scripts_kind(iris_runs):
    _, config, runs = iris_runs
    result = run_in_process("train.py", "-c", str(config), "-r", "auto", "trainer.epochs=3", check=True)
    assert list(pd.read_csv(runs / "plain" / "metrics.csv")["epoch"]) == [1, 2, 3]
    assert "plain" in result.stdout
    result = run_in_process("kfold_train.py", "-c", str(config), "-r", "auto", check=True)
    assert "fold_2 (3 of 3) is finished" in result.stdout


def test_auto_looks_in_the_overridden_save_dir(iris_runs, tmp_path):
    _, config, _ = iris_runs
    run_in_process("train.py", "-c", str(config), f"trainer.save_dir={tmp_path}", "--run-id", "other", check=True)
    run_in_process("train.py", "-c", str(config), f"trainer.save_dir={tmp_path}", "-r", "auto", "trainer.epochs=3",
               check=True)
    assert list(pd.read_csv(tmp_path / "TinyIris" / "other" / "metrics.csv")["epoch"]) == [1, 2, 3]


def test_kfold_resume_with_other_folds_is_refused(iris_runs):
    _, _, runs = iris_runs
    line = one_error(run_in_process("kfold_train.py", "-r", str(runs / "kfold"), "--folds", "4"))
    assert line.startswith("error: kfold: the folds differ")


def test_kfold_summary_keeps_integer_epochs(iris_runs):
    _, _, runs = iris_runs
    summary = pd.read_csv(runs / "kfold" / "kfold_summary.csv", dtype=str)
    assert summary["best_epoch"].iloc[:3].tolist() == [str(int(float(v))) for v in summary["best_epoch"].iloc[:3]]


def test_valid_split_needs_a_single_run(iris_runs):
    _, _, runs = iris_runs
    assert "oof_predictions.csv" in one_error(run_in_process("inference.py", "--resume", str(runs / "kfold"),
                                                         "--split", "valid"))


def test_resuming_a_finished_run_says_so(iris_runs):
    _, _, runs = iris_runs
    result = run_in_process("train.py", "-r", str(runs / "kfold" / "fold_0"), check=True)
    assert "already finished epoch 2 of 2" in result.stdout + result.stderr


def test_a_metric_added_on_resume_gets_its_column(tmp_path):
    config = make_config(tmp_path, IRIS_CONFIG, **{"trainer.epochs": 1})
    run_in_process("train.py", "-c", str(config), "--run-id", "r", check=True)
    run = tmp_path / "saved" / "TinyIris" / "r"
    run_in_process("train.py", "-r", str(run), "trainer.epochs=2", 'metrics=["accuracy","MacroF1"]', check=True)
    metrics = pd.read_csv(run / "metrics.csv")
    assert "MacroF1" in metrics.columns and "val_MacroF1" in metrics.columns
    assert metrics["MacroF1"].isna().tolist() == [True, False]


def test_mid_epoch_resume_with_another_batch_size_is_refused(tmp_path):
    # 96 iris training samples in batches of 4: SIGTERM in the 3rd batch of epoch 2 stops the run after it.
    config = make_config(tmp_path, IRIS_CONFIG, **{"trainer.epochs": 30, "data_loader.args.batch_size": 4})
    stopped = launch("train.py", "-c", str(config), "--run-id", "r",
                     faults={"LAUNCH_SIGNALS": f"{signal.SIGTERM.value}@{24 + 3}"})
    assert stopped.returncode == 143, stopped.stderr
    run = tmp_path / "saved" / "TinyIris" / "r"
    checkpoint = torch.load(run / "last.pth", weights_only=True)
    assert (checkpoint["epoch"], checkpoint["batches_done"]) == (1, 3)
    line = one_error(run_in_process("train.py", "-r", str(run), "--bs", "8"))
    assert line.startswith("error: data_loader.args.batch_size: ") and "batch size 4" in line


def test_training_and_validation_trackers_do_not_share_metric_objects():
    from model.metric import MacroF1

    metric = MacroF1()
    train, valid = MetricTracker({"f1": metric}), MetricTracker({"f1": metric})
    train.update(torch.tensor(1.0), torch.eye(3), torch.arange(3))
    assert math.isnan(valid.result()["f1"]), "the validation tracker saw no batch"
    assert train.result()["f1"] == 1.0
