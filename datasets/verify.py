"""Check a dataset layout without changing anything: what is there, what is missing, where to get it.

Used by ``tools/check_datasets.py``. Nothing is written or downloaded.
"""
import json
import os
from dataclasses import dataclass, field

from dassl.data.datasets import DATASET_REGISTRY

from .sources import describe_downloads, load_sources

OK, MISSING, WARN = "ok", "MISSING", "warn"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_SHOWN_MISSING = 3  # missing file names listed per row


@dataclass
class DatasetReport:
    name: str  # configs/datasets file stem
    registry_name: str
    dataset_dir: str
    rows: list = field(default_factory=list)  # (check, status, detail)
    downloads: list = field(default_factory=list)

    @property
    def usable(self):
        return all(status != MISSING for _, status, _ in self.rows)

    def add(self, check, status, detail=""):
        self.rows.append((check, status, detail))


def known_datasets():
    """configs/datasets stems in the order of the sources table."""
    return list(load_sources())


def resolve_name(name):
    """Accept a config stem ('oxford_pets') or a registry name ('OxfordPets')."""
    sources = load_sources()
    if name in sources:
        return name
    for stem, entry in sources.items():
        if entry["registry"].lower() == name.lower():
            return stem
    raise ValueError(f"Unknown dataset {name!r}; choose from {list(sources)}")


def check_dataset(name, root):
    stem = resolve_name(name)
    cls = DATASET_REGISTRY.get(load_sources()[stem]["registry"])
    root = os.path.abspath(os.path.expanduser(root))
    dataset_dir = os.path.normpath(os.path.join(root, cls.folder))
    report = DatasetReport(stem, cls.__name__, dataset_dir)

    if not os.path.isdir(dataset_dir):
        report.add("dataset folder", MISSING, dataset_dir)
    else:
        report.add("dataset folder", OK, dataset_dir)
        if cls.__name__ == "ImageFolder":
            _check_own_folder(dataset_dir, report)
        elif cls.split_file:
            _check_split_dataset(cls, dataset_dir, report)
        elif cls.__name__ == "FGVCAircraft":
            _check_list_dataset(cls, dataset_dir, report)
        else:
            _check_folder_dataset(cls, dataset_dir, report)

    if not report.usable:
        report.downloads = describe_downloads(stem)
    elif any(check == "split file" and status == WARN for check, status, _ in report.rows):
        report.downloads = describe_downloads(stem, only=[cls.split_file])
    return report


def _published(cls, split):
    value = cls.published.get(split)
    return f"published: {value:,}" if value is not None else ""


def _missing_detail(found, listed, missing_paths, published):
    detail = f"{found:,} of {listed:,} images found"
    if missing_paths:
        shown = ", ".join(missing_paths[:_SHOWN_MISSING])
        more = len(missing_paths) - _SHOWN_MISSING
        detail += f"; missing: {shown}" + (f" and {more:,} more" if more > 0 else "")
    return detail + (f" ({published})" if published else "")


def _count_status(found, listed, cls, split):
    if found < listed:
        return MISSING
    published = cls.published.get(split)
    return OK if published in (None, listed) else WARN


def _check_split_dataset(cls, dataset_dir, report):
    split_path = os.path.join(dataset_dir, cls.split_file)
    if not os.path.isfile(split_path):
        missing = [p for p in cls.creation_inputs if not os.path.exists(os.path.join(dataset_dir, p))]
        if missing:
            report.add("split file", MISSING, f"{split_path}; creating it also needs: "
                       + ", ".join(os.path.join(dataset_dir, p) for p in missing))
        else:
            report.add("split file", WARN, f"{split_path} not found; it will be CREATED from the "
                       "raw files, which gives a split different from the published one")
        return
    try:
        with open(split_path) as f:
            split = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        report.add("split file", MISSING, f"{split_path} cannot be read: {exc}")
        return
    report.add("split file", OK, split_path)

    prefix = dataset_dir if cls.split_prefix_is_dataset_dir else os.path.join(dataset_dir, cls.image_subdir)
    labels = set()
    for part in ("train", "val", "test"):
        entries = split.get(part)
        if not isinstance(entries, list):
            report.add(f"{part} images", MISSING, f'{split_path} has no "{part}" list')
            continue
        labels.update(entry[1] for entry in entries)
        missing = [os.path.join(prefix, entry[0]) for entry in entries
                   if not os.path.isfile(os.path.join(prefix, entry[0]))]
        found = len(entries) - len(missing)
        report.add(f"{part} images", _count_status(found, len(entries), cls, part),
                   _missing_detail(found, len(entries), missing, _published(cls, part)))
    _add_class_count(cls, len(labels), report)


