"""OxfordFlowers (Flowers102): oxford_flowers/jpg/image_%05d.jpg, imagelabels.mat, cat_to_name.json."""
import json
import os

from dassl.data.datasets import DATASET_REGISTRY

from .benchmark import BenchmarkDataset
from .splits import split_groups


@DATASET_REGISTRY.register()
class OxfordFlowers(BenchmarkDataset):
    config_name = "oxford_flowers"
    folder = "oxford_flowers"
    image_subdir = "jpg"
    split_file = "split_zhou_OxfordFlowers.json"
    creation_inputs = ("jpg", "imagelabels.mat", "cat_to_name.json")
    published = dict(classes=102, train=4093, val=1633, test=2463)

    def create_split(self):
        from scipy.io import loadmat  # only needed when the split is created

        with open(os.path.join(self.dataset_dir, "cat_to_name.json")) as f:
            name_by_label = json.load(f)  # keys are 1-based label strings
        labels = loadmat(os.path.join(self.dataset_dir, "imagelabels.mat"))["labels"][0]
        impaths_by_label = {}  # in order of first appearance, as the original
        for index, label in enumerate(labels):
            impath = os.path.join(self.image_dir, f"image_{index + 1:05d}.jpg")
            impaths_by_label.setdefault(int(label), []).append(impath)
        groups = [(label - 1, name_by_label[str(label)], impaths)
                  for label, impaths in impaths_by_label.items()]
        return split_groups(groups)
