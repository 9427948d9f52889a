"""DistributedDataParallel on CPU (gloo), started the way torchrun starts it; AMP, accumulation, clipping."""
import copy
import json
import signal

import pandas as pd
import pytest
import torch

import train
from config_parser import ConfigParser
from tests.conftest import (
    IRIS_CONFIG,
    REPO,
    assert_identical,
    assert_same_tensors,
    make_config,
    run_dirs,
    run_in_process,
    run_script,
)
from utils.seeding import seed_everything

pytestmark = pytest.mark.slow

# 121 iris training samples (test_size 0.19), 25 held out: 96 for training, 6 batches of 8 per process and
# epoch (the same samples as 6 batches of 16 in one process). The 25 validation samples do not split
# evenly over 2 processes (13 + 12): padding the shards to equal sizes would count one sample twice.
DDP_CONFIG = copy.deepcopy(IRIS_CONFIG)
DDP_CONFIG["dataset"]["args"]["test_size"] = 0.19
DDP_CONFIG["data_loader"]["args"] |= {"validation_split": 25, "batch_size": 8}
DDP_CONFIG["trainer"] |= {"epochs": 4, "monitor": "min val_loss", "log_step": 2}
BATCHES_PER_EPOCH = 6


def torchrun(*args, processes: int = 2, **kwargs):
    return run_script("-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args,
                      **kwargs)


def weights(run) -> dict:
    return torch.load(run / "last.pth", weights_only=True, map_location="cpu")["state_dict"]


def last_state(run) -> dict:
    return torch.load(run / "last.pth", weights_only=True, map_location="cpu")


def metrics_without_time(run) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv", dtype=str).drop(columns=["epoch_time", "data_wait"])


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ddp")
    result = torchrun("tests/launch.py", "train.py", "-c", str(make_config(tmp_path, DDP_CONFIG)), check=True,
                      timeout=240)
    (run,) = run_dirs(tmp_path, "TinyIris")
    return run, result


def test_ddp_writes_one_run_directory_once(ddp_run):
    run, result = ddp_run
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3, 4]
    log = (run / "info.log").read_text()
    assert log.count("epoch 4/4") == 1, "only rank 0 logs"
    assert not any(key.startswith("module.") for key in weights(run))


def test_ddp_matches_one_process_with_the_same_global_batch(ddp_run, tmp_path):
    run, _ = ddp_run
    single = make_config(tmp_path, DDP_CONFIG, **{"data_loader.args.batch_size": 16})
    run_in_process("train.py", "-c", str(single), check=True)
    (single_run,) = run_dirs(tmp_path, "TinyIris")
    expected, got = weights(single_run), weights(run)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5)
    ddp_metrics, single_metrics = pd.read_csv(run / "metrics.csv"), pd.read_csv(single_run / "metrics.csv")
    # Validation is exact over all 25 samples of both processes (13 + 12), none counted twice.
    for column in ("val_loss", "val_accuracy"):
        assert ddp_metrics[column].tolist() == pytest.approx(single_metrics[column].tolist(), abs=1e-5)


def test_ddp_resume_and_checkpoints_across_ddp_and_single_process(ddp_run, tmp_path):
    run, _ = ddp_run
    config = make_config(tmp_path, DDP_CONFIG, **{"trainer.epochs": 2})
    torchrun("train.py", "-c", str(config), check=True, timeout=240)
    (part,) = run_dirs(tmp_path, "TinyIris")
    torchrun("train.py", "-r", str(part), "trainer.epochs=4", check=True, timeout=240)
    assert_same_tensors(weights(run), weights(part))  # a DDP resume ends where the uninterrupted DDP run ends
    assert list(pd.read_csv(part / "metrics.csv")["epoch"]) == [1, 2, 3, 4]
    # A DDP checkpoint continues in one process, and back under DDP.
    run_in_process("train.py", "-r", str(part), "trainer.epochs=5", "data_loader.args.batch_size=16", check=True)
    torchrun("train.py", "-r", str(part), "trainer.epochs=6", check=True, timeout=240)
    assert list(pd.read_csv(part / "metrics.csv")["epoch"]) == [1, 2, 3, 4, 5, 6]


LAUNCHER = """
import sys
sys.path.insert(0, {repo!r})
import train
import trainer as module_trainer
from trainer.trainer import Trainer
from utils import distributed as dist
from utils.cli import run_cli
from tests.launch import check_teardown

check_teardown()

class RankSkewedTrainer(Trainer):
    # Rank 0 sees no improvement after epoch 1; rank 1 sees one every epoch.
    def _train_epoch(self, epoch):
        log = super()._train_epoch(epoch)
        log["val_loss"] = 1.0 if dist.get_rank() == 0 else 1.0 / epoch
        return log

RankSkewedTrainer.__module__ = "trainer"
module_trainer.RankSkewedTrainer = RankSkewedTrainer
run_cli(lambda: train.main(sys.argv[1:]))
"""


def test_early_stopping_on_one_ranks_metric_stops_all_ranks(tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER.format(repo=str(REPO)))
    config = make_config(tmp_path, DDP_CONFIG, **{"trainer.type": "RankSkewedTrainer", "trainer.epochs": 8,
                                                  "trainer.early_stop": 2})
    torchrun(str(launcher), "-c", str(config), check=True, timeout=240)
    (run,) = run_dirs(tmp_path, "TinyIris")
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [1, 2, 3]


