"""What a face-mask style competition needs from a config alone: inference after a balanced sampler,
MultiHead hold-outs stratified on the combined class with persons kept whole, readable class names."""
import copy
import json
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
from train import build_trainer, split_labels

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
    dataset = config.init_obj("dataset")
    loader = config.init_data_loader("data_loader", dataset=dataset, **split_labels(config, config.task, dataset))
    persons = np.array([row["person"] for row in rows])
    assert not set(persons[loader.train_indices]) & set(persons[loader.valid_indices])
    combined = np.array([row["mask"] * 6 + row["gender"] * 3 + row["age"] for row in rows])
    codes = np.unique(persons, return_inverse=True)[1]
    reference = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=3)
    _, expected = next(reference.split(np.zeros(len(rows)), combined, codes))
    assert loader.valid_indices.tolist() == sorted(expected.tolist())


def test_a_grouped_holdout_of_label_rows_stratifies_on_their_combinations():
    """Without the task's labels (a loader of one's own), 2-D targets count each distinct row as a class."""
    from utils.data.splits import split_indices

    rng = np.random.default_rng(0)
    persons = np.repeat(np.arange(30), 4)  # groups p00 ... p29: their sorted order is their number
    table = type("Table", (), {"__len__": lambda self: 120})()
    table.targets = rng.integers(0, 2, (120, 2)).tolist()
    table.groups = [f"p{person:02d}" for person in persons]
    _, valid = split_indices(table, 0.25, True, 4)
    codes = np.array([2 * a + b for a, b in table.targets])  # each row's combination as one class
    _, expected = next(StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=4).split(codes, codes, persons))
    assert valid.tolist() == sorted(expected.tolist())


def test_a_regression_holdout_stratifies_on_the_tasks_quantile_bins(tmp_path):
    from sklearn.model_selection import train_test_split

    values = np.random.default_rng(0).gamma(2.0, size=100)
    pd.DataFrame({"x": np.arange(100.0), "y": values}).to_csv(tmp_path / "table.csv", index=False)
    config = ConfigParser(copy.deepcopy(IRIS_CONFIG) | {
        "dataset": {"type": "TableDataset", "args": {"csv_file": str(tmp_path / "table.csv"), "label_column": "y"}},
        "data_loader": {"type": "TableDataLoader", "args": {"validation_split": 0.2, "stratify": True,
                                                            "split_seed": 5}},
        "arch": {"type": "MLP", "args": {"in_features": 1, "num_classes": 1, "hidden": [4]}},
        "task": "Regression", "loss": "mse_loss", "metrics": [],
    })
    loader = build_trainer(config).data_loader
    bins = pd.qcut(values, 10, labels=False)
    _, expected = train_test_split(np.arange(100), test_size=20, stratify=bins, random_state=5)
    assert loader.valid_indices.tolist() == sorted(expected.tolist())


# -- the class-balance table ---------------------------------------------------------------------
def test_class_balance_table_shows_whole_class_names():
    names = ["incorrect_male_<30", "incorrect_male_30-59", "incorrect_male_>=60", "a"]
    train, valid = np.array([5, 7, 11, 2]), np.array([1, 2, 3, 0])
    rows = class_balance_table(train, valid, names).splitlines()[1:]
    for name, row, count in zip(names, rows, train):
        assert re.fullmatch(rf"{re.escape(name)} +{count} .*", row), row



# -- the competition end to end, from configs/facemask.json alone ------------------------------------
SMALL = {  # configs/facemask.json, shrunk to seconds on a CPU
    "n_gpu": 0, "arch.args.num_blocks": [1], "arch.args.widths": [8], "arch.args.stem": "small",
    "dataset.args.image_size": 16, "dataset.args.train_transform": [{"type": "RandomHorizontalFlip"}],
    "dataset.args.eval_transform": [], "inference.dataset.args.image_size": 16,
    "data_loader.args.num_workers": 0, "data_loader.args.batch_size": 16, "trainer.epochs": 2,
    "trainer.tensorboard": False, "trainer.progress_bar": False,
}


@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    """The layout: train/images/<person>/<photo>.png, eval/images/<id>.png and eval/info.csv (ImageID, ans)
    in an order of its own; a 2-fold k-fold run of configs/facemask.json and inference of its ensemble."""
    tmp = tmp_path_factory.mktemp("facemask")
    face_mask_layout(tmp / "train" / "images", persons=12)
    test_rows = face_mask_layout(tmp / "eval" / "people", persons=3)
    (tmp / "eval" / "images").mkdir()
    names = [f"{(i * 2654435761) % 2**32:08x}.png" for i in range(len(test_rows))]  # ids that hide the labels
    for row, name in zip(test_rows, names):
        (tmp / "eval" / "people" / row["path"]).rename(tmp / "eval" / "images" / name)
    order = np.random.default_rng(1).permutation(len(names))
    pd.DataFrame({"ImageID": [names[i] for i in order], "ans": 0}).to_csv(tmp / "eval" / "info.csv", index=False)
    overrides = SMALL | {"dataset.args.root": str(tmp / "train" / "images"), "+data_loader.args.sampler": "balanced",
                         "inference.dataset.args.root": str(tmp / "eval" / "images"),
                         "inference.submission.csv": str(tmp / "eval" / "info.csv"),
                         "trainer.save_dir": str(tmp / "saved")}
    args = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    train_log = run_in_process("kfold_train.py", "-c", "configs/facemask.json", "--folds", "2", *args, check=True)
    (run,) = run_dirs(tmp, "FaceMask")
    inference_log = run_in_process("inference.py", "--resume", str(run), check=True)
    return tmp, run, train_log.stdout + inference_log.stdout


