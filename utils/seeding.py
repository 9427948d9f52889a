"""Seeds and random states: the whole run from one seed, each sample's augmentation from its own.

Reproducibility here does not depend on the number of DataLoader workers: the shuffle order of an
epoch comes from (seed, epoch) and a sample's augmentation from (seed, epoch, sample index).
"""
import os
import random
import signal
from contextlib import contextmanager

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device).

    Examples:
        >>> seed_everything(42)
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_determinism(deterministic: bool) -> None:
    """``deterministic: true`` makes CUDA runs repeatable at some cost in speed.

    It turns on torch.use_deterministic_algorithms (an error for ops without a deterministic kernel),
    turns off the cuDNN autotuner and sets the cuBLAS workspace that deterministic matmuls need.
    CPU runs are repeatable either way. With false, the cuDNN autotuner picks the fastest kernels.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # the call imports inductor: 1.5 s
        torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def _mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a bijection on 64-bit integers that scrambles every bit."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_seeds(seed: int, epoch: int, indices) -> np.ndarray:
    """The seed of each sample's augmentation, from (run seed, epoch, index in the dataset) alone.

    Distinct indices of one epoch always get distinct seeds. Computed for a whole epoch at once.
    """
    epoch_key = _mix(_mix(np.array([seed % 2**64], dtype=np.uint64)) ^ np.uint64(epoch))
    return (_mix(epoch_key ^ np.asarray(indices, dtype=np.uint64)) >> np.uint64(1)).astype(np.int64)


@contextmanager
def seeded_rng(seed: int):
    """Run a block with torch's CPU generator and Python's ``random`` seeded, then restore both.

    The caller's random streams are untouched, so loading a sample in the main process
    (num_workers=0) draws exactly what loading it in a worker draws. NumPy's global generator is
    not seeded (that costs 70 us a sample): transforms that draw from it are not reproducible.
    """
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)


def worker_init_fn(worker_id: int) -> None:
    """Seed NumPy in each DataLoader worker and leave Ctrl-C and SIGTERM to the main process.

    The main process saves a checkpoint on those signals; workers that died on them would break
    the batch in flight.
    """
    np.random.seed(torch.initial_seed() % 2**32)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _python_state_to_tensor(state: tuple) -> dict:
    # 625 ints as one tensor: pickled as one object instead of 625, which makes saving faster.
    version, internal, gauss = state
    internal = torch.from_numpy(np.array(internal, dtype=np.int64))  # 3x faster than torch.tensor(internal)
    return {"version": version, "internal": internal, "gauss": gauss}


def _python_state_from_tensor(state: dict) -> tuple:
    return state["version"], tuple(state["internal"].tolist()), state["gauss"]


def get_rng_state() -> dict:
    """The state of every global generator, in types that ``torch.load(weights_only=True)`` reads."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": _python_state_to_tensor(random.getstate()),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": numpy_state["state"]["pos"],
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore what get_rng_state returned (CUDA states only where the devices exist)."""
    random.setstate(_python_state_from_tensor(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
        "has_gauss": numpy_state["has_gauss"],
        "gauss": numpy_state["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
