"""SWA (trainer.swa): the learning rate SWALR sets per parameter group, validation of the average,
model_swa.pth, and a run stopped by SIGTERM in the middle of SWA and resumed ending bitwise equal to
the run that was never stopped. All in this process: the signal is sent from a training forward pass."""
import contextlib
import os
import re
import signal

import pytest
import torch

import inference
from base.base_model import BaseModel
from tests.conftest import assert_identical, assert_same_tensors, make_config, run_dirs, run_in_process
from tests.test_resume import assert_same_run, load_plain, metrics_rows
from utils.checkpoint.files import load_checkpoint

EPOCHS, SWA_START = 6, 3
SWA = {"dataset.args.test_size": 0.6, "data_loader.args.batch_size": 32, "arch.args.dropout": 0.3,
       "optimizer.args.lr": 0.01, "optimizer.param_groups": [{"match": "head", "name": "head", "lr": 0.02}],
       "lr_scheduler": {"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}},
       "trainer.epochs": EPOCHS, "trainer.save_period": 0,
       "trainer.swa": {"start": SWA_START, "lr": 0.004, "anneal_epochs": 2, "anneal_strategy": "linear"}}
BATCHES = 18  # 1,797 digits, 60% held out as test data, 20% of the rest for validation: 575 in batches of 32


@contextlib.contextmanager
def sigterm_at(forward_pass: int):
    """Send this process SIGTERM during its ``forward_pass``-th training forward pass."""
    original, count = BaseModel.__call__, 0

    def call(self, *args, **kwargs):
        nonlocal count
        output = original(self, *args, **kwargs)
        if self.training and torch.is_grad_enabled():
            count += 1
            if count == forward_pass:
                os.kill(os.getpid(), signal.SIGTERM)
        return output

    BaseModel.__call__ = call
    try:
        yield
    finally:
        BaseModel.__call__ = original


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("swa")
    run_in_process("train.py", "-c", str(make_config(folder, **SWA)), check=True)
    (run,) = run_dirs(folder)
    return run


def test_swa_follows_swalr_per_group_and_validates_the_average(reference, tmp_path):
    rows = metrics_rows(reference)
    lrs = [(float(row["lr_default"]), float(row["lr_head"])) for row in rows]
    # StepLR halves the rates until SWA starts; SWALR then anneals linearly to swa.lr over 2 epochs
    # (the head group to twice it, its ratio kept), and holds it.
    assert lrs[:SWA_START] == pytest.approx([(0.01 * 0.5 ** i, 0.02 * 0.5 ** i) for i in range(SWA_START)])
    start = lrs[SWA_START - 1]
    expected = [tuple(s + (0.004 * r - s) * min(1, t / 2) for s, r in zip(start, (1, 2))) for t in range(4)]
    assert lrs[SWA_START - 1 :] == pytest.approx(expected)

    last = load_plain(reference / "last.pth")
    swa = last["swa"]
    assert swa["start"] == SWA_START and swa["n_averaged"] == EPOCHS - SWA_START + 1
    # Validation scores the average: inference.py's weights of the checkpoint are the SWA average's.
    assert any(not torch.equal(swa["state_dict"][k], last["state_dict"][k]) for k in last["state_dict"])
    log_size = (reference / "info.log").stat().st_size
    inference.main(["--resume", str(reference / "last.pth"), "--split", "valid", "--output", str(tmp_path / "p.csv")])
    (loss,) = re.findall(r"\bloss (\d+\.\d+)", (reference / "info.log").read_text()[log_size:])
    assert float(loss) == pytest.approx(float(rows[-1]["val_loss"]), abs=2e-6)
    final = load_checkpoint(reference / "model_swa.pth")
    assert final["metrics"]["swa_n_averaged"] == swa["n_averaged"] and "val_accuracy" in final["metrics"]
    for key, tensor in final["state_dict"].items():  # the same average, with BatchNorm recomputed
        if "running_" not in key and "num_batches" not in key:
            assert torch.equal(tensor, swa["state_dict"][key]), key


def test_swa_resume_after_sigterm_in_epoch_4_equals_the_uninterrupted_run(reference, tmp_path):
    config = make_config(tmp_path, **SWA)
    with sigterm_at(3 * BATCHES + 5):  # the 5th batch of epoch 4, SWA having started in epoch 3
        stopped = run_in_process("train.py", "-c", str(config))
    assert stopped.returncode == 143, stopped.stderr
    (run,) = run_dirs(tmp_path)
    at_stop = load_plain(run / "last.pth")
    assert at_stop["epoch"] == 3 and at_stop["batches_done"] == 5 and at_stop["swa"]["n_averaged"] == 1

    run_in_process("train.py", "-r", str(run), check=True)
    assert_same_run(reference, run, epochs=EPOCHS)
    assert_identical(load_plain(reference / "last.pth")["swa"], load_plain(run / "last.pth")["swa"], "swa")
    assert_same_tensors(load_plain(reference / "model_swa.pth")["state_dict"],
                        load_plain(run / "model_swa.pth")["state_dict"])


def test_swa_settings_cannot_change_once_it_has_started(reference, tmp_path):
    result = run_in_process("train.py", "-r", str(reference), "trainer.epochs=7", "trainer.swa.lr=0.001")
    assert result.returncode == 2 and result.stderr.startswith("error: trainer.swa: cannot change"), result.stderr
