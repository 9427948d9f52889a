"""A sweep directory of tune.py: which one a command line means, and what it holds besides the trials.

``<trainer.save_dir>/<name>/<run_id>/`` with ``config.json`` (the base config of the trials) and
``tune.json`` (the storage, the study name, the number of trials and --kfold, for ``-r``).
"""
from contextlib import contextmanager
from pathlib import Path

from base import dist
from config_parser import CLI_OPTIONS, CliOption, ConfigParser
from logger.logger import setup_logging
from logger.tune_report import write_atomically
from utils.config.overrides import parse_overrides
from utils.config.runs import new_run_dir
from utils.config.schema import check_path_part
from utils.errors import ConfigError
from utils.util import read_json, write_json

TUNE_OPTIONS = [*CLI_OPTIONS, CliOption(["--folds"], int, "kfold.n_splits", "number of folds (with --kfold)")]


def resolve_sweep(args) -> tuple[ConfigParser, Path | None, dict]:
    """(the checked base config, the sweep directory or None for a new one, the study's settings)."""
    modification = {f"+{o.target}": getattr(args, o.flags[0].lstrip("-")) for o in TUNE_OPTIONS
                    if getattr(args, o.flags[0].lstrip("-"), None) is not None}
    modification |= parse_overrides(args.overrides)
    sweep_dir, settings = None, {}
    if args.resume:
        sweep_dir = Path(args.resume)
        if not (sweep_dir / "tune.json").is_file():
            raise ConfigError(str(sweep_dir), "is not a sweep directory of tune.py (it has no tune.json)")
        raw = read_json(args.config or sweep_dir / "config.json")
    elif args.config is None:
        raise ConfigError("command line", "give a config file with -c config.json, or a sweep to continue with -r")
    else:
        raw = read_json(args.config)
    config = ConfigParser(raw, modification=modification)
    if sweep_dir is None and args.run_id is not None:
        check_path_part("--run-id", args.run_id)
        sweep_dir = config.runs_dir / args.run_id
        # A sweep's tune.json is written first: a folder with a config.json but none is a training run.
        if (sweep_dir / "config.json").is_file() and not (sweep_dir / "tune.json").is_file():
            raise ConfigError("--run-id", f"{sweep_dir} is a training run, not a sweep; choose another id")
    if sweep_dir is not None and (sweep_dir / "tune.json").is_file():
        settings = read_json(sweep_dir / "tune.json")
    given = {"storage": args.storage, "study_name": args.study_name, "trials": args.trials,
             "kfold": True if args.kfold else None}
    settings |= {key: value for key, value in given.items() if value is not None}
    if not isinstance(settings.get("trials"), int) or settings["trials"] < 1:
        raise ConfigError("--trials", "give the number of trials of the study, e.g. --trials 20")
    if settings.get("storage") and "://" not in settings["storage"]:
        settings["storage"] = str(Path(settings["storage"]).resolve())  # a journal file: valid from any folder
    return config, sweep_dir, settings


def start_sweep(config: ConfigParser, sweep_dir: Path | None, settings: dict) -> tuple[Path, dict]:
    """Create (or reopen) the sweep directory and save its config and settings; start its log."""
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
    sweep_dir, settings = dist.broadcast_object((sweep_dir, settings))
    setup_logging(sweep_dir, config["trainer"]["verbosity"], dist.is_main_process())
    return sweep_dir, settings


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
