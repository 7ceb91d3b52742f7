"""A self-contained, Dassl-compatible training engine for CLIP prompt tuning.

Sub-packages keep Dassl.pytorch's import paths (``dassl.config``, ``dassl.engine``,
``dassl.data``, ...), so trainer and dataset plugins written for that engine run
unchanged. Importing ``dassl`` itself stays light: sub-packages load on demand.
"""
from . import torchvision_guard  # noqa: F401  (must precede any torchvision import)

__version__ = "0.6.3+compat"
