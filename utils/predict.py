"""Predictions of one model or an ensemble, with test-time augmentation, streamed to a CSV file.

The CSV is written batch by batch to a temporary file that is renamed at the end: memory stays flat
in the number of samples, and an interrupted run leaves no partial file (an older file of the same
name is left as it was, and the message says it is not this run's). What the columns are is the
task's business (``task.predictions_table``): for classification ``id, prediction, target, prob_0...``.
"""
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from utils.errors import CheckpointError, ConfigError
from utils.util import autocast, to_device


@torch.inference_mode()
def predict_batches(models: Sequence[torch.nn.Module], loader, device: torch.device, task, amp_dtype=None,
                    tta: Sequence[Callable] = (), channels_last: bool = False,
                    progress: bool = False, desc: str = "predicting") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The model outputs and the targets of each batch of ``loader``, in order, with a progress bar.

    With one model and no TTA the outputs are the model's own (logits), so losses and metrics
    computed from them equal those of validation. Otherwise the task combines them (``task.combine``):
    for classification the log of the class probabilities averaged over the models and over the views
    (the batch itself, then each TTA transform applied to it), which a loss like cross-entropy still
    reads correctly; for regression the mean of the values.
    """
    for model in models:
        model.eval()
    samples = len(getattr(loader, "sampler", None) or loader.dataset)
    with tqdm(total=samples, desc=desc, unit="sample", disable=not progress, leave=False, dynamic_ncols=True) as bar:
        for data, target in loader:
            data = to_device(data, device, channels_last)
            views = [data, *(transform(data) for transform in tta)]
            with autocast(device, amp_dtype):
                output = task.combine([model(view).float() for model in models for view in views]).float()
            bar.update(len(output))
            yield output, task.prepare_target(to_device(target, device))


def predict(models: Sequence[torch.nn.Module], loader, device: torch.device, task, amp_dtype=None,
            tta: Sequence[Callable] = (), channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Every output and target of ``loader`` at once (see ``predict_batches``): for small data."""
    batches = list(predict_batches(models, loader, device, task, amp_dtype, tta, channels_last))
    return torch.cat([output for output, _ in batches]), torch.cat([target for _, target in batches])


