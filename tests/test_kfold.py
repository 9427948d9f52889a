"""k-fold cross-validation (README "k-fold cross-validation"): the folds, what a
k-fold run writes, folds that do not influence each other, and resuming an interrupted k-fold run."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from dataset.datasets import DigitsDataset
from kfold_train import make_folds
from tests.conftest import REPO, assert_identical, assert_same_tensors, make_config, run_dirs, run_in_process
from utils.errors import ConfigError

FOLDS = 3
EPOCHS = 4
# One thread per process: on a shared 2-core machine, torch's default thread pool spins against the
# other processes and a 0.1 s epoch takes 10 s (the pytest processes have one thread too, see conftest.py).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
METRIC_COLUMNS = ["val_loss", "val_accuracy", "val_top_k_acc"]


@pytest.fixture(scope="module")
def digits_targets() -> np.ndarray:
    return np.asarray(DigitsDataset(train=True).targets)


@pytest.fixture(scope="module")
def kfold_run(tmp_path_factory):
    """One uninterrupted `kfold_train.py --folds 3` run of the tiny config, shared by the module:
    (run directory, result, config file). 4 epochs per fold leave time to interrupt a fold; with this
    learning rate, fold 1's best epoch is not its last."""
    tmp_path = tmp_path_factory.mktemp("kfold")
    config = make_config(tmp_path, **{"trainer.epochs": EPOCHS, "optimizer.args.lr": 0.03})
    result = run_in_process("kfold_train.py", "-c", str(config), "--folds", str(FOLDS), check=True)
    (run,) = run_dirs(tmp_path)
    return run, result, config


def kfold_summary(run) -> pd.DataFrame:
    return pd.read_csv(run / "kfold_summary.csv", dtype={"fold": str})


def without_epoch_time(metrics_csv) -> pd.DataFrame:
    """metrics.csv as text (exact), without the timing columns (the only ones that may differ)."""
    return pd.read_csv(metrics_csv, dtype=str).drop(columns=["epoch_time", "data_wait"])


def as_text(csv_file) -> pd.DataFrame:
    return pd.read_csv(csv_file, dtype=str)


def assert_same_folds(expected_run, run, folds) -> None:
    """Each fold's weights, training state and metrics.csv equal bit for bit; the k-fold results too."""
    for k in folds:
        for name in ("last.pth", "model_best.pth"):
            expected = torch.load(expected_run / f"fold_{k}" / name, weights_only=True)
            actual = torch.load(run / f"fold_{k}" / name, weights_only=True)
            assert_same_tensors(expected["state_dict"], actual["state_dict"])
            for key in ("epoch", "global_step", "optimizer", "monitor_best", "not_improved_count", "best_epoch"):
                assert_identical(expected[key], actual[key], f"fold_{k}/{name}[{key!r}]")
        pd.testing.assert_frame_equal(without_epoch_time(run / f"fold_{k}" / "metrics.csv"),
                                      without_epoch_time(expected_run / f"fold_{k}" / "metrics.csv"))
    for name in ("kfold_summary.csv", "oof_predictions.csv"):
        pd.testing.assert_frame_equal(as_text(run / name), as_text(expected_run / name))
    assert json.loads((run / "oof_metrics.json").read_text()) == json.loads(
        (expected_run / "oof_metrics.json").read_text())


# -- the folds -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stratified", [True, False])
@pytest.mark.parametrize("n_splits", [3, 5])
def test_folds_partition_the_training_samples(digits_targets, stratified, n_splits):
    n_samples = len(digits_targets)
    folds = make_folds(digits_targets, n_samples, n_splits, stratified, shuffle=True, seed=1)
    assert len(folds) == n_splits
    held_out = np.concatenate([fold_held_out for _, fold_held_out in folds])
    # Every training sample is held out exactly once, and only training samples are used (the test
    # part of DigitsDataset is never touched: the indices are those of the training dataset).
    assert sorted(held_out.tolist()) == list(range(n_samples))
    for train_part, fold_held_out in folds:
        assert len(np.intersect1d(train_part, fold_held_out)) == 0
        assert sorted(np.concatenate([train_part, fold_held_out]).tolist()) == list(range(n_samples))
        assert abs(len(fold_held_out) - n_samples / n_splits) <= 1


