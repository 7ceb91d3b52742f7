"""ImageNet: imagenet/images/{train,val}/<wnid>/*.JPEG + classnames.txt.

There is no split JSON. The folder lists are cached in ``preprocessed.json``
(paths relative to the dataset folder); the original's ``preprocessed.pkl`` is read
when present and never written. The validation set is also the test set,
as in the original, so ``best_val`` model selection on ImageNet selects on test.
"""
import os
from collections import OrderedDict

from dassl.data.datasets import DATASET_REGISTRY
from dassl.data.datasets.base_dataset import Datum, DatasetBase

from .benchmark import BenchmarkDataset, DatasetNotFoundError, missing_data_message, subsample_setting
from .cache import ImageListCache, file_fingerprint
from .fewshot import load_or_sample_fewshot
from .splits import list_images, subsample_classes


def read_classnames(path, config_name="imagenet"):
    """Lines '<wnid> <class name words>' -> OrderedDict wnid -> class name (file order kept)."""
    if not os.path.isfile(path):
        raise DatasetNotFoundError(missing_data_message(
            "classnames.txt", path, config_name, only=["classnames.txt"]))
    classnames = OrderedDict()
    with open(path) as f:
        for line in f:
            words = line.strip().split(" ")
            if words[0]:
                classnames[words[0]] = " ".join(words[1:])
    return classnames


def class_folders(folder):
    """Sorted non-hidden sub-folders (files such as README.txt are skipped)."""
    return sorted(name for name in os.listdir(folder)
                  if not name.startswith(".") and os.path.isdir(os.path.join(folder, name)))


def read_wnid_folders(split_dir, classnames, classnames_path):
    """Label = index of the sorted wnid folder; class name looked up by wnid."""
    items = []
    for label, wnid in enumerate(class_folders(split_dir)):
        if wnid not in classnames:
            raise ValueError(
                f"Folder {os.path.join(split_dir, wnid)} is not a class listed in "
                f"{classnames_path}. Use the ImageNet classnames.txt and remove stray folders."
            )
        folder = os.path.join(split_dir, wnid)
        items.extend(Datum(os.path.join(folder, name), label, 0, classnames[wnid])
                     for name in list_images(folder))
    return items


@DATASET_REGISTRY.register()
class ImageNet(BenchmarkDataset):
    config_name = "imagenet"
    folder = "imagenet"
    image_subdir = "images"
    split_file = None
    creation_inputs = ("images/train", "images/val", "classnames.txt")
    published = dict(classes=1000, train=1281167, val=50000, test=50000)
    val_is_test = True  # best_val model selection on ImageNet selects on the test set

    def __init__(self, cfg):
        self.locate(cfg)
        train, test = self.read_train_test()
        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1:
            train = load_or_sample_fewshot(self, num_shots, cfg.SEED, {"train": (train, num_shots)})["train"]
        train, test = subsample_classes(train, test, subsample=subsample_setting(cfg))
        DatasetBase.__init__(self, train_x=train, val=test, test=test)

    def read_train_test(self):
        classnames_path = os.path.join(self.dataset_dir, "classnames.txt")
        header = {
            "dataset": type(self).__name__,
            "classnames_hash": file_fingerprint(classnames_path) if os.path.isfile(classnames_path) else None,
        }
        stem = os.path.join(self.dataset_dir, "preprocessed")  # ours: .json; the original's: .pkl
        cache = ImageListCache(stem, self.dataset_dir, header, ["train", "test"],
                               what="image-list cache", check_every_file=False)
        lists = cache.load()
        if lists is not None:
            return lists["train"], lists["test"]

        self.require(*self.creation_inputs, purpose="build the ImageNet image lists")
        classnames = read_classnames(classnames_path)
        train = read_wnid_folders(os.path.join(self.image_dir, "train"), classnames, classnames_path)
        test = read_wnid_folders(os.path.join(self.image_dir, "val"), classnames, classnames_path)
        cache.save({"train": train, "test": test})
        return train, test


class ImageNetTestVariant(BenchmarkDataset):
    """A test-only ImageNet variant: one list of all images serves as train_x and test.

    ``NUM_SHOTS`` and ``SUBSAMPLE_CLASSES`` do not apply, as in the original.
    """

    uses_few_shot = False

    def __init__(self, cfg):
        self.locate(cfg)
        self.require(self.image_subdir, "classnames.txt")
        classnames_path = os.path.join(self.dataset_dir, "classnames.txt")
        data = self.read_data(read_classnames(classnames_path, self.config_name), classnames_path)
        DatasetBase.__init__(self, train_x=data, test=data)

    def read_data(self, classnames, classnames_path):
        return read_wnid_folders(self.image_dir, classnames, classnames_path)