class PredictionWriter:
    """Write ``id`` and the task's columns batch by batch to ``<path>.tmp``; on leaving the ``with``
    block the file is renamed to ``path``, or, after an error or an interruption, removed.

    Examples:
        >>> with PredictionWriter("predictions.csv", task, classes=["cat", "dog"], labelled=True) as writer:
        ...     for ids, outputs, targets in batches:
        ...         writer.write(ids, outputs, targets)
    """

    def __init__(self, path: str | Path, task, classes: Sequence[str] | None = None, labelled: bool = True,
                 probabilities_only: bool = False):
        self.path = Path(path)
        self.probabilities_only = probabilities_only
        self.temp = self.path.with_name(self.path.name + ".tmp")
        self.classes, self.labelled = classes, labelled
        self.task = task
        self.file = None

    def __enter__(self) -> "PredictionWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.temp, "w", newline="")
        return self

    def write(self, ids: Sequence, outputs: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        import pandas as pd

        known = targets if self.labelled else None
        table = {"id": list(ids)} | self.task.predictions_table(outputs, known, self.classes)
        if self.probabilities_only:
            table = probability_columns(table)
        pd.DataFrame(table).to_csv(self.file, header=self.file.tell() == 0, index=False)

    def __exit__(self, error_type, error, traceback) -> None:
        self.file.close()
        if error_type is None:
            os.replace(self.temp, self.path)
        else:
            self.temp.unlink(missing_ok=True)


def probability_columns(table: dict) -> dict:
    """``id`` and the soft labels of a predictions table: its ``prob_*`` columns (classes, labels or
    ``prob_<head>_<k>``), or for a task without probabilities (regression) its ``prediction*`` values.

    Examples:
        >>> probability_columns({"id": [0], "prediction": [1], "target": [1], "prob_0": [0.2], "prob_1": [0.8]})
        {'id': [0], 'prob_0': [0.2], 'prob_1': [0.8]}
    """
    soft = [name for name in table if name.startswith("prob_")]
    if not soft:
        soft = [name for name in table if name == "prediction" or re.fullmatch(r"prediction_\d+", name)]
    return {"id": table["id"]} | {name: table[name] for name in soft}


def write_predictions(path: str | Path, task, ids: Sequence, outputs: torch.Tensor,
                      targets: torch.Tensor | None = None, classes: Sequence[str] | None = None) -> None:
    """Write the predictions CSV of outputs held in memory; ``targets`` is left out when the labels
    are unknown (None, or no target is known to the task, e.g. every class index is -1)."""
    labelled = targets is not None and bool(task.known_targets(targets).any())
    with PredictionWriter(path, task, classes, labelled) as writer:
        writer.write(ids, outputs, targets)


def predict_to_csv(path: str | Path, models: Sequence[torch.nn.Module], loader, ids: Sequence, device: torch.device,
                   task, classes: Sequence[str] | None = None, labelled: bool = True,
                   on_batch: Callable | None = None, progress: bool = False, probabilities_only: bool = False,
                   **predict_options) -> int:
    """Predict every sample of ``loader`` and stream the rows to ``path`` (see PredictionWriter).

    ``ids`` are the samples' ids in the loader's order; ``on_batch(outputs, targets)`` sees each
    batch (to score it); ``probabilities_only`` keeps ``id`` and the soft labels (``probability_columns``).
    Returns the number of rows written.
    """
    done = 0
    with PredictionWriter(path, task, classes, labelled, probabilities_only) as writer:
        for outputs, targets in predict_batches(models, loader, device, task, progress=progress,
                                                **predict_options):
            writer.write(ids[done:done + len(outputs)], outputs, targets)
            if on_batch is not None:
                on_batch(outputs, targets)
            done += len(outputs)
    return done


def write_held_out_predictions(path: str | Path, model: torch.nn.Module, loader, held_out: Sequence[int], dataset,
                               device: torch.device, task, amp_dtype=None, progress: bool = False) -> None:
    """k-fold: predict a fold's held-out samples (``loader``, in ``held_out`` order) into ``path``.

    One process streams the rows to disk. Under DDP each process predicts its share, keeping only
    compact per-batch arrays, and the main process writes them all.
    """
    from utils import distributed as dist

    if not dist.is_distributed():
        ids = [dataset.sample_id(int(i)) for i in held_out]
        predict_to_csv(path, [model], loader, ids, device, task, dataset.classes, progress=progress,
                       amp_dtype=amp_dtype, desc="out-of-fold")
        return
    batches = [(output.cpu(), target.cpu()) for output, target in
               predict_batches([model], loader, device, task, amp_dtype, progress=progress, desc="out-of-fold")]
    share = held_out[dist.get_rank()::dist.get_world_size()]
    shards = dist.gather_objects((share, torch.cat([o for o, _ in batches]), torch.cat([t for _, t in batches])))
    if dist.is_main_process():
        ids = [dataset.sample_id(int(i)) for shard in shards for i in shard[0]]
        write_predictions(path, task, ids, torch.cat([s[1] for s in shards]), torch.cat([s[2] for s in shards]),
                          dataset.classes)


CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors", ".bin", ".onnx", ".pt2")


def check_output_path(path: Path, where: str = "--output") -> None:
    """Refuse, before anything is predicted, an output that is a checkpoint, a folder, or in a place
    that cannot be written: predictions are a CSV file, and writing one must not replace a model.

    Examples:
        >>> check_output_path(Path("run/model_best.pth"))   # ConfigError: --output: ... is a checkpoint's name
    """
    import tempfile

    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise ConfigError(where, f"{path} has a checkpoint's name ({path.suffix}): the predictions are a CSV "
                                 "file, e.g. predictions.csv")
    if path.is_dir():
        raise ConfigError(where, f"{path} is a folder: give a file name, e.g. {path / 'predictions.csv'}")
    if path.is_file():
        with open(path, "rb") as file:
            if file.read(4) == b"PK\x03\x04":
                raise ConfigError(where, f"{path} is a checkpoint (a torch.save file): writing the predictions "
                                         "would replace it; give another name, e.g. predictions.csv")
    folder = next(parent for parent in (path.parent.absolute(), *path.parent.absolute().parents) if parent.exists())
    if not folder.is_dir():
        raise ConfigError(where, f"{folder} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ConfigError(where, f"cannot write in {folder}: {error.strerror or error}") from None


def _task_of(config: dict) -> tuple[str, dict | None]:
    task = config.get("task") or "Classification"
    task = {"type": task} if isinstance(task, str) else task
    return task.get("type"), (task.get("args") or {}).get("heads")


def check_ensemble(config: dict, checkpoints: list[dict], paths: list[Path]) -> None:
    """Every model of an ensemble (or the one model) must predict what the config's task reads: the
    same task, the same heads, the same number of outputs and the same class names, or averaging
    their outputs mixes different things.

    Examples:
        >>> check_ensemble(config.config, checkpoints, paths)   # CheckpointError naming the odd one out
    """
    task, heads = _task_of(config)
    first_classes = checkpoints[0].get("classes")
    first_outputs = checkpoints[0]["config"]["arch"].get("args", {}).get("num_classes")
    for checkpoint, path in zip(checkpoints, paths):
        own_task, own_heads = _task_of(checkpoint["config"])
        if own_task != task:
            raise CheckpointError(str(path), f"was trained for the task {own_task}, but the predictions are read "
                                             f"as {task}: an ensemble averages models of one task")
        if own_heads != heads:
            raise CheckpointError(str(path), f"was trained for the heads {own_heads}, but the predictions are read "
                                             f"for {heads}")
        outputs = checkpoint["config"]["arch"].get("args", {}).get("num_classes")
        if None not in (outputs, first_outputs) and outputs != first_outputs:
            raise CheckpointError(str(path), f"has {outputs} outputs, {paths[0]} has {first_outputs}: the "
                                             "ensemble's outputs cannot be averaged")
        classes = checkpoint.get("classes")
        if None not in (classes, first_classes) and list(classes) != list(first_classes):
            raise CheckpointError(str(path), f"was trained on the classes {', '.join(classes[:5])}, {paths[0]} on "
                                             f"{', '.join(first_classes[:5])}: averaging would mix classes")
