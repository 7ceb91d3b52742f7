"""FGVCAircraft: fgvc_aircraft/images/*.jpg, variants.txt and images_variant_{train,val,test}.txt.

There is no split JSON: the official lists are the split.
"""
import os

from dassl.data.datasets import DATASET_REGISTRY
from dassl.data.datasets.base_dataset import Datum

from .benchmark import BenchmarkDataset

LIST_FILES = ("images_variant_train.txt", "images_variant_val.txt", "images_variant_test.txt")


@DATASET_REGISTRY.register()
class FGVCAircraft(BenchmarkDataset):
    config_name = "fgvc_aircraft"
    folder = "fgvc_aircraft"
    image_subdir = "images"
    split_file = None
    creation_inputs = ("images", "variants.txt") + LIST_FILES
    published = dict(classes=100, train=3334, val=3333, test=3333)

    def read_official_split(self):
        self.require(*self.creation_inputs)
        label_by_variant = {name: label for label, name in enumerate(self.read_lines("variants.txt"))}
        return tuple(self.read_list(relpath, label_by_variant) for relpath in LIST_FILES)

    def read_list(self, relpath, label_by_variant):
        """Lines '<imname> <variant words>': split at the first space only."""
        items = []
        for line in self.read_lines(relpath):
            imname, variant = line.split(" ", 1)
            if variant not in label_by_variant:
                raise ValueError(
                    f'{os.path.join(self.dataset_dir, relpath)}: variant "{variant}" of image '
                    f"{imname} is not listed in variants.txt"
                )
            impath = os.path.join(self.image_dir, imname + ".jpg")
            items.append(Datum(impath, label_by_variant[variant], 0, variant))
        return items
