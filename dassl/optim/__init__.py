"""Optimizers and learning-rate schedulers built from ``cfg.OPTIM``."""
from .lr_scheduler import (
    AVAILABLE_LR_SCHEDULERS, ConstantWarmupScheduler, LinearWarmupScheduler, build_lr_scheduler,
)
from .optimizer import AVAILABLE_OPTIMIZERS, build_optimizer
