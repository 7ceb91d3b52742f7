"""ImageFolder: a user's own data, no code needed.

Layout (DATASET.ROOT is the dataset folder itself)::

    DATASET.ROOT/train/<class>/*      labels follow the sorted class folders of train/
    DATASET.ROOT/test/<class>/*
    DATASET.ROOT/val/<class>/*        optional; without it 20% of train/ per class is held out

The first run records the split in ``split_ImageFolder.json`` (standard format,
paths relative to DATASET.ROOT); later runs read it. Few-shot sampling and
base/new halves work as for the benchmark datasets.
"""
import os
import random

from dassl.data.datasets import DATASET_REGISTRY
from dassl.data.datasets.base_dataset import Datum

from .benchmark import BenchmarkDataset
from .imagenet import class_folders
from .splits import list_images, read_split


def hold_out_val(train, p_val=0.2):
    """Move round(n * p_val) shuffled images per class (at least 1, never all) to val."""
    print(f"No val/ folder: splitting train into {1 - p_val:.0%} train and {p_val:.0%} val")
    by_label = {}
    for item in train:
        by_label.setdefault(item.label, []).append(item)
    kept, val = [], []
    for items in by_label.values():
        random.shuffle(items)
        n_val = min(max(1, round(len(items) * p_val)), len(items) - 1)
        val.extend(items[:n_val])
        kept.extend(items[n_val:])
    return kept, val


@DATASET_REGISTRY.register()
class ImageFolder(BenchmarkDataset):
    config_name = "image_folder"
    folder = ""
    image_subdir = ""
    split_file = "split_ImageFolder.json"
    split_prefix_is_dataset_dir = True
    creation_inputs = ("train", "test")

    def read_full_splits(self, cfg):
        if not os.path.isfile(self.split_path):
            return super().read_full_splits(cfg)
        train, val, test = read_split(self.split_path, self.split_prefix)
        on_disk = set(class_folders(os.path.join(self.dataset_dir, "train")))
        if on_disk != {item.classname for item in train}:
            print(f"WARNING: the class folders of train/ differ from {self.split_path}; "
                  "delete that file to rebuild the split from the folders.")
        return train, val, test

    def warn_created_split(self, cfg):
        print(f"Building the split from the folders of {self.dataset_dir}")

    def create_split(self):
        train_dir = os.path.join(self.dataset_dir, "train")
        classes = class_folders(train_dir)
        label_by_class = {name: label for label, name in enumerate(classes)}
        train = self.read_folder("train", label_by_class)
        test = self.read_folder("test", label_by_class)
        if os.path.isdir(os.path.join(self.dataset_dir, "val")):
            val = self.read_folder("val", label_by_class)
        else:
            train, val = hold_out_val(train)
        return train, val, test

    def read_folder(self, split, label_by_class):
        split_dir = os.path.join(self.dataset_dir, split)
        items = []
        for name in class_folders(split_dir):
            if name not in label_by_class:
                raise ValueError(
                    f"Class folder {os.path.join(split_dir, name)} has no counterpart in "
                    f"{os.path.join(self.dataset_dir, 'train')}; every class needs training images."
                )
            folder = os.path.join(split_dir, name)
            items.extend(Datum(os.path.join(folder, f), label_by_class[name], 0, name)
                         for f in list_images(folder))
        if not items:
            raise ValueError(f"{split_dir} holds no images in class sub-folders.")
        return items
