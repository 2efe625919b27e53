"""Training: recipes and configuration, the loop, optimisation pieces, processes under torchrun."""

from .config import RECIPES, SCHEDULES, Recipe, TrainConfig, TrainSettings, resolve
from .distributed import default_threads, init_distributed
from .loop import evaluate, fit, train, train_one_epoch
from .optim import ModelEma, learning_rate, param_groups, recalibrate_batchnorm

__all__ = ["TrainConfig", "TrainSettings", "Recipe", "RECIPES", "SCHEDULES", "resolve", "fit", "train",
           "train_one_epoch", "evaluate", "learning_rate", "param_groups", "recalibrate_batchnorm",
           "ModelEma", "default_threads", "init_distributed"]
