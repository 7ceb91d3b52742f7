"""ImageFolder: a user's own data, no code needed.

Layout (DATASET.ROOT is the dataset folder itself)::

    DATASET.ROOT/train/<class>/*
    DATASET.ROOT/test/<class>/*
    DATASET.ROOT/val/<class>/*        optional; without it 20% of train/ per class is held out

One class list serves every split: the class folders of all splits, sorted (the label
is the index), and every class needs images in every split. A class folder may hold
sub-folders (their images belong to the class); files that are not images by their
extension (notes.txt, archives) are left out, with a note that counts them.

The first run records the split in ``split_ImageFolder.json`` (standard format, paths
relative to DATASET.ROOT); later runs read it as long as it lists exactly the images in
the folders. When images or classes were added or removed since, the split is rebuilt
from the folders with a note (the previous file is kept as ``.previous``), so the data a
run uses is always the data in the folder. Few-shot sampling and base/new halves work as
for the benchmark datasets.

Own datasets are named by ``DATASET.TAG`` (default: the name of DATASET.ROOT's folder),
the name of their output folders and table rows. A run's identity also records where the
data is and a fingerprint of its files (path, label, size), so a finished run is never
taken for a run on another folder of the same name, or on changed data.
"""
import hashlib
import json
import os
import random

from dassl.data.datasets import DATASET_REGISTRY
from dassl.data.datasets.base_dataset import Datum

from .benchmark import BenchmarkDataset, dataset_root
from .cache import relative_to
from .imagenet import class_folders
from .splits import read_split
from .verify import IMAGE_EXTENSIONS

SPLIT_FOLDERS = ("train", "val", "test")
_NAMES_SHOWN = 3  # file names shown in a note


def dataset_tag(cfg):
    """DATASET.TAG, else the name of the DATASET.ROOT folder (as scripts/common/run.sh does)."""
    tag = getattr(cfg.DATASET, "TAG", "")  # a key of this toolbox only; absent from other configs
    return tag or os.path.basename(dataset_root(cfg))


def class_images(class_dir):
    """(images, others) under ``class_dir``, sub-folders included, as sorted paths relative to
    it: the image files (by extension), and the other files, which are left out."""
    images, others = [], []
    for folder, subfolders, files in os.walk(class_dir):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            if not name.startswith("."):
                relpath = os.path.relpath(os.path.join(folder, name), class_dir)
                (images if name.lower().endswith(IMAGE_EXTENSIONS) else others).append(relpath)
    return sorted(images), sorted(others)


def list_own_data(dataset_dir):
    """``({split: {class: [image paths relative to dataset_dir]}}, [other files])`` of the split
    folders present (val/ is optional)."""
    listing, others = {}, []
    for split in SPLIT_FOLDERS:
        split_dir = os.path.join(dataset_dir, split)
        if not os.path.isdir(split_dir):
            continue
        listing[split] = {}
        for name in class_folders(split_dir):
            images, skipped = class_images(os.path.join(split_dir, name))
            listing[split][name] = [os.path.join(split, name, path) for path in images]
            others.extend(os.path.join(split, name, path) for path in skipped)
    return listing, others


def listed_files(listing):
    return {path for classes in listing.values() for paths in classes.values() for path in paths}


def shown(paths):
    paths = sorted(paths)
    more = f" and {len(paths) - _NAMES_SHOWN} more" if len(paths) > _NAMES_SHOWN else ""
    return ", ".join(paths[:_NAMES_SHOWN]) + more


def split_file_entries(path):
    """{relative path: class name} of a split file; None when it cannot be parsed (read_split
    then says what is wrong with it)."""
    try:
        with open(path) as f:
            split = json.load(f)
        return {entry[0]: entry[2] for name in SPLIT_FOLDERS for entry in split[name]}
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        return None


