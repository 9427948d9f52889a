"""The library side a user builds on: the bases exported from base/, the original template's configs.

- ``from base import BaseDataset, BaseDataLoader, BaseModel, BaseTrainer, Metric`` works, and a user
  metric subclassing ``Metric`` trains and resumes exactly;
- the original template's config (an image folder given as ``data_dir``, ``validation_split: 2``)
  runs, and its ``nll_loss`` on a model that returns logits stops with one line naming the loss.
"""
import copy
import json

import pandas as pd
import pytest
import torch

import model.metric as module_metric
import train
from tests.conftest import TINY_CONFIG, make_config, run_dirs, run_in_process
from tests.test_image_dataset import save_image
from utils.errors import ConfigError


def test_every_base_class_is_exported_from_base():
    import base

    for name in ("BaseDataset", "BaseDataLoader", "BaseModel", "BaseTrainer", "Metric"):
        assert isinstance(getattr(base, name), type), name
    from trainer.trainer import Trainer

    assert issubclass(Trainer, base.BaseTrainer)


def test_the_engine_does_not_import_the_users_metric_file():
    """model/metric.py is the user's: the trainer's confusion matrix comes from the library."""
    from pathlib import Path

    from tests.conftest import REPO

    engine = [*Path(REPO / "base").glob("*.py"), REPO / "trainer" / "trainer.py", REPO / "logger" / "recorder.py"]
    for engine_file in engine:
        assert "model.metric" not in engine_file.read_text(), engine_file


class WrongCount(__import__("base").Metric):
    """A user metric with running totals: the number of misclassified samples of the epoch."""

    def reset(self):
        self.wrong = None

    def update(self, output, target):
        wrong = (output.argmax(1) != target).sum()
        self.wrong = wrong if self.wrong is None else self.wrong + wrong

    def state(self):
        return [self.wrong] if self.wrong is not None else []

    def load_state(self, tensors):
        self.wrong = tensors[0] if tensors else None

    def compute(self):
        return float(self.wrong)


def test_a_user_metric_trains_and_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(WrongCount, "__module__", module_metric.__name__)
    monkeypatch.setattr(module_metric, "WrongCount", WrongCount, raising=False)
    changes = {"metrics": ["accuracy", {"type": "WrongCount", "name": "wrong"}], "trainer.epochs": 2}
    straight, split = tmp_path / "straight", tmp_path / "split"
    straight.mkdir(), split.mkdir()
    train.main(["-c", str(make_config(straight, **changes))])
    train.main(["-c", str(make_config(split, **changes | {"trainer.epochs": 1}))])
    (run,) = run_dirs(split)
    train.main(["-r", str(run), "trainer.epochs=2"])

    expected = pd.read_csv(run_dirs(straight)[0] / "metrics.csv").drop(columns=["epoch_time", "data_wait"])
    resumed = pd.read_csv(run / "metrics.csv").drop(columns=["epoch_time", "data_wait"])
    pd.testing.assert_frame_equal(expected, resumed, check_exact=True)
    # The count is what accuracy says, over the 1,150 training and 287 validation samples.
    for prefix, n in (("", 1150), ("val_", 287)):
        assert (resumed[f"{prefix}wrong"] == ((1 - resumed[f"{prefix}accuracy"]) * n).round()).all()


def original_template_config(tmp_path, loss: str) -> str:
    """The original template's README config, with the image folder path filled in."""
    root = tmp_path / "images"
    for label, value in (("cat", 30), ("dog", 120), ("eel", 220)):
        for i in range(5):
            save_image(root / label / f"{i}.png", value + 5 * i, size=(16, 16))
    config = {
        "name": "Original_Template", "n_gpu": 1,
        "arch": {"type": "ResNet", "args": {"num_blocks": [1], "widths": [8], "num_classes": 3, "in_channels": 3,
                                            "stem": "small"}},
        "dataset": {"type": "ImageDataset", "args": {"data_dir": str(root)}},
        "data_loader": {"type": "ImageDataLoader", "args": {"batch_size": 4, "shuffle": True,
                                                            "validation_split": 2, "num_workers": 2}},
        "optimizer": {"type": "Adam", "args": {"lr": 0.001, "weight_decay": 0, "amsgrad": True}},
        "loss": loss,
        "metrics": ["accuracy", "top_k_acc"],
        "lr_scheduler": {"type": "StepLR", "args": {"step_size": 50, "gamma": 0.1}},
        "trainer": {"epochs": 2, "save_dir": str(tmp_path / "saved"), "save_period": 1, "verbosity": 2,
                    "monitor": "min val_loss", "early_stop": 10, "tensorboard": True},
    }
    path = tmp_path / f"config_{loss}.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.slow
