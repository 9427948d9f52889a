"""Run train.py or kfold_train.py as a user does, with one fault injected at an exact point (tests only).

    python tests/launch.py train.py -c config.json [ARGS ...]
    python -m torch.distributed.run --nproc_per_node=2 tests/launch.py train.py -c config.json

A test that sends a signal "a quarter into epoch 2" depends on timing; this sends it during a chosen
forward pass instead. What to inject comes from the environment (each one optional):

    LAUNCH_RANK=0               the DDP rank the faults below apply to (default 0; every rank counts)
    LAUNCH_SIGNALS=15@8,2@8     during the 8th training forward pass of the process, send it these signals
    LAUNCH_NAN_FROM=8           from the 8th training forward pass on, the model's outputs are NaN
    LAUNCH_KILL_AFTER_EPOCH=2   SIGKILL the process right after epoch 2 is recorded (metrics.csv,
                                TensorBoard), before its checkpoint is written
    LAUNCH_WRITE_DELAY=0.2      each checkpoint write takes this many seconds longer, half before the
                                file is written and half after (so that a fault lands during a write)

Under torchrun, every run through this launcher also fails if a DistributedDataParallel is still alive
when the process group is destroyed: that aborts a process at exit now and then, and here every time
(check_teardown; the tests' own launchers call it too).

Only the components' public interfaces are touched (the model's call, the recorder's log_epoch), so the
scripts run as they are.
"""
import os
import runpy
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from base.base_model import BaseModel  # noqa: E402


def this_rank_is_targeted() -> bool:
    return os.environ.get("RANK", "0") == os.environ.get("LAUNCH_RANK", "0")


def instrument_model(signals: dict[int, list[int]], nan_from: int | None) -> None:
    forward_passes = 0
    original_call = BaseModel.__call__

    def call(self, *args, **kwargs):
        nonlocal forward_passes
        output = original_call(self, *args, **kwargs)
        # Only the model of model/model.py in training mode (not the pre-training check, not validation).
        if not (self.training and type(self).__module__ == "model.model" and this_rank_is_targeted()):
            return output
        forward_passes += 1
        if nan_from is not None and forward_passes >= nan_from:
            output = output * float("nan")
        for signum in signals.get(forward_passes, []):
            os.kill(os.getpid(), signum)  # its handler runs right here, in the middle of the batch
        return output

    BaseModel.__call__ = call


def kill_after_epoch(epoch: int) -> None:
    from logger.recorder import RunRecorder

    original = RunRecorder.log_epoch

    def log_epoch(self, log, *args, **kwargs):
        original(self, log, *args, **kwargs)
        if log["epoch"] == epoch and this_rank_is_targeted():
            os.kill(os.getpid(), signal.SIGKILL)

    RunRecorder.log_epoch = log_epoch


def slow_writes(seconds: float) -> None:
    import time

    from utils.checkpoint import files

    original = files.save_checkpoint

    def save_checkpoint(*args, **kwargs):
        time.sleep(seconds / 2)
        original(*args, **kwargs)
        time.sleep(seconds / 2)

    files.save_checkpoint = save_checkpoint


def check_teardown() -> None:
    """Fail the process group's destruction while a DistributedDataParallel lives, even as uncollected
    garbage: its reducer can abort the process at exit ("terminate called without an active exception").
    The automatic garbage collector is off, so that the outcome does not depend on when it last ran."""
    import gc

    import torch.distributed as dist

    gc.disable()
    original = dist.destroy_process_group

    def destroy_process_group(*args, **kwargs):
        alive = sum(issubclass(type(o), torch.nn.parallel.DistributedDataParallel) for o in gc.get_objects())
        if alive:
            raise RuntimeError(f"{alive} DistributedDataParallel alive when the process group is destroyed")
        original(*args, **kwargs)

    dist.destroy_process_group = destroy_process_group


def main() -> None:
    signals: dict[int, list[int]] = {}
    for item in filter(None, os.environ.get("LAUNCH_SIGNALS", "").split(",")):
        signum, at = item.split("@")
        signals.setdefault(int(at), []).append(int(signum))
    nan_from = os.environ.get("LAUNCH_NAN_FROM")
    instrument_model(signals, int(nan_from) if nan_from else None)
    if os.environ.get("LAUNCH_KILL_AFTER_EPOCH"):
        kill_after_epoch(int(os.environ["LAUNCH_KILL_AFTER_EPOCH"]))
    if os.environ.get("LAUNCH_WRITE_DELAY"):
        slow_writes(float(os.environ["LAUNCH_WRITE_DELAY"]))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        check_teardown()
    torch.set_num_threads(1)
    script, *args = sys.argv[1:]
    sys.argv = [script, *args]
    runpy.run_path(str(REPO / script), run_name="__main__")


if __name__ == "__main__":
    main()