def _check_own_folder(dataset_dir, report):
    """A user's own data (ImageFolder): class folders per split, other files, the split file, and
    every image opened as training opens it, so that a broken one makes the folder unusable."""
    from dassl.utils import read_image
    from .image_folder import list_own_data, listed_files, shown, split_file_entries

    listing, others = list_own_data(dataset_dir)
    classes = sorted(set().union(*listing.values()))
    for split in ("train", "val", "test"):
        folder = os.path.join(dataset_dir, split)
        if split not in listing:
            if split == "val":
                report.add("val images", OK, "no val/ folder: 20% of train/ per class is held out")
            else:
                report.add(f"{split} images", MISSING, f"{folder} not found")
            continue
        empty = [name for name in classes if not listing[split].get(name)]
        count = sum(len(paths) for paths in listing[split].values())
        detail = f"{count:,} images in {len(listing[split]):,} class folders"
        if empty:
            detail += f"; no images for class(es) {shown(empty)} in {folder} (every class needs images in every split)"
        report.add(f"{split} images", MISSING if empty or not count else OK, detail)
    if others:
        report.add("other files", WARN, f"{len(others)} file(s) that are not images by their extension "
                   f"are left out: {shown(others)}")
    images = sorted(listed_files(listing))
    unreadable = []
    for relpath in images:
        try:
            read_image(os.path.join(dataset_dir, relpath))
        except OSError as exc:
            cause = exc.__cause__ or exc
            unreadable.append(f"{relpath} ({type(cause).__name__})")
    if unreadable:
        report.add("images opened", MISSING, f"{len(unreadable)} of {len(images):,} cannot be read: "
                   f"{shown(unreadable)}; replace or remove them (the split is then rebuilt)")
    else:
        report.add("images opened", OK, f"all {len(images):,} read")
    split_path = os.path.join(dataset_dir, "split_ImageFolder.json")
    if not os.path.isfile(split_path):
        report.add("split file", OK, f"{split_path} will be created from the folders")
    elif set(split_file_entries(split_path) or images) != set(images):
        report.add("split file", WARN, f"{split_path} lists other images than the folders hold; the next "
                   "run rebuilds it from the folders")
    else:
        report.add("split file", OK, split_path)
    report.add("classes", OK if classes else MISSING, f"{len(classes):,}")


def _add_class_count(cls, count, report):
    published = cls.published.get("classes")
    status = OK if published in (None, count) else WARN
    report.add("classes", status, f"{count:,}" + (f" (published: {published:,})" if published else ""))


def _check_list_dataset(cls, dataset_dir, report):
    """FGVCAircraft: the official list files are the split."""
    missing = [p for p in cls.creation_inputs if not os.path.exists(os.path.join(dataset_dir, p))]
    for relpath in cls.creation_inputs:
        path = os.path.join(dataset_dir, relpath)
        report.add(relpath, MISSING if relpath in missing else OK, path)
    if missing:
        return
    image_dir = os.path.join(dataset_dir, cls.image_subdir)
    for part in ("train", "val", "test"):
        with open(os.path.join(dataset_dir, f"images_variant_{part}.txt")) as f:
            names = [line.split(" ", 1)[0] for line in f if line.strip()]
        missing_paths = [os.path.join(image_dir, n + ".jpg") for n in names
                         if not os.path.isfile(os.path.join(image_dir, n + ".jpg"))]
        found = len(names) - len(missing_paths)
        report.add(f"{part} images", _count_status(found, len(names), cls, part),
                   _missing_detail(found, len(names), missing_paths, _published(cls, part)))
    with open(os.path.join(dataset_dir, "variants.txt")) as f:
        _add_class_count(cls, sum(1 for line in f if line.strip()), report)


def _count_class_folders(folder):
    classes, images = 0, 0
    for entry in os.scandir(folder):
        if entry.is_dir() and not entry.name.startswith("."):
            classes += 1
            images += sum(1 for f in os.scandir(entry.path)
                          if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS))
    return classes, images


def _check_folder_dataset(cls, dataset_dir, report):
    """ImageNet and its variants: class folders plus classnames.txt."""
    classnames = os.path.join(dataset_dir, "classnames.txt")
    report.add("classnames.txt", OK if os.path.isfile(classnames) else MISSING, classnames)
    if cls.__name__ == "ImageNet":
        folders = [("train", os.path.join(dataset_dir, "images", "train")),
                   ("test", os.path.join(dataset_dir, "images", "val"))]
        # ours (.json) or the original engine's (.pkl), which is read as well
        caches = [os.path.join(dataset_dir, f"preprocessed.{ext}") for ext in ("json", "pkl")]
        found = [path for path in caches if os.path.isfile(path)]
        report.add("image-list cache", OK if found else WARN,
                   ", ".join(found) or f"{caches[0]} will be built on first use")
    else:
        folders = [("test", os.path.join(dataset_dir, cls.image_subdir))]
    for part, folder in folders:
        if not os.path.isdir(folder):
            report.add(f"{part} images", MISSING, f"{folder} not found")
            continue
        classes, images = _count_class_folders(folder)
        published = cls.published.get(part)
        if classes == 0:
            hint = (" (the ImageNet val images must be moved into <wnid>/ class folders)"
                    if folder.endswith(os.path.join("images", "val")) else "")
            report.add(f"{part} images", MISSING, f"{folder} has no class folders{hint}")
            continue
        status = OK if published in (None, images) else WARN
        report.add(f"{part} images", status, f"{images:,} images in {classes:,} class folders"
                   + (f" (published: {published:,})" if published else ""))
    if report.usable:
        _add_class_count(cls, classes, report)
