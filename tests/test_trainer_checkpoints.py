"""The epoch loop's outputs: early stopping, model_best.pth, last.pth, periodic checkpoints, metrics.csv."""
import copy
import csv
import math

import pytest
import torch

import train
from config_parser import ConfigParser
from logger.logger import setup_logging
from tests.conftest import IRIS_CONFIG, TINY_CONFIG, assert_same_tensors, make_config, run_dirs
from utils.checkpoint.files import load_checkpoint
from utils.util import read_json

# The digits with a small MLP: no BatchNorm or dropout, so with lr=0 nothing changes between epochs.
DIGITS_MLP = copy.deepcopy(TINY_CONFIG)
DIGITS_MLP["name"] = "TinyMLP"
DIGITS_MLP["arch"] = {"type": "MLP", "args": {"in_features": 64, "num_classes": 10, "hidden": [16]}}
DIGITS_MLP["optimizer"] = {"type": "SGD", "args": {"lr": 0.1}}
DIGITS_MLP["trainer"].update(epochs=3, save_period=0)

CHECKPOINT_KEYS = {"format_version", "arch", "epoch", "global_step", "state_dict", "optimizer", "lr_scheduler",
             "scaler", "monitor_best", "not_improved_count", "rng_states", "config", "wandb_id", "metrics"}


@pytest.fixture(autouse=True)
def restore_logging():
    """A run adds a file handler in tmp_path to the root logger: take it away afterwards."""
    yield
    setup_logging(None, 1)


def train_in_process(tmp_path, base: dict = DIGITS_MLP, *overrides: str, **changes):
    """Run ``train.py -c <config> [overrides]`` in this process; returns the run directory."""
    path = make_config(tmp_path, base, **changes)
    train.main(["-c", str(path), *overrides])
    dirs = run_dirs(tmp_path, read_json(path)["name"])
    assert len(dirs) == 1, dirs
    return dirs[0]


def read_metrics(run_dir) -> tuple[list[str], list[dict]]:
    with open(run_dir / "metrics.csv", newline="") as file:
        rows = list(csv.reader(file))
    columns = rows[0]
    return columns, [dict(zip(columns, row)) for row in rows[1:]]


def load(path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def checkpoint_epochs(run_dir) -> list[int]:
    return sorted(int(p.stem.removeprefix("checkpoint-epoch")) for p in run_dir.glob("checkpoint-epoch*.pth"))


# -- real runs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("monitor", ["max val_accuracy", "min val_loss"])
def test_early_stop_after_patience_without_improvement(tmp_path, monitor):
    # lr=0: the weights never change (the MLP has no dropout or BatchNorm), so nothing improves after epoch 1.
    run_dir = train_in_process(tmp_path, DIGITS_MLP, **{"optimizer.args.lr": 0.0, "trainer.epochs": 10,
                                                          "trainer.early_stop": 2, "trainer.monitor": monitor})
    _, rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    key = monitor.split()[1]
    assert len({r[key] for r in rows}) == 1  # the monitored value really stayed the same
    best = load(run_dir / "model_best.pth")
    assert best["epoch"] == 1
    last = load(run_dir / "last.pth")
    assert last["epoch"] == 3
    assert last["not_improved_count"] == 2
    assert last["monitor_best"] == pytest.approx(float(rows[0][key]))
    assert "stopping early" in (run_dir / "info.log").read_text()


def test_early_stop_zero_never_stops(tmp_path):
    run_dir = train_in_process(tmp_path, DIGITS_MLP, **{"optimizer.args.lr": 0.0, "trainer.epochs": 4,
                                                          "trainer.early_stop": 0,
                                                          "trainer.monitor": "max val_accuracy"})
    _, rows = read_metrics(run_dir)
    assert len(rows) == 4
    assert load(run_dir / "last.pth")["not_improved_count"] == 3
    assert load(run_dir / "model_best.pth")["epoch"] == 1


def test_monitor_off_writes_no_best_and_never_stops_early(tmp_path):
    run_dir = train_in_process(tmp_path, DIGITS_MLP, **{"optimizer.args.lr": 0.0, "trainer.epochs": 4,
                                                          "trainer.early_stop": 1, "trainer.monitor": "off"})
    _, rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert not (run_dir / "model_best.pth").exists()
    assert load(run_dir / "last.pth")["epoch"] == 4


def test_tiny_run_outputs(tmp_path):
    """A real run of the digits config: metrics.csv, model_best.pth, last.pth and checkpoint-epoch{N}.pth."""
    run_dir = train_in_process(tmp_path, TINY_CONFIG, **{"trainer.epochs": 4, "trainer.save_period": 2,
                                                         "optimizer.args.lr": 0.02})
    columns, rows = read_metrics(run_dir)
    assert columns == ["epoch", "loss", "accuracy", "top_k_acc", "val_loss", "val_accuracy", "val_top_k_acc",
                       "lr", "epoch_time"]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    for row in rows:
        values = {k: float(v) for k, v in row.items()}
        assert all(math.isfinite(v) for v in values.values())
        assert 0 <= values["accuracy"] <= 1 and 0 <= values["val_accuracy"] <= 1
        assert values["val_accuracy"] <= values["val_top_k_acc"]
        assert values["lr"] == pytest.approx(0.02)
        assert values["epoch_time"] > 0
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])  # it did train

    # model_best.pth holds the epoch with the best val_accuracy (the first one, on a tie).
    accuracies = [float(r["val_accuracy"]) for r in rows]
    best_epoch = accuracies.index(max(accuracies)) + 1
    best = load(run_dir / "model_best.pth")
    assert best["epoch"] == best_epoch
    assert best["monitor_best"] == pytest.approx(max(accuracies))
    assert best["metrics"]["val_accuracy"] == pytest.approx(max(accuracies))

    last = load(run_dir / "last.pth")
    assert last["epoch"] == 4
    assert checkpoint_epochs(run_dir) == [2, 4]
    for epoch in (2, 4):
        assert load(run_dir / f"checkpoint-epoch{epoch}.pth")["epoch"] == epoch
    # last.pth holds the weights after epoch 4, checkpoint-epoch2.pth those after epoch 2.
    early = load(run_dir / "checkpoint-epoch2.pth")["state_dict"]
    assert any(not torch.equal(early[k], last["state_dict"][k]) for k in early if early[k].is_floating_point())
    assert all(torch.equal(v, load(run_dir / "checkpoint-epoch4.pth")["state_dict"][k])
               for k, v in last["state_dict"].items())


