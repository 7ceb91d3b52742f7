"""Pickled image-list caches: few-shot samples and ImageNet's ``preprocessed.pkl``.

File names and meaning are those of the original engine, but the content is
portable and checked:

* image paths are stored relative to the dataset folder and re-joined with the
  current folder on load, so moving ``DATASET.ROOT`` keeps the cache valid;
* a header records what the cache was built from (dataset, a hash of the lists it
  was sampled from, shots, seed); a mismatch, a missing image or an unreadable
  file makes the cache stale, and it is rebuilt with the reason printed;
* legacy caches of the original engine (``Datum`` objects with absolute paths)
  are still read, their paths re-rooted under the current dataset folder.
"""
import hashlib
import io
import os
import pickle

from dassl.data.datasets.base_dataset import Datum

from dassl.utils import atomic_write_bytes

CACHE_FORMAT = "image-list-cache/1"
_FILES_CHECKED_IN_LARGE_CACHES = 64  # preprocessed.pkl holds >1M paths; check a spread sample


class StaleCacheError(Exception):
    """The cache cannot be used; the message says why."""


class _DatumOnlyUnpickler(pickle.Unpickler):
    """Unpickle plain containers and Datum objects, nothing else (caches are data, not code)."""

    def find_class(self, module, name):
        if (module, name) == ("dassl.data.datasets.base_dataset", "Datum"):
            return Datum
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in cache")


def relative_to(impath, dataset_dir):
    prefix = dataset_dir.rstrip(os.sep) + os.sep
    if impath.startswith(prefix):
        return impath[len(prefix):]
    return None


def list_fingerprint(named_lists, dataset_dir):
    """A short hash of image lists (relative path, label, class name), independent of the root."""
    digest = hashlib.sha1()
    for name in sorted(named_lists):
        digest.update(f"[{name}]".encode())
        for item in named_lists[name]:
            relpath = relative_to(item.impath, dataset_dir) or item.impath
            digest.update(f"{relpath}\t{item.label}\t{item.classname}\n".encode())
    return digest.hexdigest()[:16]


def file_fingerprint(path):
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()[:16]


def save_cache(path, header, named_lists, dataset_dir):
    """Atomically pickle ``{"header": ..., <split>: [(relpath, label, domain, classname)]}``."""
    content = {"header": dict(header, format=CACHE_FORMAT)}
    for name, items in named_lists.items():
        records = []
        for item in items:
            relpath = relative_to(item.impath, dataset_dir)
            if relpath is None:
                raise ValueError(
                    f"Cannot cache {item.impath}: it is not inside the dataset folder {dataset_dir}"
                )
            records.append((relpath, item.label, item.domain, item.classname))
        content[name] = records
    atomic_write_bytes(path, lambda f: pickle.dump(content, f, protocol=pickle.HIGHEST_PROTOCOL))


def load_cache(path, expected_header, split_names, dataset_dir, check_every_file=True):
    """Return ``{split: [Datum]}`` from a cache file, or raise StaleCacheError with the reason."""
    try:
        with open(path, "rb") as f:
            content = _DatumOnlyUnpickler(io.BytesIO(f.read())).load()
    except Exception as exc:  # any unreadable file is simply rebuilt
        raise StaleCacheError(f"the file cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(content, dict) or any(
        not isinstance(content.get(name), list) for name in split_names
    ):
        raise StaleCacheError(f"it does not hold the lists {list(split_names)}")

    if "header" in content:
        lists = _read_current_format(content, expected_header, split_names, dataset_dir)
    else:
        lists = _read_legacy_format(content, split_names, dataset_dir)

    _check_files_exist(lists, check_every_file)
    return lists


def _read_current_format(content, expected_header, split_names, dataset_dir):
    header = content["header"]
    if not isinstance(header, dict) or header.get("format") != CACHE_FORMAT:
        raise StaleCacheError("it was written in an unknown format")
    for key, expected in expected_header.items():
        if header.get(key) != expected:
            raise StaleCacheError(
                f"it was built for {key}={header.get(key)!r}, but this run has {key}={expected!r}"
            )
    lists = {}
    for name in split_names:
        items = []
        for record in content[name]:
            if not (isinstance(record, tuple) and len(record) == 4 and isinstance(record[1], int)):
                raise StaleCacheError(f"its {name} list holds a malformed entry {record!r}")
            relpath, label, domain, classname = record
            items.append(Datum.unchecked(os.path.join(dataset_dir, relpath), label, domain, classname))
        lists[name] = items
    return lists


def _read_legacy_format(content, split_names, dataset_dir):
    """Read an original-engine cache: Datum objects with absolute paths from some old root."""
    anchor = os.path.basename(dataset_dir.rstrip(os.sep))
    lists = {}
    for name in split_names:
        items = []
        for old in content[name]:
            if not isinstance(old, Datum):
                raise StaleCacheError(f"its {name} list holds {type(old).__name__}, not Datum")
            relpath = relative_to(old.impath, dataset_dir) or _path_after_anchor(old.impath, anchor)
            if relpath is None:
                raise StaleCacheError(
                    f"the legacy path {old.impath} has no '{anchor}' folder to re-root it under "
                    f"{dataset_dir}"
                )
            items.append(Datum.unchecked(
                os.path.join(dataset_dir, relpath), old.label, old.domain, old.classname
            ))
        lists[name] = items
    print("Note: this is a legacy cache without header (original engine format); "
          f"its image paths were re-rooted under {dataset_dir}")
    return lists


def _path_after_anchor(old_path, anchor):
    parts = old_path.replace("\\", "/").split("/")
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == anchor and index + 1 < len(parts):
            return os.path.join(*parts[index + 1:])
    return None


def _check_files_exist(lists, check_every_file):
    for name, items in lists.items():
        if check_every_file or len(items) <= _FILES_CHECKED_IN_LARGE_CACHES:
            to_check = items
        else:
            step = len(items) / _FILES_CHECKED_IN_LARGE_CACHES
            to_check = [items[int(i * step)] for i in range(_FILES_CHECKED_IN_LARGE_CACHES)]
            to_check.append(items[-1])
        missing = [item.impath for item in to_check if not os.path.isfile(item.impath)]
        if missing:
            raise StaleCacheError(
                f"{len(missing)} of the {len(to_check)} checked {name} images are missing "
                f"(e.g. {missing[0]})"
            )


def check_sampled_from(sampled, full, split_name, max_per_label):
    """A few-shot list must be drawn from the current full list, at most ``max_per_label`` per label."""
    available = {(item.impath, item.label) for item in full}
    per_label = {}
    for item in sampled:
        if (item.impath, item.label) not in available:
            raise StaleCacheError(
                f"its {split_name} image {item.impath} (label {item.label}) is not in the "
                f"current {split_name} split, so the split changed since the cache was written"
            )
        per_label[item.label] = per_label.get(item.label, 0) + 1
    crowded = [label for label, count in per_label.items() if count > max_per_label]
    if crowded:
        raise StaleCacheError(
            f"label {crowded[0]} has {per_label[crowded[0]]} {split_name} images, more than "
            f"{max_per_label} shots"
        )
