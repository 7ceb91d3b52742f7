"""Trainers: every module in this package registers its methods on import.

``extend_cfg(cfg)`` declares the config keys of every method (each module's own
``extend_cfg``), so YAML files and command-line options for any method merge cleanly.
"""
import importlib
import pkgutil

_MODULES = [
    importlib.import_module(f"{__name__}.{info.name}")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
    if not info.ispkg and not info.name.startswith("_")
]


def extend_cfg(cfg):
    for module in _MODULES:
        if hasattr(module, "extend_cfg"):
            module.extend_cfg(cfg)
