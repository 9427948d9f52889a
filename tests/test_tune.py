"""tune.py: a study over the config's "tune" section, each trial a run directory; workers, retries, errors."""
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import tune
from tests.conftest import IRIS_CONFIG, REPO, make_config, run_dirs, run_in_process, run_script
from tests.pg_server import postgres_url  # noqa: F401 (a fixture)
from utils.cli import run_cli

pytestmark = pytest.mark.slow

LR_SPACE = {"optimizer.args.lr": {"type": "categorical", "choices": [0.2, 0.05, 1000.0]}}
WIDE_SPACE = {"optimizer.args.lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
              "arch.args.hidden": {"type": "categorical", "choices": [[16], [8, 8]]}}


def tune_config(tmp_path: Path, space: dict, sampler: dict | None = None, pruner: dict | None = None,
                **changes) -> Path:
    config = copy.deepcopy(IRIS_CONFIG)
    # Plots cost seconds after every trial: only the test that checks them draws them.
    config["tune"] = {"space": space, "sampler": sampler, "pruner": pruner, "plots": False}
    return make_config(tmp_path, config, **changes)


def summary(sweep: Path) -> pd.DataFrame:
    return pd.read_csv(sweep / "tune_summary.csv")


def best_val_loss(run: Path) -> float:
    return float(pd.read_csv(run / "metrics.csv")["val_loss"].min())


