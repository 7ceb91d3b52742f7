"""Tiny fake datasets in the exact on-disk layout of each real one.

``make_fake_dataset(name, root)`` writes small random-colour images plus the
split JSON, annotation lists, ``.mat`` files and ``classnames.txt`` that the real
dataset class reads, so tests and demos run the real loading code unchanged.
Randomness comes from a private ``random.Random(seed)``: the global ``random``
state, which few-shot sampling depends on, is left untouched.
"""
import io
import json
import os
import random
from dataclasses import dataclass, field

from PIL import Image

from dassl.utils import atomic_write_text
from .eurosat import CLASSNAMES_BY_FOLDER

IMAGE_SIZE = 32
MIN_IMAGES_PER_CLASS = 4  # the fewest that split 50/20/30 into non-empty train/val/test


@dataclass
class FakeDataset:
    """What was written: the dataset folder, class names by label and split sizes."""

    name: str
    dataset_dir: str
    classnames: list
    counts: dict = field(default_factory=dict)


def _image_bytes(rng, fmt):
    colour = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), colour)
    x, y = rng.randrange(IMAGE_SIZE // 2), rng.randrange(IMAGE_SIZE // 2)
    image.paste(tuple(rng.randrange(256) for _ in range(3)), (x, y, x + 8, y + 8))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=90) if fmt == "JPEG" else image.save(buffer, format=fmt)
    return buffer.getvalue()


