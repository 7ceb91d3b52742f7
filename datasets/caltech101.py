"""Caltech101: caltech-101/101_ObjectCategories/<category>/*.jpg + split_zhou_Caltech101.json."""
from dassl.data.datasets import DATASET_REGISTRY

from .benchmark import BenchmarkDataset
from .splits import read_and_split_data

IGNORED_CATEGORIES = ["BACKGROUND_Google", "Faces_easy"]
RENAMED_CATEGORIES = {
    "airplanes": "airplane",
    "Faces": "face",
    "Leopards": "leopard",
    "Motorbikes": "motorbike",
}


@DATASET_REGISTRY.register()
class Caltech101(BenchmarkDataset):
    config_name = "caltech101"
    folder = "caltech-101"
    image_subdir = "101_ObjectCategories"
    split_file = "split_zhou_Caltech101.json"
    creation_inputs = ("101_ObjectCategories",)
    published = dict(classes=100, train=4128, val=1649, test=2465)

    def create_split(self):
        return read_and_split_data(
            self.image_dir, ignored=IGNORED_CATEGORIES, new_cnames=RENAMED_CATEGORIES
        )
