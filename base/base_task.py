"""The base of tasks: what the targets mean, and everything that depends on it.

A task is chosen by the config's "task" section and looked up in ``model/task.py``. The engine asks
it how to collate a batch of targets, how outputs become predictions and predictions.csv columns,
which pictures to draw, what k-fold stratifies on and how OOF predictions are read back. The
defaults here are single-label classification (logits of C classes, class-index targets), the
behaviour of the template before tasks existed; ``model.task.Classification`` is exactly this.
"""
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from base.base_metric import confusion_matrix
from utils.recipe.distillation import softmax_kl


class BaseTask:
    """Single-label classification; subclass it and override what differs for your targets.

    Every method runs on whole batches (or whole prediction sets) and, in the training loop, never
    reads a value back to the host.

    Examples:
        >>> class Ordinal(BaseTask):                      # in model/task.py
        ...     def prepare_target(self, target):
        ...         return target.float().unsqueeze(1)
        ...     def predictions_table(self, outputs, targets, classes=None):
        ...         return {"prediction": outputs[:, 0].round().cpu().numpy()}
    """

    # What a target is: "class" (one class index), "value" (numbers), "labels" (a 0/1 vector) or
    # "heads" (one class per head). The config checks read it: a balanced sampler needs classes or
    # labels to balance, MixUp needs one class index per sample.
    target_kind = "class"

    # -- training ------------------------------------------------------------------------------
    def prepare_target(self, target):
        """A batch of targets as the loss and the metrics take it (on the device already).

        The DataLoader's default collate turns per-sample lists into a list of tensors, one per
        position: those are stacked into a (batch, K) tensor.
        """
        if isinstance(target, (list, tuple)) and target and isinstance(target[0], torch.Tensor):
            return torch.stack(list(target), dim=1)
        return target

    def wrap_loss(self, criterion):
        """The loss the trainer uses, from the config's loss (MultiHead sums it over heads)."""
        return criterion

    def wrap_metrics(self, metrics: dict) -> dict:
        """The metrics the trainer tracks, from the config's {column: metric}."""
        return metrics

    def soft_target_loss(self, output: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """Per sample, the ``distillation`` loss's term for a teacher's soft labels ``teacher`` (the
        probability columns of its predictions CSV): ``T² · KL(teacher_T ‖ student_T)``."""
        return softmax_kl(output, teacher, temperature)

    def metric_columns(self, names: Sequence[str]) -> list[str]:
        """The metric columns that ``wrap_metrics`` makes of the configured names (``monitor`` uses them)."""
        return list(names)

    def check_labels(self, dataset, num_outputs: int | None, where: str) -> None:
        """A DataError naming the first sample whose target does not fit the model."""
        dataset.check_labels(num_outputs, where)

    # -- predictions ---------------------------------------------------------------------------
    def combine(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """One output from several (models of an ensemble, TTA views), on the scale of one output.

        One output is returned as it is. Several: the log of the averaged class probabilities, which
        a loss like cross-entropy still reads as logits.
        """
        if len(outputs) == 1:
            return outputs[0]
        probs = torch.stack([output.float().softmax(dim=1) for output in outputs]).mean(dim=0)
        return probs.clamp_min(1e-12).log()

    def known_targets(self, targets: torch.Tensor) -> torch.Tensor:
        """Per sample, whether its target is known (unlabelled data has -1)."""
        return targets >= 0

    def predictions_table(self, outputs: torch.Tensor, targets: torch.Tensor | None,
                          classes: Sequence[str] | None = None) -> dict:
        """The predictions.csv columns after ``id``: ``prediction, [prediction_name,] [target,] prob_k``."""
        probs = outputs.float().softmax(dim=1).cpu().numpy()
        prediction = probs.argmax(axis=1)
        table = {"prediction": prediction}
        if classes is not None:
            table["prediction_name"] = [classes[i] for i in prediction]
        if targets is not None:
            table["target"] = targets.cpu().numpy()
        return table | {f"prob_{c}": probs[:, c] for c in range(probs.shape[1])}

    def output_probabilities(self, output: torch.Tensor) -> dict[str, torch.Tensor]:
        """The outputs a deployed model gives (``export.py --postprocess``), by name: the class probabilities.

        Runs inside the exported graph, so only tensor operations (no NumPy, no ``.item()``).
        """
        return {"probabilities": output.softmax(dim=1)}

    def outputs_from_table(self, table) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs, targets) read back from a predictions table (to score OOF predictions)."""
        probs = torch.tensor(table.filter(regex=r"^prob_").to_numpy())
        return probs.clamp_min(1e-12).log(), torch.tensor(table["target"].to_numpy())

    # -- k-fold --------------------------------------------------------------------------------
    def stratify_labels(self, targets, n_bins: int = 10) -> np.ndarray:
        """What k-fold stratifies on: one label per sample (or a 0/1 matrix for multi-label)."""
        return np.asarray(targets)

    def fit_oof(self, outputs: torch.Tensor, targets: torch.Tensor, run_dir: Path) -> None:
        """After k-fold: tune what the OOF predictions can tune (MultiLabel's thresholds)."""

    def load_run(self, run_dir: Path) -> None:
        """Before inference on a k-fold run directory: read what ``fit_oof`` wrote."""

    # -- pictures ------------------------------------------------------------------------------
    def figure_update(self, state, output: torch.Tensor, target) -> object:
        """Accumulate one validation batch into the picture's state (None at first): the confusion matrix."""
        if output.dim() != 2 or not isinstance(target, torch.Tensor):
            return state
        counts = confusion_matrix(output, target)
        return counts if state is None else state + counts

    def figure_reduce(self, state):
        """The state over all DDP processes."""
        from utils.distributed import all_reduce_sum

        return None if state is None else all_reduce_sum(state)

    def record_figures(self, tensorboard, state, classes: Sequence[str] | None, tag: str, step: int,
                       max_classes: int = 50) -> None:
        """Draw the pictures of a validation state in TensorBoard, tagged ``val/<picture>_<tag>``: the
        confusion matrix, or above ``max_classes`` classes (an image would be unreadable and huge) its
        most confused pairs as text.
        """
        from logger.visualization import record_confusion_matrix

        record_confusion_matrix(tensorboard, f"val/confusion_matrix_{tag}", state.cpu().numpy(), classes, step,
                                max_classes)