def test_non_finite_loss_on_one_process_stops_every_process(tmp_path):
    config = make_config(tmp_path, DDP_CONFIG)
    # Rank 1's outputs are NaN from its 8th training batch on (epoch 2, batch 2, a log step); rank 0's
    # losses up to then are finite, so it learns of the NaN only from rank 1.
    result = torchrun("tests/launch.py", "train.py", "-c", str(config), timeout=240,
                      env={"LAUNCH_RANK": "1", "LAUNCH_NAN_FROM": str(BATCHES_PER_EPOCH + 2)})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert any(line.startswith("error: epoch 2, batch 2: the loss is nan") for line in errors), result.stderr
    assert "error: epoch 2: the loss is not finite on another process" in errors, result.stderr
    (run,) = run_dirs(tmp_path, "TinyIris")
    checkpoint = last_state(run)
    assert checkpoint["epoch"] == 1 and checkpoint["batches_done"] == 0
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


def test_sigterm_on_one_process_mid_epoch_then_resume_equals_the_uninterrupted_run(ddp_run, tmp_path):
    reference, _ = ddp_run
    config = make_config(tmp_path, DDP_CONFIG)
    # SIGTERM reaches rank 0 only, in its 9th training batch (epoch 2, batch 3); both processes stop at
    # the next log step, after batch 4, and rank 0 saves the state of both.
    stopped = torchrun("tests/launch.py", "train.py", "-c", str(config), timeout=240,
                       env={"LAUNCH_SIGNALS": f"{signal.SIGTERM.value}@{BATCHES_PER_EPOCH + 3}"})
    assert stopped.returncode != 0
    (run,) = run_dirs(tmp_path, "TinyIris")
    assert f"stopped by SIGTERM; resume with: python train.py -r {run}" in stopped.stderr, stopped.stderr
    checkpoint = last_state(run)
    assert (checkpoint["epoch"], checkpoint["batches_done"]) == (1, 4)
    assert len(checkpoint["rng_states"]) == 2, "the random state of each process"

    torchrun("train.py", "-r", str(run), check=True, timeout=240)
    expected, actual = last_state(reference), last_state(run)
    assert_same_tensors(expected["state_dict"], actual["state_dict"])
    for key in ("epoch", "global_step", "optimizer", "monitor_best", "not_improved_count", "best_epoch"):
        assert_identical(expected[key], actual[key], key)
    pd.testing.assert_frame_equal(metrics_without_time(run), metrics_without_time(reference))


def test_gradient_accumulation_under_ddp_matches_the_same_global_batch(ddp_run, tmp_path):
    """Batches of 4, 2 processes, 2 accumulated batches: the same 16 samples per step as the DDP run
    with batches of 8 (and as one process with batches of 16)."""
    reference, _ = ddp_run
    config = make_config(tmp_path, DDP_CONFIG, **{"data_loader.args.batch_size": 4, "trainer.grad_accum_steps": 2})
    torchrun("train.py", "-c", str(config), check=True, timeout=240)
    (run,) = run_dirs(tmp_path, "TinyIris")
    assert last_state(run)["global_step"] == last_state(reference)["global_step"] == 4 * BATCHES_PER_EPOCH
    expected, got = weights(reference), weights(run)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-5)
    accumulated, plain = pd.read_csv(run / "metrics.csv"), pd.read_csv(reference / "metrics.csv")
    for column in ("loss", "val_loss", "val_accuracy"):
        assert accumulated[column].tolist() == pytest.approx(plain[column].tolist(), abs=1e-5)


def test_kfold_under_torchrun(tmp_path):
    config = make_config(tmp_path, DDP_CONFIG, **{"trainer.epochs": 2})
    torchrun("tests/launch.py", "kfold_train.py", "-c", str(config), "--folds", "2", check=True, timeout=300)
    (run,) = run_dirs(tmp_path, "TinyIris")
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert sorted(oof["id"]) == list(range(121))
    assert list(pd.read_csv(run / "kfold_summary.csv")["fold"].astype(str)) == ["0", "1", "mean", "std"]


def build(tmp_path, name: str, **changes):
    config = copy.deepcopy(DDP_CONFIG)
    config["trainer"] |= {"epochs": 1, "save_dir": str(tmp_path / name)}
    for path, value in changes.items():
        node, keys = config, path.split(".")
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    parser = ConfigParser(json.loads(json.dumps(config)))
    seed_everything(parser["seed"])
    trainer = train.build_trainer(parser)
    parser.start_run()
    return trainer


def test_gradient_accumulation_matches_a_full_batch(tmp_path):
    full = build(tmp_path, "full", **{"data_loader.args.batch_size": 16, "optimizer.type": "SGD"})
    accumulated = build(tmp_path, "accumulated", **{"data_loader.args.batch_size": 8,
                                                    "trainer.grad_accum_steps": 2, "optimizer.type": "SGD"})
    full.train(), accumulated.train()
    assert full.global_step == accumulated.global_step == 6, "steps count optimizer steps"
    for key, value in full.raw_model.state_dict().items():
        torch.testing.assert_close(accumulated.raw_model.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def test_gradient_clipping_bounds_each_update(tmp_path):
    trainer = build(tmp_path, "clip", **{"data_loader.args.batch_size": 96, "trainer.grad_clip_norm": 1e-3,
                                         "optimizer.args.lr": 1.0})
    before = torch.cat([p.detach().flatten().clone() for p in trainer.raw_model.parameters()])
    trainer.train()
    after = torch.cat([p.detach().flatten() for p in trainer.raw_model.parameters()])
    assert trainer.global_step == 1
    assert 0 < (after - before).norm() <= 1e-3 * (1 + 1e-4), "one SGD step of lr 1 moves at most the clip norm"


def test_bf16_autocast_on_cpu(tmp_path):
    trainer = build(tmp_path, "bf16", **{"trainer.amp": "bf16", "arch.args.hidden": [32]})
    dtypes = []
    trainer.raw_model.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    log = trainer.train()
    assert torch.bfloat16 in dtypes
    assert torch.isfinite(torch.tensor(log["loss"]))
