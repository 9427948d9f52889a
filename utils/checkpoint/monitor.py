"""``trainer.monitor``: whether an epoch improved the monitored value, and when to stop early."""
from utils import distributed as dist
from utils.errors import ConfigError


def update_monitor(trainer, log: dict) -> tuple[bool, bool]:
    """(improved, stop early): rank 0 decides, so every process stops at the same epoch."""
    if trainer.monitor_mode == "off":
        return False, False
    if trainer.monitor_key not in log:
        raise ConfigError("trainer.monitor", f"{trainer.monitor_key!r} is not in the epoch's log "
                                             f"({', '.join(log)}); is there a validation split?")
    value = log[trainer.monitor_key]
    improved = value < trainer.monitor_best if trainer.monitor_mode == "min" else value > trainer.monitor_best
    improved = bool(dist.broadcast_object(improved))
    if improved:
        trainer.monitor_best, trainer.not_improved_count, trainer.best_epoch = value, 0, log["epoch"]
    else:
        trainer.not_improved_count += 1
    return improved, 0 < trainer.early_stop <= trainer.not_improved_count
