"""ImageDataset: class sub-folders, a CSV of labels, an unlabelled folder, resizing, config transforms; and
an end-to-end run of configs/image_folder.json on generated images."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import dataset.datasets as module_dataset
from config_parser import ConfigParser
from dataset.datasets import ImageDataset
from tests.conftest import REPO, run_dirs, run_in_process
from utils.config.components import build_transform
from utils.errors import DataError
from utils.util import read_json


def save_image(path, value: int, size=(10, 12), left_marker: bool = False):
    """A solid RGB image of ``value`` (width x height = size); optionally a white left column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    if left_marker:
        pixels[:, 0] = 255
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def class_folders(tmp_path):
    """root/<class>/...: classes given out of order, one with a nested folder."""
    root = tmp_path / "images"
    files = {
        "zebra": [root / "zebra" / "z1.png", root / "zebra" / "z0.png"],
        "ant": [root / "ant" / "a0.png"],
        "cat": [root / "cat" / "c0.png", root / "cat" / "nested" / "c1.png", root / "cat" / "c2.png"],
    }
    for i, paths in enumerate(files.values()):
        for path in paths:
            save_image(path, 40 * i)
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_class_sub_folders(class_folders):
    dataset = ImageDataset(str(class_folders))
    assert dataset.classes == ["ant", "cat", "zebra"]
    assert dataset.num_classes == 3
    assert len(dataset) == 6  # notes.txt is not an image
    expected = {"a0.png": 0, "c0.png": 1, "c1.png": 1, "c2.png": 1, "z0.png": 2, "z1.png": 2}
    assert {p.name: t for p, t in zip(dataset.paths, dataset.targets)} == expected
    for index in range(len(dataset)):
        image, target = dataset[index]
        assert target == dataset.targets[index]
        assert target == dataset.classes.index(dataset.paths[index].relative_to(class_folders).parts[0])
        assert image.dtype == torch.float32
        assert image.shape == (3, 12, 10)  # channels, height, width
        assert 0.0 <= image.min() and image.max() <= 1.0
    # The pixel values are the file's, scaled to [0, 1]: the fixture wrote zebra 0, ant 40, cat 80.
    for target, value in ((0, 40), (1, 80), (2, 0)):
        index = dataset.targets.index(target)
        assert torch.allclose(dataset[index][0], torch.full((3, 12, 10), value / 255))


def csv_layout(tmp_path, labels: list) -> tuple:
    root = tmp_path / "flat"
    for i in range(len(labels)):
        save_image(root / f"img{i}.png", 30 * i)
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"path": [f"img{i}.png" for i in range(len(labels))], "label": labels}).to_csv(csv, index=False)
    return root, csv


def test_csv_with_integer_labels(tmp_path):
    root, csv = csv_layout(tmp_path, [2, 0, 1, 2, 0])
    dataset = ImageDataset(str(root), csv_file=str(csv))
    assert dataset.targets == [2, 0, 1, 2, 0]
    assert [p.name for p in dataset.paths] == [f"img{i}.png" for i in range(5)]  # the CSV's order
    assert [dataset[i][1] for i in range(5)] == [2, 0, 1, 2, 0]
    assert dataset.classes is None
    assert dataset.num_classes == 3
    # Sample 3 is img3.png, written with the value 90.
    assert torch.allclose(dataset[3][0], torch.full((3, 12, 10), 90 / 255))


def test_csv_with_class_names(tmp_path):
    root, csv = csv_layout(tmp_path, ["dog", "cat", "eel", "cat", "dog"])
    dataset = ImageDataset(str(root), csv_file=str(csv))
    assert dataset.classes == ["cat", "dog", "eel"]
    assert dataset.targets == [1, 0, 2, 0, 1]
    assert [dataset[i][1] for i in range(5)] == [1, 0, 2, 0, 1]


def test_csv_relative_to_root_and_other_column_names(tmp_path):
    root = tmp_path / "flat"
    for i in range(3):
        save_image(root / f"img{i}.png", 10 * i)
    pd.DataFrame({"file": ["img2.png", "img0.png", "img1.png"], "y": [1, 0, 1]}).to_csv(root / "train.csv",
                                                                                       index=False)
    dataset = ImageDataset(str(root), csv_file="train.csv", path_column="file", label_column="y")
    assert [p.name for p in dataset.paths] == ["img2.png", "img0.png", "img1.png"]
    assert dataset.targets == [1, 0, 1]


