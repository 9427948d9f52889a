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
        result = run_script("tune.py", "-c", image_sweep_config, "--trials", "2", timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("tune.py did not exit: DataLoader workers of its trials outlived them")
    assert result.returncode == 0, result.stderr
    assert "best: trial" in result.stdout + result.stderr


def test_each_trial_stops_its_workers_when_it_ends(image_sweep_config):
    before = set(multiprocessing.active_children())
    run_in_process("tune.py", "-c", image_sweep_config, "--trials", "2", check=True)
    assert set(multiprocessing.active_children()) - before == set()


def test_workers_of_a_forgotten_loader_do_not_block_the_exit():
    # A loader that is not tracked, whose workers nothing stopped: they ignore SIGTERM, so only a
    # kill at exit lets the program end.
    script = """
from torch.utils.data import DataLoader
import utils.data.workers
from utils.seeding import worker_init_fn
loader = DataLoader(list(range(8)), batch_size=2, num_workers=2, worker_init_fn=worker_init_fn,
                    persistent_workers=True)
next(iter(loader))
print("workers started")
"""
    try:
        result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("the program did not exit: the workers of an untracked loader were left running")
    assert result.returncode == 0, result.stderr
    assert "workers started" in result.stdout