def content_fingerprint(splits, dataset_dir):
    """A short hash of what the data holds: every image's path, label and size in bytes."""
    digest = hashlib.sha1()
    for name, items in zip(SPLIT_FOLDERS, splits):
        digest.update(f"[{name}]".encode())
        for item in items:
            relpath = relative_to(item.impath, dataset_dir) or item.impath
            digest.update(f"{relpath}\t{item.label}\t{os.path.getsize(item.impath)}\n".encode())
    return digest.hexdigest()[:16]


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

    @staticmethod
    def data_location(root):
        """Own data is the data in its folder: where it is belongs to a run's identity."""
        return os.path.realpath(os.path.expanduser(root))

    def locate(self, cfg):
        super().locate(cfg)
        self.tag = dataset_tag(cfg)
        print(f'Own dataset "{self.tag}" (DATASET.TAG: the name of its output folders and '
              f"table rows) at {self.dataset_dir}")

    def read_full_splits(self, cfg):
        listing, others = list_own_data(self.dataset_dir)
        if others:
            print(f"Note: {len(others)} file(s) in the class folders of {self.dataset_dir} are not images "
                  f"(by their extension) and are left out: {shown(others)}")
        stale = []
        for path in self.split_paths():  # the dataset folder's, then the per-user copy
            if os.path.isfile(path):
                entries = split_file_entries(path)
                if entries is None or set(entries) == listed_files(listing):
                    splits = self.checked(read_split(path, self.split_prefix), path)
                    break
                stale.append((path, entries))
        else:
            splits = self.rebuild(cfg, stale, listing) if stale else super().read_full_splits(cfg)
        self.data_hash = content_fingerprint(splits, self.dataset_dir)  # part of the run's identity
        return splits

    def rebuild(self, cfg, stale, listing):
        """The split files list other images than the folders hold: say what changed, keep the
        old file as .previous, and build the split from the folders."""
        path, entries = stale[0]
        on_disk = listed_files(listing)
        added, removed = on_disk - set(entries), set(entries) - on_disk
        classes = {name for split in listing.values() for name in split}
        new_classes, gone = classes - set(entries.values()), set(entries.values()) - classes
        parts = [f"{len(added)} image(s) added" + (f" ({shown(added)})" if added else ""),
                 f"{len(removed)} removed" + (f" ({shown(removed)})" if removed else "")]
        if new_classes:
            parts.append(f"new classes: {shown(new_classes)}")
        if gone:
            parts.append(f"classes gone: {shown(gone)}")
        kept = f"the previous one is kept as {path}.previous"
        for old, _ in stale:
            try:
                os.replace(old, old + ".previous")
            except OSError:  # a read-only folder: the new split is kept per user and read from there
                kept = f"{path} is left unchanged"
        print(f"Note: the images in {self.dataset_dir} changed since {path} was written "
              f"({'; '.join(parts)}). Rebuilding the split from the folders; {kept}.")
        self.require("train", "test", purpose="rebuild the split of this dataset")
        self.warn_created_split(cfg)
        train, val, test = self.create_split()
        self.save_created_split(train, val, test)
        return train, val, test

    def checked(self, splits, path):
        train, val, test = splits
        trained = {item.classname for item in train}
        for split_name, items in (("val", val), ("test", test)):
            untrained = sorted({item.classname for item in items} - trained)
            if untrained:
                raise ValueError(
                    f'Split file {path} lists class "{untrained[0]}" in "{split_name}" '
                    'but not in "train", so the model could never predict it. Delete that file '
                    "to rebuild the split from the folders."
                )
        return train, val, test

    def warn_created_split(self, cfg):
        print(f"Building the split from the folders of {self.dataset_dir}")

    def create_split(self):
        listing, _ = list_own_data(self.dataset_dir)
        classes = sorted(set().union(*listing.values()))
        label_by_class = {name: label for label, name in enumerate(classes)}
        splits = {name: self.read_folder(name, listing[name], label_by_class) for name in listing}
        train, test = splits["train"], splits["test"]
        if "val" in splits:
            val = splits["val"]
        else:
            train, val = hold_out_val(train)
        return train, val, test

    def read_folder(self, split, classes, label_by_class):
        present = ", ".join(f"{name}/" for name in self.split_dirs())
        items = []
        for name, label in label_by_class.items():
            files = classes.get(name, [])
            if not files:
                folder = os.path.join(self.dataset_dir, split, name)
                raise ValueError(
                    f'Class "{name}" has no images in {split}/ ({folder} is missing or holds no '
                    f"image files). Every class needs images in each split folder ({present}). Add "
                    f'images there, or remove the class folder "{name}" from every split.'
                )
            items.extend(Datum(os.path.join(self.dataset_dir, f), label, 0, name) for f in files)
        return items

    def split_dirs(self):
        """{split: folder} of the split folders present (val/ is optional)."""
        dirs = {name: os.path.join(self.dataset_dir, name) for name in SPLIT_FOLDERS}
        return {name: path for name, path in dirs.items() if os.path.isdir(path)}
