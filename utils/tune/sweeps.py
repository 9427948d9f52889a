"""A sweep directory of tune.py: which one a command line means, and what it holds besides the trials.

``<trainer.save_dir>/<name>/<run_id>/`` with ``config.json`` (the base config of the trials) and
``tune.json`` (the storage, the study name, the number of trials and --kfold, for ``-r``).
"""
from contextlib import contextmanager
from pathlib import Path

from utils import distributed as dist
from utils.checkpoint.runs import new_run_dir
from utils.errors import ConfigError
from utils.tune.report import write_atomically
from utils.util import write_json


def start_sweep(config, sweep_dir: Path | None, settings: dict) -> tuple[Path, dict]:
    """Create (or reopen) the sweep directory and save its config and settings (rank 0); every rank gets them."""
    if dist.is_main_process():
        try:
            if sweep_dir is None:
                sweep_dir = new_run_dir(config.runs_dir, None)
            sweep_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError("trainer.save_dir", f"cannot create the sweep directory: {error}") from None
        settings = {"kfold": False, "study_name": f"{config['name']}-{sweep_dir.name}"} | settings
        # Workers started together write the same files: each through its own temporary file.
        write_atomically(sweep_dir / "tune.json", lambda path: write_json(settings, path))
        if not (sweep_dir / "config.json").is_file():
            write_atomically(sweep_dir / "config.json", lambda path: write_json(config.config, path))
    return dist.broadcast_object((sweep_dir, settings))


@contextmanager
def sweep_lock(sweep_dir: Path):
    """One worker at a time creates the storage and the study (SQLite tables are not created safely in parallel)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(sweep_dir / ".tune.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