def test_checkpoint_holds_the_keys_of_spec_section_5(tmp_path):
    run_dir = train_in_process(tmp_path, DIGITS_MLP, **{"trainer.epochs": 2})
    checkpoint = load(run_dir / "last.pth")
    assert CHECKPOINT_KEYS <= set(checkpoint), CHECKPOINT_KEYS - set(checkpoint)
    assert checkpoint["arch"] == "MLP"
    assert checkpoint["epoch"] == 2
    # 1437 training samples, 20% held out: 1150 in batches of 64 is 18 steps an epoch.
    assert checkpoint["global_step"] == 2 * 18
    assert not any(key.startswith("module.") for key in checkpoint["state_dict"])
    assert checkpoint["config"] == read_json(run_dir / "config.json")
    assert isinstance(checkpoint["config"], dict)
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1)
    assert checkpoint["lr_scheduler"] is None
    assert isinstance(checkpoint["scaler"], dict)
    assert checkpoint["wandb_id"] is None  # wandb is off
    assert checkpoint["classes"] == [str(digit) for digit in range(10)]  # for inference on unlabelled data
    # The RNG states of Python, NumPy, torch and CUDA (one entry per process).
    states = checkpoint["rng_states"]
    assert isinstance(states, list) and len(states) == 1
    assert {"python", "numpy", "torch", "cuda"} <= set(states[0])
    assert isinstance(states[0]["torch"], torch.Tensor)
    # The last epoch's metrics, as in metrics.csv.
    _, rows = read_metrics(run_dir)
    assert checkpoint["metrics"]["epoch"] == 2
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert checkpoint["metrics"][key] == pytest.approx(float(rows[-1][key]))
    # The template's own loader reads it and verifies its checksum.
    assert load_checkpoint(run_dir / "last.pth")["epoch"] == 2
    # The model weights fit a freshly built model.
    config = ConfigParser(checkpoint["config"])
    import model.model as module_arch

    model = config.init_obj("arch", module_arch)
    model.load_state_dict(checkpoint["state_dict"])


def test_save_period_zero_writes_no_periodic_checkpoints(tmp_path):
    run_dir = train_in_process(tmp_path, DIGITS_MLP, **{"trainer.epochs": 3, "trainer.save_period": 0})
    assert checkpoint_epochs(run_dir) == []
    assert load(run_dir / "last.pth")["epoch"] == 3