def start_worker(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    return subprocess.Popen([sys.executable, "tune.py", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(worker: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, err = worker.communicate(timeout=timeout)
    return worker.returncode, out + err


def wait_for(condition, worker: subprocess.Popen) -> None:
    """Poll until ``condition()`` holds (fails if the worker ends first)."""
    while not condition():
        if worker.poll() is not None:
            raise AssertionError(f"the worker ended first:\n{worker.communicate()[1]}")
        time.sleep(0.05)


def epochs_of(run: Path) -> list[int]:
    return pd.read_csv(run / "metrics.csv")["epoch"].tolist() if (run / "metrics.csv").is_file() else []


@pytest.mark.parametrize("space, sampler, expected", [
    ({"optimizer.args.lrr": {"type": "float", "low": 0.1, "high": 1}}, None,
     "error: tune.space: optimizer.args.lrr: no such key in the config (did you mean 'lr'?)"),
    ({"optimizer.args.lr": {"type": "float", "low": 0.5, "high": 0.1}}, None,
     "error: tune.space: optimizer.args.lr: low 0.5 is greater than high 0.1"),
    ({"optimizer.type": {"type": "categorical", "choices": ["SGD", "Adamm"]}}, None,
     "error: tune.space: optimizer.type: unknown type 'Adamm' in torch.optim (did you mean 'Adam'?)"),
    (LR_SPACE, {"type": "TPESampla"},
     "error: tune.sampler.type: unknown type 'TPESampla' in optuna.samplers (did you mean 'TPESampler'?)"),
])
def test_a_broken_tune_section_is_one_error_line_before_any_trial(tmp_path, capsys, space, sampler, expected):
    config = tune_config(tmp_path, space, sampler)
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: tune.main(["-c", str(config), "--trials", "2"]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not (tmp_path / "saved").exists()  # nothing was created, no trial ran


def test_two_workers_on_one_journal_file_run_distinct_trials(tmp_path):
    config = tune_config(tmp_path, WIDE_SPACE, {"type": "RandomSampler"}, {"type": "NopPruner"},
                         **{"tune.plots": True})
    journal = tmp_path / "study.journal"
    args = ("-c", str(config), "--trials", "4", "--run-id", "sweep", "--storage", str(journal))
    workers = [start_worker(*args), start_worker(*args)]
    for worker in workers:
        code, output = finish(worker)
        assert code == 0, output
    sweep = tmp_path / "saved" / "TinyIris" / "sweep"
    table = summary(sweep)
    assert sorted(table["number"]) == [0, 1, 2, 3]
    assert set(table["state"]) == {"COMPLETE"}
    assert sorted(table["run_dir"]) == [str(sweep / f"trial_{n}") for n in range(4)]
    for n in range(4):  # each trial trained once, in its own run directory
        assert epochs_of(sweep / f"trial_{n}") == [1, 2, 3]
    assert list(table["value"]) == sorted(table["value"])  # best first (min val_loss)
    assert journal.is_file() and not (sweep / "study.db").exists()
    assert {p.name for p in (sweep / "plots").iterdir()} == {
        "optimization_history.png", "param_importances.png", "parallel_coordinate.png"}
    assert len(list((sweep / "tensorboard").glob("trial_*/events.out.tfevents.*"))) == 4


def test_a_diverging_trial_is_pruned_and_best_config_reproduces_the_best_value(tmp_path):
    # BruteForceSampler draws each choice once; the threshold prunes the diverging learning rate.
    config = tune_config(tmp_path, LR_SPACE, {"type": "BruteForceSampler", "args": {"seed": 0}},
                         {"type": "ThresholdPruner", "args": {"upper": 5.0}})
    run_in_process("tune.py", "-c", str(config), "--trials", "2", "--run-id", "sweep", check=True)
    sweep = tmp_path / "saved" / "TinyIris" / "sweep"
    assert len(summary(sweep)) == 2
    run_in_process("tune.py", "-r", str(sweep), "--trials", "3", check=True)  # continues to 3 in total

    table = summary(sweep).set_index("optimizer.args.lr")
    assert sorted(table["number"]) == [0, 1, 2]
    diverged = table.loc[1000.0]
    assert diverged["state"] == "PRUNED" and diverged["best_epoch"] == 1
    assert "pruned after epoch 1" in diverged["note"]
    assert "pruned after epoch 1" in (Path(diverged["run_dir"]) / "info.log").read_text()
    assert epochs_of(Path(diverged["run_dir"])) == [1]
    assert list(table["state"]) == ["COMPLETE", "COMPLETE", "PRUNED"]
    for lr in (0.2, 0.05):
        assert table.loc[lr, "value"] == best_val_loss(Path(table.loc[lr, "run_dir"]))

    best = summary(sweep).iloc[0]
    best_config = json.loads((sweep / "best_config.json").read_text())
    assert best_config["optimizer"]["args"]["lr"] == best["optimizer.args.lr"]
    assert best_config["seed"] == IRIS_CONFIG["seed"]
    run_in_process("train.py", "-c", str(sweep / "best_config.json"), check=True)
    (rerun,) = [run for run in run_dirs(tmp_path, "TinyIris") if run.name != "sweep"]
    assert best_val_loss(rerun) == best["value"]  # exactly: the CSV keeps every digit
    weights = [torch.load(run / "model_best.pth", weights_only=True)["state_dict"]
               for run in (rerun, Path(best["run_dir"]))]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_an_interrupted_or_killed_trial_is_retried_from_its_checkpoint(tmp_path):
    config = tune_config(tmp_path, {"optimizer.args.lr": {"type": "categorical", "choices": [0.05, 0.1]}},
                         {"type": "BruteForceSampler", "args": {"seed": 0}}, {"type": "NopPruner"},
                         **{"trainer.epochs": 30, "data_loader.args.batch_size": 4})
    sweep = tmp_path / "saved" / "TinyIris" / "sweep"
    trial_0 = sweep / "trial_0"

    # Ctrl-C: the trial saves a checkpoint, the worker exits 130 and tells how to continue.
    worker = start_worker("-c", str(config), "--trials", "2", "--run-id", "sweep")
    wait_for(lambda: (trial_0 / "last.pth").is_file(), worker)
    worker.send_signal(signal.SIGINT)
    code, output = finish(worker)
    assert code == 130 and f"python tune.py -r {sweep}" in output, output
    stopped_at = len(epochs_of(trial_0))

    # SIGKILL in the middle of the retried trial: nothing is saved, the storage still says "running".
    worker = start_worker("-r", str(sweep))
    wait_for(lambda: len(epochs_of(trial_0)) > stopped_at + 1, worker)
    worker.kill()
    worker.wait()
    killed_at = len(epochs_of(trial_0))

    code, output = finish(start_worker("-r", str(sweep)))
    assert code == 0, output
    table = summary(sweep).sort_values("number")
    assert list(table["state"]) == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    assert list(table["note"].fillna("")) == ["retried as trial 2", "retry of trial 0", "retry of trial 0", ""]
    assert list(table["run_dir"]) == [str(trial_0)] * 3 + [str(sweep / "trial_3")]
    assert killed_at < 30 and epochs_of(trial_0) == list(range(1, 31))  # each epoch once, none redone
    assert (sweep / "info.log").read_text().count(f"resuming from {trial_0}") == 2
    # The twice-stopped trial ends exactly as one that ran straight through.
    run_in_process("train.py", "-c", str(trial_0 / "config.json"), check=True)
    (straight,) = [run for run in run_dirs(tmp_path, "TinyIris") if run.name != "sweep"]
    assert pd.read_csv(straight / "metrics.csv").drop(columns=["epoch_time", "data_wait"]).equals(
        pd.read_csv(trial_0 / "metrics.csv").drop(columns=["epoch_time", "data_wait"]))


def test_two_workers_share_a_study_in_postgresql(tmp_path, postgres_url):  # noqa: F811
    config = tune_config(tmp_path, WIDE_SPACE, {"type": "RandomSampler"}, {"type": "NopPruner"})
    # Two "machines": each its own sweep directory, one study in the database.
    workers = [start_worker("-c", str(config), "--trials", "4", "--run-id", f"machine_{i}", "--storage",
                            postgres_url, "--study-name", "shared") for i in range(2)]
    for worker in workers:
        code, output = finish(worker)
        assert code == 0, output
    import optuna

    study = optuna.load_study(study_name="shared", storage=postgres_url.replace("postgresql:", "postgresql+psycopg:"))
    trials = [t for t in study.get_trials() if not t.user_attrs.get("surplus")]
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert {t.state.name for t in trials} == {"COMPLETE"}
    run_dirs_used = [Path(t.user_attrs["run_dir"]) for t in trials]
    assert len(set(run_dirs_used)) == 4
    for run in run_dirs_used:  # no trial ran twice
        assert epochs_of(run) == [1, 2, 3]
    assert {run.parent.name for run in run_dirs_used} == {"machine_0", "machine_1"}  # both worked
    tables = [summary(tmp_path / "saved" / "TinyIris" / f"machine_{i}") for i in range(2)]
    assert max((table["state"] == "COMPLETE").sum() for table in tables) == 4  # the last to finish saw all


def test_tune_under_torchrun_with_kfold(tmp_path):
    config = tune_config(tmp_path, WIDE_SPACE, {"type": "RandomSampler", "args": {"seed": 0}}, {"type": "NopPruner"},
                         **{"data_loader.args.batch_size": 8, "trainer.epochs": 2})
    run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "tests/launch.py", "tune.py",
               "-c", str(config), "--trials", "2", "--kfold", "--folds", "2", "--run-id", "sweep", check=True,
               timeout=400)
    sweep = tmp_path / "saved" / "TinyIris" / "sweep"
    table = summary(sweep)
    assert sorted(table["number"]) == [0, 1] and set(table["state"]) == {"COMPLETE"}
    for _, row in table.iterrows():  # the objective is the k-fold mean of the folds' best values
        folds = pd.read_csv(Path(row["run_dir"]) / "kfold_summary.csv").set_index("fold")
        assert row["value"] == pytest.approx(folds.loc["mean", "best_val_loss"], rel=1e-12)
        assert {p.name for p in Path(row["run_dir"]).glob("fold_*")} == {"fold_0", "fold_1"}
