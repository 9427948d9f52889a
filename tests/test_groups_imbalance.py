"""Grouped splits, the balanced sampler, "balanced" class weights and the class-balance report,
checked against scikit-learn's splitters and compute_class_weight."""
import copy
import json
import re
import signal

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold
from sklearn.utils.class_weight import compute_class_weight

import kfold_train
import train
from base.base_data_loader import BaseDataLoader
from dataset.datasets import ImageDataset
from kfold_train import make_folds
from model.loss import cross_entropy
from tests.conftest import IRIS_CONFIG, make_config, run_dirs
from trainer.trainer import Trainer
from utils.data.samplers import BalancedEpochSampler
from utils.data.splits import split_indices
from utils.errors import DataError, TrainingInterrupted


class Table:
    """The least a split needs: a length, targets and groups."""

    def __init__(self, targets, groups):
        self.targets, self.groups = list(targets), list(groups)

    def __len__(self):
        return len(self.targets)


def grouped_table(n_groups: int = 40, seed: int = 0) -> Table:
    """Groups of 1 to 6 samples; most samples of a group share its (imbalanced) class."""
    rng = np.random.default_rng(seed)
    targets, groups = [], []
    for group in range(n_groups):
        label = rng.choice(3, p=[0.6, 0.3, 0.1])
        for _ in range(rng.integers(1, 7)):
            targets.append(int(label if rng.random() < 0.8 else rng.integers(3)))
            groups.append(f"person{group}")
    return Table(targets, groups)


def group_sets(table: Table, *parts) -> list[set]:
    return [{table.groups[i] for i in part} for part in parts]


# -- 1. groups -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("stratify", [True, False])
def test_validation_split_keeps_every_group_on_one_side(stratify):
    table = grouped_table()
    train_part, valid = split_indices(table, 0.2, stratify, split_seed=3)
    train_groups, valid_groups = group_sets(table, train_part, valid)
    assert not train_groups & valid_groups
    assert sorted(np.concatenate([train_part, valid])) == list(range(len(table)))
    assert 0.1 < len(valid) / len(table) < 0.35


def test_stratified_group_holdout_is_the_first_fold_of_sklearns_splitter():
    table = grouped_table()
    _, valid = split_indices(table, 0.2, True, split_seed=3)
    codes = np.unique(table.groups, return_inverse=True)[1]
    reference = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=3)
    _, expected = next(reference.split(np.zeros(len(table)), table.targets, codes))
    assert valid.tolist() == sorted(expected.tolist())


