"""StanfordCars: stanford_cars/cars_{train,test}/*.jpg, devkit/*.mat, split_zhou_StanfordCars.json.

Split paths are relative to the dataset folder (``cars_train/00001.jpg``).
"""
import os

from dassl.data.datasets import DATASET_REGISTRY
from dassl.data.datasets.base_dataset import Datum

from .benchmark import BenchmarkDataset
from .splits import split_trainval

META_FILE = "devkit/cars_meta.mat"
TRAIN_ANNOTATIONS = "devkit/cars_train_annos.mat"
TEST_ANNOTATIONS = "cars_test_annos_withlabels.mat"


def year_first(meta_name):
    """'Tesla Model S Sedan 2012' -> '2012 Tesla Model S Sedan'."""
    words = meta_name.split(" ")
    return " ".join([words[-1]] + words[:-1])


@DATASET_REGISTRY.register()
class StanfordCars(BenchmarkDataset):
    config_name = "stanford_cars"
    folder = "stanford_cars"
    image_subdir = ""
    split_file = "split_zhou_StanfordCars.json"
    split_prefix_is_dataset_dir = True
    creation_inputs = ("cars_train", "cars_test", META_FILE, TRAIN_ANNOTATIONS, TEST_ANNOTATIONS)
    published = dict(classes=196, train=6509, val=1635, test=8041)

    def create_split(self):
        from scipy.io import loadmat  # only needed when the split is created

        meta_names = loadmat(os.path.join(self.dataset_dir, META_FILE))["class_names"][0]
        classnames = [year_first(str(name[0])) for name in meta_names]
        trainval = self.read_annotations(loadmat, "cars_train", TRAIN_ANNOTATIONS, classnames)
        test = self.read_annotations(loadmat, "cars_test", TEST_ANNOTATIONS, classnames)
        train, val = split_trainval(trainval)
        return train, val, test

    def read_annotations(self, loadmat, image_folder, relpath, classnames):
        annotations = loadmat(os.path.join(self.dataset_dir, relpath))["annotations"][0]
        items = []
        for annotation in annotations:
            imname = str(annotation["fname"][0])
            label = int(annotation["class"][0, 0]) - 1
            impath = os.path.join(self.dataset_dir, image_folder, imname)
            items.append(Datum(impath, label, 0, classnames[label]))
        return items
