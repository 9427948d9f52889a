"""Trainers, selected by the config's ``trainer.type`` (default "Trainer")."""
from trainer.trainer import Trainer

__all__ = ["Trainer"]
