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


def build_cfg(node=None, **keys):
    """The config every run starts from: engine defaults plus every method's keys.

    ``build_cfg("MUDPT", N_CTX=2)`` also sets TRAINER.MUDPT.N_CTX, for code that builds a
    method without YAML files (tests, benchmarks).
    """
    from dassl.config import get_cfg_default
    cfg = get_cfg_default()
    extend_cfg(cfg)
    if keys:
        method = getattr(cfg.TRAINER, node)
        for key, value in keys.items():
            if key not in method:
                raise KeyError(f"Non-existent config key: TRAINER.{node}.{key}")
            setattr(method, key, value)
    return cfg