@pytest.mark.parametrize("n_splits", [3, 5])
def test_stratified_folds_keep_the_class_proportions(digits_targets, n_splits):
    n_samples = len(digits_targets)
    folds = make_folds(digits_targets, n_samples, n_splits, stratified=True, shuffle=True, seed=1)
    class_counts = np.bincount(digits_targets)
    for _, held_out in folds:
        expected = class_counts * len(held_out) / n_samples
        counts = np.bincount(digits_targets[held_out], minlength=len(class_counts))
        assert np.all(np.abs(counts - expected) <= 1), (counts, expected)


def test_unstratified_folds_are_scikit_learns_kfold(digits_targets):
    from sklearn.model_selection import KFold

    n_samples = len(digits_targets)
    folds = make_folds(digits_targets, n_samples, 4, stratified=False, shuffle=True, seed=7)
    expected = list(KFold(n_splits=4, shuffle=True, random_state=7).split(np.zeros(n_samples)))
    for (train_part, held_out), (expected_train, expected_held_out) in zip(folds, expected):
        np.testing.assert_array_equal(train_part, expected_train)
        np.testing.assert_array_equal(held_out, expected_held_out)
    # KFold ignores the labels: the folds are the same without any.
    for (_, held_out), (_, no_label_held_out) in zip(folds, make_folds(None, n_samples, 4, False, True, 7)):
        np.testing.assert_array_equal(held_out, no_label_held_out)
    # Stratification changes them: these are not StratifiedKFold's folds.
    stratified = make_folds(digits_targets, n_samples, 4, stratified=True, shuffle=True, seed=7)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, stratified))


def test_unshuffled_unstratified_folds_are_contiguous_blocks():
    folds = make_folds(None, 10, 3, stratified=False, shuffle=False, seed=123)
    assert [held_out.tolist() for _, held_out in folds] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_folds_depend_on_the_seed(digits_targets):
    n_samples = len(digits_targets)

    def held_out_parts(seed):
        return [held_out.tolist() for _, held_out in make_folds(digits_targets, n_samples, 3, True, True, seed)]

    assert held_out_parts(1) == held_out_parts(1)
    assert held_out_parts(1) != held_out_parts(2)


def test_stratified_folds_need_targets():
    with pytest.raises(ConfigError, match="kfold.stratified"):
        make_folds(None, 100, 3, stratified=True, shuffle=True, seed=0)


# -- an end-to-end k-fold run --------------------------------------------------------------------------


def test_kfold_run_writes_a_run_directory_per_fold(kfold_run):
    run, *_ = kfold_run
    for name in ("config.json", "info.log", "kfold_summary.csv", "oof_predictions.csv", "oof_metrics.json"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in run.glob("fold_*")) == [f"fold_{k}" for k in range(FOLDS)]
    for k in range(FOLDS):
        fold_dir = run / f"fold_{k}"
        for name in ("config.json", "metrics.csv", "last.pth", "model_best.pth"):
            assert (fold_dir / name).is_file(), (k, name)
        assert list(pd.read_csv(fold_dir / "metrics.csv")["epoch"]) == list(range(1, EPOCHS + 1))


def test_each_fold_has_its_own_seed(kfold_run):
    run, *_ = kfold_run
    run_seed = json.loads((run / "config.json").read_text())["seed"]
    assert run_seed == 1
    for k in range(FOLDS):
        fold_config = json.loads((run / f"fold_{k}" / "config.json").read_text())
        assert fold_config["seed"] == run_seed + k
        assert fold_config["kfold"]["n_splits"] == FOLDS


