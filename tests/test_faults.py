"""Nothing lost under faults: a locked run directory, a failed checkpoint write, honest resume overrides."""
import json
import resource
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest

from config_parser import ConfigParser, training_arguments
from tests.conftest import REPO, make_config, run_dirs, run_in_process, run_script
from utils.checkpoint.files import load_checkpoint
from utils.checkpoint.runs import lock_run_dir
from utils.errors import ConfigError


def assert_one_error_line(result: subprocess.CompletedProcess, *words: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr + result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    """A finished 1-epoch run of the tiny digits config with a StepLR schedule (a checkpoint of about 100 KB)."""
    folder = tmp_path_factory.mktemp("one_epoch")
    scheduler = {"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}}
    run_in_process("train.py", "-c", str(make_config(folder, **{"trainer.epochs": 1, "lr_scheduler": scheduler})),
                   check=True)
    return run_dirs(folder)[0]


@pytest.fixture
def run(one_epoch_run, tmp_path):
    """A fresh copy of the 1-epoch run for one test."""
    return shutil.copytree(one_epoch_run, tmp_path / "run")


def files_of(run_dir) -> dict:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != "info.log"}


def test_a_second_process_on_a_locked_run_directory_is_refused(run):
    held = lock_run_dir(run)  # this test process holds the run, as a training run would
    before = files_of(run)
    result = run_script("train.py", "-r", str(run), "trainer.epochs=2")
    assert_one_error_line(result, str(run), "in use by another process", f"pid {__import__('os').getpid()}")
    assert files_of(run) == before  # nothing written, nothing removed
    held.close()


def test_the_lock_of_a_killed_process_is_released_by_the_kernel(run):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from utils.checkpoint.runs import "
                               f"lock_run_dir; f = lock_run_dir(__import__('pathlib').Path({str(run)!r})); "
                               "print('locked', flush=True); time.sleep(600)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
        lock_run_dir(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock_run_dir(run).close()  # no stale lock


def limit_file_size(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_a_checkpoint_write_failure_is_one_error_line_and_the_previous_checkpoint_stays(run):
    size = (run / "last.pth").stat().st_size
    result = subprocess.run([sys.executable, "train.py", "-r", str(run), "trainer.epochs=2", "--lr", "0.5"],
                            cwd=REPO, capture_output=True, text=True, timeout=300,
                            preexec_fn=limit_file_size(size // 2), env={**__import__("os").environ,
                                                                       "OMP_NUM_THREADS": "1"})
    line = assert_one_error_line(result, "last.pth", "epoch 2", "EFBIG", "still safe on disk", "last.pth")
    assert "saved model_best.pth" not in result.stdout + result.stderr
    assert not list(run.glob("*.tmp")), line
    assert load_checkpoint(run / "last.pth")["epoch"] == 1  # intact, and verified
    assert len(pd.read_csv(run / "metrics.csv")) == 2  # the epoch itself was recorded before the save
    # The override of the failed resume was not made permanent: config.json is the run's own.
    config = json.loads((run / "config.json").read_text())
    assert config["optimizer"]["args"]["lr"] == 0.01 and not config["resume_history"]


def test_a_failed_background_write_stops_the_next_epoch_within_a_few_batches(run):
    """last.pth alone is written in the background: its failure must not let training go on for epochs."""
    size = (run / "last.pth").stat().st_size
    result = subprocess.run([sys.executable, "train.py", "-r", str(run), "trainer.epochs=4", "trainer.monitor=off",
                             "trainer.log_step=2"], cwd=REPO, capture_output=True, text=True, timeout=300,
                            preexec_fn=limit_file_size(size // 2), env={**__import__("os").environ,
                                                                       "OMP_NUM_THREADS": "1"})
    assert_one_error_line(result, "last.pth", "epoch 2", "EFBIG", "still safe on disk")
    assert not list(run.glob("*.tmp"))
    assert load_checkpoint(run / "last.pth")["epoch"] == 1
    assert len(pd.read_csv(run / "metrics.csv")) == 2, "it stopped in epoch 3, not after training on"


def test_resume_with_a_new_lr_and_gamma_trains_with_them_and_records_the_change(run):
    result = run_in_process("train.py", "-r", str(run), "trainer.epochs=2", "--lr", "0.05",
                            "lr_scheduler.args.gamma=0.1", check=True)
    assert "optimizer.args.lr changed at epoch 2: 0.01 -> 0.05" in result.stdout + result.stderr
    lrs = pd.read_csv(run / "metrics.csv")["lr"].tolist()
    # Epoch 2 trains at the rate a new run with the new config has there: 0.05 * 0.1 ** (2 - 1).
    assert lrs == [0.01, pytest.approx(0.05 * 0.1)]
    checkpoint = load_checkpoint(run / "last.pth")
    assert checkpoint["lr_scheduler"]["gamma"] == 0.1 and checkpoint["lr_scheduler"]["base_lrs"] == [0.05]
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.1 ** 2)  # after epoch 2
    config = json.loads((run / "config.json").read_text())
    assert config["optimizer"]["args"]["lr"] == 0.05
    assert config["resume_history"] == [{"epoch": 2, "changes": {
        "optimizer.args.lr": {"from": 0.01, "to": 0.05}, "lr_scheduler.args.gamma": {"from": 0.5, "to": 0.1},
        "trainer.epochs": {"from": 1, "to": 2}}}]
    assert checkpoint["config"] == config  # still a config the schema accepts, and the checkpoint's


@pytest.mark.parametrize("change", ["seed=2", "data_loader.args.validation_split=0.3", "arch.args.widths=[8,8]"])
def test_a_change_of_what_the_finished_epochs_meant_is_refused(run, change):
    with pytest.raises(ConfigError, match=f"^{change.split('=')[0]}: cannot change when resuming.*--finetune"):
        ConfigParser.from_args(training_arguments("", ""), argv=["-r", str(run), change]).resume_point()


def test_a_refused_resume_change_is_one_error_line(run):
    assert_one_error_line(run_in_process("train.py", "-r", str(run), "seed=5"), "seed", "new run", "--finetune")
