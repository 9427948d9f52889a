"""The config keys of weight averaging: ``trainer.save_top_k``, ``trainer.average_top_k`` and ``trainer.swa``
(the keys themselves are in schema.TRAINER; here the SWA section and the checks across keys)."""
import logging

from utils.config.fields import REQUIRED, Field, check_section, non_negative, one_of, positive
from utils.errors import ConfigError

logger = logging.getLogger(__name__)

SWA = {
    "start": Field((int, float), 0.75),
    "lr": Field((float,), REQUIRED, positive),
    "anneal_epochs": Field((int,), 2, non_negative),
    "anneal_strategy": Field((str,), "cos", one_of("cos", "linear")),
}


def check_averaging(trainer: dict) -> None:
    """save_top_k, average_top_k and swa: what they need, and what they cannot be combined with."""
    if trainer["save_top_k"] and trainer["monitor"] == "off":
        raise ConfigError("trainer.save_top_k", 'ranks checkpoints by trainer.monitor, which is "off"')
    if trainer["average_top_k"] and not trainer["save_top_k"]:
        raise ConfigError("trainer.average_top_k", "averages the checkpoints of trainer.save_top_k: set it to 2 "
                                                   "or more")
    if trainer["average_top_k"] and trainer["save_top_k"] == 1:
        logger.warning("trainer.average_top_k with trainer.save_top_k 1 averages one checkpoint: its BatchNorm "
                       "statistics are recomputed, nothing more")
    if trainer["swa"] is not None:
        trainer["swa"] = check_section("trainer.swa", trainer["swa"], SWA)
        _check_swa_start(trainer["swa"]["start"], trainer["epochs"])
        if trainer["ema"] is not None:
            raise ConfigError("trainer.swa", "and trainer.ema are two averages of the weights, and validation "
                                             "scores one model: turn one of them off")


def _check_swa_start(start, epochs: int) -> None:
    """A start inside the run: a fraction in (0, 1), or an epoch number from 1 to ``epochs``."""
    if isinstance(start, float) and not 0 < start < 1:
        raise ConfigError("trainer.swa.start", f"a float is a fraction of the epochs, in (0, 1), got {start}; "
                                               "an epoch number is an integer")
    if isinstance(start, int) and not 1 <= start <= epochs:
        raise ConfigError("trainer.swa.start", f"epoch {start} is not one of the run's {epochs} epochs")
