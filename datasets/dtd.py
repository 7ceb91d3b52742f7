"""DTD: dtd/images/<texture>/*.jpg + split_zhou_DescribableTextures.json."""
from dassl.data.datasets import DATASET_REGISTRY

from .benchmark import BenchmarkDataset
from .splits import read_and_split_data


@DATASET_REGISTRY.register()
class DescribableTextures(BenchmarkDataset):
    config_name = "dtd"
    folder = "dtd"
    image_subdir = "images"
    split_file = "split_zhou_DescribableTextures.json"
    creation_inputs = ("images",)
    published = dict(classes=47, train=2820, val=1128, test=1692)

    # Kept for dataset classes written for CoOp, which call it from here.
    read_and_split_data = staticmethod(read_and_split_data)

    def create_split(self):
        return read_and_split_data(self.image_dir)
