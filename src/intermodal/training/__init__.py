"""Training: configuration, pair sampling, augmentation, losses, the loop and distributed runs.

Example:
    >>> from intermodal.training import load_config, train
    >>> config = load_config("train.toml", ["train.steps=2000"])  # doctest: +SKIP
    >>> weights = train(config)  # doctest: +SKIP
"""

from intermodal.training.config import TrainConfig, load_config
from intermodal.training.trainer import train

__all__ = ["TrainConfig", "load_config", "train"]
