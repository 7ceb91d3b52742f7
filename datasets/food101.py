"""Food101: food-101/images/<class>/*.jpg + split_zhou_Food101.json (the official meta/ split is not used)."""
from dassl.data.datasets import DATASET_REGISTRY

from .benchmark import BenchmarkDataset
from .splits import read_and_split_data


@DATASET_REGISTRY.register()
class Food101(BenchmarkDataset):
    config_name = "food101"
    folder = "food-101"
    image_subdir = "images"
    split_file = "split_zhou_Food101.json"
    creation_inputs = ("images",)
    published = dict(classes=101, train=50500, val=20200, test=30300)

    def create_split(self):
        return read_and_split_data(self.image_dir)
