"""DATASET_REGISTRY and ``build_dataset``: turn ``cfg.DATASET.NAME`` into a dataset object."""
import importlib
import os
import sys

from dassl.utils import Registry, check_availability

DATASET_REGISTRY = Registry("DATASET")

# The repository root: the folder that holds both dassl/ and datasets/.
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def import_project_datasets():
    """Import the project's ``datasets`` package so every dataset module registers itself.

    Only the package that lives beside ``dassl/`` is imported; an unrelated
    installed package called ``datasets`` is left alone.
    """
    package_init = os.path.join(_PROJECT_ROOT, "datasets", "__init__.py")
    if not os.path.isfile(package_init):
        return
    loaded = sys.modules.get("datasets")
    if loaded is not None:
        return
    if _PROJECT_ROOT not in sys.path:
        sys.path.insert(0, _PROJECT_ROOT)
    module = importlib.import_module("datasets")
    if os.path.abspath(getattr(module, "__file__", "") or "") != package_init:
        # Another ``datasets`` package shadowed ours; do not keep it loaded under our name.
        del sys.modules["datasets"]


def build_dataset(cfg):
    import_project_datasets()
    name = cfg.DATASET.NAME
    available = DATASET_REGISTRY.registered_names()
    check_availability(name, available)
    if cfg.VERBOSE:
        print(f"Loading dataset: {name}")
    return DATASET_REGISTRY.get(name)(cfg)
