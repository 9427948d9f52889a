"""Exact resume, the way a user resumes: `python train.py -r RUN_DIR [KEY=VALUE ...]` in a new process.

A run stopped after k epochs (or by a signal, or killed) and resumed ends bitwise equal to the run
that was never stopped, with every epoch in metrics.csv exactly once.

The runs that are only compared against (the uninterrupted runs, the first part of a split run) train
in this process, each made once when a test first needs it; the resumes after k epochs run in a new
process, as a user runs them, and so do the runs stopped by a signal or killed. The resumes after a
signal or a kill run in this process: what they resume from was written by another process.
"""
import csv
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from base.base_dataset import BaseDataset
from tests.conftest import (
    REPO,
    assert_identical,
    assert_same_tensors,
    launch,
    make_config,
    run_dirs,
    run_in_process,
    run_script,
)

ENV = {"OMP_NUM_THREADS": "1"}  # one thread per process
AUGMENT = [{"type": "RandomAffine", "args": {"degrees": 15, "translate": [0.1, 0.1]}}]
SMALL_BATCHES = {"data_loader.args.batch_size": 32}
CASES = {  # config changes, and how to resume: 4 epochs straight, or 2 epochs then `-r ... trainer.epochs=4`
    # Dropout draws from torch's global generator: only a restored RNG state gives the same masks.
    "workers 0, StepLR, dropout; -r RUN_DIR": (
        SMALL_BATCHES | {"lr_scheduler": {"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}},
                         "arch.args.dropout": 0.3}, "run directory"),
    "workers 2, augmentation; -r RUN_DIR/last.pth": (
        SMALL_BATCHES | {"data_loader.args.num_workers": 2, "dataset.args.train_transform": AUGMENT}, "checkpoint"),
}
STEP_LR, AUGMENTED = CASES
# "max val_loss" on a model that learns: the validation loss falls, so the monitored value stops
# "improving" after epoch 1 and early stopping (patience 2) ends the uninterrupted run at epoch 3,
# whatever the exact numbers of this torch version are.
EARLY_STOP = {"data_loader.args.batch_size": 16, "optimizer.args.lr": 0.05, "trainer.monitor": "max val_loss",
              "trainer.early_stop": 2}
EARLY_STOP_EPOCHS = 6
# Many batches per epoch, so that a signal lands in the middle of one.
INTERRUPT = {"data_loader.args.batch_size": 8, "trainer.epochs": 3, "trainer.progress_bar": False,
             "arch.args.dropout": 0.3}
INTERRUPT_BATCHES = 144  # 1,437 digits, 20% held out: 1,150 training samples in batches of 8
STATE_KEYS = ["epoch", "global_step", "optimizer", "lr_scheduler", "scaler", "monitor_best", "not_improved_count",
              "best_epoch"]


# -- helpers ----------------------------------------------------------------------------------------------
def train(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` in a new process."""
    return run_script("train.py", *args, env=ENV, check=check)


def train_here(*args: str) -> subprocess.CompletedProcess:
    """train.py's main with ``args``, in this process."""
    return run_in_process("train.py", *args, check=True)


def train_run(folder: Path, changes: dict, *args: str) -> Path:
    """Train a copy of the tiny config with ``changes`` in ``folder`` (in this process); the run directory."""
    config = make_config(folder, **changes)
    train_here("-c", str(config), *args)
    (run,) = run_dirs(folder)
    return run


def split_run(folder: Path, changes: dict, stop_after: int, epochs: int, resume: str) -> SimpleNamespace:
    """Train ``stop_after`` epochs, then resume with ``trainer.epochs=<epochs>`` in a new process.

    ``resume``: "run directory" (-r RUN_DIR), "checkpoint" (-r RUN_DIR/last.pth) or "auto" (-r auto -c CONFIG).
    """
    run = train_run(folder, changes | {"trainer.epochs": stop_after})
    at_stop = load_plain(run / "last.pth")
    target = {"run directory": ["-r", str(run)], "checkpoint": ["-r", str(run / "last.pth")],
              "auto": ["-r", "auto", "-c", str(folder / "config.json")]}[resume]
    resumed = train(*target, f"trainer.epochs={epochs}")
    return SimpleNamespace(run=run, at_stop=at_stop, stdout=resumed.stdout)


def load_plain(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def metrics_rows(run_dir: Path) -> list[dict]:
    """metrics.csv as text, without the timing columns (epoch_time, data_wait: the only ones that may differ)."""
    with open(run_dir / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    for row in rows:
        del row["epoch_time"], row["data_wait"]
    return rows


def epochs_in(run_dir: Path) -> list[int]:
    return [int(row["epoch"]) for row in metrics_rows(run_dir)]


def assert_same_run(reference: Path, run: Path, epochs: int) -> None:
    """``run`` ended exactly where ``reference`` ended: weights, training state and metrics.csv."""
    expected, actual = load_plain(reference / "last.pth"), load_plain(run / "last.pth")
    assert_same_tensors(expected["state_dict"], actual["state_dict"])
    for key in STATE_KEYS:
        assert_identical(expected[key], actual[key], key)
    assert epochs_in(run) == list(range(1, epochs + 1))
    assert metrics_rows(run) == metrics_rows(reference)
    assert sorted(p.name for p in run.glob("*.pth")) == sorted(p.name for p in reference.glob("*.pth"))
    assert_same_tensors(load_plain(reference / "model_best.pth")["state_dict"],
                        load_plain(run / "model_best.pth")["state_dict"])


def is_parameter(key: str) -> bool:
    """Parameters, not BatchNorm's running statistics (which training with lr=0 still updates)."""
    return not key.endswith(("running_mean", "running_var", "num_batches_tracked"))


class Runs:
    """Training runs looked up by name, each made when it is first looked up (one at a time: the runs in
    this process share its random generators), so a test run alone makes only the runs it needs."""

    def __init__(self, tmp_path_factory):
        self.tmp_path_factory = tmp_path_factory
        self.jobs, self.results = {}, {}

    def start(self, name: str, job, *args) -> None:
        self.jobs[name] = (job, args)

    def folder(self, name: str) -> Path:
        return self.tmp_path_factory.mktemp(re.sub(r"\W+", "_", name))

    def __getitem__(self, name: str):
        if name not in self.results:
            job, args = self.jobs[name]
            self.results[name] = job(*args)
        return self.results[name]


def early_stop_runs(folder: Path, split_folder: Path) -> SimpleNamespace:
    """The uninterrupted run stops early at epoch S; the split run stops after S - 1 and is resumed."""
    reference = train_run(folder, EARLY_STOP | {"trainer.epochs": EARLY_STOP_EPOCHS})
    stopped_at = epochs_in(reference)[-1]
    split = split_run(split_folder, EARLY_STOP, max(stopped_at - 1, 1), EARLY_STOP_EPOCHS, "auto")
    return SimpleNamespace(reference=reference, stopped_at=stopped_at, split=split)


def finetune_run(runs: Runs, folder: Path, changes: dict) -> SimpleNamespace:
    source = runs[f"reference {STEP_LR}"] / "last.pth"
    config = make_config(folder, **SMALL_BATCHES | {"optimizer.args.lr": 0.0, "trainer.epochs": 1} | changes)
    result = train_here("-c", str(config), "--finetune", str(source))
    (run,) = run_dirs(folder)
    return SimpleNamespace(source=source, run=run, stdout=result.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs = Runs(tmp_path_factory)
    for case, (changes, resume) in CASES.items():
        runs.start(f"reference {case}", train_run, runs.folder(case), changes | {"trainer.epochs": 4})
        runs.start(f"split {case}", split_run, runs.folder(f"{case} split"), changes, 2, 4, resume)
    runs.start("early stop", early_stop_runs, runs.folder("early stop"), runs.folder("early stop split"))
    for workers in (0, 4):
        changes = CASES[AUGMENTED][0] | {"data_loader.args.num_workers": workers, "trainer.epochs": 2}
        runs.start(f"augmentation, workers {workers}", train_run, runs.folder(f"workers {workers}"), changes)
    runs.start("finetune", finetune_run, runs, runs.folder("finetune"), {})
    runs.start("finetune new head", finetune_run, runs, runs.folder("finetune new head"), {
        "dataset": {"type": "SyntheticDataset", "args": {"num_samples": 200, "shape": [1, 8, 8], "num_classes": 5}},
        "arch.args.num_classes": 5})
    runs.start("interrupt reference", train_run, runs.folder("interrupt reference"), INTERRUPT)
    return runs


# -- 4. stop after k epochs, resume with -r RUN_DIR trainer.epochs=N --------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_resume_after_k_epochs_equals_the_uninterrupted_run(runs, case):
    reference, split = runs[f"reference {case}"], runs[f"split {case}"]
    assert split.at_stop["epoch"] == 2 and split.at_stop["batches_done"] == 0
    assert_same_run(reference, split.run, epochs=4)


@pytest.mark.slow
def test_resume_continues_the_lr_schedule(runs):
    split = runs[f"split {STEP_LR}"]
    assert [float(row["lr"]) for row in metrics_rows(split.run)] == [0.01, 0.005, 0.0025, 0.00125]
    assert split.at_stop["lr_scheduler"]["last_epoch"] == 2


@pytest.mark.slow
def test_resume_carries_the_early_stopping_state(runs):
    early = runs["early stop"]
    reference, split, stopped_at = early.reference, early.split, early.stopped_at
    # The setting must stop the uninterrupted run early, after the resume point.
    assert 2 < stopped_at < EARLY_STOP_EPOCHS, f"no early stop before epoch {EARLY_STOP_EPOCHS}: change EARLY_STOP"
    val_losses = [float(row["val_loss"]) for row in metrics_rows(reference)]
    # The resume point: one epoch without improvement already counted, the best value kept.
    assert split.at_stop["epoch"] == stopped_at - 1
    assert split.at_stop["not_improved_count"] == 1
    assert split.at_stop["monitor_best"] == max(val_losses[: stopped_at - 1])
    # The resumed run stops at the same epoch, for the same reason.
    final = load_plain(split.run / "last.pth")
    assert final["epoch"] == stopped_at and final["not_improved_count"] == 2
    assert "stopping early" in split.stdout
    assert_same_run(reference, split.run, epochs=stopped_at)


# -- 7. the results do not depend on the number of DataLoader workers -----------------------------------
@pytest.mark.slow
def test_weights_do_not_depend_on_the_number_of_workers(runs):
    with_two = runs[f"split {AUGMENTED}"].at_stop["state_dict"]  # 2 epochs, 2 workers
    for workers in (0, 4):
        run = runs[f"augmentation, workers {workers}"]
        assert_same_tensors(with_two, load_plain(run / "last.pth")["state_dict"])


# -- 8. --finetune: a new run from a checkpoint's weights ------------------------------------------------
@pytest.mark.slow
def test_finetune_starts_a_new_run_from_the_weights(runs):
    finetune = runs["finetune"]
    source, new = load_plain(finetune.source), load_plain(finetune.run / "last.pth")
    assert finetune.run != finetune.source.parent
    # lr=0: the parameters stay what the checkpoint holds.
    parameters = [key for key in source["state_dict"] if is_parameter(key)]
    assert_same_tensors({k: source["state_dict"][k] for k in parameters}, {k: new["state_dict"][k] for k in parameters})
    # A new run: epoch 1, its own step count, a fresh optimizer.
    assert epochs_in(finetune.run) == [1]
    assert new["epoch"] == 1
    assert new["global_step"] * 4 == source["global_step"]  # one epoch of the same batches, not five
    steps = {int(state["step"]) for state in new["optimizer"]["state"].values()}
    assert steps == {new["global_step"]}


@pytest.mark.slow
def test_finetune_with_another_number_of_classes_skips_the_head(runs):
    finetune = runs["finetune new head"]
    source, new = load_plain(finetune.source)["state_dict"], load_plain(finetune.run / "last.pth")["state_dict"]
    head = [key for key in source if source[key].shape != new[key].shape]
    assert head == ["head.3.weight", "head.3.bias"]
    assert new["head.3.weight"].shape[0] == 5
    warning = [line for line in finetune.stdout.splitlines() if "kept fresh" in line and "head.3.weight" in line]
    assert warning, finetune.stdout
    body = [key for key in source if key not in head and is_parameter(key)]
    assert_same_tensors({k: source[k] for k in body}, {k: new[k] for k in body})
    assert epochs_in(finetune.run) == [1]


# -- 5. SIGTERM / Ctrl-C in the middle of an epoch ------------------------------------------------------
def start_training(config: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0", "WANDB_MODE": "offline", **ENV}
    return subprocess.Popen([sys.executable, "train.py", "-c", str(config)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def wait_until(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            stdout, stderr = process.communicate()
            pytest.fail(f"training ended (exit {process.returncode}) before the test could stop it:\n{stderr}")
        assert time.monotonic() < deadline, "timed out waiting for training"
        time.sleep(0.01)


def finished_epochs(folder: Path) -> int:
    runs = run_dirs(folder)
    metrics = runs[0] / "metrics.csv" if runs else None
    if metrics is None or not metrics.is_file():
        return 0
    return max(metrics.read_text().count("\n") - 1, 0)


def wait_for_first_epoch(folder: Path, process: subprocess.Popen) -> tuple[Path, float]:
    """Wait until epoch 1 is recorded and checkpointed; (the run directory, epoch 1's time in seconds)."""
    wait_until(lambda: finished_epochs(folder) >= 1 and (run_dirs(folder)[0] / "last.pth").exists(), process)
    (run,) = run_dirs(folder)
    with open(run / "metrics.csv", newline="") as file:
        return run, float(next(csv.DictReader(file))["epoch_time"])


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "workers", "whole_group"), [
    (signal.SIGTERM, 0, False),
    (signal.SIGINT, 2, True),  # Ctrl-C in a terminal: the main process and its DataLoader workers
], ids=["SIGTERM", "Ctrl-C with 2 workers"])
def test_signal_mid_epoch_saves_a_checkpoint_to_resume_from(runs, tmp_path, signum, workers, whole_group):
    config = make_config(tmp_path, **INTERRUPT | {"data_loader.args.num_workers": workers})
    process = start_training(config)
    try:
        _, epoch_time = wait_for_first_epoch(tmp_path, process)
        time.sleep(0.25 * epoch_time)  # a quarter into epoch 2
        if whole_group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        stop(process)

    (run,) = run_dirs(tmp_path)
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr, stderr
    command = re.search(r"resume with: (python train\.py -r (\S+))", stderr)
    assert command, stderr
    assert Path(command[2]) == run
    checkpoint = load_plain(run / "last.pth")
    assert 0 < checkpoint["batches_done"] < INTERRUPT_BATCHES, "the checkpoint is not from the middle of an epoch"
    assert checkpoint["epoch"] == len(metrics_rows(run))  # the finished epochs

    train_here(*command[1].split()[2:])  # the command it printed, "python train.py" being train_here()
    assert_same_run(runs["interrupt reference"], run, epochs=3)


@pytest.mark.slow
def test_resume_skips_the_done_batches_without_loading_them(runs, tmp_path, monkeypatch):
    config = make_config(tmp_path, **INTERRUPT)
    # SIGTERM in the 40th batch of epoch 2: the run stops after that batch.
    stopped = launch("train.py", "-c", str(config), env=ENV,
                     faults={"LAUNCH_SIGNALS": f"{signal.SIGTERM.value}@{INTERRUPT_BATCHES + 40}"})
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    (run,) = run_dirs(tmp_path)
    checkpoint = load_plain(run / "last.pth")
    assert (checkpoint["epoch"], checkpoint["batches_done"]) == (1, 40)

    loads = 0  # training samples loaded (with the training transform): the DataLoader has no workers
    load = BaseDataset.__getitem__

    def counted_load(dataset, key):
        nonlocal loads
        loads += dataset.augment
        return load(dataset, key)

    monkeypatch.setattr(BaseDataset, "__getitem__", counted_load)
    train_here("-r", str(run))
    monkeypatch.undo()
    # The rest of epoch 2 and all of epoch 3; at most one batch more (a check before training starts).
    batch_size, n_train = INTERRUPT["data_loader.args.batch_size"], 1150
    expected = (n_train - 40 * batch_size) + n_train
    assert expected <= loads <= expected + batch_size, "the resumed run loaded the done batches"
    assert_same_run(runs["interrupt reference"], run, epochs=3)


@pytest.mark.slow
def test_a_second_ctrl_c_aborts_at_once(tmp_path):
    config = make_config(tmp_path, **INTERRUPT)
    # Two Ctrl-C in the same batch of epoch 2: the first asks for a checkpoint after the batch, the
    # second aborts before the batch ends, so no checkpoint of epoch 2 is written.
    result = launch("train.py", "-c", str(config), env=ENV,
                    faults={"LAUNCH_SIGNALS": f"{signal.SIGINT.value}@{INTERRUPT_BATCHES + 5}," * 2})
    assert result.returncode in (-signal.SIGINT, 128 + signal.SIGINT), result.stderr
    assert "SIGINT received" in result.stdout + result.stderr, "the first Ctrl-C was not handled"
    (run,) = run_dirs(tmp_path)
    checkpoint = load_plain(run / "last.pth")
    assert (checkpoint["epoch"], checkpoint["batches_done"]) == (1, 0), "it saved after the second Ctrl-C"
    assert epochs_in(run) == [1]


# -- 6. SIGKILL at a random moment ----------------------------------------------------------------------------
_rng = random.Random(0)
KILL_AT = [round(_rng.uniform(0.0, 0.9), 3), round(_rng.uniform(1.0, 1.3), 3)]  # in epoch 2, in epoch 3


@pytest.mark.slow
@pytest.mark.parametrize("epochs_later", KILL_AT)
def test_sigkill_at_a_random_moment_then_resume(runs, tmp_path, epochs_later):
    """Killed ``epochs_later`` epoch-times after the first epoch ended (a checkpoint exists by then)."""
    config = make_config(tmp_path, **INTERRUPT)
    process = start_training(config)
    try:
        run, epoch_time = wait_for_first_epoch(tmp_path, process)
        time.sleep(epochs_later * epoch_time)
        assert process.poll() is None, "training ended before the kill: lower KILL_AT"
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        stop(process)
    assert process.returncode == -signal.SIGKILL

    train_here("-r", str(run))
    assert_same_run(runs["interrupt reference"], run, epochs=3)
