"""The classes user code subclasses, and nothing else.

    from base import BaseDataset, BaseDataLoader, BaseModel, BaseTask, BaseTrainer, Metric

base_dataset.py, base_data_loader.py, base_model.py, base_task.py (what targets mean), base_metric.py
(Metric, with metric_tracker.py, the exact epoch totals it needs) and base_trainer.py (the whole training
loop; trainer/trainer.py holds its two hooks). The machinery they run on lives in utils/.
"""
from base.base_data_loader import BaseDataLoader
from base.base_dataset import BaseDataset
from base.base_metric import Metric, confusion_matrix
from base.base_model import BaseModel
from base.base_task import BaseTask
from base.base_trainer import BaseTrainer

__all__ = ["BaseDataLoader", "BaseDataset", "BaseModel", "BaseTask", "BaseTrainer", "Metric", "confusion_matrix"]
