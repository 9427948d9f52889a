"""Each kind of component can be added by defining it in its module and naming it in the config.

The tests add components at run time, as a user adds them to the module files, and train one epoch
with train.py's own main(): the scripts are never edited.
"""
import copy
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import data_loader.data_loaders as module_data
import dataset.datasets as module_dataset
import model.loss as module_loss
import model.metric as module_metric
import model.model as module_arch
import train
import trainer as module_trainer
from base import Metric
from base.base_data_loader import BaseDataLoader
from base.base_dataset import BaseDataset
from base.base_model import BaseModel
from tests.conftest import REPO, TINY_CONFIG, make_config, run_dirs
from trainer.trainer import Trainer


def add_to_module(monkeypatch, module, obj):
    """What writing ``obj`` into ``module``'s file does: it becomes a public name defined there."""
    monkeypatch.setattr(obj, "__module__", module.__name__)
    monkeypatch.setattr(module, obj.__name__, obj, raising=False)


def train_once(tmp_path, **changes) -> pd.DataFrame:
    config = copy.deepcopy(TINY_CONFIG)
    config["trainer"]["epochs"] = 1
    tmp_path.mkdir(parents=True, exist_ok=True)
    train.main(["-c", str(make_config(tmp_path, config, **changes))])
    (run,) = run_dirs(tmp_path)
    return pd.read_csv(run / "metrics.csv")


class TinyCNN(BaseModel):
    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(width, num_classes)
        self.built_with_width = width

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def test_add_a_model(tmp_path, monkeypatch):
    add_to_module(monkeypatch, module_arch, TinyCNN)
    metrics = train_once(tmp_path, arch={"type": "TinyCNN", "args": {"num_classes": 10, "width": 4}})
    (run,) = run_dirs(tmp_path)
    state = torch.load(run / "last.pth", weights_only=True)
    assert state["arch"] == "TinyCNN" and state["state_dict"]["fc.weight"].shape == (10, 4)
    assert len(metrics) == 1


class ParityDataset(BaseDataset):
    """Vectors labelled by whether their sum is above 0."""

    def __init__(self, n: int = 200, features: int = 6, train: bool = True, train_transform=None,
                 eval_transform=None):
        super().__init__(train_transform, eval_transform)
        generator = torch.Generator().manual_seed(0 if train else 1)
        self.x = torch.randn(n, features, generator=generator)
        self.targets = (self.x.sum(1) > 0).long().tolist()
        self.augment = train

    def __len__(self):
        return len(self.targets)

    def load(self, index):
        return self.x[index], self.targets[index]


def test_add_a_dataset(tmp_path, monkeypatch):
    add_to_module(monkeypatch, module_dataset, ParityDataset)
    add_to_module(monkeypatch, module_metric, SampleCount)
    metrics = train_once(tmp_path, dataset={"type": "ParityDataset", "args": {"n": 120}},
                         arch={"type": "MLP", "args": {"in_features": 6, "num_classes": 2, "hidden": [8]}},
                         metrics=["accuracy", {"type": "SampleCount", "name": "samples"}])
    # The 120 parity vectors, not the digits: 20% held out, and the model reads 6 features.
    assert list(metrics["samples"]) == [96] and list(metrics["val_samples"]) == [24]
    (run,) = run_dirs(tmp_path)
    assert torch.load(run / "last.pth", weights_only=True)["state_dict"]["net.0.weight"].shape == (8, 6)


calls = []


def counting_collate(batch):
    calls.append(len(batch))
    return torch.utils.data.default_collate(batch)


class CountingLoader(BaseDataLoader):
    def __init__(self, dataset, batch_size=32, **kwargs):
        super().__init__(dataset, batch_size, collate_fn=counting_collate, **kwargs)


def test_add_a_data_loader(tmp_path, monkeypatch):
    add_to_module(monkeypatch, module_data, CountingLoader)
    calls.clear()
    train_once(tmp_path, data_loader={"type": "CountingLoader", "args": {"batch_size": 50, "validation_split": 0.2}})
    assert calls and max(calls) == 50


def halved_cross_entropy(output, target, factor: float = 0.5):
    return factor * F.cross_entropy(output, target)


def test_add_a_loss(tmp_path, monkeypatch):
    add_to_module(monkeypatch, module_loss, halved_cross_entropy)
    plain = train_once(tmp_path / "plain")
    halved = train_once(tmp_path / "halved", loss={"type": "halved_cross_entropy", "args": {"factor": 0.5}})
    # Adam is invariant to the scale of the loss, so only the logged loss halves.
    assert halved["loss"].iloc[0] == pytest.approx(plain["loss"].iloc[0] / 2, rel=1e-3)


def error_rate(output, target):
    return (output.argmax(1) != target).float().mean()


class SampleCount(Metric):
    def reset(self):
        self.count = None

    def update(self, output, target):
        n = torch.tensor(float(len(target)))
        self.count = n if self.count is None else self.count + n

    def state(self):
        return [self.count] if self.count is not None else []

    def load_state(self, tensors):
        self.count = tensors[0] if tensors else None

    def compute(self):
        return float(self.count)


