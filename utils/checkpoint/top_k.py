"""``trainer.save_top_k``: the K best checkpoints by the monitored value, and ``trainer.average_top_k``.

Each of the K best epochs keeps its checkpoint as ``model_top_epoch{N}.pth``, a hard link to the
last.pth written at the end of that epoch (as model_best.pth is); a file is removed once its epoch
drops out of the K best. ``top_k.json`` in the run directory lists them, best first, with their values.
The list is also in every checkpoint, so resuming continues it exactly; the listing and the files are
put in line with it when training starts (a crash between the checkpoint and the listing is repaired).
"""
import copy
import json
import logging
import math
import os
from pathlib import Path

from utils import distributed as dist
from utils.checkpoint.averaging import average_state_dicts
from utils.checkpoint.files import load_checkpoint
from utils.errors import CheckpointError

logger = logging.getLogger(__name__)

LISTING = "top_k.json"
AVERAGED = "model_averaged.pth"


PATTERN = "model_top_epoch*.pth"


def file_name(epoch: int) -> str:
    return f"model_top_epoch{epoch}.pth"


class TopK:
    """The K best epochs so far, best first: ``[{"epoch": 7, "value": 0.98, "file": "model_top_epoch7.pth"}]``.

    Examples:
        >>> top = TopK(3, "max val_accuracy")
        >>> top.update(1, {"val_accuracy": 0.9})   # True: epoch 1 entered; save() links its file
    """

    def __init__(self, k: int, monitor: str, average: bool = False):
        self.k, self.monitor, self.average = k, monitor, average
        self.mode, self.key = ("off", None) if monitor == "off" else monitor.split()
        self.entries: list[dict] = []
        self.dropped: list[dict] = []  # removed by the last update; their files go once the listing is written

    def update(self, epoch: int, log: dict) -> bool:
        """Put the epoch of ``log`` in the list if it is among the K best; returns whether it entered."""
        self.dropped = []
        value = log.get(self.key) if self.k and self.key else None
        if value is None or not math.isfinite(value):
            return False
        better = (lambda a, b: a < b) if self.mode == "min" else (lambda a, b: a > b)
        at = next((i for i, entry in enumerate(self.entries) if better(value, entry["value"])), len(self.entries))
        self.entries.insert(at, {"epoch": epoch, "value": float(value), "file": file_name(epoch)})
        self.entries, self.dropped = self.entries[: self.k], self.entries[self.k :]
        return at < self.k

    def state_dict(self) -> dict:
        return {"monitor": self.monitor, "entries": copy.deepcopy(self.entries)}

    def load_state_dict(self, state: dict | None) -> None:
        """The list of a checkpoint; a list of another monitor starts anew, a smaller K keeps the best."""
        if not state or state["monitor"] != self.monitor:
            self.entries = []
            return
        self.entries, self.dropped = state["entries"][: self.k], state["entries"][self.k :]

    def write_listing(self, run_dir: Path) -> None:
        """Write top_k.json (atomically), then remove the files of the epochs that dropped out."""
        listing = {"monitor": self.monitor, "k": self.k, "checkpoints": self.entries}
        temp = run_dir / (LISTING + ".tmp")
        temp.write_text(json.dumps(listing, indent=4))
        os.replace(temp, run_dir / LISTING)
        kept = {entry["file"] for entry in self.entries}
        for entry in self.dropped:
            if entry["file"] not in kept:
                (run_dir / entry["file"]).unlink(missing_ok=True)
        self.dropped = []

    def sync_files(self, run_dir: Path) -> None:
        """When training starts: drop entries whose file is missing, remove files no entry names, and
        write the listing. Only the main process touches the files."""
        if not dist.is_main_process():
            return
        missing = [entry for entry in self.entries if not (run_dir / entry["file"]).is_file()]
        for entry in missing:
            logger.warning("top-k: %s is missing; epoch %d leaves the list", entry["file"], entry["epoch"])
        self.entries = [entry for entry in self.entries if entry not in missing]
        kept = {entry["file"] for entry in self.entries}
        for path in run_dir.glob(PATTERN):
            if path.name not in kept:
                path.unlink()
        if self.k or (run_dir / LISTING).is_file():  # save_top_k turned off on resume: an empty listing
            self.write_listing(run_dir)


def average_top_k(trainer, epoch: int) -> dict:
    """The mean of the top-k checkpoints' weights (the EMA's with trainer.ema), its BatchNorm statistics
    recomputed, validated and saved as model_averaged.pth. Returns its metrics ({} when not configured)."""
    from utils.recipe.averaged_eval import evaluate_average
    from utils.recipe.ema import model_weights

    top = trainer.top_k
    if not (top.average and top.entries):
        return {}
    paths = [trainer.run_dir / entry["file"] for entry in top.entries]
    state_dict = None
    if dist.is_main_process():  # the files are the main process's; the others get the average from it
        checkpoints = [load_checkpoint(path) for path in paths]
        state_dict = average_state_dicts([model_weights(c) for c in checkpoints], [str(p) for p in paths])
    state_dict = dist.broadcast_object(state_dict)
    model = copy.deepcopy(trainer.raw_model)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise CheckpointError(str(paths[0]), f"cannot be averaged into the model: {error}") from None
    extra = {"averaged_epochs": [entry["epoch"] for entry in top.entries],
             "averaged_from": [entry["file"] for entry in top.entries]}
    return evaluate_average(trainer, model, epoch, trainer.run_dir / AVERAGED, extra)


def best_weights(run_dir: Path, monitor: str) -> tuple[Path, dict]:
    """The checkpoint of a finished run to predict with: model_best.pth (else last.pth), or the top-k or
    SWA average (model_averaged.pth, model_swa.pth) where its validation scored better by ``monitor``."""
    from utils.checkpoint.files import best_or_last

    path = best_or_last(run_dir)
    checkpoint = load_checkpoint(path)
    if monitor == "off":
        return path, checkpoint
    mode, key = monitor.split()
    best = checkpoint["monitor_best"]
    for name in (AVERAGED, "model_swa.pth"):
        candidate = run_dir / name
        if not candidate.is_file():
            continue
        averaged = load_checkpoint(candidate)
        value = averaged["metrics"].get(key)
        if value is not None and (value < best if mode == "min" else value > best):
            path, checkpoint, best = candidate, averaged, value
            logger.info("%s scores %s %.6g, better than the best single checkpoint", name, key, value)
    return path, checkpoint
