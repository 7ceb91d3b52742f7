"""SUN397: sun397/SUN397/<letter>/<class path>/*.jpg, ClassName.txt, Training_01.txt, Testing_01.txt."""
import os

from dassl.data.datasets import DATASET_REGISTRY
from dassl.data.datasets.base_dataset import Datum

from .benchmark import BenchmarkDataset
from .splits import split_trainval


def readable_classname(class_path):
    """'b/bakery/shop' -> 'shop bakery': drop the letter folder, reverse the rest."""
    return " ".join(class_path.split("/")[1:][::-1])


@DATASET_REGISTRY.register()
class SUN397(BenchmarkDataset):
    config_name = "sun397"
    folder = "sun397"
    image_subdir = "SUN397"
    split_file = "split_zhou_SUN397.json"
    creation_inputs = ("SUN397", "ClassName.txt", "Training_01.txt", "Testing_01.txt")
    published = dict(classes=397, train=15880, val=3970, test=19850)

    def create_split(self):
        # Lines look like '/a/abbey'; the label is the line index.
        class_paths = [line[1:] for line in self.read_lines("ClassName.txt")]
        label_by_path = {path: label for label, path in enumerate(class_paths)}
        trainval = self.read_list("Training_01.txt", label_by_path)
        test = self.read_list("Testing_01.txt", label_by_path)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_list(self, relpath, label_by_path):
        items = []
        for line in self.read_lines(relpath):
            imname = line[1:]  # '/a/abbey/sun_x.jpg' -> 'a/abbey/sun_x.jpg'
            class_path = os.path.dirname(imname)
            impath = os.path.join(self.image_dir, imname)
            items.append(Datum(impath, label_by_path[class_path], 0, readable_classname(class_path)))
        return items