def test_add_metrics(tmp_path, monkeypatch):
    add_to_module(monkeypatch, module_metric, error_rate)
    add_to_module(monkeypatch, module_metric, SampleCount)
    metrics = train_once(tmp_path, metrics=["accuracy", "error_rate", {"type": "SampleCount", "name": "samples"},
                                            {"type": "top_k_acc", "args": {"k": 2}, "name": "top2"}])
    row = metrics.iloc[0]
    assert row["accuracy"] + row["error_rate"] == pytest.approx(1.0)
    assert row["samples"] == 1437 - round(1437 * 0.2) and row["val_samples"] == round(1437 * 0.2)
    assert row["top2"] >= row["accuracy"]


@pytest.mark.parametrize("optimizer", [{"type": "RMSprop", "args": {"lr": 0.001, "momentum": 0.5}},
                                       {"type": "SGD", "args": {"lr": 0.05, "nesterov": True, "momentum": 0.9}}])
def test_use_another_optimizer(tmp_path, optimizer):
    train_once(tmp_path, optimizer=optimizer)
    (run,) = run_dirs(tmp_path)
    state = torch.load(run / "last.pth", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["momentum"] == optimizer["args"]["momentum"]


def test_step_scheduler(tmp_path):
    metrics = train_once(tmp_path, lr_scheduler={"type": "OneCycleLR", "interval": "step",
                                                 "args": {"max_lr": 0.01, "total_steps": 40}})
    (run,) = run_dirs(tmp_path)
    state = torch.load(run / "last.pth", weights_only=True)
    assert state["lr_scheduler"]["last_epoch"] == state["global_step"] == 18  # 1150 samples / 64 per batch
    assert metrics["lr"].iloc[0] == pytest.approx(0.01 / 25)  # OneCycleLR starts at max_lr / div_factor


def test_add_transforms(tmp_path, monkeypatch):
    seen = []  # (training view?, the sample as transformed, the sample as loaded)
    original = BaseDataset.__getitem__

    def spy(self, key):
        sample, target = original(self, key)
        index = key[0] if isinstance(key, tuple) else key
        seen.append((self.augment, sample, self.load(index)[0]))
        return sample, target

    monkeypatch.setattr(BaseDataset, "__getitem__", spy)
    train_once(tmp_path, **{"dataset.args.train_transform": [
        {"type": "RandomAffine", "args": {"degrees": 10, "translate": [0.1, 0.1]}},
        {"type": "RandomApply", "args": {"transforms": [{"type": "GaussianBlur", "args": {"kernel_size": 3}}],
                                         "p": 0.5}}]})
    training = [(sample, raw) for augment, sample, raw in seen if augment]
    validation = [(sample, raw) for augment, sample, raw in seen if not augment]
    assert len(training) >= 1150 and len(validation) == 287
    # Training samples went through the transforms (a random affine map changes most 8x8 images: 86% here) ...
    changed = sum(not torch.equal(sample, raw) for sample, raw in training)
    assert changed >= 0.5 * len(training), f"only {changed} of {len(training)} training samples were transformed"
    assert all(sample.shape == raw.shape and sample.dtype == raw.dtype for sample, raw in training)
    # ... and validation samples, without an eval_transform, are left as they are.
    assert all(torch.equal(sample, raw) for sample, raw in validation)


class HalfStepTrainer(Trainer):
    """A custom training epoch: trains on the first half of each batch only."""

    def _train_epoch(self, epoch):
        self.model.train()
        self.data_loader.set_epoch(epoch)
        self.train_metrics.reset()
        for data, target in self.data_loader:
            data, target = data[: len(data) // 2 + 1], target[: len(target) // 2 + 1]
            output = self.model(data)
            loss = self.criterion(output, target)
            loss.backward()
            self._optimizer_step()
            self.train_metrics.update(loss.detach(), output.detach(), target)
        log = self.train_metrics.result() | self._valid_epoch(epoch)
        return log | {"lr": self.optimizer.param_groups[0]["lr"]}


def test_custom_trainer(tmp_path, monkeypatch):
    add_to_module(monkeypatch, module_trainer, HalfStepTrainer)
    add_to_module(monkeypatch, module_metric, SampleCount)
    metrics = train_once(tmp_path, **{"trainer.type": "HalfStepTrainer",
                                      "metrics": ["accuracy", {"type": "SampleCount", "name": "samples"}]})
    (run,) = run_dirs(tmp_path)
    state = torch.load(run / "last.pth", weights_only=True)
    assert state["global_step"] == 18 and state["config"]["trainer"]["type"] == "HalfStepTrainer"
    # 1,150 training samples in batches of 64 (17 full, then 62); it trains on len // 2 + 1 of each.
    batches = [64] * 17 + [62]
    assert sum(batches) == 1150
    assert metrics["samples"].iloc[0] == sum(n // 2 + 1 for n in batches)  # 593, where Trainer counts 1150
    assert metrics["val_samples"].iloc[0] == 287  # validation is the inherited one


def test_new_project_copy_is_clean_and_its_tests_pass(tmp_path):
    target = tmp_path / "my_project"
    subprocess.run([sys.executable, "-m", "utils.new_project", str(target)], cwd=REPO, check=True,
                   capture_output=True)
    names = {p.name for p in target.rglob("*")}
    assert {"train.py", "config.json", "README.md", "requirements.txt", ".ci"} <= names
    assert not names & {".git", "saved", "__pycache__", ".pytest_cache", "wandb"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
                             "tests/test_smoke.py"],
                            cwd=target, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    again = subprocess.run([sys.executable, "-m", "utils.new_project", str(target)], cwd=REPO,
                           capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "not empty" in again.stderr
