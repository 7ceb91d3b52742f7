"""Config tree: ``get_cfg_default()`` returns a fresh, mutable copy of the defaults."""
from .cfgnode import CfgNode, ConfigKeyError, ConfigListError, ConfigTypeError
from .defaults import _C as cfg_default


def get_cfg_default():
    return cfg_default.clone()


def clean_cfg(cfg, trainer):
    """Drop every ``TRAINER.<X>`` node except ``NAME`` and the one of ``trainer``."""
    keep = {"NAME", trainer.upper()}
    for key in list(cfg.TRAINER.keys()):
        if key not in keep:
            del cfg.TRAINER[key]


__all__ = [
    "CfgNode", "ConfigKeyError", "ConfigListError", "ConfigTypeError",
    "get_cfg_default", "clean_cfg",
]
