"""Training: the jitted data-parallel step, the optimiser, checkpoints, the linear trainer."""
from unified_petl.train.checkpoint import (Checkpointer, CheckpointMismatch, load_delta,
                                           save_delta)
from unified_petl.train.config import ConfigError, base_config, load_config, override
from unified_petl.train.inference import predict
from unified_petl.train.loop import TrainingDiverged, evaluate, train
from unified_petl.train.optim import make_optimizer
from unified_petl.train.step import (TrainState, make_eval_step, make_mesh, make_train_step,
                                     split_trainable, variables)

__all__ = ["Checkpointer", "CheckpointMismatch", "load_delta", "save_delta", "ConfigError",
           "base_config", "load_config", "override", "TrainingDiverged", "evaluate", "predict",
           "train", "make_optimizer", "TrainState", "make_eval_step", "make_mesh", "make_train_step",
           "split_trainable", "variables"]
