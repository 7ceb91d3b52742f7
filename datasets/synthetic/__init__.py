"""The synthetic image-text world (``world``) and the benchmark drawn from it (``shapes``)."""
from . import shapes, world  # noqa: F401  (shapes registers SyntheticShapes)
