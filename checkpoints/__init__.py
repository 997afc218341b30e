"""Checkpoints: the model zoo, safe loading and saving, discovery of groups and seeds, data sources, training."""

from . import zoo
from .discover import Run, discover
from .io import load_model, read_checkpoint, read_sidecar, save_checkpoint, sha256
from .posterior import is_posterior, load_posterior, save_posterior
from .sources import DataSet, load_data
from .zoo import build

__all__ = [
    "zoo",
    "build",
    "Run",
    "discover",
    "load_model",
    "load_posterior",
    "save_posterior",
    "is_posterior",
    "read_checkpoint",
    "read_sidecar",
    "save_checkpoint",
    "sha256",
    "DataSet",
    "load_data",
]
