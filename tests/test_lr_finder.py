"""The learning-rate range test (train.py --lr-find): the ramp, the smoothing, the early stop, the
suggestion on the default config, parameter groups and accumulation, and that it leaves no trace."""
import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from config_parser import ConfigParser
from tests.conftest import REPO, make_config, run_in_process
from utils.recipe.lr_finder import lr_range_test
from utils.seeding import seed_everything
from utils.util import read_json


def build(config: dict, **changes):
    seed_everything(config["seed"])
    return train.build_trainer(ConfigParser(config, modification=changes))


def test_on_the_default_config_the_suggestion_is_a_usable_rate_and_the_model_is_untouched(tmp_path):
    trainer = build(read_json(REPO / "config.json"), n_gpu=0, **{"trainer.save_dir": str(tmp_path)})
    before = {key: value.clone() for key, value in trainer.raw_model.state_dict().items()}
    lrs_before = [group["lr"] for group in trainer.optimizer.param_groups]
    result = lr_range_test(trainer, lr_min=1e-7, lr_max=10, steps=100)
    assert 1e-4 <= result.suggestion <= 1e-1
    # the ramp and the bias-corrected moving average, computed independently
    assert np.allclose(result.lrs, np.geomspace(1e-7, 10, 100)[: len(result.lrs)], rtol=1e-9)
    weights = 0.98 ** np.arange(len(result.losses))[::-1]
    expected = [np.dot(weights[-(i + 1):], result.losses[: i + 1]) / weights[-(i + 1):].sum()
                for i in range(len(result.losses))]
    assert np.allclose(result.smoothed, expected, rtol=1e-9)
    for key, value in trainer.raw_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert [group["lr"] for group in trainer.optimizer.param_groups] == lrs_before
    assert not trainer.optimizer.state  # Adam's moments of the test are gone
    assert not list(tmp_path.iterdir())  # the engine writes nothing


def test_groups_keep_their_ratio_and_each_step_accumulates_under_amp(tmp_path, monkeypatch):
    from tests.conftest import TINY_CONFIG

    trainer = build(TINY_CONFIG, **{"trainer.save_dir": str(tmp_path), "trainer.grad_accum_steps": 2,
                                    "trainer.amp": "bf16",
                                    "optimizer.param_groups": [{"match": "head", "name": "head", "lr": 0.03}]})
    seen, forward = [], []
    step = trainer.optimizer.step
    monkeypatch.setattr(trainer.optimizer, "step", lambda *a, **k: (seen.append(
        {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}), step(*a, **k))[1])
    original = trainer._train_step
    monkeypatch.setattr(trainer, "_train_step", lambda *a: (forward.append(1), original(*a))[1])
    result = lr_range_test(trainer, lr_min=1e-4, lr_max=1e-2, steps=5)
    assert len(seen) == len(result.lrs) == 5 and len(forward) == 10
    for lrs, lr in zip(seen, np.geomspace(1e-4, 1e-2, 5)):
        assert lrs["default"] == pytest.approx(lr) and lrs["head"] == pytest.approx(3 * lr)
    assert all(np.isfinite(result.losses))


def test_the_command_writes_the_curve_and_prints_the_override_but_no_run(tmp_path):
    config = make_config(tmp_path, **{"optimizer.type": "SGD", "optimizer.args": {"lr": 0.1}})
    result = run_in_process("train.py", "-c", str(config), "--lr-find", "--lr-min", "1e-3", "--lr-max", "1e4",
                            "--steps", "40", check=True)
    (suggested,) = re.findall(r"^override: optimizer\.args\.lr=(\S+)$", result.stdout, re.MULTILINE)
    assert "steepest descent of the smoothed loss" in result.stdout and float(suggested) > 0
    assert [p.name for p in (tmp_path / "saved" / "Tiny").iterdir()] == ["lr_find"]
    (curve,) = (tmp_path / "saved" / "Tiny" / "lr_find").glob("*.csv")
    assert curve.with_suffix(".png").stat().st_size > 1000
    with open(curve, newline="") as file:
        smoothed = [float(row["smoothed_loss"]) for row in csv.DictReader(file)]
    # SGD at a rate of 1e4 diverges: the test stopped at the first smoothed loss above 4x the best before it
    assert len(smoothed) < 40 and "stopped early" in result.stdout
    assert not np.isfinite(smoothed[-1]) or smoothed[-1] > 4 * min(smoothed[:-1])
    assert all(value <= 4 * min(smoothed[: i + 1]) for i, value in enumerate(smoothed[:-1]))


@pytest.mark.parametrize("args, where", [(["--lr-min", "1", "--lr-max", "0.1"], "--lr-min"),
                                         (["--steps", "2"], "--steps")])
def test_bad_range_test_arguments_are_one_error_line(tmp_path, args, where):
    result = run_in_process("train.py", "-c", str(make_config(tmp_path)), "--lr-find", *args)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {where}: "), result.stderr
    assert not Path(tmp_path / "saved").exists()


@pytest.mark.slow
def test_under_torchrun_the_processes_agree_with_one_process_at_the_same_global_batch(tmp_path):
    from tests.test_distributed import DDP_CONFIG, torchrun

    args = ["--lr-find", "--lr-min", "1e-4", "--lr-max", "10", "--steps", "30"]
    curves = {}
    for name, run in (("ddp", torchrun), ("one", None)):
        folder = tmp_path / name
        folder.mkdir()
        config = make_config(folder, DDP_CONFIG, **({} if run else {"data_loader.args.batch_size": 16}))
        result = (run("train.py", "-c", str(config), *args, check=True, timeout=240) if run
                  else run_in_process("train.py", "-c", str(config), *args, check=True))
        assert result.stdout.count("override: optimizer.args.lr=") == 1  # printed once, by rank 0
        (curve,) = (folder / "saved" / "TinyIris" / "lr_find").glob("*.csv")
        with open(curve, newline="") as file:
            curves[name] = [float(row["loss"]) for row in csv.DictReader(file)]
        curves[name + " suggestion"] = re.search(r"override: (\S+)", result.stdout).group(1)
    assert curves["ddp"] == pytest.approx(curves["one"], rel=1e-5, abs=1e-6)
    assert curves["ddp suggestion"] == curves["one suggestion"]
