"""Image transforms built from ``cfg.INPUT``."""
from .transforms import AVAILABLE_TRANSFORMS, INTERPOLATION_MODES, build_transform

__all__ = ["AVAILABLE_TRANSFORMS", "INTERPOLATION_MODES", "build_transform"]
