"""Shared fixtures: tiny configs that train in seconds, and two ways to run the scripts: as a user does
(a new process), and in this process (the same ``main``, without the 5 to 7 s of CPU a new process
spends importing torch, scikit-learn and torch._dynamo)."""
import contextlib
import copy
import gc
import importlib
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

TINY_CONFIG = {
    "name": "Tiny",
    "n_gpu": 0,
    "seed": 1,
    "arch": {"type": "ResNet", "args": {"num_blocks": [1, 1], "widths": [8, 16], "num_classes": 10,
                                        "in_channels": 1, "stem": "small"}},
    "dataset": {"type": "DigitsDataset", "args": {"train": True}},
    "data_loader": {"type": "DigitsDataLoader",
                    "args": {"batch_size": 64, "shuffle": True, "validation_split": 0.2, "num_workers": 0}},
    "optimizer": {"type": "Adam", "args": {"lr": 0.01}},
    "loss": "cross_entropy",
    "metrics": ["accuracy", "top_k_acc"],
    "trainer": {"epochs": 2, "save_dir": "saved/", "save_period": 1, "verbosity": 1,
                "monitor": "max val_accuracy", "early_stop": 0, "tensorboard": False, "progress_bar": False},
}

IRIS_CONFIG = {
    "name": "TinyIris",
    "n_gpu": 0,
    "seed": 1,
    "arch": {"type": "MLP", "args": {"in_features": 4, "num_classes": 3, "hidden": [16]}},
    "dataset": {"type": "IrisDataset", "args": {"train": True}},
    "data_loader": {"type": "IrisDataLoader",
                    "args": {"batch_size": 16, "shuffle": True, "validation_split": 0.2, "num_workers": 0}},
    "optimizer": {"type": "SGD", "args": {"lr": 0.1}},
    "loss": "cross_entropy",
    "metrics": ["accuracy"],
    "trainer": {"epochs": 3, "save_dir": "saved/", "save_period": 0, "verbosity": 1,
                "monitor": "min val_loss", "early_stop": 0, "tensorboard": False, "progress_bar": False},
}


