"""ImageFolder: a user's own data, no code needed.

Layout (DATASET.ROOT is the dataset folder itself)::

    DATASET.ROOT/train/<class>/*
    DATASET.ROOT/test/<class>/*
    DATASET.ROOT/val/<class>/*        optional; without it 20% of train/ per class is held out

One class list serves every split: the class folders of all splits, sorted (the label
is the index), and every class needs images in every split. The first run records the
split in ``split_ImageFolder.json`` (standard format, paths relative to DATASET.ROOT);
later runs read it. Few-shot sampling and base/new halves work as for the benchmark
datasets.

Own datasets are named by ``DATASET.TAG`` (default: the name of DATASET.ROOT's folder),
the name of their output folders and table rows, so two own datasets never share one.
"""
import os
import random

from dassl.data.datasets import DATASET_REGISTRY
from dassl.data.datasets.base_dataset import Datum

from .benchmark import BenchmarkDataset, dataset_root
from .imagenet import class_folders
from .splits import list_images, read_split

SPLIT_FOLDERS = ("train", "val", "test")


def dataset_tag(cfg):
    """DATASET.TAG, else the name of the DATASET.ROOT folder (as scripts/common/run.sh does)."""
    tag = getattr(cfg.DATASET, "TAG", "")  # a key of this toolbox only; absent from other configs
    return tag or os.path.basename(dataset_root(cfg))


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

    def locate(self, cfg):
        super().locate(cfg)
        self.tag = dataset_tag(cfg)
        print(f'Own dataset "{self.tag}" (DATASET.TAG: the name of its output folders and '
              f"table rows) at {self.dataset_dir}")

    def split_dirs(self):
        """{split: folder} of the split folders present (val/ is optional)."""
        dirs = {name: os.path.join(self.dataset_dir, name) for name in SPLIT_FOLDERS}
        return {name: path for name, path in dirs.items() if os.path.isdir(path)}

    def read_full_splits(self, cfg):
        if not os.path.isfile(self.split_path):
            return super().read_full_splits(cfg)
        train, val, test = read_split(self.split_path, self.split_prefix)
        trained = {item.classname for item in train}
        for split_name, items in (("val", val), ("test", test)):
            untrained = sorted({item.classname for item in items} - trained)
            if untrained:
                raise ValueError(
                    f'Split file {self.split_path} lists class "{untrained[0]}" in "{split_name}" '
                    'but not in "train", so the model could never predict it. Delete that file '
                    "to rebuild the split from the folders."
                )
        on_disk = set().union(*(class_folders(path) for path in self.split_dirs().values()))
        if on_disk != trained:
            print(f"WARNING: the class folders of {self.dataset_dir} differ from "
                  f"{self.split_path}; delete that file to rebuild the split from the folders.")
        return train, val, test

    def warn_created_split(self, cfg):
        print(f"Building the split from the folders of {self.dataset_dir}")

    def create_split(self):
        dirs = self.split_dirs()
        classes = sorted(set().union(*(class_folders(path) for path in dirs.values())))
        label_by_class = {name: label for label, name in enumerate(classes)}
        splits = {name: self.read_folder(name, path, label_by_class) for name, path in dirs.items()}
        train, test = splits["train"], splits["test"]
        if "val" in splits:
            val = splits["val"]
        else:
            train, val = hold_out_val(train)
        return train, val, test

    def read_folder(self, split, split_dir, label_by_class):
        present = ", ".join(f"{name}/" for name in self.split_dirs())
        items = []
        for name, label in label_by_class.items():
            folder = os.path.join(split_dir, name)
            files = list_images(folder) if os.path.isdir(folder) else []
            if not files:
                raise ValueError(
                    f'Class "{name}" has no images in {split}/ ({folder} is missing or empty). '
                    f"Every class needs images in each split folder ({present}). Add images "
                    f'there, or remove the class folder "{name}" from every split.'
                )
            items.extend(Datum(os.path.join(folder, f), label, 0, name) for f in files)
        return items