def test_group_split_false_is_the_split_by_sample():
    table = grouped_table()
    no_groups = Table(table.targets, [None] * len(table))
    no_groups.groups = None
    for stratify in (True, False):
        got = split_indices(table, 0.2, stratify, 3, group_split=False)
        expected = split_indices(no_groups, 0.2, stratify, 3)
        assert all(np.array_equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("stratified", [True, False])
def test_kfold_with_groups_holds_every_group_out_once_as_sklearn_does(stratified):
    table = grouped_table()
    folds = make_folds(table.targets, len(table), 4, stratified, True, 5, groups=table.groups)
    codes = np.unique(table.groups, return_inverse=True)[1]
    splitter = (StratifiedGroupKFold if stratified else GroupKFold)(n_splits=4, shuffle=True, random_state=5)
    expected = list(splitter.split(np.zeros(len(table)), table.targets, codes))
    assert [held.tolist() for _, held in folds] == [held.tolist() for _, held in expected]
    held_groups = group_sets(table, *(held for _, held in folds))
    assert sum(len(g) for g in held_groups) == len(set(table.groups)), "a group is held out by two folds"


def test_too_few_groups_or_a_group_larger_than_a_fold_is_one_error():
    few = Table([0, 1, 0, 1], ["a", "a", "b", "b"])
    with pytest.raises(DataError, match="2 groups, fewer than the 3 parts"):
        make_folds(few.targets, 4, 3, True, True, 0, groups=few.groups)
    big = Table([0, 1] * 10, ["big"] * 12 + list("abcdefgh"))
    with pytest.raises(DataError, match="group 'big' has 12 samples, more than one of the 2 parts"):
        make_folds(big.targets, 20, 2, False, True, 0, groups=big.groups)
    with pytest.raises(DataError, match="group 'big'"):
        split_indices(big, 0.5, False, 0)


def save_image(path, value: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def face_mask_folders(root, people: int = 12):
    """root/<class>/<person>_<kind>.png: each person has a photo in each class."""
    for person in range(people):
        for label, kind in enumerate(("mask", "incorrect", "normal")):
            save_image(root / kind / f"{person:06d}_{kind}{person % 2}.png", 20 * person + label)
    return root


def face_mask_csv(root, people: int = 12):
    rows = []
    for person in range(people):
        for photo, label in enumerate(("mask", "mask", "mask", "normal")):
            path = f"{person:06d}/{photo}.png"
            save_image(root / path, 10 * person + photo)
            rows.append({"path": path, "label": label, "person": f"p{person}"})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    return root


def test_image_folders_read_groups_from_the_pattern_and_split_by_them(tmp_path):
    dataset = ImageDataset(str(face_mask_folders(tmp_path / "images")), group_pattern=r"^(\d+)_")
    assert dataset.groups == [f"{i:06d}" for i in range(12)] * 3
    loader = BaseDataLoader(dataset, batch_size=4, validation_split=0.25, stratify=True)
    train_groups, valid_groups = group_sets(dataset, loader.train_indices, loader.valid_indices)
    assert valid_groups and not train_groups & valid_groups


def test_csv_group_column_and_pattern_errors(tmp_path):
    root = face_mask_csv(tmp_path / "images")
    dataset = ImageDataset(str(root), csv_file="train.csv", group_column="person")
    assert dataset.groups == [f"p{i // 4}" for i in range(48)]
    pattern = ImageDataset(str(root), csv_file="train.csv", group_pattern=r"^(\d+)/")
    assert pattern.groups == [f"{i // 4:06d}" for i in range(48)]
    with pytest.raises(DataError, match=r"csv, line 2: group_pattern '\^x\(\\d\+\)' does not match '000000/0.png'"):
        ImageDataset(str(root), csv_file="train.csv", group_pattern=r"^x(\d+)")
    with pytest.raises(ValueError, match="group_pattern: .* has no capture group"):
        ImageDataset(str(root), csv_file="train.csv", group_pattern=r"^\d+")


GROUPED_CONFIG = {
    "name": "Grouped",
    "n_gpu": 0,
    "seed": 2,
    "arch": {"type": "MLP", "args": {"in_features": 192, "num_classes": 2, "hidden": [8]}},
    "dataset": {"type": "ImageDataset", "args": {"root": "", "csv_file": "train.csv", "group_column": "person"}},
    "data_loader": {"type": "ImageDataLoader", "args": {"batch_size": 8, "validation_split": 0.25,
                                                         "num_workers": 0, "stratify": True}},
    "optimizer": {"type": "SGD", "args": {"lr": 0.1}},
    "loss": {"type": "cross_entropy", "args": {"class_weights": "balanced"}},
    "metrics": ["accuracy"],
    "trainer": {"epochs": 1, "save_dir": "saved/", "monitor": "min val_loss", "tensorboard": True,
                "progress_bar": False},
}


def sklearn_folds(root) -> dict:
    """{sample id: the fold holding it out} as StratifiedGroupKFold splits GROUPED_CONFIG's data (seed 2)."""
    dataset = ImageDataset(str(root), csv_file="train.csv", group_column="person")
    codes = np.unique(dataset.groups, return_inverse=True)[1]
    expected = StratifiedGroupKFold(n_splits=3, shuffle=True, random_state=2).split(
        np.zeros(len(dataset)), dataset.targets, codes)
    return {dataset.sample_id(int(i)): k for k, (_, held) in enumerate(expected) for i in held}


def test_kfold_oof_has_fold_and_group_columns_and_no_group_in_two_folds(tmp_path):
    root = face_mask_csv(tmp_path / "images")
    config = make_config(tmp_path, GROUPED_CONFIG, **{"dataset.args.root": str(root)})
    kfold_train.main(["-c", str(config), "--folds", "3"])
    (run,) = run_dirs(tmp_path, "Grouped")
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert list(oof.columns[:3]) == ["id", "fold", "group"]
    assert oof.groupby("group")["fold"].nunique().max() == 1
    assert oof.set_index("id")["fold"].to_dict() == sklearn_folds(root)
    log = (run / "info.log").read_text()
    assert "k-fold by groups (StratifiedGroupKFold): 12 groups, held out per fold: 4, 4, 4" in log
    assert "validation split (the given indices (k-fold)): 8 groups (32 samples) for training, 4 groups (16 " \
           "samples) for validation, 0 groups on both sides" in (run / "fold_0" / "info.log").read_text()


# -- 2. class weights ------------------------------------------------------------------------------------
SYNTHETIC_CONFIG = copy.deepcopy(IRIS_CONFIG)
SYNTHETIC_CONFIG["dataset"] = {"type": "SyntheticDataset", "args": {"num_samples": 90, "shape": [4],
                                                                     "num_classes": 3, "seed": 4}}
SYNTHETIC_CONFIG["data_loader"]["args"] |= {"stratify": False, "validation_split": 0.3, "batch_size": 8}
SYNTHETIC_CONFIG["loss"] = {"type": "cross_entropy", "args": {"class_weights": "balanced"}}
SYNTHETIC_CONFIG["trainer"]["epochs"] = 1


def test_balanced_class_weights_equal_sklearns_on_the_training_split_and_are_checkpointed(tmp_path):
    import inference
    from dataset.datasets import SyntheticDataset

    train.main(["-c", str(make_config(tmp_path, SYNTHETIC_CONFIG))])
    (run,) = run_dirs(tmp_path, "TinyIris")
    checkpoint = torch.load(run / "last.pth", weights_only=True)
    targets = np.asarray(SyntheticDataset(90, [4], 3, seed=4).targets)
    train_part, _ = split_indices(Table(targets, []), 0.3, False, 0, group_split=False)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=targets[train_part])
    assert checkpoint["loss_args"]["class_weights"] == pytest.approx(expected.tolist(), rel=1e-12)
    assert not np.allclose(expected, compute_class_weight("balanced", classes=np.arange(3), y=targets))
    # inference's loss uses the checkpoint's weights: it equals the run's val_loss
    inference.main(["--resume", str(run / "last.pth"), "--split", "valid", "-o", str(tmp_path / "p.csv")])
    val_loss = pd.read_csv(run / "metrics.csv")["val_loss"].iloc[-1]
    logged = float((run / "info.log").read_text().split(" - loss ")[-1].split()[0])
    assert logged == pytest.approx(val_loss, rel=1e-5)


def test_weighted_cross_entropy_is_the_mean_of_weighted_sample_losses():
    output, target = torch.randn(16, 3), torch.randint(0, 3, (16,))
    weights = [0.5, 2.0, 1.5]
    expected = (F.cross_entropy(output, target, reduction="none") * torch.tensor(weights)[target]).mean()
    torch.testing.assert_close(cross_entropy(output, target, class_weights=weights), expected)


# -- 3. the balanced sampler -----------------------------------------------------------------------------
IMBALANCED = np.array([0] * 900 + [1] * 90 + [2] * 10)


def drawn(sampler) -> list:
    return list(sampler)


def test_balanced_sampler_draws_every_class_about_equally_and_deterministically():
    sampler = BalancedEpochSampler(np.arange(1000), IMBALANCED, seed=7, num_replicas=1, rank=0,
                                   samples_per_epoch=3000)
    sampler.set_epoch(3)
    first = drawn(sampler)
    counts = np.bincount(IMBALANCED[[index for index, _ in first]], minlength=3)
    assert len(first) == 3000
    assert np.all(np.abs(counts - 1000) < 5 * np.sqrt(3000 * (1 / 3) * (2 / 3))), counts  # 5 sigma
    assert drawn(sampler) == first, "the draw depends on (seed, epoch) alone"
    sampler.set_epoch(4)
    assert drawn(sampler) != first


def test_balanced_sampler_shares_the_draw_across_processes_without_overlap_and_skips():
    single = BalancedEpochSampler(np.arange(1000), IMBALANCED, 7, 1, 0, samples_per_epoch=1001)
    ranks = [BalancedEpochSampler(np.arange(1000), IMBALANCED, 7, 2, rank, samples_per_epoch=1001) for rank in (0, 1)]
    shares = [drawn(r) for r in ranks]
    assert len(shares[0]) == len(shares[1]) == 501
    seeds = [{seed for _, seed in share} for share in shares]
    assert not seeds[0] & seeds[1], "a draw read by both processes"
    interleaved = [key for pair in zip(*shares) for key in pair][:1001]
    assert interleaved == drawn(single)
    ranks[1].skip = 100
    assert drawn(ranks[1]) == shares[1][100:] and len(ranks[1]) == 401


BALANCED_CONFIG = copy.deepcopy(IRIS_CONFIG)
BALANCED_CONFIG["data_loader"]["args"] |= {"sampler": "balanced", "samples_per_epoch": 100, "batch_size": 10}
BALANCED_CONFIG["trainer"] |= {"epochs": 2, "log_step": 100}


def test_balanced_sampler_resumes_bitwise_from_the_middle_of_an_epoch(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    train.main(["-c", str(make_config(tmp_path / "a", BALANCED_CONFIG))])
    (reference,) = run_dirs(tmp_path / "a", "TinyIris")
    calls = {"n": 0}
    original = Trainer._train_step

    def stop_in_epoch_two(self, data, target):
        calls["n"] += 1
        if calls["n"] == 14:  # the 4th of epoch 2's 10 batches
            self.stop_signal = signal.SIGTERM
        return original(self, data, target)

    monkeypatch.setattr(Trainer, "_train_step", stop_in_epoch_two)
    with pytest.raises(TrainingInterrupted):
        train.main(["-c", str(make_config(tmp_path / "b", BALANCED_CONFIG))])
    monkeypatch.setattr(Trainer, "_train_step", original)
    (run,) = run_dirs(tmp_path / "b", "TinyIris")
    assert torch.load(run / "last.pth", weights_only=True)["batches_done"] == 4
    train.main(["-r", str(run)])
    expected = torch.load(reference / "last.pth", weights_only=True)["state_dict"]
    got = torch.load(run / "last.pth", weights_only=True)["state_dict"]
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


# -- 4. the class-balance report -------------------------------------------------------------------------
def test_class_balance_report_in_the_log_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = face_mask_csv(tmp_path / "images")
    train.main(["-c", str(make_config(tmp_path, GROUPED_CONFIG, **{"dataset.args.root": str(root)}))])
    (run,) = run_dirs(tmp_path, "Grouped")
    log = (run / "info.log").read_text()
    assert "validation split (StratifiedGroupKFold): 9 groups (36 samples) for training, 3 groups (12 samples) " \
           "for validation, 0 groups on both sides" in log
    dataset = ImageDataset(str(root), csv_file="train.csv", group_column="person")
    config = json.loads((run / "config.json").read_text())
    loader = BaseDataLoader(dataset, validation_split=0.25, stratify=True, seed=config["seed"])
    train_counts = np.bincount(np.asarray(dataset.targets)[loader.train_indices])
    assert re.search(rf"^mask +{train_counts[0]} ", log, re.M) and re.search(rf"^normal +{train_counts[1]} ", log, re.M)
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert "data/class_balance" in events.Tags()["images"]


# -- 5. under torchrun ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_groups_and_the_balanced_sampler_under_torchrun_with_ema_and_mixup(tmp_path):
    """2 gloo processes: folds hold out whole groups as in one process; the balanced sampler, the EMA and
    MixUp run under DDP; the out-of-fold predictions cover every sample once."""
    from tests.test_distributed import torchrun

    root = face_mask_csv(tmp_path / "images")
    config = make_config(tmp_path, GROUPED_CONFIG, **{
        "dataset.args.root": str(root), "data_loader.args.sampler": "balanced", "trainer.epochs": 2,
        "trainer.ema": {"decay": 0.9}, "trainer.mixup": {"mixup_alpha": 0.4, "cutmix_alpha": 0.0}})
    torchrun("kfold_train.py", "-c", str(config), "--folds", "3", check=True, timeout=300)
    (run,) = run_dirs(tmp_path, "Grouped")
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert len(oof) == 48 and oof["id"].is_unique
    assert oof.groupby("group")["fold"].nunique().max() == 1
    assert oof.set_index("id")["fold"].to_dict() == sklearn_folds(root)
    checkpoint = torch.load(run / "fold_0" / "last.pth", weights_only=True)
    assert checkpoint["ema"] is not None and len(checkpoint["rng_states"]) == 2