def test_the_original_template_config_runs_and_its_nll_loss_on_logits_is_one_line(tmp_path):
    result = run_in_process("train.py", "-c", original_template_config(tmp_path, "cross_entropy"))
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(tmp_path, "Original_Template")
    assert len(pd.read_csv(run / "metrics.csv")) == 2
    # Two validation samples: their accuracy is 0, 0.5 or 1.
    assert set(pd.read_csv(run / "metrics.csv")["val_accuracy"]) <= {0.0, 0.5, 1.0}

    result = run_in_process("train.py", "-c", original_template_config(tmp_path, "nll_loss"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: loss: nll_loss"), result.stderr
    assert "cross_entropy" in lines[0]
    assert len(run_dirs(tmp_path, "Original_Template")) == 1, "it stopped before creating a run directory"


def test_nll_loss_on_log_probabilities_trains(tmp_path, monkeypatch):
    import model.model as module_arch
    from model.model import MLP

    class LogSoftmaxMLP(MLP):
        def forward(self, x):
            return super().forward(x).log_softmax(dim=1)

    monkeypatch.setattr(LogSoftmaxMLP, "__module__", module_arch.__name__)
    monkeypatch.setattr(module_arch, "LogSoftmaxMLP", LogSoftmaxMLP, raising=False)
    config = copy.deepcopy(TINY_CONFIG)
    config["arch"] = {"type": "LogSoftmaxMLP", "args": {"in_features": 64, "num_classes": 10, "hidden": [16]}}
    train.main(["-c", str(make_config(tmp_path, config, loss="nll_loss", **{"trainer.epochs": 1}))])
    assert pd.read_csv(run_dirs(tmp_path)[0] / "metrics.csv")["val_accuracy"].iloc[0] > 0.5


def test_image_dataset_takes_data_dir_for_root(tmp_path):
    from dataset.datasets import ImageDataset

    for i in range(2):
        save_image(tmp_path / "a" / f"{i}.png", 10)
        save_image(tmp_path / "b" / f"{i}.png", 200)
    assert ImageDataset(data_dir=str(tmp_path)).classes == ImageDataset(root=str(tmp_path)).classes == ["a", "b"]
    with pytest.raises(ConfigError, match="root"):
        ImageDataset(root=str(tmp_path), data_dir=str(tmp_path))


def test_an_unstratifiable_validation_count_falls_back_to_a_random_split(caplog):
    from data_loader.data_loaders import DigitsDataLoader
    from dataset.datasets import DigitsDataset

    loader = DigitsDataLoader(DigitsDataset(train=True), batch_size=8, validation_split=2, stratify=True)
    assert len(loader.valid_indices) == 2 and len(loader.train_indices) == 1437 - 2
    assert "using a random split" in caplog.text


def test_batches_of_tuples_lists_and_dicts_move_to_the_device():
    from collections import namedtuple

    from utils.util import to_device

    Pair = namedtuple("Pair", "image mask")
    batch = {"images": torch.zeros(2, 3, 4, 4), "extra": [torch.ones(2), (torch.ones(1), "name")],
             "pair": Pair(torch.zeros(2, 1, 4, 4), torch.ones(2)), "count": 3}
    moved = to_device(batch, torch.device("cpu"), channels_last=True)
    assert moved["images"].is_contiguous(memory_format=torch.channels_last)
    assert isinstance(moved["extra"], list) and isinstance(moved["extra"][1], tuple)
    assert moved["extra"][1][1] == "name" and moved["count"] == 3
    assert isinstance(moved["pair"], Pair) and moved["pair"].image.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved["extra"][0], batch["extra"][0])
