"""Changes of the optimizer, its parameter groups and the scheduler on resume: applied exactly from the
resumed epoch (the rates a new run with the new config has there), or refused in one line before
anything is built."""
import json
import math
import shutil

import pandas as pd
import pytest

from tests.conftest import IRIS_CONFIG, make_config, run_dirs, run_in_process
from utils.checkpoint.files import load_checkpoint

GROUPS = [{"match": r"^net\.3\.", "name": "head", "lr": 0.2}]


@pytest.fixture(scope="module")
def two_epoch_run(tmp_path_factory):
    """A finished 2-epoch iris run with SGD at 0.1, a "head" group at 0.2 and no scheduler."""
    folder = tmp_path_factory.mktemp("two_epochs")
    config = make_config(folder, IRIS_CONFIG, **{"trainer.epochs": 2, "optimizer.param_groups": GROUPS})
    run_in_process("train.py", "-c", str(config), check=True)
    return run_dirs(folder, "TinyIris")[0]


@pytest.fixture
def run(two_epoch_run, tmp_path):
    return shutil.copytree(two_epoch_run, tmp_path / "run")


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


def warmup_cosine(base: float, step: int, warmup: int, t_max: int, start: float = 0.01) -> float:
    """LinearLR(start, warmup) then CosineAnnealingLR(T_max) from its step 0: the closed forms."""
    if step < warmup:
        return base * (start + (1 - start) * step / warmup)
    return base * (1 + math.cos(math.pi * (step - warmup) / t_max)) / 2


def test_a_scheduler_with_warmup_added_on_resume_gives_the_rates_of_a_new_run(run):
    scheduler = {"type": "CosineAnnealingLR", "args": {"T_max": 4}, "warmup": {"epochs": 3}}
    result = run_in_process("train.py", "-r", str(run), "trainer.epochs=6", f"+lr_scheduler={json.dumps(scheduler)}",
                            check=True)
    assert "lr_scheduler changed at epoch 3: null -> " in result.stdout
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    for column, base in (("lr_default", 0.1), ("lr_head", 0.2)):
        rates = metrics[column].tolist()
        assert rates[:2] == [base, base]  # the finished epochs, without a scheduler
        expected = [warmup_cosine(base, epoch - 1, 3, 4) for epoch in range(3, 7)]
        assert rates[2:] == pytest.approx(expected, rel=1e-12), column
        assert max(rates) <= base
    history = json.loads((run / "config.json").read_text())["resume_history"]
    assert history[0]["epoch"] == 3 and history[0]["changes"]["lr_scheduler"]["from"] is None


def test_a_parameter_group_rate_changed_on_resume_is_in_the_next_checkpoint(run):
    groups = [{**GROUPS[0], "lr": 0.05}]
    result = run_in_process("train.py", "-r", str(run), "trainer.epochs=3", "--lr", "0.02",
                            f"optimizer.param_groups={json.dumps(groups)}", check=True)
    assert "optimizer.param_groups changed at epoch 3" in result.stdout
    rates = {group["name"]: group["lr"] for group in load_checkpoint(run / "last.pth")["optimizer"]["param_groups"]}
    assert rates == {"default": 0.02, "head": 0.05}
    last = pd.read_csv(run / "metrics.csv").iloc[-1]
    assert (last["lr_default"], last["lr_head"]) == (0.02, 0.05)


