"""Logging for a run: the console and ``info.log`` in the run directory, from logger_config.json."""
import json
import logging
import logging.config
from pathlib import Path

CONFIG_FILE = Path(__file__).with_name("logger_config.json")  # beside this file, not the working dir
LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


def setup_logging(log_dir: str | Path | None = None, verbosity: int = 1, main_process: bool = True) -> None:
    """Configure logging with ``logging.config.dictConfig`` from logger_config.json.

    With ``log_dir``, file handlers write there (``info.log``); without it, only the console is used.
    Processes other than the main one under DDP only print warnings and errors.

    Examples:
        >>> setup_logging("saved/Digits_ResNet/20261127_101500", verbosity=1)
    """
    config = json.loads(CONFIG_FILE.read_text())
    handlers = config["handlers"]
    for name in list(handlers):
        if "filename" in handlers[name]:
            if log_dir is None or not main_process:
                del handlers[name]
                config["root"]["handlers"].remove(name)
            else:
                handlers[name]["filename"] = str(Path(log_dir) / handlers[name]["filename"])
    config["root"]["level"] = LEVELS[verbosity] if main_process else logging.WARNING
    logging.config.dictConfig(config)
    # The tracking libraries are chatty at INFO level.
    for noisy in ("PIL", "matplotlib", "urllib3", "wandb"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
