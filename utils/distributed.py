"""DistributedDataParallel plumbing: one process per device, started by torchrun.

Every helper is a no-op in a plain single-process run, so the training code calls them unconditionally.
"""
import gc
import math
import os

import torch
import torch.distributed as dist

from utils.errors import ConfigError, NonFiniteLossError


def init_distributed() -> None:
    """Join the process group that torchrun describes in the environment (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def close_distributed() -> None:
    """Leave the process group together: no process tears it down while another still uses it.

    A DistributedDataParallel still alive when the group is destroyed can abort its process at exit
    ("terminate called without an active exception"); the wrappers the caller has dropped wait in
    reference cycles, so they are collected here, while the group still stands.
    """
    if is_distributed():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Only the main process (rank 0) writes logs, checkpoints, metrics.csv, TensorBoard and wandb."""
    return get_rank() == 0


def local_device(n_gpu: int) -> torch.device:
    """This process's device under torchrun: its own GPU, or the CPU."""
    if torch.cuda.is_available() and n_gpu > 0:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def device_of_this_process() -> torch.device:
    """The GPU this process trains on (its own under torchrun), or the CPU without CUDA."""
    return local_device(1)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes, in place; returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_max(values: list[float], device: torch.device) -> list[float]:
    """The largest of each value over all processes (a flag any process raised, a stop signal)."""
    if not is_distributed():
        return values
    flags = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.tolist()


def broadcast_object(obj):
    """Rank 0's value of ``obj`` on every rank."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def own_entry(gathered: list):
    """This rank's entry of what ``gather_objects`` returned (rank 0's if it came from fewer processes)."""
    return gathered[get_rank()] if get_rank() < len(gathered) else gathered[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def wrap_model(model: torch.nn.Module, options: dict, device: torch.device,
               device_ids: list[int]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the plain model, the model the training step calls): moved to ``device``, channels-last,
    compiled and wrapped for DDP or DataParallel as the ``trainer`` options say."""
    model = model.to(device)
    if options["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    if is_distributed():
        if options["sync_batchnorm"] and device.type != "cuda":
            raise ConfigError("trainer.sync_batchnorm", "needs CUDA GPUs (SyncBatchNorm has no CPU kernel)")
        if options["sync_batchnorm"]:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        wrapped = torch.compile(model) if options["compile"] else model
        ids = [device.index] if device.type == "cuda" else None
        return model, torch.nn.parallel.DistributedDataParallel(wrapped, device_ids=ids)
    wrapped = torch.compile(model) if options["compile"] else model
    if len(device_ids) > 1:
        wrapped = torch.nn.DataParallel(wrapped, device_ids=device_ids)
    return model, wrapped


def check_recent_losses(losses: list, stop_signal: int | None, write_failed: bool, device: torch.device,
                        epoch: int, batch_idx: int) -> tuple[float, int, bool]:
    """(mean loss, stop signal, a checkpoint write failed) of the recent batches, agreed by every process;
    a NonFiniteLossError when a loss on any process is not finite. The loop's one host sync."""
    values = torch.stack(losses).tolist()
    bad = [i for i, value in enumerate(values) if not math.isfinite(value)]
    any_bad, stop_signal, write_failed = all_max([float(bool(bad)), float(stop_signal or 0), float(write_failed)],
                                                 device)
    if any_bad and not bad:
        raise NonFiniteLossError(f"epoch {epoch}: the loss is not finite on another process")
    if bad:
        kept = f"last.pth keeps the state after epoch {epoch - 1}" if epoch > 1 else "no checkpoint was written"
        raise NonFiniteLossError(f"epoch {epoch}, batch {batch_idx + 2 - len(values) + bad[0]}: the loss is "
                                 f"{values[bad[0]]}; {kept}. Lower the learning rate, set "
                                 "trainer.grad_clip_norm, or check the data")
    return sum(values) / len(values), int(stop_signal), bool(write_failed)