def make_config(tmp_path: Path, base: dict = TINY_CONFIG, **changes) -> Path:
    """Write a copy of ``base`` with ``save_dir`` in tmp_path and dotted-path changes applied.

    Example: ``make_config(tmp_path, **{"trainer.epochs": 3})``.
    """
    config = copy.deepcopy(base)
    config["trainer"]["save_dir"] = str(tmp_path / "saved")
    for path, value in changes.items():
        node = config
        keys = path.split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def run_script(*args: str, cwd: Path = REPO, timeout: float = 300, env: dict | None = None,
               check: bool = False) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repository root, the way a user does; returns the result."""
    # One thread per process: the tiny test models run faster so, above all on a busy machine.
    full_env = {**os.environ, "PYTHONHASHSEED": "0", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
                **(env or {})}
    result = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, env=full_env)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


SCRIPTS = ("train.py", "kfold_train.py", "inference.py", "tune.py", "analyze.py", "export.py")


@contextlib.contextmanager
def environment(changes: dict):
    """os.environ with ``changes`` inside the block, as it was after it."""
    before = {key: os.environ.get(key) for key in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_in_process(script: str, *args: str, env: dict | None = None,
                   check: bool = False) -> subprocess.CompletedProcess:
    """What ``run_script(script, *args)`` returns, from the script's ``main`` run in this process.

    For tests whose point is what the script does, not that it runs in a process of its own (signals,
    locks held by another process, fresh imports, torchrun: those use run_script). As in a new
    process: ``run_cli`` turns errors into the exit code and the "error: " line on stderr, the console
    log and Python's warnings (with Python's default filters) are captured as stdout and stderr, and
    the run's log file is closed afterwards. Example: ``run_in_process("train.py", "-c", str(config))``.
    """
    from logger.logger import setup_logging
    from utils.cli import run_cli

    assert script in SCRIPTS, f"{script} has no main() to run in this process"
    module = importlib.import_module(script.removesuffix(".py"))
    stdout, stderr = io.StringIO(), io.StringIO()
    returncode = 0
    argv = sys.argv
    with (environment({"WANDB_MODE": "offline", **(env or {})}), contextlib.redirect_stdout(stdout),
          contextlib.redirect_stderr(stderr), warnings.catch_warnings()):
        warnings.resetwarnings()
        for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", category)  # Python's defaults outside __main__
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        sys.argv = [script, *args]  # --debug is read from it
        try:
            run_cli(lambda: module.main(list(args)))
        except SystemExit as exit_info:
            code = exit_info.code
            returncode = 0 if code is None else code if isinstance(code, int) else 1
        finally:
            sys.argv = argv
    setup_logging(None, 1)  # close the run's info.log; the console is this test's again
    gc.collect()  # an error's traceback holds the run's objects, its lock on the run directory among them
    result = subprocess.CompletedProcess([script, *args], returncode, stdout.getvalue(), stderr.getvalue())
    if check and returncode != 0:
        raise AssertionError(f"exit {returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def run_dirs(tmp_path: Path, name: str = "Tiny") -> list[Path]:
    """The run directories created under tmp_path/saved/<name>/, oldest first."""
    root = tmp_path / "saved" / name
    return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime) if root.is_dir() else []


def launch(*args: str, faults: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    """``run_script("tests/launch.py", *args)``: a script run with a fault injected (see tests/launch.py).

    Example: ``launch("train.py", "-c", str(config), faults={"LAUNCH_SIGNALS": "15@30"})``.
    """
    return run_script("tests/launch.py", *args, env={**kwargs.pop("env", {}), **faults}, **kwargs)


def assert_same_tensor(expected: torch.Tensor, actual, where: str = "tensor") -> None:
    """Exactly the same tensor: type, dtype, shape and every value (NaN equal to NaN in the same place)."""
    assert isinstance(actual, torch.Tensor), f"{where}: {type(actual).__name__} is not a tensor"
    assert actual.dtype == expected.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{where}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    same = torch.equal(actual, expected)
    if not same and expected.is_floating_point():
        same = torch.equal(actual.isnan(), expected.isnan()) and torch.equal(actual.nan_to_num(), expected.nan_to_num())
    assert same, f"{where}: values differ"


def assert_same_tensors(expected: dict, actual: dict) -> None:
    """Two state dicts hold the same names and, under each, exactly the same tensor."""
    assert expected.keys() == actual.keys(), sorted(set(expected) ^ set(actual))
    different = []
    for key in expected:
        try:
            assert_same_tensor(expected[key], actual[key], key)
        except AssertionError as error:
            different.append(str(error))
    assert not different, f"{len(different)} of {len(expected)} tensors differ, e.g. {different[:3]}"


def assert_identical(expected, actual, where: str = "checkpoint") -> None:
    """Nested dicts, lists, tensors and numbers, equal bit for bit (tensors also in dtype and shape)."""
    if isinstance(expected, torch.Tensor):
        assert_same_tensor(expected, actual, where)
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and expected.keys() == actual.keys(), where
        for key in expected:
            assert_identical(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(expected) == len(actual), where
        for i, (a, b) in enumerate(zip(expected, actual)):
            assert_identical(a, b, f"{where}[{i}]")
    else:
        assert type(expected) is type(actual) and expected == actual, f"{where}: {actual!r} != {expected!r}"


# Under `--dist loadfile` each test file runs on one worker, and xdist hands the files out in the order
# of the collection (pyproject.toml turns off its reordering by test count). The files that take longest
# (CPU seconds on one core, about) go first, so that both workers end on short files and finish together.
LONGEST_FIRST = [
    "test_distributed.py",  # 180
    "test_tune.py",  # 115
    "test_resume.py",  # 100
    "test_benchmarks.py",  # 40
    "test_tracking.py",  # 40
    "test_faults.py",  # 35
    "test_custom_trainer.py",  # 30
    "test_groups_imbalance.py",  # 30
    "test_ema_mixup.py",  # 25
    "test_kfold.py",  # 25
    "test_inference.py",  # 25
    "test_export.py",  # 25
    "test_tasks.py",  # 25
    "test_edge_cases.py",  # 20
    "test_analysis_runs.py",  # 15
    "test_examples.py",  # 20
]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order


def pytest_configure(config):
    # One torch thread in each pytest process, as in the scripts the tests start (OMP_NUM_THREADS=1):
    # the two xdist workers share the two cores, and the tiny models train fastest so.
    torch.set_num_threads(1)


@pytest.fixture
def tiny_config(tmp_path):
    return make_config(tmp_path)


@pytest.fixture(autouse=True)
def _run_from_repo(monkeypatch):
    """Tests import the project's packages and read relative paths from the repository root."""
    monkeypatch.chdir(REPO)
    monkeypatch.syspath_prepend(str(REPO))
