"""Bad data gets one clear line naming the file or row; a non-finite loss stops training cleanly."""
import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import train
from dataset.datasets import ImageDataset
from tests.conftest import IRIS_CONFIG, make_config, run_dirs, run_in_process, run_script
from tests.test_config_errors import assert_one_error, run_main
from utils.errors import DataError

IMAGE_CONFIG = {
    "name": "TinyImages",
    "n_gpu": 0,
    "seed": 1,
    "arch": {"type": "ResNet", "args": {"num_blocks": [1], "widths": [8], "num_classes": 2, "in_channels": 3}},
    "dataset": {"type": "ImageDataset", "args": {"root": "set by the test", "image_size": 8}},
    "data_loader": {"type": "ImageDataLoader",
                    "args": {"batch_size": 4, "validation_split": 0.25, "num_workers": 0}},
    "optimizer": {"type": "SGD", "args": {"lr": 0.1}},
    "loss": "cross_entropy",
    "metrics": ["accuracy"],
    "trainer": {"epochs": 1, "tensorboard": False, "progress_bar": False},
}


def make_images(folder, count: int = 4) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def csv_dataset(tmp_path, rows: list[dict]):
    make_images(tmp_path / "images", 4)
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    return tmp_path / "images", tmp_path / "labels.csv"


def train_images(tmp_path, capsys, **dataset_args):
    config = copy.deepcopy(IMAGE_CONFIG)
    config["dataset"]["args"] |= dataset_args
    path = make_config(tmp_path, config)
    return run_main(train.main, ["-c", str(path)], capsys)


def test_missing_image_file_is_named_with_its_csv_line(tmp_path, capsys):
    root, csv = csv_dataset(tmp_path, [{"path": f"{i}.png", "label": i % 2} for i in range(4)]
                            + [{"path": "gone.png", "label": 0}])
    code, stderr = train_images(tmp_path, capsys, root=str(root), csv_file=str(csv))
    assert_one_error(code, stderr, f"{csv}, line 6", "image file not found", "gone.png")


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_is_named(tmp_path, capsys, workers):
    for label in ("a", "b"):
        make_images(tmp_path / "images" / label, 4)
    broken = tmp_path / "images" / "b" / "2.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    config = copy.deepcopy(IMAGE_CONFIG)
    config["dataset"]["args"]["root"] = str(tmp_path / "images")
    config["data_loader"]["args"]["num_workers"] = workers
    # With workers, in a new process: the workers of a failed run are shut down at exit, while in this
    # process the failed iterator's clean-up waits seconds for each of them.
    run = run_script if workers else run_in_process
    result = run("train.py", "-c", str(make_config(tmp_path, config)))
    assert result.returncode == 2, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and str(broken) in error_lines[0] and "cannot read image" in error_lines[0]
    assert "Traceback" not in result.stderr


def test_skip_bad_files_trains_on_the_good_ones(tmp_path):
    for label in ("a", "b"):
        make_images(tmp_path / "images" / label, 4)
    (tmp_path / "images" / "a" / "1.png").write_bytes(b"garbage")
    (tmp_path / "images" / "b" / "3.png").write_bytes(b"")
    dataset = ImageDataset(str(tmp_path / "images"), skip_bad_files=True)
    assert len(dataset) == 6 and dataset.targets == [0, 0, 0, 1, 1, 1]
    config = copy.deepcopy(IMAGE_CONFIG)
    config["dataset"]["args"] |= {"root": str(tmp_path / "images"), "skip_bad_files": True}
    train.main(["-c", str(make_config(tmp_path, config))])
    (run,) = run_dirs(tmp_path, "TinyImages")
    assert (run / "last.pth").is_file()


def test_skip_bad_files_logs_the_count(tmp_path, caplog):
    for label in ("a", "b"):
        make_images(tmp_path / "images" / label, 3)
    (tmp_path / "images" / "a" / "1.png").write_bytes(b"garbage")
    with caplog.at_level("WARNING"):
        ImageDataset(str(tmp_path / "images"), skip_bad_files=True)
    assert "skipped 1 of 6 image files" in caplog.text


def test_csv_without_the_label_column(tmp_path, capsys):
    root, csv = csv_dataset(tmp_path, [{"path": f"{i}.png", "class": i % 2} for i in range(4)])
    code, stderr = train_images(tmp_path, capsys, root=str(root), csv_file=str(csv))
    assert_one_error(code, stderr, str(csv), "no column 'label'", "'class'")


def test_labels_that_do_not_fit_num_classes(tmp_path, capsys):
    root, csv = csv_dataset(tmp_path, [{"path": f"{i}.png", "label": i} for i in range(4)])
    code, stderr = train_images(tmp_path, capsys, root=str(root), csv_file=str(csv))
    assert_one_error(code, stderr, f"sample {root / '2.png'}", "label 2", "arch.args.num_classes=2")


def test_empty_dataset(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    code, stderr = train_images(tmp_path, capsys, root=str(tmp_path / "images"))
    assert_one_error(code, stderr, str(tmp_path / "images"), "no image files")


def test_missing_image_folder(tmp_path, capsys):
    code, stderr = train_images(tmp_path, capsys, root=str(tmp_path / "nowhere"))
    assert_one_error(code, stderr, str(tmp_path / "nowhere"), "not found")


def test_image_dataset_errors_are_data_errors(tmp_path):
    make_images(tmp_path / "flat", 2)
    (tmp_path / "flat" / "0.png").write_bytes(b"not a png")
    dataset = ImageDataset(str(tmp_path / "flat"))
    with pytest.raises(DataError, match="0.png: cannot read image"):
        dataset[0]


def test_non_finite_loss_stops_with_exit_1_and_keeps_the_last_good_state(tmp_path):
    # Epoch 1 trains normally; the scheduler then multiplies the learning rate by 1e30.
    config = make_config(tmp_path, IRIS_CONFIG, **{
        "lr_scheduler": {"type": "StepLR", "args": {"step_size": 1, "gamma": 1e30}},
        "trainer.log_step": 2, "trainer.epochs": 3})
    result = run_in_process("train.py", "-c", str(config))
    assert result.returncode == 1, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: epoch 2, batch ") and ("nan" in line or "inf" in line)
    assert "last.pth keeps the state after epoch 1" in line
    (run,) = run_dirs(tmp_path, "TinyIris")
    checkpoint = torch.load(run / "last.pth", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert len(pd.read_csv(run / "metrics.csv")) == 1
    assert json.loads((run / "config.json").read_text())["trainer"]["epochs"] == 3
