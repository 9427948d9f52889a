"""A frozen backbone under DDP (torchrun, 2 processes on CPU): once unfrozen, its gradients are averaged
over the processes like the head's, so every process holds the same weights at the end."""
import copy

import pytest
import torch

from tests.conftest import IRIS_CONFIG, REPO, assert_same_tensors, make_config, run_dirs, run_script

pytestmark = pytest.mark.slow

# An MLP that names its head, and a trainer that saves each process's own final weights.
LAUNCHER = """
import sys
sys.path.insert(0, {repo!r})
import torch
import model.model as module_model
import trainer as module_trainer
import train
from model.model import MLP
from trainer.trainer import Trainer
from utils import distributed as dist
from utils.cli import run_cli
from tests.launch import check_teardown

check_teardown()  # the wrapper replaced at the unfreeze included

class HeadMLP(MLP):
    def head_names(self):
        return ["net.3"]

class RankWeightsTrainer(Trainer):
    def train(self):
        log = super().train()
        torch.save(self.raw_model.state_dict(), {out!r} + f"/rank{{dist.get_rank()}}.pth")
        return log

HeadMLP.__module__, RankWeightsTrainer.__module__ = "model.model", "trainer"
module_model.HeadMLP, module_trainer.RankWeightsTrainer = HeadMLP, RankWeightsTrainer
run_cli(lambda: train.main(sys.argv[1:]))
"""
CONFIG = copy.deepcopy(IRIS_CONFIG)
CONFIG["arch"]["type"] = "HeadMLP"
CONFIG["data_loader"]["args"] |= {"batch_size": 8, "validation_split": 25}
CONFIG["trainer"] |= {"type": "RankWeightsTrainer", "epochs": 2, "freeze_backbone_epochs": 1, "save_period": 1,
                      "log_step": 4}


def test_after_the_unfreeze_every_process_keeps_the_same_backbone(tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(repo=str(REPO), out=str(tmp_path)))
    run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(launcher),
               "-c", str(make_config(tmp_path, CONFIG)), check=True, timeout=240)
    ranks = [torch.load(tmp_path / f"rank{rank}.pth", weights_only=True) for rank in (0, 1)]
    assert_same_tensors(ranks[0], ranks[1])
    (run,) = run_dirs(tmp_path, "TinyIris")
    frozen = torch.load(run / "checkpoint-epoch1.pth", weights_only=True)["state_dict"]
    start = frozen["net.0.weight"]
    assert not torch.equal(ranks[0]["net.0.weight"], start), "the backbone trained in epoch 2"
