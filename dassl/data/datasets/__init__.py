from .base_dataset import Datum, DatasetBase
from .build import DATASET_REGISTRY, build_dataset

__all__ = ["DATASET_REGISTRY", "Datum", "DatasetBase", "build_dataset"]
