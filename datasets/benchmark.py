"""The flow every benchmark dataset shares; a dataset module only describes its layout.

1. locate ``DATASET.ROOT/<folder>`` (clear error naming the path and the sources);
2. read the split JSON, or create and save it when missing (with a loud warning);
3. draw the few-shot sample (cached in ``split_fewshot/``) when ``NUM_SHOTS >= 1``;
4. keep the base or new half of the classes (``DATASET.SUBSAMPLE_CLASSES``).
"""
import os

from dassl.data.datasets.base_dataset import DatasetBase

from .cache import save_beside_data, user_cache_path
from .fewshot import load_or_sample_fewshot
from .sources import describe_downloads
from .splits import read_split, save_split, subsample_classes


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder, split file or annotation file is missing."""


def dataset_root(cfg):
    root = cfg.DATASET.ROOT
    if not root:
        raise DatasetNotFoundError(
            "DATASET.ROOT is empty. Pass --root DATA (the folder that holds all dataset "
            "folders) or set DATASET.ROOT."
        )
    return os.path.abspath(os.path.expanduser(root))


def subsample_setting(cfg):
    return getattr(cfg.DATASET, "SUBSAMPLE_CLASSES", "all")


def missing_data_message(what, path, config_name, only=None):
    lines = [f"{what} not found: {path}"]
    sources = describe_downloads(config_name, only)
    if sources:
        lines.append("Get it from:")
        lines.extend(sources)
    lines.append(
        f"Check the layout with: python tools/check_datasets.py --root <DATA> --dataset {config_name}"
    )
    return "\n".join(lines)


class BenchmarkDataset(DatasetBase):
    """Base class of the split-file datasets (and of the ones built from official lists)."""

    config_name = ""  # stem of configs/datasets/<config_name>.yaml and key in sources.json
    folder = ""  # the dataset folder under DATASET.ROOT
    image_subdir = ""  # the image folder inside the dataset folder
    split_file = None  # split JSON name; None: the split is always read from official files
    split_prefix_is_dataset_dir = False  # JSON paths relative to the dataset folder, not image_dir
    creation_inputs = ()  # paths inside the dataset folder that creating the split needs
    published = {}  # class count and split sizes of the real data (DATASETS.md §3)
    uses_few_shot = True  # False for test-only sets: no split_fewshot/ folder is made
    val_is_test = False  # True where the val split is the test split (ImageNet)

    def __init__(self, cfg):
        self.locate(cfg)
        train, val, test = self.read_full_splits(cfg)
        train, val = self.apply_few_shot(cfg, train, val)
        train, val, test = subsample_classes(train, val, test, subsample=subsample_setting(cfg))
        super().__init__(train_x=train, val=val, test=test)

    # -- locating files -------------------------------------------------------------------
    def locate(self, cfg):
        root = dataset_root(cfg)
        self.dataset_dir = os.path.normpath(os.path.join(root, self.folder))
        self.image_dir = os.path.normpath(os.path.join(self.dataset_dir, self.image_subdir))
        self.split_path = os.path.join(self.dataset_dir, self.split_file) if self.split_file else None
        self.split_fewshot_dir = os.path.join(self.dataset_dir, "split_fewshot")
        if not os.path.isdir(self.dataset_dir):
            raise DatasetNotFoundError(missing_data_message(
                f"{type(self).__name__} dataset folder (DATASET.ROOT/{self.folder})",
                self.dataset_dir, self.config_name,
            ))
        if self.uses_few_shot:
            try:
                os.makedirs(self.split_fewshot_dir, exist_ok=True)
            except OSError:
                pass  # a read-only shared folder: the few-shot cache is then kept per user

    def require(self, *relpaths, purpose="read this dataset"):
        """Raise a clear error if any of these paths inside the dataset folder is missing."""
        missing = [p for p in relpaths if not os.path.exists(os.path.join(self.dataset_dir, p))]
        if missing:
            paths = ", ".join(os.path.join(self.dataset_dir, p) for p in missing)
            raise DatasetNotFoundError(missing_data_message(
                f"Needed to {purpose}, {type(self).__name__} file(s)", paths, self.config_name,
            ))

    @property
    def split_prefix(self):
        return self.dataset_dir if self.split_prefix_is_dataset_dir else self.image_dir

    # -- full splits ------------------------------------------------------------------------
    def read_full_splits(self, cfg):
        if self.split_path is None:
            return self.read_official_split()
        for path in self.split_paths():
            if os.path.isfile(path):
                return read_split(path, self.split_prefix)

        missing = [p for p in self.creation_inputs
                   if not os.path.exists(os.path.join(self.dataset_dir, p))]
        if missing:
            paths = [self.split_path] + [os.path.join(self.dataset_dir, p) for p in missing]
            raise DatasetNotFoundError(missing_data_message(
                f"{type(self).__name__} split file (and the files to create it)",
                ", ".join(paths), self.config_name,
            ))
        self.warn_created_split(cfg)
        train, val, test = self.create_split()
        self.save_created_split(train, val, test)
        return train, val, test

    def split_paths(self):
        """Where the split file is looked for: the dataset folder, then the per-user copy that
        is written when the dataset folder is read-only."""
        return [self.split_path, user_cache_path(self.split_path, self.dataset_dir)]

    def save_created_split(self, train, val, test):
        save_beside_data(self.split_path, self.dataset_dir,
                         lambda path: save_split(train, val, test, path, self.split_prefix), "split file")

    def warn_created_split(self, cfg):
        published = describe_downloads(self.config_name, only=[self.split_file])
        print(
            "*" * 79 + "\n"
            f"WARNING: split file {self.split_path} not found; creating a NEW random split "
            f"(SEED={cfg.SEED}). Results on it are not comparable with published numbers, "
            "which use the published split:\n" + "\n".join(published or ["  (none listed)"])
            + "\n" + "*" * 79
        )

    def create_split(self):
        """Return (train, val, test) built from the raw files; for datasets with a split file."""
        raise NotImplementedError

    def read_official_split(self):
        """Return (train, val, test) from official list files; for datasets without a split file."""
        raise NotImplementedError

    # -- few-shot ---------------------------------------------------------------------------
    def apply_few_shot(self, cfg, train, val):
        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots < 1:
            return train, val
        lists = load_or_sample_fewshot(self, num_shots, cfg.SEED, {
            "train": (train, num_shots),
            "val": (val, min(num_shots, 4)),
        })
        return lists["train"], lists["val"]

    # -- helpers for dataset modules ----------------------------------------------------------
    def read_lines(self, relpath):
        """Non-empty stripped lines of a text file inside the dataset folder."""
        self.require(relpath)
        with open(os.path.join(self.dataset_dir, relpath)) as f:
            return [line.strip() for line in f if line.strip()]
