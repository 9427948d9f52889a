"""What a face-mask style competition needs from a config alone: inference after a balanced sampler,
MultiHead hold-outs stratified on the combined class with persons kept whole, readable class names."""
import copy
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold

from config_parser import ConfigParser
from dataset.datasets import IrisDataset
from logger.class_balance import class_balance_table
from tests.conftest import IRIS_CONFIG, make_config, run_dirs, run_in_process
from train import build_data_loader

MASKS = ["mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal"]


def face_mask_layout(root, persons: int = 12, size: int = 16) -> list[dict]:
    """``root/<id>_<gender>_Asian_<age>/<photo>.png``, seven photos per person, and each photo's labels
    (mask 0 wear / 1 incorrect / 2 not worn; gender 0 male / 1 female; age bin 0 <30, 1 30-59, 2 >=60).

    The picture shows its labels (a block per head), so a small model learns them in an epoch or two.
    """
    rows = []
    rng = np.random.default_rng(0)
    for person in range(persons):
        gender, age = ("male", "female")[person % 2], (20, 45, 60, 25, 59, 70)[person % 6]
        folder = f"{person + 1:06d}_{gender}_Asian_{age}"
        for photo in MASKS:
            mask = 0 if photo.startswith("mask") else 1 if photo == "incorrect_mask" else 2
            labels = {"mask": mask, "gender": int(gender == "female"), "age": int(age >= 30) + int(age >= 60)}
            pixels = rng.integers(0, 40, (size, size, 3))
            for channel, head in enumerate(("mask", "gender", "age")):
                pixels[:, channel * size // 3:(channel + 1) * size // 3, channel] += 100 * labels[head]
            path = root / folder / f"{photo}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
            rows.append({"path": f"{folder}/{photo}.png", "person": folder, **labels})
    return rows


# -- inference ignores the training sampler ------------------------------------------------------
@pytest.fixture(scope="module")
def balanced_runs(tmp_path_factory):
    """A run and a 2-fold k-fold run of iris trained with the balanced sampler (a quarter of the draws)."""
    tmp = tmp_path_factory.mktemp("balanced")
    config = make_config(tmp, IRIS_CONFIG, **{"trainer.epochs": 1, "data_loader.args.sampler": "balanced",
                                               "data_loader.args.samples_per_epoch": 30,
                                               "data_loader.args.drop_last": True})
    run_in_process("train.py", "-c", str(config), check=True)
    run_in_process("kfold_train.py", "-c", str(config), "--folds", "2", check=True)
    single, kfold = run_dirs(tmp, "TinyIris")
    return single, kfold


@pytest.mark.parametrize("which", ["checkpoint", "kfold directory"])
def test_inference_reads_every_test_sample_once_whatever_the_training_sampler(balanced_runs, which):
    single, kfold = balanced_runs
    target = single / "model_best.pth" if which == "checkpoint" else kfold
    output = target.parent / f"predictions_{which.split()[0]}.csv"
    run_in_process("inference.py", "--resume", str(target), "--output", str(output), check=True)
    predictions = pd.read_csv(output)
    test_targets = IrisDataset(train=False).targets
    assert predictions["id"].tolist() == list(range(len(test_targets)))  # in order, each once
    assert predictions["target"].tolist() == test_targets


# -- MultiHead: the hold-out stratifies on the combined class, persons kept whole ------------------
def test_multihead_holdout_keeps_persons_whole_and_stratifies_on_the_combined_class(tmp_path):
    rows = face_mask_layout(tmp_path / "images", persons=24, size=4)
    pd.DataFrame(rows).to_csv(tmp_path / "images" / "train.csv", index=False)
    config = ConfigParser(copy.deepcopy(IRIS_CONFIG) | {
        "dataset": {"type": "ImageDataset", "args": {"root": str(tmp_path / "images"), "csv_file": "train.csv",
                                                     "label_column": ["mask", "gender", "age"],
                                                     "group_column": "person"}},
        "data_loader": {"type": "ImageDataLoader", "args": {"validation_split": 0.25, "stratify": True,
                                                            "split_seed": 3, "num_workers": 0}},
        "task": {"type": "MultiHead", "args": {"heads": {"mask": 3, "gender": 2, "age": 3}}},
    })
    loader = build_data_loader(config, config.init_obj("task"))
    persons = np.array([row["person"] for row in rows])
    assert not set(persons[loader.train_indices]) & set(persons[loader.valid_indices])
    combined = np.array([row["mask"] * 6 + row["gender"] * 3 + row["age"] for row in rows])
    codes = np.unique(persons, return_inverse=True)[1]
    reference = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=3)
    _, expected = next(reference.split(np.zeros(len(rows)), combined, codes))
    assert loader.valid_indices.tolist() == sorted(expected.tolist())


# -- the class-balance table ---------------------------------------------------------------------
def test_class_balance_table_shows_whole_class_names():
    names = ["incorrect_male_<30", "incorrect_male_30-59", "incorrect_male_>=60", "a"]
    train, valid = np.array([5, 7, 11, 2]), np.array([1, 2, 3, 0])
    rows = class_balance_table(train, valid, names).splitlines()[1:]
    for name, row, count in zip(names, rows, train):
        assert re.fullmatch(rf"{re.escape(name)} +{count} .*", row), row

