"""A custom trainer written as README's "A custom Trainer" shows keeps every guarantee.

The README's code is trained with a step scheduler, bf16 autocast, gradient accumulation and
clipping: the learning rate follows the schedule, a SIGTERM in the middle of an epoch and `-r` end
bitwise equal to the run that was never stopped, and the subclass's step is really used. An old-style
`_train_epoch` override keeps its epoch schedule too.

The stopped and resumed runs copy the README's code, as a user would, into trainer/ of a copy of the
repository and run there in new processes; the runs they are compared with run the same code in this
process, as modules of the trainer package.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import trainer as module_trainer
from tests.conftest import REPO, make_config, run_dirs, run_in_process, run_script
from tests.test_resume import assert_same_run, load_plain, metrics_rows, stop, wait_for_first_epoch

RECIPE = {"trainer.type": "MixupTrainer", "trainer.amp": "bf16", "trainer.grad_accum_steps": 2,
          "trainer.grad_clip_norm": 1.0, "trainer.epochs": 3, "data_loader.args.batch_size": 8,
          "dataset.args.test_size": 0.6,  # 575 training digits: 72 batches of 8 per epoch
          "lr_scheduler": {"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}}}
SCHEDULE = [0.01, 0.005, 0.0025]  # Adam's lr 0.01 halved after every epoch
BATCHES = 72

OLD_STYLE = '''
import torch

from trainer.trainer import Trainer


class EpochTrainer(Trainer):
    """The original template's way: the whole epoch rewritten, without any scheduler code."""

    def _train_epoch(self, epoch):
        self.model.train()
        self.data_loader.set_epoch(epoch)
        self.train_metrics.reset()
        for data, target in self.data_loader:
            output = self.model(data)
            loss = self.criterion(output, target)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            self.train_metrics.update(loss.detach(), output.detach(), target)
        (self.run_dir / "epoch_trainer_used").touch()
        return self.train_metrics.result() | self._valid_epoch(epoch)
'''


def readme_blocks() -> dict[str, str]:
    """The python blocks of README's "A custom Trainer" section, by the file their first line names."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### A custom Trainer"):]
    section = section[:section.index("\n## ")]
    blocks = re.findall(r"```python\n# (\S+)\n(.*?)```", section, flags=re.S)
    return dict(blocks)


@pytest.fixture(scope="module")
def user_repo(tmp_path_factory) -> Path:
    """A copy of the repository with the README's trainer added where the README says."""
    repo = tmp_path_factory.mktemp("user_repo") / "template"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(".git", "saved", "__pycache__", "tests", "wandb"))
    blocks = readme_blocks()
    assert set(blocks) == {"trainer/mixup_trainer.py", "trainer/__init__.py"}, blocks.keys()
    (repo / "trainer" / "mixup_trainer.py").write_text(blocks["trainer/mixup_trainer.py"])
    (repo / "trainer" / "epoch_trainer.py").write_text(OLD_STYLE)
    with open(repo / "trainer" / "__init__.py", "a") as init:
        init.write(blocks["trainer/__init__.py"] + "from trainer.epoch_trainer import EpochTrainer\n")
    return repo


def train_here(folder: Path, changes: dict) -> Path:
    """train.py's main in this process; the run directory."""
    run_in_process("train.py", "-c", str(make_config(folder, **changes)), check=True)
    (run,) = run_dirs(folder)
    return run


def add_trainers(patch: pytest.MonkeyPatch) -> None:
    """What the README's two files and the old-style file do in the user's copy, done in this process:
    their code run as modules of the trainer package, and its ``__init__.py`` line run."""
    blocks = readme_blocks()
    for name, code in (("trainer.mixup_trainer", blocks["trainer/mixup_trainer.py"]),
                       ("trainer.epoch_trainer", OLD_STYLE)):
        module = types.ModuleType(name)
        exec(code, module.__dict__)
        patch.setitem(sys.modules, name, module)
    init_lines = {}
    exec(blocks["trainer/__init__.py"] + "from trainer.epoch_trainer import EpochTrainer\n", init_lines)
    for name in ("MixupTrainer", "EpochTrainer"):
        patch.setattr(module_trainer, name, init_lines[name], raising=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted custom run, a plain Trainer run and the old-style run, in this process."""
    jobs = {"mixup": RECIPE, "plain": RECIPE | {"trainer.type": "Trainer"},
            "old style": {"trainer.type": "EpochTrainer", "trainer.epochs": 3, "dataset.args.test_size": 0.6,
                          "lr_scheduler": {"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}}}}
    with pytest.MonkeyPatch.context() as patch:
        add_trainers(patch)
        return {name: train_here(tmp_path_factory.mktemp(name.replace(" ", "_")), changes)
                for name, changes in jobs.items()}


def lrs(run: Path) -> list[float]:
    return [float(row["lr"]) for row in metrics_rows(run)]


@pytest.mark.slow
def test_readme_trainer_follows_the_schedule_and_is_used(runs):
    assert lrs(runs["mixup"]) == SCHEDULE
    assert load_plain(runs["mixup"] / "last.pth")["lr_scheduler"]["last_epoch"] == 3
    # The mixed batches are what it trained on: its training loss is not the plain Trainer's.
    mixup_losses = [row["loss"] for row in metrics_rows(runs["mixup"])]
    plain_losses = [row["loss"] for row in metrics_rows(runs["plain"])]
    assert all(a != b for a, b in zip(mixup_losses, plain_losses))


@pytest.mark.slow
def test_readme_trainer_resumes_bitwise_after_sigterm_mid_epoch(runs, user_repo, tmp_path):
    config = make_config(tmp_path, **RECIPE)
    env = {**os.environ, "PYTHONHASHSEED": "0", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "train.py", "-c", str(config)], cwd=user_repo, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, epoch_time = wait_for_first_epoch(tmp_path, process)
        time.sleep(0.25 * epoch_time)  # a quarter into epoch 2
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        stop(process)
    assert process.returncode == 143, stderr
    (run,) = run_dirs(tmp_path)
    assert 0 < load_plain(run / "last.pth")["batches_done"] < BATCHES, "the signal did not land mid-epoch"

    run_script("train.py", "-r", str(run), cwd=user_repo, check=True)
    assert_same_run(runs["mixup"], run, epochs=3)


@pytest.mark.slow
def test_old_style_epoch_override_keeps_its_schedule(runs):
    run = runs["old style"]
    assert (run / "epoch_trainer_used").is_file()
    assert lrs(run) == SCHEDULE
    assert load_plain(run / "last.pth")["lr_scheduler"]["last_epoch"] == 3