class _Writer:
    def __init__(self, dataset_dir, seed):
        self.dataset_dir = dataset_dir
        self.rng = random.Random(seed)

    def path(self, *parts):
        return os.path.join(self.dataset_dir, *parts)

    def image(self, *parts):
        path = self.path(*parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fmt = "PNG" if path.lower().endswith(".png") else "JPEG"
        with open(path, "wb") as f:
            f.write(_image_bytes(self.rng, fmt))

    def text(self, relpath, lines):
        path = self.path(relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("".join(line + "\n" for line in lines))

    def split_json(self, relpath, split):
        atomic_write_text(self.path(relpath), json.dumps(split, indent=4))


def split_of_each_image(images_per_class):
    """'train'/'val'/'test' for the images of one class (about 50/20/30, each non-empty)."""
    n_train = round(images_per_class * 0.5)
    n_val = max(1, round(images_per_class * 0.2))
    n_test = images_per_class - n_train - n_val
    return ["train"] * n_train + ["val"] * n_val + ["test"] * n_test


def _counts(split):
    return {name: len(entries) for name, entries in split.items()}


def _empty_split():
    return {"train": [], "val": [], "test": []}


def _names(base, count, pattern):
    """``count`` names: the given real ones first, then generated ones."""
    names = list(base[:count])
    names += [pattern.format(i) for i in range(len(names), count)]
    return names


# ---------------------------------------------------------------------------------------------
# Datasets made of one folder per class (Caltech101, Food101, DTD, EuroSAT)
# ---------------------------------------------------------------------------------------------
def _class_folders(w, image_subdir, folders, classname_of, k, stem):
    """Write ``image_subdir/<folder>/*.jpg``; return the split with labels in sorted folder order."""
    split = _empty_split()
    for label, folder in enumerate(sorted(folders)):
        for index, part in enumerate(split_of_each_image(k)):
            imname = f"{stem(folder)}_{index + 1:04d}.jpg"
            w.image(image_subdir, folder, imname)
            split[part].append([f"{folder}/{imname}", label, classname_of(folder)])
    return split


def _caltech101(w, c, k):
    renamed = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard",
               "Motorbikes": "motorbike"}
    folders = _names(["airplanes", "Faces", "Leopards", "Motorbikes", "accordion", "anchor",
                      "ant", "barrel", "bass", "beaver", "binocular", "bonsai"], c, "category_{:03d}")
    for ignored in ("BACKGROUND_Google", "Faces_easy"):  # present in the real archive, never used
        for index in range(k):
            w.image("101_ObjectCategories", ignored, f"image_{index + 1:04d}.jpg")
    split = _class_folders(w, "101_ObjectCategories", folders, lambda f: renamed.get(f, f), k,
                           lambda f: "image")
    w.split_json("split_zhou_Caltech101.json", split)
    return split


def _food101(w, c, k):
    folders = _names(["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare",
                      "beet_salad", "beignets", "bibimbap"], c, "dish_{:03d}")
    split = _class_folders(w, "images", folders, lambda f: f, k, lambda f: "img")
    w.text("meta/classes.txt", sorted(folders))
    w.split_json("split_zhou_Food101.json", split)
    return split


def _dtd(w, c, k):
    folders = _names(["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed",
                      "cracked", "crosshatched", "crystalline"], c, "texture{:03d}")
    split = _class_folders(w, "images", folders, lambda f: f, k, lambda f: f)
    os.makedirs(w.path("imdb"), exist_ok=True)
    os.makedirs(w.path("labels"), exist_ok=True)
    w.split_json("split_zhou_DescribableTextures.json", split)
    return split


def _eurosat(w, c, k):
    if c > len(CLASSNAMES_BY_FOLDER):
        raise ValueError(f"EuroSAT has {len(CLASSNAMES_BY_FOLDER)} classes; asked for {c}")
    folders = sorted(CLASSNAMES_BY_FOLDER)[:c]
    split = _class_folders(w, "2750", folders, CLASSNAMES_BY_FOLDER.get, k, lambda f: f)
    w.split_json("split_zhou_EuroSAT.json", split)
    return split


# ---------------------------------------------------------------------------------------------
# Datasets with annotation lists
# ---------------------------------------------------------------------------------------------
def _oxford_pets(w, c, k):
    breeds = _names(["Abyssinian", "american_bulldog", "american_pit_bull_terrier",
                     "basset_hound", "beagle", "Bengal", "Birman", "Bombay", "boxer"], c,
                    "breed_{:03d}")
    split, lists = _empty_split(), {"trainval": [], "test": []}
    for label, breed in enumerate(breeds):
        species = 1 if breed[0].isupper() else 2  # cat breeds are capitalised in the real data
        for index, part in enumerate(split_of_each_image(k)):
            stem = f"{breed}_{index + 1}"
            w.image("images", stem + ".jpg")
            split[part].append([stem + ".jpg", label, breed.lower()])
            lists["test" if part == "test" else "trainval"].append(
                f"{stem} {label + 1} {species} {label + 1}")
    w.text("annotations/trainval.txt", lists["trainval"])
    w.text("annotations/test.txt", lists["test"])
    w.split_json("split_zhou_OxfordPets.json", split)
    return split


def _stanford_cars(w, c, k):
    import numpy as np
    from scipy.io import savemat

    meta_names = [f"Make{i} Model {i} Sedan {2000 + i}" for i in range(c)]
    split = _empty_split()
    annotations = {"cars_train": [], "cars_test": []}
    for label, meta in enumerate(meta_names):
        classname = f"{2000 + label} Make{label} Model {label} Sedan"
        for part in split_of_each_image(k):
            folder = "cars_test" if part == "test" else "cars_train"
            imname = f"{len(annotations[folder]) + 1:05d}.jpg"
            w.image(folder, imname)
            annotations[folder].append((imname, label + 1))
            split[part].append([f"{folder}/{imname}", label, classname])

    def struct_array(entries):
        array = np.zeros((1, len(entries)), dtype=[("fname", object), ("class", object)])
        for index, (imname, class_id) in enumerate(entries):
            array[0, index] = (np.array([imname]), np.array([[class_id]], dtype=np.uint16))
        return array

    os.makedirs(w.path("devkit"), exist_ok=True)
    savemat(w.path("devkit", "cars_meta.mat"),
            {"class_names": np.array([meta_names], dtype=object)})
    savemat(w.path("devkit", "cars_train_annos.mat"),
            {"annotations": struct_array(annotations["cars_train"])})
    savemat(w.path("cars_test_annos_withlabels.mat"),
            {"annotations": struct_array(annotations["cars_test"])})
    w.split_json("split_zhou_StanfordCars.json", split)
    return split


def _oxford_flowers(w, c, k):
    import numpy as np
    from scipy.io import savemat

    names = _names(["pink primrose", "hard-leaved pocket orchid", "canterbury bells",
                    "sweet pea", "english marigold", "tiger lily"], c, "flower {}")
    labels = [label for label in range(c) for _ in range(k)]
    w.rng.shuffle(labels)  # image numbers are not grouped by class in the real data
    split, seen = _empty_split(), {}
    for index, label in enumerate(labels):
        imname = f"image_{index + 1:05d}.jpg"
        w.image("jpg", imname)
        position = seen.get(label, 0)
        seen[label] = position + 1
        split[split_of_each_image(k)[position]].append([imname, label, names[label]])
    savemat(w.path("imagelabels.mat"), {"labels": np.array([[label + 1 for label in labels]])})
    atomic_write_text(w.path("cat_to_name.json"),
                          json.dumps({str(label + 1): name for label, name in enumerate(names)}))
    w.split_json("split_zhou_OxfordFlowers.json", split)
    return split


def _fgvc_aircraft(w, c, k):
    variants = _names(["707-320", "727-200", "737-200", "A300B4", "Cessna 172", "DC-10",
                       "Boeing 717", "Falcon 2000"], c, "Variant {}")
    split, lists = _empty_split(), {"train": [], "val": [], "test": []}
    for label, variant in enumerate(variants):
        for part in split_of_each_image(k):
            image_id = f"{1000000 + sum(len(v) for v in lists.values()):07d}"
            w.image("images", image_id + ".jpg")
            lists[part].append(f"{image_id} {variant}")
            split[part].append([image_id + ".jpg", label, variant])
    w.text("variants.txt", variants)
    for part, lines in lists.items():
        w.text(f"images_variant_{part}.txt", lines)
    w.text("images_variant_trainval.txt", lists["train"] + lists["val"])
    return split


def _sun397(w, c, k):
    real = ["/a/abbey", "/a/airplane_cabin", "/b/bakery/shop", "/b/bakery/kitchen",
            "/c/cafeteria", "/d/dock"]
    paths = _names(real, c, "/z/zone_{:03d}/outdoor")
    split, lists = _empty_split(), {"trainval": [], "test": []}
    for label, class_path in enumerate(paths):
        classname = " ".join(class_path.split("/")[2:][::-1])
        for index, part in enumerate(split_of_each_image(k)):
            relpath = f"{class_path[1:]}/sun_{label:03d}{index:04d}.jpg"
            w.image("SUN397", relpath)
            lists["test" if part == "test" else "trainval"].append("/" + relpath)
            split[part].append([relpath, label, classname])
    w.text("ClassName.txt", paths)
    w.text("Training_01.txt", lists["trainval"])
    w.text("Testing_01.txt", lists["test"])
    w.split_json("split_zhou_SUN397.json", split)
    return split


def _ucf101(w, c, k):
    actions = _names(["ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling",
                      "BalanceBeam", "BandMarching", "BaseballPitch", "Basketball"], c,
                     "FakeAction{:03d}")
    split, lists = _empty_split(), {"trainval": [], "test": []}
    for label, action in enumerate(actions):
        folder = "_".join(_camel_words(action))
        for index, part in enumerate(split_of_each_image(k)):
            video = f"v_{action}_g{index + 1:02d}_c01"
            w.image("UCF-101-midframes", folder, video + ".jpg")
            entry = f"{action}/{video}.avi"
            lists["test" if part == "test" else "trainval"].append(
                entry if part == "test" else f"{entry} {label + 1}")
            split[part].append([f"{folder}/{video}.jpg", label, folder])
    w.text("ucfTrainTestlist/classInd.txt", [f"{i + 1} {a}" for i, a in enumerate(actions)])
    w.text("ucfTrainTestlist/trainlist01.txt", lists["trainval"])
    w.text("ucfTrainTestlist/testlist01.txt", lists["test"])
    w.split_json("split_zhou_UCF101.json", split)
    return split


def _camel_words(action):
    words, current = [], ""
    for char in action:
        if char.isupper() and current:
            words.append(current)
            current = ""
        current += char
    return words + [current]


# ---------------------------------------------------------------------------------------------
# The ImageNet family
# ---------------------------------------------------------------------------------------------
def _wnids_and_names(count):
    names = _names(["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark",
                    "electric ray", "stingray", "rooster"], count, "fake class {}")
    return [f"n{1440764 + 7919 * i:08d}" for i in range(count)], names


def _classnames_file(w, wnids, names):
    w.text("classnames.txt", [f"{wnid} {name}" for wnid, name in zip(wnids, names)])


def _imagenet(w, c, k):
    wnids, names = _wnids_and_names(c)
    _classnames_file(w, wnids, names)
    n_val = max(1, (k + 1) // 2)
    for wnid in wnids:
        for index in range(k):
            w.image("images", "train", wnid, f"{wnid}_{index + 1}.JPEG")
        for index in range(n_val):
            w.image("images", "val", wnid, f"ILSVRC2012_val_{wnid}_{index + 1}.JPEG")
    return {"train": c * k, "val": c * n_val, "test": c * n_val}, names


def _imagenetv2(w, c, k):
    wnids, names = _wnids_and_names(c)
    _classnames_file(w, wnids, names)
    for label in range(c):
        for index in range(k):
            w.image("imagenetv2-matched-frequency-format-val", str(label), f"{index:040x}.jpeg")
    return {"test": c * k}, names


def _imagenet_sketch(w, c, k):
    wnids, names = _wnids_and_names(c)
    _classnames_file(w, wnids, names)
    for wnid in wnids:
        for index in range(k):
            w.image("images", wnid, f"sketch_{index + 1}.JPEG")
    return {"test": c * k}, names


def _imagenet_subset(image_subdir):
    """ImageNet-A/-R: ``c`` class folders, every other wnid of a 2c-line classnames.txt."""

    def make(w, c, k):
        wnids, names = _wnids_and_names(2 * c)
        _classnames_file(w, wnids, names)
        for wnid in wnids[::2]:
            for index in range(k):
                w.image(image_subdir, wnid, f"{index + 1:04d}.jpg")
        w.text(os.path.join(image_subdir, "README.txt"), ["fake subset of 2x classes"])
        return {"test": c * k}, names[::2]

    return make


def _image_folder(w, c, k):
    classes = _names(["cat", "dog", "horse", "sheep", "cow", "bird"], c, "class_{:03d}")
    split = _empty_split()
    for label, name in enumerate(sorted(classes)):
        for index, part in enumerate(split_of_each_image(k)):
            imname = f"{name}_{index + 1}.png" if index % 2 else f"{name}_{index + 1}.jpg"
            w.image(part, name, imname)
            split[part].append([f"{part}/{name}/{imname}", label, name])
    return split


def _synthetic_shapes(w, c, k):
    """The real generator, on the first ``c`` classes with ``k`` images each."""
    from .synthetic.shapes import SPLIT_SIZES, benchmark_classes, write_benchmark

    classes = benchmark_classes()
    if c > len(classes):
        raise ValueError(f"SyntheticShapes has {len(classes)} classes; asked for {c}")
    parts = split_of_each_image(k)
    return write_benchmark(w.dataset_dir, classes[:c], {part: parts.count(part) for part in SPLIT_SIZES})


_WITH_SPLIT = {
    "caltech101": ("caltech-101", _caltech101),
    "oxford_pets": ("oxford_pets", _oxford_pets),
    "stanford_cars": ("stanford_cars", _stanford_cars),
    "oxford_flowers": ("oxford_flowers", _oxford_flowers),
    "food101": ("food-101", _food101),
    "fgvc_aircraft": ("fgvc_aircraft", _fgvc_aircraft),
    "sun397": ("sun397", _sun397),
    "dtd": ("dtd", _dtd),
    "eurosat": ("eurosat", _eurosat),
    "ucf101": ("ucf101", _ucf101),
    "synthetic_shapes": ("synthetic_shapes", _synthetic_shapes),
    "image_folder": ("", _image_folder),
}
_FOLDER_ONLY = {
    "imagenet": ("imagenet", _imagenet),
    "imagenetv2": ("imagenetv2", _imagenetv2),
    "imagenet_sketch": ("imagenet-sketch", _imagenet_sketch),
    "imagenet_a": ("imagenet-adversarial", _imagenet_subset("imagenet-a")),
    "imagenet_r": ("imagenet-rendition", _imagenet_subset("imagenet-r")),
}
FAKE_DATASET_NAMES = sorted(_WITH_SPLIT) + sorted(_FOLDER_ONLY)


def make_fake_dataset(name, root, num_classes=10, images_per_class=8, seed=0, with_split=True):
    """Write a fake ``name`` dataset (a configs/datasets file stem) under ``root``.

    ``with_split=False`` leaves out the split JSON, so the dataset class has to
    create it from the raw layout. ImageFolder data is written into ``root`` itself.
    """
    key = name.lower()
    if key not in _WITH_SPLIT and key not in _FOLDER_ONLY:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {FAKE_DATASET_NAMES}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (base/new halves need two), got {num_classes}")
    if images_per_class < MIN_IMAGES_PER_CLASS:
        raise ValueError(
            f"images_per_class must be at least {MIN_IMAGES_PER_CLASS} so that every class has "
            f"train, val and test images, got {images_per_class}"
        )
    folder, make = (_WITH_SPLIT.get(key) or _FOLDER_ONLY[key])
    dataset_dir = os.path.normpath(os.path.join(os.path.abspath(root), folder))
    os.makedirs(dataset_dir, exist_ok=True)
    writer = _Writer(dataset_dir, seed)
    result = make(writer, num_classes, images_per_class)

    if key in _FOLDER_ONLY:
        counts, classnames = result
        return FakeDataset(key, dataset_dir, classnames, counts)
    split = result
    if not with_split:
        for entry in os.listdir(dataset_dir):
            if entry.startswith("split_") and entry.endswith(".json"):
                os.remove(os.path.join(dataset_dir, entry))
    labels = {label: cname for entries in split.values() for _, label, cname in entries}
    return FakeDataset(key, dataset_dir, [labels[i] for i in sorted(labels)], _counts(split))