@pytest.mark.parametrize("change, where, words", [
    ('optimizer.param_groups=[{"match": "^net\\\\.0\\\\.", "name": "head", "lr": 0.2}]',
     "optimizer.param_groups.0.match", ["which tensors"]),
    ('optimizer.param_groups=[]', "optimizer.param_groups", ["1 groups became 0"]),
    ("optimizer.type=Adam", "optimizer.type", ["optimizer whose state"]),
    ("optimizer.no_decay_norm_and_bias=false", "optimizer.no_decay_norm_and_bias", ["parameter groups"]),
    ("+optimizer.args.weight_decay=0.01", "optimizer.args.weight_decay", ["weight decay on or off"]),
    ('+lr_scheduler={"type": "ReduceLROnPlateau"}', "lr_scheduler", ["ReduceLROnPlateau", "validation values"]),
    ("task=Regression", "task.type", ["what the targets mean"]),
])
def test_a_change_resume_cannot_apply_exactly_is_refused_before_anything_is_built(two_epoch_run, change, where,
                                                                                   words):
    before = (two_epoch_run / "last.pth").read_bytes()
    line = one_error_line(run_in_process("train.py", "-r", str(two_epoch_run), "trainer.epochs=3", change))
    assert line.startswith(f"error: {where}: cannot change when resuming ("), line
    assert line.endswith("start a new run, or one from this run's weights with --finetune RUN/model_best.pth")
    for word in words:
        assert word in line, line
    assert (two_epoch_run / "last.pth").read_bytes() == before
    assert len(pd.read_csv(two_epoch_run / "metrics.csv")) == 2


def test_heads_changed_on_resume_are_refused(tmp_path):
    heads = {"type": "MultiHead", "args": {"heads": {"a": 2, "b": 2}}}
    config = make_config(tmp_path, IRIS_CONFIG, **{"trainer.epochs": 1, "task": heads, "arch.args.num_classes": 4,
                                                   "dataset": {"type": "IrisDataset", "args": {"train": True}}})
    run_dir = tmp_path / "saved" / "TinyIris" / "multihead"
    # Only the comparison of the configs runs: the checkpoint is the one written here by hand.
    run_dir.mkdir(parents=True)
    from utils.checkpoint.files import save_checkpoint
    from utils.config.schema import validate

    saved = validate(json.loads(config.read_text()))
    save_checkpoint({"format_version": 1, "epoch": 1, "config": saved}, run_dir / "last.pth")
    (run_dir / "config.json").write_text(json.dumps(saved))
    line = one_error_line(run_in_process("train.py", "-r", str(run_dir), 'task.args.heads={"a": 2, "c": 2}'))
    assert line.startswith("error: task.args.heads.b: cannot change when resuming (the heads"), line


def test_reduce_lr_on_plateau_keeps_its_state_and_takes_a_new_rate_and_factor(tmp_path):
    plateau = {"type": "ReduceLROnPlateau", "args": {"patience": 5, "factor": 0.5}}
    config = make_config(tmp_path, IRIS_CONFIG, **{"trainer.epochs": 2, "lr_scheduler": plateau})
    run_in_process("train.py", "-c", str(config), check=True)
    run = run_dirs(tmp_path, "TinyIris")[0]
    before = load_checkpoint(run / "last.pth")["lr_scheduler"]
    run_in_process("train.py", "-r", str(run), "trainer.epochs=3", "--lr", "0.05", "lr_scheduler.args.factor=0.1",
                   check=True)
    assert pd.read_csv(run / "metrics.csv")["lr"].tolist() == [0.1, 0.1, 0.05]
    after = load_checkpoint(run / "last.pth")["lr_scheduler"]
    assert after["factor"] == 0.1 and after["last_epoch"] == before["last_epoch"] + 1


def test_a_rate_change_after_swa_started_is_refused(tmp_path):
    config = make_config(tmp_path, IRIS_CONFIG, **{"trainer.epochs": 2, "trainer.swa": {"start": 2, "lr": 0.01}})
    run_in_process("train.py", "-c", str(config), check=True)
    run = run_dirs(tmp_path, "TinyIris")[0]
    line = one_error_line(run_in_process("train.py", "-r", str(run), "trainer.epochs=3", "--lr", "0.05"))
    assert line == ("error: optimizer.args.lr: cannot change when resuming (SWA started at epoch 2: from then on its "
                    "SWALR sets the rates): start a new run, or one from this run's weights with --finetune "
                    "RUN/model_best.pth")
