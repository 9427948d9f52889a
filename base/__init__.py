"""The engine's base classes, which user code subclasses, and the machinery they run on.

    from base import BaseDataset, BaseDataLoader, BaseModel, BaseTask, BaseTrainer, Metric

Bases (subclass these): base_dataset.py, base_data_loader.py, base_model.py, base_trainer.py,
base_metric.py, base_task.py. Machinery (used by them, not edited by users): checkpoint.py, dist.py, seeding.py,
metric_tracker.py.
"""
from base.base_data_loader import BaseDataLoader
from base.base_dataset import BaseDataset
from base.base_metric import Metric, confusion_matrix
from base.base_model import BaseModel
from base.base_task import BaseTask
from base.base_trainer import BaseTrainer

__all__ = ["BaseDataLoader", "BaseDataset", "BaseModel", "BaseTask", "BaseTrainer", "Metric", "confusion_matrix"]
