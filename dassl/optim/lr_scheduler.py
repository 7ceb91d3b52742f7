"""``build_lr_scheduler`` with Dassl's warmup wrappers.

The wrappers reproduce Dassl's stepping rule exactly (see ``_WarmupScheduler.step``)
but keep only plain data in ``state_dict()``: the successor's own state is nested
as a dict and restored into the live successor on load, so resuming keeps the
successor attached to the live optimizer.
"""
import torch
from torch.optim.lr_scheduler import LRScheduler

from ..utils.tools import closest_match

AVAILABLE_LR_SCHEDULERS = ["single_step", "multi_step", "cosine"]
AVAILABLE_WARMUP_TYPES = ["constant", "linear"]


class _WarmupScheduler(LRScheduler):
    """Runs its own rule for ``warmup_epoch`` steps, then hands over to ``successor``."""

    def __init__(self, optimizer, successor, warmup_epoch, last_epoch=-1):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        super().__init__(optimizer, last_epoch)  # no `verbose`: removed in PyTorch 2.7

    def get_lr(self):
        raise NotImplementedError

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            # Warmup is over: the successor drives the LR; our counter stops.
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)

    def state_dict(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "successor")}
        state["successor"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict):
        state = dict(state_dict)
        successor_state = state.pop("successor", None)
        if successor_state is not None and hasattr(successor_state, "state_dict"):
            successor_state = successor_state.state_dict()  # legacy pickled scheduler object
        self.__dict__.update(state)
        if successor_state is not None:
            successor_state = {k: v for k, v in successor_state.items() if k != "optimizer"}
            self.successor.load_state_dict(successor_state)


class ConstantWarmupScheduler(_WarmupScheduler):
    """Constant ``cons_lr`` for the warmup epochs."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr, last_epoch=-1):
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


class LinearWarmupScheduler(_WarmupScheduler):
    """``min_lr`` at step 0, then ``base_lr * step / warmup_epoch``."""

    def __init__(self, optimizer, successor, warmup_epoch, min_lr, last_epoch=-1):
        self.min_lr = min_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]


def _choice_error(what, key, value, choices):
    return ValueError(
        f"{what} must be one of {choices}, but got {value} "
        f"(did you mean {closest_match(value, choices)}?); set {key}"
    )


def build_lr_scheduler(optimizer, optim_cfg):
    """Build the scheduler of ``OPTIM.LR_SCHEDULER``, wrapped in warmup when
    ``OPTIM.WARMUP_EPOCH > 0``. The engine never steps it; trainers call
    ``update_lr()`` once per epoch."""
    name = optim_cfg.LR_SCHEDULER
    stepsize = optim_cfg.STEPSIZE
    max_epoch = optim_cfg.MAX_EPOCH
    if name not in AVAILABLE_LR_SCHEDULERS:
        raise _choice_error("scheduler", "OPTIM.LR_SCHEDULER", name, AVAILABLE_LR_SCHEDULERS)

    if name == "single_step":
        if isinstance(stepsize, (list, tuple)):
            stepsize = stepsize[-1]
        if not isinstance(stepsize, int):
            raise TypeError(
                "For single_step lr_scheduler, stepsize must be an integer, but got "
                f"{type(stepsize).__name__} (OPTIM.STEPSIZE={optim_cfg.STEPSIZE})"
            )
        if stepsize <= 0:
            stepsize = max_epoch
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=stepsize,
                                                    gamma=optim_cfg.GAMMA)
    elif name == "multi_step":
        if not isinstance(stepsize, (list, tuple)):
            raise TypeError(
                "For multi_step lr_scheduler, stepsize must be a list, but got "
                f"{type(stepsize).__name__} (OPTIM.STEPSIZE={stepsize})"
            )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(stepsize),
                                                         gamma=optim_cfg.GAMMA)
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=float(max_epoch))

    if optim_cfg.WARMUP_EPOCH > 0:
        if not optim_cfg.WARMUP_RECOUNT:
            # Dassl's rule: the successor starts as if the warmup epochs were its own. PyTorch's
            # schedulers are chainable, so this rescales the schedule rather than shifting it
            # (cosine: LR_e = LR * (1 + cos(pi e / T)) / (1 + cos(pi W / T)) from epoch W on).
            scheduler.last_epoch = optim_cfg.WARMUP_EPOCH
        warmup_type = optim_cfg.WARMUP_TYPE
        if warmup_type == "constant":
            scheduler = ConstantWarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH,
                                                optim_cfg.WARMUP_CONS_LR)
        elif warmup_type == "linear":
            scheduler = LinearWarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH,
                                              optim_cfg.WARMUP_MIN_LR)
        else:
            raise _choice_error("warmup type", "OPTIM.WARMUP_TYPE", warmup_type,
                                AVAILABLE_WARMUP_TYPES)
    return scheduler
