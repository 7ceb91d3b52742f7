"""Train/val/test splits: the split JSON format, creating a split, and base/new halves.

All randomness comes from Python's global ``random`` (seeded by ``SEED``), in the
same order of calls as the original CoOp code, so a split created here from the
same file listing is the split the original would create.
"""
import json
import math
import os
import random

from dassl.data.datasets.base_dataset import Datum

from dassl.utils import atomic_write_text

SUBSAMPLE_CHOICES = ("all", "base", "new")


def read_split(filepath, path_prefix):
    """Read ``{"train": [[relpath, label, classname], ...], "val": ..., "test": ...}``."""
    print(f"Reading split from {filepath}")
    try:
        with open(filepath) as f:
            split = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"Split file {filepath} is not valid JSON ({exc}). Delete it to have a new split "
            "created, or download the published split again (see datasets/sources.json)."
        ) from None

    if not isinstance(split, dict):
        raise ValueError(
            f'Split file {filepath} holds a {type(split).__name__}; expected an object with the '
            'lists "train", "val" and "test". Download the published split again.'
        )

    def to_datums(split_name):
        entries = split.get(split_name)
        if not isinstance(entries, list):
            raise ValueError(
                f'Split file {filepath} has no "{split_name}" list; expected the keys '
                '"train", "val" and "test". Download the published split again.'
            )
        items = []
        for index, entry in enumerate(entries):
            relpath, label, classname = _split_entry(entry, filepath, split_name, index)
            items.append(Datum(os.path.join(path_prefix, relpath), label, 0, classname))
        return items

    return to_datums("train"), to_datums("val"), to_datums("test")


def _split_entry(entry, filepath, split_name, index):
    """``[relative_path, label, classname]`` with the label as an int (a digit string is accepted,
    as the original's ``int(label)`` does), or a ValueError naming the file and the entry."""
    if isinstance(entry, list) and len(entry) == 3:
        relpath, label, classname = entry
        if isinstance(label, str) and label.strip().isdigit():
            label = int(label)
        if (isinstance(relpath, str) and relpath and isinstance(classname, str)
                and isinstance(label, int) and not isinstance(label, bool) and label >= 0):
            return relpath, label, classname
    shown = json.dumps(entry)
    if len(shown) > 200:
        shown = shown[:200] + "..."
    raise ValueError(
        f'Split file {filepath}: entry {index} of the "{split_name}" list is {shown}; expected '
        '[relative_path, label, classname], e.g. ["cat/0001.jpg", 0, "cat"], with a label '
        ">= 0. Fix that entry, or delete the file to have the split created again (or download "
        "the published split)."
    )


def save_split(train, val, test, filepath, path_prefix):
    """Write a split JSON with paths relative to ``path_prefix`` (indent 4)."""

    def to_entries(items):
        entries = []
        for item in items:
            relpath = item.impath.replace(path_prefix, "", 1)
            entries.append([relpath.lstrip("/"), item.label, item.classname])
        return entries

    split = {"train": to_entries(train), "val": to_entries(val), "test": to_entries(test)}
    atomic_write_text(filepath, json.dumps(split, indent=4, separators=(",", ": ")))
    print(f"Saved split to {filepath}")


def split_trainval(trainval, p_val=0.2):
    """Move round(n * p_val) shuffled items of every label from ``trainval`` to val."""
    p_trn = 1 - p_val
    print(f"Splitting trainval into {p_trn:.0%} train and {p_val:.0%} val")
    indices_by_label = {}
    for index, item in enumerate(trainval):
        indices_by_label.setdefault(item.label, []).append(index)

    train, val = [], []
    for label, indices in indices_by_label.items():
        n_val = round(len(indices) * p_val)
        if n_val < 1:
            name = trainval[indices[0]].classname
            raise ValueError(
                f'Class "{name}" (label {label}) has only {len(indices)} train+val images, too '
                f"few to hold out {p_val:.0%} for validation. Add images to this class."
            )
        random.shuffle(indices)
        for position, index in enumerate(indices):
            item = trainval[index]
            copy = Datum.unchecked(item.impath, item.label, 0, item.classname)
            (val if position < n_val else train).append(copy)
    return train, val


def split_groups(groups, p_trn=0.5, p_val=0.2):
    """Shuffle each ``(label, classname, impaths)`` group and cut it into train/val/test.

    Prints the same line as the original before it starts.
    """
    p_tst = 1 - p_trn - p_val
    print(f"Splitting into {p_trn:.0%} train, {p_val:.0%} val, and {p_tst:.0%} test")
    train, val, test = [], [], []
    for label, classname, impaths in groups:
        random.shuffle(impaths)
        n_total = len(impaths)
        n_train = round(n_total * p_trn)
        n_val = round(n_total * p_val)
        if n_train < 1 or n_val < 1 or n_total - n_train - n_val < 1:
            raise ValueError(
                f'Class "{classname}" (label {label}) has only {n_total} images, too few to '
                f"split {p_trn:.0%}/{p_val:.0%}/{p_tst:.0%} into train/val/test with at "
                "least one image each. Add images to this class or remove its folder."
            )
        for start, stop, bucket in ((0, n_train, train), (n_train, n_train + n_val, val),
                                    (n_train + n_val, n_total, test)):
            bucket.extend(Datum(path, label, 0, classname) for path in impaths[start:stop])
    return train, val, test


def list_images(folder):
    """Sorted non-hidden file names in ``folder``.

    Sorting makes a created split independent of the file system's listing order
    (the original used the unsorted listing).
    """
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


def read_and_split_data(image_dir, p_trn=0.5, p_val=0.2, ignored=(), new_cnames=None):
    """Split a folder of class sub-folders 50/20/30 per class; labels follow sorted folder names."""
    categories = sorted(
        name for name in os.listdir(image_dir)
        if not name.startswith(".") and name not in ignored
        and os.path.isdir(os.path.join(image_dir, name))
    )
    groups = []
    for label, category in enumerate(categories):
        category_dir = os.path.join(image_dir, category)
        impaths = [os.path.join(category_dir, name) for name in list_images(category_dir)]
        classname = (new_cnames or {}).get(category, category)
        groups.append((label, classname, impaths))
    return split_groups(groups, p_trn, p_val)


def subsample_classes(*splits, subsample="all"):
    """Keep the base (first ceil(N/2)) or new (remaining) labels of the first split, relabelled from 0.

    N counts the labels present in the first split (the possibly few-shot train
    split); every split is filtered with the same labels.
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise ValueError(
            f"DATASET.SUBSAMPLE_CLASSES must be one of {list(SUBSAMPLE_CHOICES)}, "
            f"got {subsample!r}"
        )
    if subsample == "all":
        return list(splits)

    labels = sorted({item.label for item in splits[0]})
    n_base = math.ceil(len(labels) / 2)
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    selected = labels[:n_base] if subsample == "base" else labels[n_base:]
    relabel = {old: new for new, old in enumerate(selected)}
    return [
        [Datum.unchecked(item.impath, relabel[item.label], 0, item.classname)
         for item in split if item.label in relabel]
        for split in splits
    ]
