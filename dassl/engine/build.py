"""Trainer registry and builder."""
import importlib
import os
import sys

from ..utils.registry import Registry
from ..utils.tools import check_availability

TRAINER_REGISTRY = Registry("TRAINER")

# The repository root: the folder that holds both dassl/ and trainers/.
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def import_project_trainers():
    """Import the project's ``trainers`` package (its ``__init__`` imports every
    trainer module), so that each trainer registers itself before the build."""
    package_init = os.path.join(_PROJECT_ROOT, "trainers", "__init__.py")
    if not os.path.isfile(package_init) or "trainers" in sys.modules:
        return
    if _PROJECT_ROOT not in sys.path:
        sys.path.insert(0, _PROJECT_ROOT)
    module = importlib.import_module("trainers")
    if os.path.abspath(getattr(module, "__file__", "") or "") != package_init:
        del sys.modules["trainers"]  # an unrelated package shadowed ours


def build_trainer(cfg):
    import_project_trainers()
    name = cfg.TRAINER.NAME
    check_availability(name, TRAINER_REGISTRY.registered_names())
    if cfg.VERBOSE:
        print("Loading trainer: {}".format(name))
    return TRAINER_REGISTRY.get(name)(cfg)