# -- a scripted monitored value: exactly which epoch is best -------------------------------------------------
def scripted_run(tmp_path, monitor: str, values: list[float], save_period: int = 2, early_stop: int = 0):
    """Train with a _train_epoch that returns ``values`` as the monitored value and marks the weights
    with the epoch number. Returns (run directory, model_best.pth's epoch seen at the start of each epoch)."""
    path = make_config(tmp_path, DIGITS_MLP, **{"trainer.epochs": len(values), "trainer.save_period": save_period,
                                                 "trainer.early_stop": early_stop, "trainer.monitor": monitor})
    config = ConfigParser(read_json(path))
    trainer = train.build_trainer(config)
    config.start_run()
    key = monitor.split()[1]
    best_seen = []

    def scripted_epoch(epoch: int) -> dict:
        trainer.checkpoint_writer.wait()
        best_path = config.run_dir / "model_best.pth"
        best_seen.append(load(best_path)["epoch"] if best_path.exists() else None)
        with torch.no_grad():
            for parameter in trainer.raw_model.parameters():
                parameter.fill_(float(epoch))
        log = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5, "lr": 0.1}
        return log | {key: values[epoch - 1]}

    trainer._train_epoch = scripted_epoch
    trainer.train()
    return config.run_dir, best_seen


def marker(checkpoint: dict) -> float:
    """The epoch number the scripted epoch wrote into every weight."""
    values = {float(t.flatten()[0]) for t in checkpoint["state_dict"].values()}
    assert len(values) == 1
    return values.pop()


@pytest.mark.parametrize("monitor, values, best_epochs", [
    # best on an odd epoch while save_period is 2; a tie (0.9 again) is no improvement
    ("max val_accuracy", [0.5, 0.7, 0.9, 0.6, 0.9, 0.8], [1, 2, 3, 3, 3, 3]),
    ("min val_loss", [1.0, 0.8, 0.9, 0.7, 0.75, 0.3, 0.4], [1, 2, 2, 4, 4, 6, 6]),
    ("max val_accuracy", [0.9, 0.1, 0.2, 0.3], [1, 1, 1, 1]),
])
def test_model_best_is_written_whenever_the_monitor_improves(tmp_path, monitor, values, best_epochs):
    run_dir, best_seen = scripted_run(tmp_path, monitor, values)
    # At the start of epoch e, model_best.pth holds the best epoch up to e - 1.
    assert best_seen == [None, *best_epochs[:-1]]
    best = load(run_dir / "model_best.pth")
    assert best["epoch"] == best_epochs[-1]
    assert marker(best) == best_epochs[-1]  # the weights of that epoch, not of a later one
    assert best["monitor_best"] == values[best_epochs[-1] - 1]

    last = load(run_dir / "last.pth")
    assert last["epoch"] == len(values) and marker(last) == len(values)
    assert last["best_epoch"] == best_epochs[-1]
    assert last["not_improved_count"] == len(values) - best_epochs[-1]

    expected_periodic = [e for e in range(1, len(values) + 1) if e % 2 == 0]
    assert checkpoint_epochs(run_dir) == expected_periodic
    for epoch in expected_periodic:
        checkpoint = load(run_dir / f"checkpoint-epoch{epoch}.pth")
        assert checkpoint["epoch"] == epoch and marker(checkpoint) == epoch

    _, rows = read_metrics(run_dir)
    key = monitor.split()[1]
    assert [float(r[key]) for r in rows] == pytest.approx(values)


