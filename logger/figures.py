"""The task's validation pictures in TensorBoard (a confusion matrix, a scatter plot), of the best
epoch and of the last, drawn once at the end of training."""
import logging

logger = logging.getLogger(__name__)


class ValidationFigures:
    """Collects what the task draws from each validation batch and draws it at the end of the run.

    Examples:
        >>> figures = ValidationFigures(task, enabled=True, max_classes=50)
        >>> figures.start_validation()
        >>> figures.update(output, target)          # every validation batch
        >>> figures.finish_validation()
        >>> figures.end_epoch(step, improved)      # once the epoch is monitored
        >>> figures.draw(tensorboard, classes)     # once, at the last epoch
    """

    def __init__(self, task, enabled: bool, max_classes: int):
        self.task, self.enabled, self.max_classes = task, enabled, max_classes
        self.state = self.current = None  # the running state of this validation, and its reduced form
        self.last = self.best = (0, None)  # (global step, reduced state) of the last and the best epoch

    def start_validation(self) -> None:
        self.state = None

    def update(self, output, target) -> None:
        if self.enabled:
            self.state = self.task.figure_update(self.state, output, target)

    def finish_validation(self) -> None:
        if self.enabled:
            self.current = self.task.figure_reduce(self.state)

    def end_epoch(self, step: int, improved: bool) -> None:
        if self.current is None:
            return
        self.last = (step, self.current)
        if improved:
            self.best = self.last

    def draw(self, tensorboard, classes) -> None:
        """Draw the best epoch's pictures and the last one's; a picture never costs the run."""
        for tag, (step, state) in (("best", self.best), ("last", self.last)):
            if state is None:
                continue
            try:
                self.task.record_figures(tensorboard, state, classes, tag, step, self.max_classes)
            except Exception as error:
                logger.warning("could not draw the validation pictures: %s: %s", type(error).__name__, error)
