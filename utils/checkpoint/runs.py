"""Run directories: where a new run goes, and which run and checkpoint ``-r`` continues."""
import logging
import os
from datetime import datetime
from pathlib import Path

from utils.config import schema as config_schema
from utils.config.overrides import apply_modifications
from utils.errors import CheckpointError, ConfigError
from utils.util import read_json


def check_writable(save_dir: Path) -> None:
    """A save_dir that cannot hold run directories is a config error, found before anything is built."""
    for folder in (save_dir, *save_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ConfigError("trainer.save_dir", f"{folder} is a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ConfigError("trainer.save_dir", f"cannot write in {folder}")
            return


def new_run_dir(runs_dir: Path, run_id: str | None) -> Path:
    """Create a new run directory; a timestamp id gets a suffix when two runs start in the same second."""
    if run_id is not None:
        path = runs_dir / run_id
        path.mkdir(parents=True, exist_ok=False)
        return path
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    runs_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        path = runs_dir / (stamp if attempt == 0 else f"{stamp}_{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a new run directory in {runs_dir}")


def locate_resume(target: str, config_path: str | None, modification: dict, kfold: bool = False):
    """(checkpoint file or run directory, run directory, config) for ``-r TARGET``; the config is None
    for a checkpoint file with no config.json beside it (the checkpoint holds it).

    TARGET is a checkpoint file, a run directory, or ``auto``: the newest run of the config's name
    (after the command line's changes) that train.py (or, with ``kfold``, kfold_train.py) can resume.
    The run's saved config is used, unless ``-c`` gives one with an explicit TARGET.
    """
    from utils.checkpoint.files import fold_dirs, resume_candidates

    def is_kfold_run(folder: Path) -> bool:
        return bool(fold_dirs(folder))

    if target == "auto":
        if config_path is None:
            raise ConfigError("-r auto", "needs -c config.json to know which runs to look at")
        located = config_schema.validate(read_json(config_path))
        apply_modifications(located, modification)
        runs_dir = Path(located["trainer"]["save_dir"]) / located["name"]
        runs = [p for p in runs_dir.glob("*") if p.is_dir()
                and (is_kfold_run(p) if kfold else resume_candidates(p) and not is_kfold_run(p))]
        if not runs:
            kind = "k-fold run" if kfold else "run with a checkpoint"
            raise CheckpointError(str(runs_dir), f"no {kind} to resume with -r auto")
        target = str(max(runs, key=lambda p: p.stat().st_mtime))
        logging.getLogger(__name__).info("resuming the newest run: %s", target)
        config_path = None  # continue it with its own config
    path = Path(target)
    if path.is_dir():
        if kfold and not is_kfold_run(path) and resume_candidates(path):
            raise ConfigError(str(path), f"is a run of train.py, not a k-fold run: python train.py -r {path}")
        if not kfold and is_kfold_run(path):
            raise ConfigError(str(path), f"is a k-fold run: resume it with python kfold_train.py -r {path}")
        if config_path is not None:
            return path, path, read_json(config_path)
        if not (path / "config.json").is_file():
            raise ConfigError(str(path), "has no config.json; give the config with -c")
        return path, path, read_json(path / "config.json")
    if path.is_file():
        if config_path is not None:
            return path, path.parent, read_json(config_path)
        if (path.parent / "config.json").is_file():
            return path, path.parent, read_json(path.parent / "config.json")
        return path, path.parent, None  # the checkpoint's own config (read once, by the caller)
    raise CheckpointError(str(path), "no such checkpoint file or run directory")


LOCK_FILE = "run.lock"


def lock_run_dir(run_dir: Path):
    """Lock a run directory for this process's lifetime; returns the open lock file (keep it open).

    An OS file lock (``flock``) on ``<run_dir>/run.lock``, which holds the pid of its holder: the
    kernel releases it when the process ends, however it ends, so a killed run never leaves a stale
    lock. A second process on the same directory is refused with a ConfigError naming the holder.
    """
    import fcntl
    import time

    file = open(run_dir / LOCK_FILE, "a+")
    for _attempt in range(5):  # a moment's retry: check_run_dir_free() holds it for microseconds
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(0.1)
    else:
        file.seek(0)
        holder = file.read().strip() or "unknown"
        file.close()
        raise ConfigError(str(run_dir), f"is in use by another process (pid {holder}); wait for it to end "
                                        "or stop it, or start a new run")
    file.seek(0)
    file.truncate()
    file.write(f"{os.getpid()}\n")
    file.flush()
    return file


def check_run_dir_free(run_dir: Path) -> None:
    """Refuse early (before anything is built) a run directory that another process holds."""
    import fcntl

    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return
    with open(path) as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = file.read().strip() or "unknown"
            raise ConfigError(str(run_dir), f"is in use by another process (pid {holder}); wait for it to "
                                            "end or stop it, or start a new run") from None
