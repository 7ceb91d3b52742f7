"""SyntheticShapes: 64 colour-shape classes from the synthetic world, in a shifted domain.

Generated on first use into ``DATASET.ROOT/synthetic_shapes/`` (14 MB, about 15 seconds), in
the layout of the CoOp datasets::

    synthetic_shapes/images/<colour>_<shape>/{train,val,test}_NNNN.jpg
    synthetic_shapes/split_zhou_SyntheticShapes.json     [relpath, label, classname] lists
    synthetic_shapes/classnames.txt                      one class name per line, by label
    synthetic_shapes/generator.json                      what drew the images (checked on load)
    synthetic_shapes/descriptions.json                   class descriptions (DATASET.DESCRIPTIONS form)

The images come from the benchmark domain (every colour washed out 80% of the way to its
grey), not the full colours of pretraining, so zero-shot CLIP is imperfect and prompt tuning
has something to fix. Labels 0-31 (the base half under
``DATASET.SUBSAMPLE_CLASSES base``) are the colour-shape pairs of one colour of a
checkerboard over colours x shapes, labels 32-63 (new) the other: every colour and shape
occurs in both halves, so the new classes are new combinations of seen words.
Every image is drawn from its own seed (class, split, index): the same files everywhere.
"""
import json
import os
import secrets
import shutil

import numpy as np

from dassl.data.datasets import DATASET_REGISTRY
from dassl.data.datasets.base_dataset import Datum
from dassl.utils import atomic_write_text, read_json, write_json

from ..benchmark import BenchmarkDataset, DatasetNotFoundError, dataset_root
from ..descriptions import synthetic_descriptions_text
from . import world

GENERATOR = {"version": 2, "domain": "benchmark", "seed": 13}
SPLIT_SIZES = {"train": 24, "val": 8, "test": 16}  # images per class
FOLDER = "synthetic_shapes"
SPLIT_FILE = "split_zhou_SyntheticShapes.json"
JPEG_QUALITY = 90


def benchmark_classes():
    """The 64 class names in label order: the base half of the checkerboard, then the new half."""
    colours, shapes = list(world.COLOURS), list(world.SHAPES)
    pairs = [(c, s) for c in range(len(colours)) for s in range(len(shapes))]
    ordered = [p for p in pairs if (p[0] + p[1]) % 2 == 0] + [p for p in pairs if (p[0] + p[1]) % 2 == 1]
    return [f"{colours[c]} {shapes[s]}" for c, s in ordered]


def image_rng(class_name, split, index, seed=GENERATOR["seed"]):
    """The generator of one image: fixed by its class, split and index alone."""
    world_index = world.class_names().index(class_name)
    return np.random.default_rng([seed, world_index, list(SPLIT_SIZES).index(split), index])


def write_benchmark(dataset_dir, classes=None, sizes=None):
    """Draw the benchmark images into ``dataset_dir`` and return the split {train, val, test}.

    ``classes`` (default all 64, in label order) and ``sizes`` (images per class and split)
    make smaller copies with the same images, for tests.
    """
    classes = benchmark_classes() if classes is None else list(classes)
    sizes = dict(SPLIT_SIZES, **(sizes or {}))
    split = {name: [] for name in SPLIT_SIZES}
    for label, name in enumerate(classes):
        colour, shape = world.parse_class_name(name)
        folder = f"{colour}_{shape}"
        os.makedirs(os.path.join(dataset_dir, "images", folder), exist_ok=True)
        for part in SPLIT_SIZES:
            for index in range(sizes[part]):
                relpath = f"{folder}/{part}_{index:04d}.jpg"
                scene = world.render(image_rng(name, part, index), colour, shape, world.BENCHMARK)
                world.to_pil(scene).save(os.path.join(dataset_dir, "images", relpath), quality=JPEG_QUALITY)
                split[part].append([relpath, label, name])
    write_json(split, os.path.join(dataset_dir, SPLIT_FILE))
    atomic_write_text(os.path.join(dataset_dir, "classnames.txt"), "".join(name + "\n" for name in classes))
    # what the description-reading methods use when DATASET.DESCRIPTIONS is unset, for people to read
    atomic_write_text(os.path.join(dataset_dir, "descriptions.json"), synthetic_descriptions_text())
    generator = dict(GENERATOR, classes=len(classes), images_per_class=sizes)
    write_json(generator, os.path.join(dataset_dir, "generator.json"))
    return split


def generate(dataset_dir, classes=None, sizes=None):
    """Write the benchmark into a temporary folder beside ``dataset_dir``, then rename it into place.

    An interrupted generation leaves nothing half-written; when two processes generate at
    once, the first rename wins and the other copy is discarded.
    """
    parent = os.path.dirname(os.path.abspath(dataset_dir))
    os.makedirs(parent, exist_ok=True)
    print(f"Generating the synthetic benchmark in {dataset_dir} (first use; takes seconds)")
    tmp = os.path.join(parent, f".{os.path.basename(dataset_dir)}.{secrets.token_hex(6)}.tmp")
    os.mkdir(tmp)  # mode 0777 minus the umask, as any folder (tempfile.mkdtemp's would be private)
    try:
        write_benchmark(tmp, classes, sizes)
        try:
            os.rename(tmp, dataset_dir)
        except OSError:
            if not os.path.isdir(dataset_dir):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_generator(dataset_dir):
    """Refuse a folder drawn by another generator version: its images differ from this code's."""
    path = os.path.join(dataset_dir, "generator.json")
    try:
        found = read_json(path)
    except (OSError, json.JSONDecodeError):
        found = None
    expected = {key: GENERATOR[key] for key in ("version", "domain", "seed")}
    if found is None or {key: found.get(key) for key in expected} != expected:
        raise DatasetNotFoundError(
            f"{dataset_dir} was not written by this version of the synthetic benchmark generator "
            f"({path} is missing, unreadable or differs from {expected}). Delete the folder: it is "
            "generated again on the next run."
        )


@DATASET_REGISTRY.register()
class SyntheticShapes(BenchmarkDataset):
    config_name = "synthetic_shapes"
    folder = FOLDER
    image_subdir = "images"
    split_file = SPLIT_FILE
    creation_inputs = ("images", "classnames.txt")
    published = dict(classes=64, **{part: 64 * n for part, n in SPLIT_SIZES.items()})

    def locate(self, cfg):
        dataset_dir = os.path.join(dataset_root(cfg), self.folder)
        if not os.path.exists(dataset_dir):
            generate(dataset_dir)
        check_generator(dataset_dir)
        super().locate(cfg)

    def warn_created_split(self, cfg):
        print(f"Split file {self.split_path} not found; rebuilding it from the image names")

    def create_split(self):
        """The split as generated: labels from classnames.txt, the split from each file name."""
        split = {part: [] for part in SPLIT_SIZES}
        for label, name in enumerate(self.read_lines("classnames.txt")):
            colour, shape = world.parse_class_name(name)
            folder = f"{colour}_{shape}"
            self.require(os.path.join(self.image_subdir, folder), purpose="rebuild the split")
            for file_name in sorted(os.listdir(os.path.join(self.image_dir, folder))):
                part = file_name.split("_")[0]
                if part in split:
                    split[part].append(Datum(os.path.join(self.image_dir, folder, file_name), label, 0, name))
        return split["train"], split["val"], split["test"]
