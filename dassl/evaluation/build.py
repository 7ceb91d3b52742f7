"""Evaluator registry and builder."""
from ..utils.registry import Registry
from ..utils.tools import check_availability

EVALUATOR_REGISTRY = Registry("EVALUATOR")


def build_evaluator(cfg, **kwargs):
    name = cfg.TEST.EVALUATOR
    check_availability(name, EVALUATOR_REGISTRY.registered_names())
    if cfg.VERBOSE:
        print("Loading evaluator: {}".format(name))
    return EVALUATOR_REGISTRY.get(name)(cfg, **kwargs)