def test_early_stop_counts_epochs_since_the_last_improvement(tmp_path):
    # Improvements at epochs 1, 3 and 4 reset the count; patience 2 runs out at epoch 6.
    values = [0.5, 0.4, 0.6, 0.7, 0.7, 0.65, 0.99, 0.99]
    run_dir, _ = scripted_run(tmp_path, "max val_accuracy", values, save_period=3, early_stop=2)
    _, rows = read_metrics(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert load(run_dir / "model_best.pth")["epoch"] == 4
    last = load(run_dir / "last.pth")
    assert last["epoch"] == 6 and marker(last) == 6
    assert checkpoint_epochs(run_dir) == [3, 6]


def test_iris_checkpoint_loads_with_weights_only(tmp_path):
    run_dir = train_in_process(tmp_path, IRIS_CONFIG, **{"trainer.epochs": 1})
    checkpoint = load(run_dir / "last.pth")
    assert checkpoint["epoch"] == 1
    assert checkpoint["classes"] == ["setosa", "versicolor", "virginica"]


def plateau_lrs(values: list[float], lr: float, factor: float, patience: int, threshold: float = 1e-4) -> list[float]:
    """The learning rate of each epoch under ReduceLROnPlateau(mode="max"), stepped with each epoch's value:
    a hand-written version of its rule (relative threshold, no cooldown)."""
    lrs, best, bad_epochs = [], -math.inf, 0
    for value in values:
        lrs.append(lr)
        if value > best * (1 + threshold):
            best, bad_epochs = value, 0
        else:
            bad_epochs += 1
        if bad_epochs > patience:
            lr, bad_epochs = lr * factor, 0
    return lrs


def test_reduce_lr_on_plateau_lowers_the_lr_after_patience_epochs_without_improvement(tmp_path):
    run = train_in_process(tmp_path, IRIS_CONFIG, **{
        "trainer.epochs": 12, "trainer.monitor": "max val_accuracy", "optimizer.args.lr": 0.2,
        "lr_scheduler": {"type": "ReduceLROnPlateau", "args": {"mode": "max", "factor": 0.5, "patience": 1}}})
    _, rows = read_metrics(run)
    accuracy = [float(row["val_accuracy"]) for row in rows]
    expected = plateau_lrs(accuracy, lr=0.2, factor=0.5, patience=1)
    assert expected[-1] < 0.2, f"no plateau in {accuracy}: the test needs one"
    assert [float(row["lr"]) for row in rows] == pytest.approx(expected, rel=1e-12)


def test_resume_in_process_continues_the_random_state(tmp_path):
    """Dropout draws from torch's global generator: a resumed run gets the same masks only when the
    checkpoint's random state is restored (here the resume starts in a process that drew other numbers)."""
    changes = {"arch.args.dropout": 0.5, "arch.args.hidden": [32], "trainer.epochs": 3, "trainer.save_period": 0}
    (tmp_path / "straight").mkdir(), (tmp_path / "split").mkdir()
    straight = train_in_process(tmp_path / "straight", IRIS_CONFIG, **changes)
    split = train_in_process(tmp_path / "split", IRIS_CONFIG, **changes | {"trainer.epochs": 1})
    torch.rand(1000)
    train.main(["-r", str(split), "trainer.epochs=3"])
    expected, actual = load(straight / "last.pth"), load(split / "last.pth")
    assert_same_tensors(expected["state_dict"], actual["state_dict"])
    assert read_metrics(split)[1][-1]["loss"] == read_metrics(straight)[1][-1]["loss"]


def test_an_epoch_scheduler_steps_once_per_epoch(tmp_path):
    run = train_in_process(tmp_path, IRIS_CONFIG, **{
        "trainer.epochs": 4, "lr_scheduler": {"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}}})
    _, rows = read_metrics(run)
    # The lr column is the rate each epoch trained with: 0.1 halved after every epoch.
    assert [float(row["lr"]) for row in rows] == pytest.approx([0.1 * 0.5 ** (epoch - 1) for epoch in range(1, 5)],
                                                               rel=1e-12)
    assert load(run / "last.pth")["lr_scheduler"]["last_epoch"] == 4


def test_rng_state_round_trip_through_a_checkpoint_file(tmp_path):
    import random

    import numpy as np

    from utils.checkpoint.files import save_checkpoint
    from utils.seeding import get_rng_state, seed_everything, set_rng_state

    seed_everything(5)
    random.random(), np.random.rand(), torch.rand(1), random.gauss(0, 1)  # a cached Gaussian in Python's state
    save_checkpoint({"format_version": 1, "rng": get_rng_state()}, tmp_path / "rng.pth")
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3))
    seed_everything(6)
    set_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"])
    drawn = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3))
    assert drawn[:3] == expected[:3]
    assert torch.equal(drawn[3], expected[3])


def test_each_process_restores_its_own_entry_or_rank_0s_when_there_were_fewer(monkeypatch):
    from utils import distributed as dist

    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    assert dist.own_entry(["rank 0", "rank 1"]) == "rank 1"
    assert dist.own_entry(["rank 0"]) == "rank 0"  # a run saved by one process, resumed by two
