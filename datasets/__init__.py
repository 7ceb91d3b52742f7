"""The project's datasets. Every module of this package is imported here, so each
dataset class registers itself in DATASET_REGISTRY without any edit elsewhere:
to add a dataset, drop a module with a registered class into this folder."""
import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
