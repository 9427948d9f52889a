"""DataLoader workers never outlive their run: a sweep of image trials with workers exits by itself."""
import json
import multiprocessing
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, run_in_process, run_script


@pytest.fixture(scope="module")
def image_sweep_config(tmp_path_factory) -> str:
    """Two classes of 12 random 8x8 PNGs, an MLP over them, 2 workers, and a one-key tune space."""
    tmp = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp / "images" / name).mkdir(parents=True)
        for i in range(12):
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(tmp / "images" / name / f"{i}.png")
    config = {
        "name": "Sweep", "n_gpu": 0, "seed": 1,
        "arch": {"type": "MLP", "args": {"in_features": 192, "num_classes": 2, "hidden": [8]}},
        "dataset": {"type": "ImageDataset", "args": {"root": str(tmp / "images")}},
        "data_loader": {"type": "ImageDataLoader", "args": {"batch_size": 8, "num_workers": 2,
                                                            "validation_split": 0.25}},
        "optimizer": {"type": "SGD", "args": {"lr": 0.1}}, "loss": "cross_entropy", "metrics": ["accuracy"],
        "trainer": {"epochs": 1, "save_dir": str(tmp / "saved"), "tensorboard": True, "progress_bar": False},
        "tune": {"space": {"optimizer.args.lr": {"type": "float", "low": 0.01, "high": 0.1}}, "plots": False},
    }
    path = tmp / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_a_sweep_of_image_trials_with_workers_exits_by_itself(image_sweep_config):
    try:
        result = run_script("tune.py", "-c", image_sweep_config, "--trials", "2", timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("tune.py did not exit: DataLoader workers of its trials outlived them")
    assert result.returncode == 0, result.stderr
    assert "best: trial" in result.stdout + result.stderr


def test_each_trial_stops_its_workers_when_it_ends(image_sweep_config):
    run_in_process("tune.py", "-c", image_sweep_config, "--trials", "2", check=True)
    assert multiprocessing.active_children() == []


def test_workers_of_a_forgotten_loader_do_not_block_the_exit(image_sweep_config):
    # A loader that is no longer tracked, whose iterator the collector never stopped: its workers
    # ignore SIGTERM, so only a kill at exit lets the program end.
    script = f"""
import json
from config_parser import ConfigParser
from utils.data.workers import loaders_with_workers
config = ConfigParser(json.load(open({image_sweep_config!r})))
loader = config.init_data_loader("data_loader")
next(iter(loader))
loaders_with_workers.discard(loader)
print("workers started")
"""
    try:
        result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the program did not exit: the workers of an untracked loader were left running")
    assert result.returncode == 0, result.stderr
    assert "workers started" in result.stdout
