"""Trainers, selected by the config's ``trainer.type`` (default "Trainer").

Every trainer defined in trainer.py is selectable by name; a trainer in a file of its own is added
with one import line here, e.g. ``from trainer.mixup_trainer import MixupTrainer``.
"""
from trainer.trainer import *  # noqa: F403
