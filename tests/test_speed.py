"""Speed without losing a guarantee: checkpoints written while training goes on, the time spent waiting
for data measured (data_wait), and the data set held on the device (data_loader.args.on_device)."""
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from base.base_data_loader import BaseDataLoader
from dataset.datasets import DigitsDataset
from tests.conftest import REPO, assert_identical, launch, make_config, run_dirs, run_in_process
from utils.checkpoint.files import load_checkpoint

TIMING = ("epoch_time", "data_wait")


def final_state(run) -> dict:
    checkpoint = load_checkpoint(run / "last.pth")
    metrics = {key: value for key, value in checkpoint["metrics"].items() if key not in TIMING}
    return {"epoch": checkpoint["epoch"], "state_dict": checkpoint["state_dict"], "metrics": metrics,
            "optimizer": checkpoint["optimizer"], "global_step": checkpoint["global_step"]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-epoch run of the tiny config (checkpoints in the background, the default)."""
    folder = tmp_path_factory.mktemp("reference")
    run_in_process("train.py", "-c", str(make_config(folder, **{"trainer.epochs": 3})), check=True)
    return final_state(run_dirs(folder)[0]), pd.read_csv(run_dirs(folder)[0] / "metrics.csv")


# A signal at a (seeded) random forward pass of the 54 (3 epochs of 18 batches), while every checkpoint
# write takes 0.3 s longer: most signals land while a write is pending. SIGKILL comes in epoch 3, once a
# checkpoint is surely complete (epoch 2's save waited for epoch 1's write; before, there may be none).
# The last one also holds the data on the device: without transforms it trains on the very same
# batches, so it ends the same.
FAULTS = [(signal.SIGKILL, False), (signal.SIGTERM, False), (signal.SIGINT, True)]


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "on_device"), FAULTS, ids=["SIGKILL", "SIGTERM", "SIGINT on device"])
def test_a_signal_at_a_random_moment_with_background_writes_resumes_bitwise(reference, tmp_path, signum, on_device):
    at = random.Random(int(signum)).randrange(37 if signum == signal.SIGKILL else 4, 54)
    config = make_config(tmp_path, **{"trainer.epochs": 3, "data_loader.args.on_device": on_device})
    stopped = launch("train.py", "-c", str(config), faults={"LAUNCH_SIGNALS": f"{int(signum)}@{at}",
                                                            "LAUNCH_WRITE_DELAY": "0.3"})
    assert stopped.returncode in (-signal.SIGKILL, 128 + signum), stopped.stderr
    (run,) = run_dirs(tmp_path)
    assert list(run.glob("*.tmp")) == [] or signum == signal.SIGKILL  # a kill may leave one; resume removes it
    resumed = run_in_process("train.py", "-r", str(run), check=True)
    assert not list(run.glob("*.tmp")), resumed.stdout
    expected, expected_rows = reference
    assert_identical(expected, final_state(run))
    rows = pd.read_csv(run / "metrics.csv")
    pd.testing.assert_frame_equal(rows.drop(columns=list(TIMING)), expected_rows.drop(columns=list(TIMING)))
    assert (run / "checkpoint-epoch3.pth").stat().st_ino == (run / "last.pth").stat().st_ino  # a hard link


def test_training_goes_on_while_a_checkpoint_is_written(tmp_path, monkeypatch):
    """The write of epoch 1 cannot finish before epoch 2 is trained and recorded: with the loop
    waiting for the write, it would wait until the write gives up."""
    from logger.recorder import RunRecorder
    from utils.checkpoint import files

    epoch_2_recorded, finished_early = threading.Event(), []
    original_write, original_log = files.save_checkpoint, RunRecorder.log_epoch

    def write(state, path):
        if not finished_early:  # the first write: epoch 1's last.pth
            finished_early.append(epoch_2_recorded.wait(timeout=30))
        original_write(state, path)

    def log_epoch(self, log, *args, **kwargs):
        original_log(self, log, *args, **kwargs)
        if log["epoch"] == 2:
            epoch_2_recorded.set()

    monkeypatch.setattr(files, "save_checkpoint", write)
    monkeypatch.setattr(RunRecorder, "log_epoch", log_epoch)
    run_in_process("train.py", "-c", str(make_config(tmp_path, **{"trainer.epochs": 2})), check=True)
    assert finished_early == [True], "the loop waited for the checkpoint write"
    (run,) = run_dirs(tmp_path)
    assert load_checkpoint(run / "checkpoint-epoch1.pth")["epoch"] == 1  # the delayed write completed
    assert load_checkpoint(run / "last.pth")["epoch"] == 2


def test_the_snapshot_is_taken_at_the_save(tmp_path, monkeypatch):
    """A background write saves the state as it was at the save, not as training changed it since."""
    from utils.checkpoint import files
    from utils.checkpoint.snapshot import StateSnapshot
    from utils.checkpoint.writer import CheckpointWriter

    stepped, original = threading.Event(), files.save_checkpoint
    monkeypatch.setattr(files, "save_checkpoint", lambda state, path: stepped.wait(30) and original(state, path))
    weights = torch.arange(6.0)
    writer = CheckpointWriter()
    writer.save({"format_version": 1, "epoch": 1, "w": weights, "tied": weights}, tmp_path / "last.pth")
    weights += 100  # the next optimizer step, in place, before the writer writes
    stepped.set()
    writer.wait()
    saved = load_checkpoint(tmp_path / "last.pth")
    assert torch.equal(saved["w"], torch.arange(6.0)) and saved["tied"] is saved["w"]
    numpy_state = np.arange(3)  # RNG states hold numpy arrays
    copied = StateSnapshot().copy({"rng": [numpy_state]})
    numpy_state += 1
    assert copied["rng"][0].tolist() == [0, 1, 2]


def sleepy_load(seconds: float):
    original = DigitsDataset.load

    def load(self, index):
        time.sleep(seconds)
        return original(self, index)
    return load


def test_a_slow_dataset_shows_in_data_wait_and_warns_once(tmp_path, monkeypatch):
    monkeypatch.setattr(DigitsDataset, "load", sleepy_load(0.002))
    config = make_config(tmp_path, **{"trainer.epochs": 2, "dataset.args.train": False})
    samples = len(DigitsDataset(train=False))  # each one loaded once an epoch: training and validation
    result = run_in_process("train.py", "-c", str(config), check=True)
    rows = pd.read_csv(run_dirs(tmp_path)[0] / "metrics.csv")
    assert list(rows.columns[-2:]) == ["epoch_time", "data_wait"]
    # An independent lower bound: every sample slept 2 ms, and nothing else waited for it.
    assert (rows["data_wait"] * rows["epoch_time"] >= 0.002 * samples).all()
    assert (rows["data_wait"] > 0.5).all(), rows
    warnings = [line for line in result.stdout.splitlines() if "waited for data" in line]
    assert len(warnings) == 1 and "num_workers" in warnings[0] and "on_device" in warnings[0], result.stdout
    assert "data_wait 0." in result.stdout  # in the epoch's log line


def test_the_default_config_is_not_input_bound(tmp_path):
    config = make_config(tmp_path, base=__import__("json").loads((REPO / "config.json").read_text()),
                         **{"trainer.epochs": 1, "trainer.tensorboard": False})
    result = run_in_process("train.py", "-c", str(config), check=True)
    (run,) = run_dirs(tmp_path, "Digits_ResNet")
    assert pd.read_csv(run / "metrics.csv")["data_wait"].iloc[0] < 0.3
    assert "waited for data" not in result.stdout


def loaders(monkeypatch, rank: int = 0, world: int = 1, **kwargs) -> tuple[BaseDataLoader, BaseDataLoader]:
    """The same loader on the CPU path and on the device (the CPU here), as process ``rank`` of ``world``."""
    import utils.data.samplers as samplers

    monkeypatch.setattr(samplers, "get_rank", lambda: rank)
    monkeypatch.setattr(samplers, "get_world_size", lambda: world)
    args = {"batch_size": 32, "validation_split": 0.2, "seed": 5, **kwargs}
    return BaseDataLoader(DigitsDataset(), **args), BaseDataLoader(DigitsDataset(), **args, on_device=True)


@pytest.mark.parametrize(("rank", "world"), [(0, 1), (1, 2)])
def test_on_device_batches_come_in_the_cpu_order(monkeypatch, rank, world):
    cpu, device = loaders(monkeypatch, rank, world, drop_last=True)
    for epoch, skip in [(1, 0), (2, 0), (2, 5)]:  # (2, 5): resuming after 5 batches of epoch 2
        for loader in (cpu, device):
            loader.set_epoch(epoch)
            loader.skip_batches(skip)
        expected, actual = list(cpu), list(device)
        assert len(actual) == len(expected) == len(device) and len(expected) > 0
        for (x, y), (dx, dy) in zip(expected, actual):
            assert torch.equal(x, dx) and torch.equal(y, dy)
    for (x, y), (dx, dy) in zip(cpu.split_validation(), device.split_validation(), strict=True):
        assert torch.equal(x, dx) and torch.equal(y, dy)


def test_on_device_augmentation_is_per_sample_and_seeded(monkeypatch):
    augment = v2.Compose([v2.RandomCrop(8, padding=2), v2.RandomHorizontalFlip()])
    dataset = DigitsDataset(train_transform=augment)
    loader = BaseDataLoader(dataset, batch_size=64, validation_split=0, seed=5, on_device=True)
    small = BaseDataLoader(dataset, batch_size=7, validation_split=0, seed=5, on_device=True)
    loader.set_epoch(1), small.set_epoch(1)
    batches = torch.cat([x for x, _ in loader])
    assert torch.equal(batches, torch.cat([x for x, _ in small])), "a sample's augmentation depends on its batch"
    order = [index for index, _ in loader.epoch_sampler]
    flips, offsets = 0, set()
    for image, index in zip(batches, order):  # each output is a window of the padded, maybe flipped, image
        padded = F.pad(dataset.images[index], [2, 2, 2, 2])
        found = [(flip, top, left) for flip in (False, True) for top in range(5) for left in range(5)
                 if torch.equal((padded.flip(-1) if flip else padded)[:, top:top + 8, left:left + 8], image)]
        assert found, index
        flips += all(flip for flip, _, _ in found)
        offsets |= {(top, left) for _, top, left in found}
    n = len(order)
    assert abs(flips - n / 2) < 4 * (n / 4) ** 0.5 + 0.05 * n  # p = 0.5, allowing for symmetric images
    assert len(offsets) == 25, "every crop position is drawn"


def test_on_device_refuses_a_transform_that_works_on_one_sample(tmp_path):
    affine = [{"type": "RandomAffine", "args": {"degrees": 9}}]
    config = make_config(tmp_path, **{"data_loader.args.on_device": True, "dataset.args.train_transform": affine})
    result = run_in_process("train.py", "-c", str(config))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: data_loader.args.on_device") and "RandomAffine" in lines[0]



@pytest.fixture(scope="module")
def ddp_run_after_epoch_1(tmp_path_factory):
    """A 4-epoch DDP run killed after epoch 3 was recorded, before its checkpoint: last.pth holds epoch 1
    or 2 (the write of epoch 2 runs in the background, and the save of epoch 3 would have waited for it;
    that of epoch 1 is complete, since the save of epoch 2 waited for it)."""
    from tests.test_distributed import DDP_CONFIG, torchrun

    folder = tmp_path_factory.mktemp("ddp")
    killed = torchrun("tests/launch.py", "train.py", "-c", str(make_config(folder, DDP_CONFIG)), timeout=240,
                      env={"LAUNCH_KILL_AFTER_EPOCH": "3"})
    assert killed.returncode != 0
    (run,) = run_dirs(folder, "TinyIris")
    assert load_checkpoint(run / "last.pth")["epoch"] in (1, 2)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("change", [[], ["trainer.monitor=off"]], ids=["in the background", "waited for"])
def test_a_failed_write_under_ddp_stops_every_process(ddp_run_after_epoch_1, tmp_path, change):
    """Rank 0's write of epoch 2 fails (a file-size limit), in the background or (the first save after a
    resume change) while the loop waits for it: both processes stop, each with one line, and the
    previous checkpoint stays."""
    from tests.test_faults import limit_file_size

    run = shutil.copytree(ddp_run_after_epoch_1, tmp_path / "run")
    size, epoch = (run / "last.pth").stat().st_size, load_checkpoint(run / "last.pth")["epoch"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "train.py", "-r", str(run), *change], cwd=REPO, capture_output=True, text=True,
                            timeout=240, preexec_fn=limit_file_size(size // 2),
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    # One error line from each process (they may share a line of the common stderr), no traceback.
    assert result.stderr.count("error: ") == 2, result.stderr
    assert result.stderr.count(f"cannot write the checkpoint of epoch {epoch + 1}: File too large (EFBIG)") == 1, \
        result.stderr
    assert result.stderr.count("error: checkpoint: the main process could not write a checkpoint") == 1
    assert "[rank0]: Traceback" not in result.stderr and "[rank1]: Traceback" not in result.stderr
    assert load_checkpoint(run / "last.pth")["epoch"] == epoch and not list(run.glob("*.tmp"))
    assert len(pd.read_csv(run / "metrics.csv")) <= epoch + 2, "they went on training after the failure"