def test_csv_without_labels(tmp_path):
    root, csv = csv_layout(tmp_path, [0, 1, 0])
    dataset = ImageDataset(str(root), csv_file=str(csv), label_column=None)
    assert dataset.targets is None
    assert [dataset[i][1] for i in range(3)] == [-1, -1, -1]


def test_csv_missing_column_is_a_data_error(tmp_path):
    root, csv = csv_layout(tmp_path, [0, 1])
    with pytest.raises(DataError, match="no column 'target'"):
        ImageDataset(str(root), csv_file=str(csv), label_column="target")


def test_unlabelled_flat_folder(tmp_path):
    root = tmp_path / "test"
    paths = [save_image(root / name, 50) for name in ("b.png", "a.png", "c.jpg")]
    (root / "readme.md").write_text("-")
    dataset = ImageDataset(str(root))
    assert dataset.targets is None
    assert dataset.classes is None
    assert len(dataset) == 3
    assert [p.name for p in dataset.paths] == ["a.png", "b.png", "c.jpg"]  # sorted
    for index in range(3):
        image, target = dataset[index]
        assert target == -1
        assert image.shape == (3, 12, 10)
        assert dataset.sample_id(index) == str(dataset.paths[index])
    assert {dataset.sample_id(i) for i in range(3)} == {str(p) for p in paths}


def test_empty_folder_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        ImageDataset(str(tmp_path / "empty"))


@pytest.mark.parametrize("image_size, wide_shape, big_shape", [
    (6, (3, 6, 6), (3, 6, 6)),
    ([4, 7], (3, 4, 7), (3, 4, 7)),  # [height, width]
    (None, (3, 12, 10), (3, 20, 30)),  # the files' own sizes
])
def test_image_size_resizes_when_read(tmp_path, image_size, wide_shape, big_shape):
    root = tmp_path / "flat"
    save_image(root / "wide.png", 100, size=(10, 12))
    save_image(root / "big.jpg", 200, size=(30, 20))
    dataset = ImageDataset(str(root), image_size=image_size)
    shapes = {path.name: dataset[i][0].shape for i, path in enumerate(dataset.paths)}
    assert shapes == {"wide.png": wide_shape, "big.jpg": big_shape}


def test_grayscale_files_become_rgb(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    Image.fromarray(np.full((5, 5), 128, dtype=np.uint8), mode="L").save(root / "grey.png")
    image, _ = ImageDataset(str(root))[0]
    assert image.shape == (3, 5, 5)


TRANSFORMS = [
    {"type": "RandomHorizontalFlip", "args": {"p": 1.0}},
    {"type": "ToImage"},
    {"type": "ToDtype", "args": {"dtype": "float32", "scale": True}},
    {"type": "Normalize", "args": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}},
]


def test_transform_pipeline_from_config_dicts(tmp_path):
    root = tmp_path / "flat"
    save_image(root / "x.png", 0, size=(4, 3), left_marker=True)  # black, with a white left column
    transform = build_transform(TRANSFORMS, "dataset.args.train_transform")
    dataset = ImageDataset(str(root), train_transform=transform)
    image, _ = dataset[0]
    assert image.shape == (3, 3, 4)
    # Flipped: the white column is now on the right; normalized: white is 1, black is -1.
    assert torch.allclose(image[:, :, -1], torch.ones(3, 3))
    assert torch.allclose(image[:, :, :-1], -torch.ones(3, 3, 3))
    # The evaluation view has no transform: the raw image in [0, 1], not flipped.
    raw, _ = dataset.evaluation()[0]
    assert torch.allclose(raw[:, :, 0], torch.ones(3, 3))
    assert torch.allclose(raw[:, :, 1:], torch.zeros(3, 3, 3))


def test_transform_stopping_at_a_pil_image_still_gives_floats(tmp_path):
    root = tmp_path / "flat"
    save_image(root / "x.png", 255, size=(8, 8))
    transform = build_transform([{"type": "Resize", "args": {"size": [4, 5]}}], "dataset.args.eval_transform")
    dataset = ImageDataset(str(root), eval_transform=transform).evaluation()
    image, _ = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, 4, 5)
    assert torch.allclose(image, torch.ones(3, 4, 5))


