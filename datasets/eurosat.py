"""EuroSAT: eurosat/2750/<ClassFolder>/*.jpg + split_zhou_EuroSAT.json.

The class names the text encoder sees are descriptive renames of the folders;
they are also what the split JSON stores.
"""
from dassl.data.datasets import DATASET_REGISTRY

from .benchmark import BenchmarkDataset
from .splits import read_and_split_data

CLASSNAMES_BY_FOLDER = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


@DATASET_REGISTRY.register()
class EuroSAT(BenchmarkDataset):
    config_name = "eurosat"
    folder = "eurosat"
    image_subdir = "2750"
    split_file = "split_zhou_EuroSAT.json"
    creation_inputs = ("2750",)
    published = dict(classes=10, train=13500, val=5400, test=8100)

    def create_split(self):
        return read_and_split_data(self.image_dir, new_cnames=CLASSNAMES_BY_FOLDER)
