"""OxfordPets: oxford_pets/images/*.jpg, annotations/{trainval,test}.txt, split_zhou_OxfordPets.json."""
import os

from dassl.data.datasets import DATASET_REGISTRY
from dassl.data.datasets.base_dataset import Datum

from .benchmark import BenchmarkDataset
from .splits import read_split, save_split, split_trainval, subsample_classes


@DATASET_REGISTRY.register()
class OxfordPets(BenchmarkDataset):
    config_name = "oxford_pets"
    folder = "oxford_pets"
    image_subdir = "images"
    split_file = "split_zhou_OxfordPets.json"
    creation_inputs = ("images", "annotations/trainval.txt", "annotations/test.txt")
    published = dict(classes=37, train=2944, val=736, test=3669)

    # Kept for dataset classes written for CoOp, which call these from here.
    read_split = staticmethod(read_split)
    save_split = staticmethod(save_split)
    split_trainval = staticmethod(split_trainval)
    subsample_classes = staticmethod(subsample_classes)

    def create_split(self):
        trainval = self.read_annotation_list("annotations/trainval.txt")
        test = self.read_annotation_list("annotations/test.txt")
        train, val = split_trainval(trainval)
        return train, val, test

    def read_annotation_list(self, relpath):
        """Lines '<imname> <classid> <species> <breedid>'; the breed is the image-name stem."""
        items = []
        for line in self.read_lines(relpath):
            if line.startswith("#"):
                continue
            imname, class_id = line.split()[:2]
            breed = "_".join(imname.split("_")[:-1]).lower()
            impath = os.path.join(self.image_dir, imname + ".jpg")
            items.append(Datum(impath, int(class_id) - 1, 0, breed))
        return items