def test_dataset_section_builds_transforms_through_the_config(tmp_path, class_folders):
    config = ConfigParser({
        "name": "Images", "n_gpu": 0,
        "arch": {"type": "ResNet", "args": {"num_blocks": [1], "widths": [8], "num_classes": 3, "in_channels": 3}},
        "dataset": {"type": "ImageDataset", "args": {"root": str(class_folders), "image_size": [6, 8],
                                                     "train_transform": TRANSFORMS,
                                                     "eval_transform": [{"type": "CenterCrop",
                                                                         "args": {"size": 4}}]}},
        "data_loader": {"type": "ImageDataLoader", "args": {"batch_size": 2, "num_workers": 0}},
        "optimizer": {"type": "SGD", "args": {"lr": 0.1}},
        "loss": "cross_entropy",
        "trainer": {"epochs": 1, "save_dir": str(tmp_path / "saved")},
    })
    dataset = config.init_obj("dataset", module_dataset)
    assert isinstance(dataset, ImageDataset)
    assert dataset.classes == ["ant", "cat", "zebra"]
    train_image, _ = dataset[0]
    assert train_image.shape == (3, 6, 8)
    assert train_image.min() >= -1.0 and train_image.min() < 0  # normalized to [-1, 1]: black is -1
    eval_image, _ = dataset.evaluation()[0]
    assert eval_image.shape == (3, 4, 4)
    assert eval_image.min() >= 0.0  # no normalization in the evaluation pipeline


@pytest.mark.slow
def test_train_py_on_the_image_folder_config(tmp_path):
    root = tmp_path / "data"
    for label, value in (("cats", 30), ("dogs", 220)):
        for i in range(6):
            save_image(root / label / f"{i}.png", value + 3 * i, size=(20, 16), left_marker=i % 2 == 0)
    name = read_json(REPO / "configs" / "image_folder.json")["name"]
    repo_runs = set((REPO / "saved" / name).glob("*"))
    result = run_in_process(
        "train.py", "-c", "configs/image_folder.json",
        f"dataset.args.root={root}", "trainer.epochs=1", "data_loader.args.num_workers=0",
        "data_loader.args.batch_size=4", f"trainer.save_dir={tmp_path / 'saved'}", "trainer.tensorboard=false",
        "trainer.progress_bar=false", "n_gpu=0",
        # Smaller images than the config's 144/128 keep the test fast; the pipeline stays the config's.
        "dataset.args.image_size=40", "dataset.args.train_transform.0.args.size=32",
        "dataset.args.eval_transform.0.args.size=32",
    )
    assert result.returncode == 0, result.stderr
    dirs = run_dirs(tmp_path, name)
    assert len(dirs) == 1
    run_dir = dirs[0]
    assert (run_dir / "last.pth").is_file()
    checkpoint = torch.load(run_dir / "last.pth", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert checkpoint["classes"] == ["cats", "dogs"]
    config = read_json(run_dir / "config.json")
    assert config["dataset"]["args"]["root"] == str(root)
    assert config["data_loader"]["args"]["num_workers"] == 0
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",") == ["epoch", "loss", "accuracy", "MacroF1", "val_loss", "val_accuracy", "val_MacroF1",
                                  "lr", "epoch_time", "data_wait"]
    assert len(rows) == 2
    assert set((REPO / "saved" / name).glob("*")) == repo_runs  # nothing written into the repository


def test_symlinked_folders_are_followed_once_and_junk_folders_skipped(class_folders, tmp_path, caplog):
    outside = tmp_path / "more_cats"
    save_image(outside / "c9.png", 80)
    (class_folders / "cat" / "linked").symlink_to(outside, target_is_directory=True)
    (outside / "loop").symlink_to(class_folders / "cat", target_is_directory=True)  # a loop back up
    save_image(class_folders / "cat" / ".ipynb_checkpoints" / "c0-checkpoint.png", 80)
    save_image(class_folders / "__MACOSX" / "ant" / "._a0.png", 40)
    with caplog.at_level("WARNING"):
        dataset = ImageDataset(str(class_folders))
    assert dataset.classes == ["ant", "cat", "zebra"]  # __MACOSX is no class
    names = sorted(p.name for p in dataset.paths)
    assert names == ["a0.png", "c0.png", "c1.png", "c2.png", "c9.png", "z0.png", "z1.png"]  # c9 once
    assert "__MACOSX" in caplog.text and ".ipynb_checkpoints" in caplog.text


def test_flat_test_folder_with_junk_folders_stays_unlabelled(tmp_path, caplog):
    root = tmp_path / "test"
    save_image(root / "a.png", 10)
    save_image(root / ".ipynb_checkpoints" / "a-checkpoint.png", 10)
    save_image(root / "__MACOSX" / "._a.png", 10)
    with caplog.at_level("WARNING"):
        dataset = ImageDataset(str(root))
    assert dataset.targets is None and [p.name for p in dataset.paths] == ["a.png"]
    assert "ignoring" in caplog.text


def test_config_with_a_utf8_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"name": "Bom"}')
    assert read_json(path) == {"name": "Bom"}
