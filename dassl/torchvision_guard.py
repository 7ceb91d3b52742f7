"""Make ``import torchvision`` (and so ``import clip``) work on CPU-only torch.

The torchvision 0.28.0 wheel on PyPI is a CUDA build whose C++ operators cannot
load next to a CPU-only torch; its import then fails with
``RuntimeError: operator torchvision::nms does not exist``. The project needs
only PIL-based transforms from torchvision, so when (and only when) that exact
failure happens we declare the two missing operator schemas and import again.
On a machine whose torch and torchvision match, the first import succeeds and
this module changes nothing.

Import this module before anything that may import torchvision or clip.
"""
import sys

import torch

_MISSING_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # kept alive: dropping it would unregister the schemas
applied = False  # True when the schemas had to be declared


def _declare_missing_ops():
    global _library
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _MISSING_OPS:
        try:
            _library.define(schema)
        except RuntimeError:
            pass  # already registered by a working torchvision build


def ensure_torchvision():
    global applied
    if "torchvision" in sys.modules and not applied:
        return
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:
        if "torchvision::nms does not exist" not in str(exc):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _declare_missing_ops()
        applied = True
        import torchvision  # noqa: F401


ensure_torchvision()