def test_the_config_alone_trains_grouped_folds_of_the_heads(competition):
    tmp, run, log = competition
    oof = pd.read_csv(run / "oof_predictions.csv")
    assert len(oof) == 12 * 7 and oof.groupby("group")["fold"].nunique().max() == 1  # a person in one fold
    # the labels came from the paths: target_age is the bin of the folder's age
    ages = oof["id"].str.extract(r"_(\d+)/")[0].astype(int)
    assert (oof["target_age"] == np.digitize(ages, [30, 60])).all()
    assert "lr_scheduler.args.T_max: auto" in log


def test_the_submission_is_the_competitions_csv_with_every_row_filled_in_order(competition):
    tmp, run, log = competition
    info = pd.read_csv(tmp / "eval" / "info.csv")
    submission = pd.read_csv(run / "submission.csv")
    assert submission["ImageID"].tolist() == info["ImageID"].tolist()
    predictions = pd.read_csv(run / "predictions.csv")
    predictions.index = predictions["id"].map(lambda path: path.rsplit("/", 1)[-1])
    heads = predictions.loc[submission["ImageID"]]
    combined = heads["prediction_mask"] * 6 + heads["prediction_gender"] * 3 + heads["prediction_age"]
    assert submission["ans"].tolist() == combined.tolist()
    assert "test-time augmentation: 2 views of each batch averaged, the batch itself and RandomHorizontalFlip" in log


# -- "auto" schedule lengths ---------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler, interval, warmup", [
    ({"type": "CosineAnnealingLR", "args": {"T_max": "auto"}}, "epoch", {"epochs": 1}),
    ({"type": "CosineAnnealingLR", "args": {"T_max": "auto"}}, "step", None),
    ({"type": "OneCycleLR", "args": {"max_lr": 0.1, "total_steps": "auto"}}, "step", {"steps": 3}),
])
def test_auto_length_is_the_epochs_or_steps_after_the_warmup(tmp_path, scheduler, interval, warmup):
    import math

    config = ConfigParser(json.loads(make_config(tmp_path, IRIS_CONFIG, **{
        "trainer.epochs": 4, "lr_scheduler": scheduler | {"interval": interval, "warmup": warmup}}).read_text()))
    trainer = build_trainer(config)
    steps = math.ceil(len(trainer.data_loader.train_indices) / config["data_loader"]["args"]["batch_size"])
    total = 4 * (steps if interval == "step" else 1)
    after_warmup = total - (3 if warmup == {"steps": 3} else 1 if warmup else 0)
    main = trainer.lr_scheduler._schedulers[-1] if warmup else trainer.lr_scheduler
    assert getattr(main, "T_max", None) == after_warmup or getattr(main, "total_steps", None) == after_warmup


def test_auto_length_on_resume_refuses_new_epochs_alone(tmp_path):
    config = make_config(tmp_path, IRIS_CONFIG, **{"trainer.epochs": 1, "trainer.save_period": 1,
                                                    "lr_scheduler": {"type": "CosineAnnealingLR",
                                                                     "args": {"T_max": "auto"}}})
    run_in_process("train.py", "-c", str(config), check=True)
    (run,) = run_dirs(tmp_path, "TinyIris")
    result = run_in_process("train.py", "-r", str(run), "trainer.epochs=2")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: trainer.epochs: cannot change when resuming while "
                                            "lr_scheduler.args.T_max is 'auto'")
    run_in_process("train.py", "-r", str(run), "trainer.epochs=2", "lr_scheduler.args.T_max=2", check=True)


# -- smaller things ------------------------------------------------------------------------------------
def test_dry_run_prints_the_groups_and_classes_of_each_side(competition):
    tmp, _, _ = competition
    overrides = SMALL | {"dataset.args.root": str(tmp / "train" / "images")}
    result = run_in_process("train.py", "-c", "configs/facemask.json", "--dry-run",
                            *[f"{key}={json.dumps(value)}" for key, value in overrides.items()], check=True)
    assert re.search(r"validation split \(StratifiedGroupKFold\): \d+ groups \(\d+ samples\) for training, \d+ "
                     r"groups \(\d+ samples\) for validation, 0 groups on both sides", result.stdout)
    assert re.search(r"^wear/female/30-59 +\d+", result.stdout, re.M)


def test_valid_predictions_do_not_overwrite_the_test_predictions(balanced_runs):
    single, _ = balanced_runs
    test_file = single / "predictions.csv"
    run_in_process("inference.py", "--resume", str(single / "model_best.pth"), check=True)
    before = test_file.read_bytes()
    run_in_process("inference.py", "--resume", str(single / "model_best.pth"), "--split", "valid", check=True)
    assert test_file.read_bytes() == before and (single / "predictions_valid.csv").is_file()