def test_kfold_summary_has_a_row_per_fold_then_mean_and_std(kfold_run):
    run, *_ = kfold_run
    summary = kfold_summary(run)
    assert list(summary["fold"]) == ["0", "1", "2", "mean", "std"]
    for column in ["best_epoch", "best_val_accuracy", *METRIC_COLUMNS]:
        assert column in summary.columns, column
    folds = summary.iloc[:FOLDS].drop(columns="fold").astype(float)
    values = summary.set_index("fold").astype(float)
    pd.testing.assert_series_equal(values.loc["mean"], folds.mean(), check_names=False, rtol=1e-12)
    pd.testing.assert_series_equal(values.loc["std"], folds.std(ddof=1), check_names=False, rtol=1e-12)


def test_kfold_summary_reports_each_folds_best_epoch(kfold_run):
    run, *_ = kfold_run
    summary = kfold_summary(run).iloc[:FOLDS]
    for k, row in summary.iterrows():
        metrics = pd.read_csv(run / f"fold_{k}" / "metrics.csv")
        best = metrics.loc[metrics["val_accuracy"].idxmax()]  # monitor "max val_accuracy": the first best epoch
        assert int(row["best_epoch"]) == int(best["epoch"])
        assert row["best_val_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-12)
        for column in METRIC_COLUMNS:
            assert row[column] == pytest.approx(best[column], abs=1e-12), (k, column)


def test_oof_predictions_cover_every_training_sample_once(kfold_run, digits_targets):
    run, *_ = kfold_run
    oof = pd.read_csv(run / "oof_predictions.csv")
    probs = [f"prob_{c}" for c in range(10)]
    assert list(oof.columns) == ["id", "fold", "prediction", "prediction_name", "target", *probs]
    assert sorted(oof["id"]) == list(range(len(digits_targets)))
    assert len(oof) == len(digits_targets)
    # The ids are indices into the training part, and the targets are that part's labels.
    np.testing.assert_array_equal(oof.sort_values("id")["target"].to_numpy(), digits_targets)
    np.testing.assert_allclose(oof[probs].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(oof["prediction"], oof[probs].to_numpy().argmax(axis=1))
    assert list(oof["prediction_name"].astype(str)) == list(oof["prediction"].astype(str))


def test_oof_predictions_come_from_the_best_model_of_the_fold_that_held_them_out(kfold_run, digits_targets):
    run, *_ = kfold_run
    oof = pd.read_csv(run / "oof_predictions.csv").set_index("id").sort_index()
    summary = kfold_summary(run).iloc[:FOLDS]
    assert (summary["best_epoch"] < EPOCHS).any(), "no fold to tell the best model from the last one"
    folds = make_folds(digits_targets, len(digits_targets), FOLDS, stratified=True, shuffle=True, seed=1)
    for k, (_, held_out) in enumerate(folds):
        part = oof.loc[held_out]
        accuracy = float((part["prediction"] == part["target"]).mean())
        assert accuracy == pytest.approx(summary.loc[k, "val_accuracy"], abs=1e-9), k
    oof_metrics = json.loads((run / "oof_metrics.json").read_text())
    assert set(oof_metrics) == {"oof_loss", "oof_accuracy", "oof_top_k_acc"}
    assert oof_metrics["oof_accuracy"] == pytest.approx(float((oof["prediction"] == oof["target"]).mean()))
    probs = oof[[f"prob_{c}" for c in range(10)]].to_numpy()
    cross_entropy = -np.log(probs[np.arange(len(oof)), oof["target"].to_numpy()]).mean()
    assert oof_metrics["oof_loss"] == pytest.approx(cross_entropy, abs=1e-5)
    sizes = np.array([len(held_out) for _, held_out in folds])
    weighted_val_loss = float((summary["val_loss"].to_numpy() * sizes).sum() / sizes.sum())
    assert oof_metrics["oof_loss"] == pytest.approx(weighted_val_loss, abs=1e-4)


def test_summary_table_is_printed_and_logged(kfold_run):
    run, result, _ = kfold_run
    log = (run / "info.log").read_text()
    for text in (result.stdout, log):
        assert "k-fold summary" in text
        lines = text.splitlines()
        header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["fold", "best_epoch"])
        assert [line.split()[0] for line in lines[header + 1: header + 6]] == ["0", "1", "2", "mean", "std"]
        assert "out-of-fold" in text


def test_a_fold_does_not_depend_on_the_folds_before_it(kfold_run, tmp_path):
    """Folds 1 and 2 trained by a run where fold 0 did not run (it is skipped as finished) give the
    same metrics as in the uninterrupted run, where fold 0 ran first in the same call."""
    run, *_ = kfold_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    for name in ("fold_1", "fold_2", "kfold_summary.csv", "oof_predictions.csv", "oof_metrics.json"):
        path = copy / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    result = run_in_process("kfold_train.py", "-r", str(copy), check=True)
    assert "fold_0 (1 of 3) is finished: skipping it" in result.stdout
    assert_same_folds(run, copy, folds=(1, 2))


# -- an interrupted k-fold run ------------------------------------------------------------------------


def test_sigterm_during_a_fold_then_resume_equals_an_uninterrupted_run(kfold_run):
    baseline, _, config = kfold_run
    # The same config, beside the uninterrupted run: after fold 1's first checkpoint, 3 epochs are left
    # to be interrupted in.
    run = baseline.parent / "stopped"
    env = {**os.environ, "PYTHONHASHSEED": "0", "WANDB_MODE": "offline", **ONE_THREAD}
    process = subprocess.Popen([sys.executable, "kfold_train.py", "-c", str(config), "--folds", str(FOLDS),
                                "--run-id", "stopped"], cwd=REPO, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (run / "fold_1" / "last.pth").is_file():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "fold 1 never saved a checkpoint"
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 143, (stdout, stderr)
    assert f"resume with: python kfold_train.py -r {run}" in stderr
    assert "Traceback" not in stderr
    assert not (run / "fold_1" / "fold_result.json").exists()
    assert not (run / "fold_2").exists()
    assert not (run / "kfold_summary.csv").exists()

    result = run_in_process("kfold_train.py", "-r", str(run), check=True)
    assert "fold_0 (1 of 3) is finished: skipping it" in result.stdout
    assert "fold_0 (1 of 3) is finished: skipping it" in (run / "info.log").read_text()
    assert "fold_1 (2 of 3) is finished" not in result.stdout
    assert "fold_1 (2 of 3)" in result.stdout and "(resumed)" in result.stdout

    assert_same_folds(baseline, run, folds=range(FOLDS))


# -- the command line ---------------------------------------------------------------------------------


def test_dry_run_applies_options_and_overrides_and_writes_nothing(tmp_path, digits_targets):
    config = make_config(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    result = run_in_process("kfold_train.py", "-c", str(config), "--folds", "4", "--bs", "32", "--dry-run",
                            "trainer.epochs=1")
    assert result.returncode == 0, result.stderr
    assert sorted(tmp_path.rglob("*")) == before
    assert not (tmp_path / "saved").exists()
    printed, _ = json.JSONDecoder().raw_decode(result.stdout[result.stdout.index("{"):])
    assert printed["trainer"]["epochs"] == 1
    assert printed["kfold"]["n_splits"] == 4
    assert printed["data_loader"]["args"]["batch_size"] == 32
    # The dry run builds fold 0 of the 4 folds, with batches of 32.
    train_part, held_out = make_folds(digits_targets, len(digits_targets), 4, True, True, seed=1)[0]
    assert (f"train batches per epoch: {math.ceil(len(train_part) / 32)}, "
            f"validation batches: {math.ceil(len(held_out) / 32)}") in result.stdout
    assert "nothing was written" in result.stdout


@pytest.mark.parametrize("args", [["--folds", "1"], ["kfold.n_splits=1"]], ids=["--folds", "override"])
def test_a_single_fold_is_a_config_error(tmp_path, args):
    config = make_config(tmp_path)
    result = run_in_process("kfold_train.py", "-c", str(config), *args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: kfold.n_splits: "), lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "saved").exists()
